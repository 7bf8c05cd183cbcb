//! Who may use the admin endpoint: bearer tokens, stored hashed (SHA-256) in the file
//! `admin.tokens_file` names, one `NAME ROLE HASH` a line. An `operator` token may act (the
//! store-and-forward queue) and read; a `scrape` token may only read `/metrics` (when
//! `admin.metrics_open` is false). The operator's name comes from the credential, never from
//! the request, and goes into the audit record of the action. `/livez` and `/readyz` stay
//! open for orchestrators. Failed attempts are counted by reason.

use std::path::Path;

use anyhow::{anyhow, Context};
use prometheus::{IntCounterVec, Opts, Registry};
use switchyard_hsm::mac::same_mac;

/// What a token allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Operator actions and every read.
    Operator,
    /// `/metrics` only.
    Scrape,
}

#[derive(Debug)]
struct Credential {
    name: String,
    role: Role,
    hash: [u8; 32],
}

/// Why a request was refused: its HTTP status and the failure's metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    /// `401 Unauthorized` or `403 Forbidden`.
    pub status: &'static str,
    /// `missing`, `invalid` or `forbidden`.
    pub reason: &'static str,
}

/// The admin endpoint's credentials.
#[derive(Debug)]
pub struct AdminAuth {
    credentials: Vec<Credential>,
    metrics_open: bool,
    failures: IntCounterVec,
}

/// The SHA-256 of a token.
pub fn token_hash(token: &str) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, token.trim().as_bytes());
    let mut hash = [0u8; 32];
    hash.copy_from_slice(digest.as_ref());
    hash
}

fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-@".contains(&b))
}

impl AdminAuth {
    /// The credentials of `tokens_file` (none: only open endpoints answer).
    pub fn load(
        tokens_file: Option<&Path>,
        metrics_open: bool,
        registry: &Registry,
    ) -> anyhow::Result<AdminAuth> {
        let failures = IntCounterVec::new(
            Opts::new(
                "switchyard_admin_auth_failures_total",
                "Admin requests refused for their credential, by reason",
            ),
            &["reason"],
        )?;
        registry.register(Box::new(failures.clone()))?;
        for reason in ["missing", "invalid", "forbidden"] {
            failures.with_label_values(&[reason]);
        }
        let mut credentials = Vec::new();
        if let Some(path) = tokens_file {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("admin.tokens_file {}", path.display()))?;
            for (n, line) in text.lines().enumerate() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                let at = format!("{} line {}", path.display(), n + 1);
                let parts: Vec<&str> = line.split_whitespace().collect();
                let [name, role, hash] = parts[..] else {
                    return Err(anyhow!("{at}: expected NAME ROLE SHA256-HEX"));
                };
                if !valid_name(name) {
                    return Err(anyhow!(
                        "{at}: name {name:?}: 1 to 64 letters, digits or ._-@"
                    ));
                }
                let role = match role {
                    "operator" => Role::Operator,
                    "scrape" => Role::Scrape,
                    other => return Err(anyhow!("{at}: role {other:?} is not operator or scrape")),
                };
                let hash: [u8; 32] = switchyard_hsm::from_hex(hash)
                    .ok()
                    .and_then(|h| h.try_into().ok())
                    .ok_or_else(|| {
                        anyhow!("{at}: the hash is not 64 hex digits (a token's SHA-256)")
                    })?;
                credentials.push(Credential {
                    name: name.to_string(),
                    role,
                    hash,
                });
            }
        }
        Ok(AdminAuth {
            credentials,
            metrics_open,
            failures,
        })
    }

    /// Whether `/metrics` answers without a token.
    pub fn metrics_open(&self) -> bool {
        self.metrics_open
    }

    /// The name of the credential in `head` (the request's head) if it allows `needs`.
    pub fn check(&self, head: &[u8], needs: Role) -> Result<&str, Refusal> {
        let refuse = |status, reason| {
            self.failures.with_label_values(&[reason]).inc();
            Refusal { status, reason }
        };
        let Some(token) = bearer(head) else {
            return Err(refuse("401 Unauthorized", "missing"));
        };
        let hash = token_hash(&token);
        // Every credential compared, in constant time: no early exit on the first match.
        let found = self.credentials.iter().fold(None, |found, c| {
            if same_mac(&c.hash, &hash) {
                Some(c)
            } else {
                found
            }
        });
        match found {
            None => Err(refuse("401 Unauthorized", "invalid")),
            Some(c) if needs == Role::Operator && c.role != Role::Operator => {
                Err(refuse("403 Forbidden", "forbidden"))
            }
            Some(c) => Ok(&c.name),
        }
    }
}

/// The token of an `Authorization: Bearer` header.
fn bearer(head: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(head).ok()?;
    text.split("\r\n").skip(1).find_map(|line| {
        let (name, value) = line.split_once(':')?;
        if !name.trim().eq_ignore_ascii_case("authorization") {
            return None;
        }
        let (scheme, token) = value.trim().split_once(' ')?;
        scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| token.trim().to_string())
    })
}

/// `switchyard admin-token`: a new random token (printed once) and its line for the
/// tokens file.
pub fn new_token(name: &str, role: &str) -> anyhow::Result<(String, String)> {
    if !valid_name(name) {
        return Err(anyhow!("--name {name:?}: 1 to 64 letters, digits or ._-@"));
    }
    if !matches!(role, "operator" | "scrape") {
        return Err(anyhow!("--role {role:?}: operator or scrape"));
    }
    let mut bytes = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .map_err(|_| anyhow!("no random numbers from the system"))?;
    let token = switchyard_hsm::to_hex(&bytes).to_lowercase();
    let line = format!(
        "{name} {role} {}",
        switchyard_hsm::to_hex(&token_hash(&token)).to_lowercase()
    );
    Ok((token, line))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_checked_by_hash_and_role_and_failures_counted() {
        let dir = tempfile::tempdir().unwrap();
        let (alice, alice_line) = new_token("alice", "operator").unwrap();
        let (scraper, scraper_line) = new_token("prometheus", "scrape").unwrap();
        let path = dir.path().join("tokens");
        std::fs::write(
            &path,
            format!("# admin tokens\n{alice_line}\n{scraper_line}\n"),
        )
        .unwrap();
        assert!(!std::fs::read_to_string(&path).unwrap().contains(&alice));
        let registry = Registry::new();
        let auth = AdminAuth::load(Some(&path), false, &registry).unwrap();
        let head = |token: &str| {
            format!(
                "POST /saf/drop?id=1 HTTP/1.1\r\nHost: x\r\nauthorization: Bearer {token}\r\n\r\n"
            )
        };
        assert_eq!(
            auth.check(head(&alice).as_bytes(), Role::Operator),
            Ok("alice")
        );
        assert_eq!(
            auth.check(head(&scraper).as_bytes(), Role::Scrape),
            Ok("prometheus")
        );
        let forbidden = auth
            .check(head(&scraper).as_bytes(), Role::Operator)
            .unwrap_err();
        assert_eq!(
            (forbidden.status, forbidden.reason),
            ("403 Forbidden", "forbidden")
        );
        assert_eq!(
            auth.check(head("nope").as_bytes(), Role::Scrape)
                .unwrap_err()
                .reason,
            "invalid"
        );
        assert_eq!(
            auth.check(b"GET /saf HTTP/1.1\r\n\r\n", Role::Operator)
                .unwrap_err()
                .reason,
            "missing"
        );
        let failures = auth.failures.with_label_values(&["invalid"]).get()
            + auth.failures.with_label_values(&["missing"]).get()
            + auth.failures.with_label_values(&["forbidden"]).get();
        assert_eq!(failures, 3);
        std::fs::write(&path, "alice admin 00\n").unwrap();
        let err = AdminAuth::load(Some(&path), true, &Registry::new())
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 1: role \"admin\""), "{err}");
    }
}
