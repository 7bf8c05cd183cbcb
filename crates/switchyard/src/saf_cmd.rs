//! `switchyard saf list|retry|drop`: the store-and-forward queue for operators; and
//! `switchyard health`, the same small HTTP client for container health checks.
//!
//! `list` reads the journal directory directly (safe while the switch runs: the journal is
//! append-only) or asks a running switch. `retry` and `drop` go through the running switch's
//! admin endpoint, which records the action in the queue's journal and in the audit log.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, Context};
use clap::{Args, Subcommand};

use crate::codec_cmd::{fail, CmdResult, EX_DATAERR, EX_IOERR, EX_USAGE};

#[derive(Subcommand, Debug)]
pub enum SafCommand {
    /// List queued reversals and dead letters.
    List {
        /// The journal directory (integrity.saf_dir).
        #[arg(long, conflicts_with = "admin")]
        dir: Option<PathBuf>,
        /// A running switch's admin address.
        #[arg(long, requires = "token_file")]
        admin: Option<String>,
        /// The file holding an operator's admin token (with --admin).
        #[arg(long)]
        token_file: Option<PathBuf>,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
        /// Every entry the journal ever held: delivered and dropped ones too (with --dir).
        #[arg(long, requires = "dir")]
        all: bool,
    },
    /// Put a dead letter back in the queue.
    Retry(Action),
    /// Remove an entry for good (recorded in the audit log).
    Drop(Action),
}

/// An operator's action on one entry, through a running switch.
#[derive(Args, Debug)]
pub struct Action {
    /// The running switch's admin address.
    #[arg(long)]
    admin: String,
    /// The entry.
    #[arg(long)]
    id: u64,
    /// The file holding the operator's admin token (`switchyard admin-token`): the switch
    /// records the token's name as the operator.
    #[arg(long)]
    token_file: PathBuf,
}

/// A token from its file (never from the command line, where `ps` would show it).
fn token(path: &std::path::Path) -> anyhow::Result<String> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("token file {}", path.display()))?;
    let token = text.trim();
    if token.is_empty() || token.contains(char::is_whitespace) {
        return Err(anyhow!(
            "token file {}: one token, no spaces",
            path.display()
        ));
    }
    Ok(token.to_string())
}

/// One HTTP request to the admin endpoint, with a bearer token when given: (status, body).
fn admin_request(
    addr: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> anyhow::Result<(u16, String)> {
    let mut s = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: switchyard\r\n{auth}Content-Length: 0\r\n\r\n"
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let status = out.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    Ok((
        status,
        out.split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default(),
    ))
}

pub fn run(command: SafCommand) -> CmdResult {
    match command {
        SafCommand::List {
            dir,
            admin,
            token_file,
            json,
            all,
        } => {
            let entries: Vec<serde_json::Value> = match (dir, admin) {
                (Some(dir), _) => {
                    let entries = if all {
                        switchyard_router::saf::history(&dir, None)
                    } else {
                        switchyard_router::saf::replay(&dir)
                    }
                    .map_err(|e| fail(EX_DATAERR)(e.into()))?;
                    entries
                        .values()
                        .filter_map(|e| serde_json::to_value(e).ok())
                        .collect()
                }
                (None, Some(addr)) => {
                    let token = token_file
                        .as_deref()
                        .map(token)
                        .transpose()
                        .map_err(fail(EX_USAGE))?;
                    let (status, body) = admin_request(&addr, "GET", "/saf", token.as_deref())
                        .map_err(fail(EX_IOERR))?;
                    if status != 200 {
                        return Err(fail(EX_IOERR)(anyhow!(
                            "{addr}: HTTP {status}: {}",
                            body.trim()
                        )));
                    }
                    serde_json::from_str(&body).map_err(|e| fail(EX_DATAERR)(e.into()))?
                }
                (None, None) => return Err(fail(EX_USAGE)(anyhow!("give --dir or --admin"))),
            };
            let mut out = std::io::stdout().lock();
            for e in &entries {
                let line = if json {
                    e.to_string()
                } else {
                    format!(
                        "{:>18}  {:<9} {:<16} attempts {:>2}  {}  ({})",
                        e["id"],
                        e["state"].as_str().unwrap_or(""),
                        e["link"].as_str().unwrap_or(""),
                        e["attempts"],
                        e["reason"].as_str().unwrap_or(""),
                        e["last_result"].as_str().unwrap_or("-")
                    )
                };
                writeln!(out, "{line}").map_err(|e| fail(EX_IOERR)(e.into()))?;
            }
            if !json {
                writeln!(out, "{} entries", entries.len()).map_err(|e| fail(EX_IOERR)(e.into()))?;
            }
            Ok(())
        }
        SafCommand::Retry(a) => act(&a, "retry"),
        SafCommand::Drop(a) => act(&a, "drop"),
    }
}

fn act(a: &Action, action: &str) -> CmdResult {
    let (admin, id) = (a.admin.as_str(), a.id);
    let token = token(&a.token_file).map_err(fail(EX_USAGE))?;
    let (status, body) = admin_request(
        admin,
        "POST",
        &format!("/saf/{action}?id={id}"),
        Some(&token),
    )
    .map_err(fail(EX_IOERR))?;
    if status == 200 {
        println!("{action} {id}: done");
        Ok(())
    } else {
        Err(fail(EX_DATAERR)(anyhow!(
            "{action} {id}: HTTP {status}: {}",
            body.trim()
        )))
    }
}

/// `switchyard health`: GET an admin endpoint; success on 200.
pub fn health(admin: &str, path: &str) -> CmdResult {
    if !path.starts_with('/') || path.contains(char::is_whitespace) {
        return Err(fail(EX_USAGE)(anyhow!(
            "--path {path:?}: expected /livez or /readyz"
        )));
    }
    let (status, body) = admin_request(admin, "GET", path, None).map_err(fail(EX_IOERR))?;
    if status == 200 {
        print!("{body}");
        Ok(())
    } else {
        Err(fail(EX_IOERR)(anyhow!(
            "{admin}{path}: HTTP {status}: {}",
            body.trim()
        )))
    }
}
