//! The switch's table of the keys a payShield holds for it: key id -> usage, the key under
//! the HSM's LMK (a token, safe outside the HSM: only the HSM can use it) and its check
//! value. A text file, `ID USAGE TOKEN KCV` a line, rewritten whole on change (temporary
//! file, fsync, rename). No clear key is ever in it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use switchyard_hsm::module::KeyUsage;

use crate::PayShieldError;

/// One key the HSM holds for the switch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    /// What it is for.
    pub usage: KeyUsage,
    /// The key under the LMK (`U` + 32 hex digits).
    pub token: String,
    /// Its check value (6 hex digits).
    pub kcv: String,
}

/// The key table.
#[derive(Debug)]
pub struct TokenTable {
    path: PathBuf,
    tokens: RwLock<BTreeMap<String, Token>>,
}

fn check_token(token: &str) -> Result<(), String> {
    let ok = token.len() == 33
        && token.starts_with('U')
        && token[1..].bytes().all(|b| b.is_ascii_hexdigit());
    if ok {
        Ok(())
    } else {
        Err("a token is U and 32 hex digits (a double-length key under the LMK)".into())
    }
}

impl TokenTable {
    /// The table at `path` (empty when it does not exist yet).
    pub fn load(path: &Path) -> Result<TokenTable, PayShieldError> {
        let mut tokens = BTreeMap::new();
        match std::fs::read_to_string(path) {
            Ok(text) => {
                for (n, line) in text.lines().enumerate() {
                    let line = line.trim();
                    if line.is_empty() || line.starts_with('#') {
                        continue;
                    }
                    let bad = |why: String| {
                        PayShieldError::Table(format!("{} line {}: {why}", path.display(), n + 1))
                    };
                    let parts: Vec<&str> = line.split_whitespace().collect();
                    let [id, usage, token, kcv] = parts[..] else {
                        return Err(bad("expected ID USAGE TOKEN KCV".into()));
                    };
                    let usage = KeyUsage::from_name(usage)
                        .ok_or_else(|| bad(format!("usage {usage:?}")))?;
                    check_token(token).map_err(bad)?;
                    tokens.insert(
                        id.to_string(),
                        Token {
                            usage,
                            token: token.to_string(),
                            kcv: kcv.to_string(),
                        },
                    );
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(PayShieldError::Table(format!("{}: {e}", path.display()))),
        }
        Ok(TokenTable {
            path: path.to_path_buf(),
            tokens: RwLock::new(tokens),
        })
    }

    /// The token of `id`.
    pub fn get(&self, id: &str) -> Option<Token> {
        self.tokens
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
    }

    /// Every key, by id.
    pub fn list(&self) -> Vec<(String, Token)> {
        let tokens = self.tokens.read().unwrap_or_else(|p| p.into_inner());
        tokens.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    /// Hold `token` as `id` (replacing one of that id) and save the table.
    pub fn insert(&self, id: &str, token: Token) -> Result<(), PayShieldError> {
        check_token(&token.token).map_err(PayShieldError::Table)?;
        if id.is_empty() || id.len() > 64 || id.contains(char::is_whitespace) {
            return Err(PayShieldError::Table(format!(
                "key id {id:?}: 1 to 64 characters, no spaces"
            )));
        }
        self.change(id, Some(token))
    }

    /// Forget `id` and save the table.
    pub fn remove(&self, id: &str) -> Result<(), PayShieldError> {
        self.change(id, None)
    }

    fn change(&self, id: &str, token: Option<Token>) -> Result<(), PayShieldError> {
        let mut tokens = self.tokens.write().unwrap_or_else(|p| p.into_inner());
        let previous = match token {
            Some(t) => tokens.insert(id.to_string(), t),
            None => tokens.remove(id),
        };
        let mut text = String::from(
            "# switchyard payShield key table: keys under the HSM's LMK, never clear\n",
        );
        for (id, t) in tokens.iter() {
            text.push_str(&format!("{id} {} {} {}\n", t.usage.name(), t.token, t.kcv));
        }
        if let Err(e) = switchyard_hsm::software::write_atomically(&self.path, text.as_bytes()) {
            // Not saved: not changed either, so memory and disk agree.
            match previous {
                Some(p) => tokens.insert(id.to_string(), p),
                None => tokens.remove(id),
            };
            return Err(PayShieldError::Table(format!(
                "{}: {e}",
                self.path.display()
            )));
        }
        Ok(())
    }

    /// Read the table again (after `switchyard keys` changed it).
    pub fn reload(&self) -> Result<usize, PayShieldError> {
        let fresh = TokenTable::load(&self.path)?;
        let tokens = fresh.tokens.into_inner().unwrap_or_else(|p| p.into_inner());
        let n = tokens.len();
        *self.tokens.write().unwrap_or_else(|p| p.into_inner()) = tokens;
        Ok(n)
    }
}
