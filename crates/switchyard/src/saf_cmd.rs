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
        #[arg(long)]
        admin: Option<String>,
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
    /// Who does it (recorded in the audit log).
    #[arg(long)]
    operator: String,
}

/// One HTTP request to the admin endpoint: (status, body).
fn admin_request(addr: &str, method: &str, path: &str) -> anyhow::Result<(u16, String)> {
    let mut s = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: switchyard\r\nContent-Length: 0\r\n\r\n"
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
                    let (status, body) =
                        admin_request(&addr, "GET", "/saf").map_err(fail(EX_IOERR))?;
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
    let (admin, id, operator) = (a.admin.as_str(), a.id, a.operator.as_str());
    let (status, body) = admin_request(
        admin,
        "POST",
        &format!("/saf/{action}?id={id}&operator={operator}"),
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
    let (status, body) = admin_request(admin, "GET", path).map_err(fail(EX_IOERR))?;
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
