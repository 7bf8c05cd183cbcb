//! `switchyard`: the command-line entry point. Parses arguments, runs one command, maps
//! failures to sysexits-style exit codes (64 usage, 65 bad data, 66 unreadable input,
//! 74 output error, 78 bad configuration or key).

#![forbid(unsafe_code)]

mod admin;
mod admin_auth;
mod audit_cmd;
mod books_cmd;
mod card_security;
mod codec_cmd;
mod config;
mod keys_cmd;
mod notify;
mod run;
mod saf_cmd;
mod send_cmd;
mod sim_cmd;
mod telemetry;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "switchyard",
    version,
    about = "Switchyard: an ISO 8583 acquirer switch"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the switch (with no --config: the embedded default, a simulated issuer and demo keys).
    Run {
        /// The configuration file (see deploy/config/switchyard.toml).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Log format: text or json (overrides the file's log.format).
        #[arg(long, value_parser = ["text", "json"])]
        log_format: Option<String>,
        /// The terminals' listen address, in place of the configuration's (one listener).
        #[arg(long, value_name = "ADDR")]
        listen: Option<String>,
        /// The admin endpoint's address, in place of the configuration's.
        #[arg(long, value_name = "ADDR")]
        admin: Option<String>,
    },
    /// Check a configuration file: every problem at once, exit 78 if any.
    CheckConfig {
        /// The configuration file.
        file: PathBuf,
    },
    /// Ask a running switch's admin endpoint (container health checks): exit 0 on HTTP 200.
    Health {
        /// The admin address.
        #[arg(long, default_value = "127.0.0.1:9583")]
        admin: String,
        /// The endpoint: /livez or /readyz.
        #[arg(long, default_value = "/livez")]
        path: String,
    },
    /// The store-and-forward queue of reversals: list, retry a dead letter, drop an entry.
    Saf {
        #[command(subcommand)]
        command: saf_cmd::SafCommand,
    },
    /// Make an admin bearer token: the token (shown once; give it to its holder) and the
    /// line for admin.tokens_file (its hash).
    AdminToken {
        /// Who holds it (the operator named in the audit records of its actions).
        #[arg(long)]
        name: String,
        /// operator (actions and reads) or scrape (/metrics only).
        #[arg(long, default_value = "operator")]
        role: String,
    },
    /// The security module's keys: load a ZMK, import and rotate working keys, list them.
    Keys {
        #[command(subcommand)]
        command: keys_cmd::KeysCommand,
    },
    /// Simulators: an issuer host, and terminals sending load.
    Sim {
        #[command(subcommand)]
        command: Box<sim_cmd::SimCommand>,
    },
    /// Decode one message (hex, whitespace ignored; or raw bytes) to JSON. Masked unless --reveal.
    Decode {
        /// A shipped spec name (see `switchyard specs`) or a path to a spec TOML file.
        #[arg(long)]
        spec: String,
        /// Show card data in full (for developers, on test data only).
        #[arg(long)]
        reveal: bool,
        /// Input is raw bytes rather than hex.
        #[arg(long)]
        raw: bool,
        /// Pretty-print the JSON.
        #[arg(long)]
        pretty: bool,
        /// One line per field with the spec's name for it, instead of JSON.
        #[arg(long, conflicts_with = "pretty")]
        names: bool,
        /// Input file; `-` or nothing for standard input.
        input: Option<PathBuf>,
    },
    /// Encode a message from JSON (`{"mti":"0200","fields":{"3":"000000",...}}`) to hex or raw bytes.
    Encode {
        /// A shipped spec name or a path to a spec TOML file.
        #[arg(long)]
        spec: String,
        /// Write raw bytes rather than hex.
        #[arg(long)]
        raw: bool,
        /// Left-pad numeric fixed-length fields with zeros ("4": "1000" for 000000001000).
        #[arg(long)]
        pad: bool,
        /// Input file; `-` or nothing for standard input.
        input: Option<PathBuf>,
    },
    /// List the shipped specs.
    Specs,
    /// Send one transaction and print the answer, decoded and masked, with field names.
    Send(Box<send_cmd::SendArgs>),
    /// The audit log: verify its chain, query it, total it for reconciliation.
    Audit {
        #[command(subcommand)]
        command: Box<audit_cmd::AuditCommand>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Decode {
            spec,
            reveal,
            raw,
            pretty,
            names,
            input,
        } => codec_cmd::decode(&spec, reveal, raw, pretty, names, input.as_deref()),
        Command::Encode {
            spec,
            raw,
            pad,
            input,
        } => codec_cmd::encode(&spec, raw, pad, input.as_deref()),
        Command::Run {
            config,
            log_format,
            listen,
            admin,
        } => run::run(config, log_format, run::Overrides { listen, admin }),
        Command::CheckConfig { file } => run::check_config(&file),
        Command::Sim { command } => sim_cmd::run(*command),
        Command::Saf { command } => saf_cmd::run(command),
        Command::Keys { command } => keys_cmd::run(command),
        Command::AdminToken { name, role } => match admin_auth::new_token(&name, &role) {
            Ok((token, line)) => {
                println!("token {token}");
                println!("line  {line}");
                Ok(())
            }
            Err(e) => Err(codec_cmd::fail(codec_cmd::EX_USAGE)(e)),
        },
        Command::Health { admin, path } => saf_cmd::health(&admin, &path),
        Command::Specs => codec_cmd::specs(),
        Command::Send(args) => send_cmd::send(*args),
        Command::Audit { command } => audit_cmd::run(*command),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("switchyard: {:#}", failure.error);
            ExitCode::from(failure.exit_code)
        }
    }
}
