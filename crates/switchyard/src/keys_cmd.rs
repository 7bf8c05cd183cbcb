//! `switchyard keys`: the keys of the configured security module. With the software module:
//! load a zone master key from its components into the key store. With a payShield: add the
//! token of a ZMK formed at the HSM to the key table. With either: import a working key
//! delivered under a ZMK (X9.17 or a TR-31 key block), rotate one, list what is held with
//! check values. No key is ever printed: only ids, usages, algorithms, check values (and
//! LMK tokens, which only the HSM can use). A running switch picks up changes on SIGHUP.

use std::path::PathBuf;

use anyhow::anyhow;
use clap::{Args, Subcommand};
use switchyard_hsm::module::{KeyImport, KeyInfo, KeyUsage, SecurityModule, WrappedKey};
use switchyard_hsm::software::SoftwareModule;
use switchyard_hsm::{from_hex, to_hex, Algorithm, Key};
use zeroize::Zeroizing;

use crate::codec_cmd::{fail, CmdResult, EX_CONFIG, EX_DATAERR, EX_USAGE};

#[derive(Subcommand, Debug)]
pub enum KeysCommand {
    /// Every key held: id, usage, algorithm, check value.
    List(Store),
    /// Load a zone master key from its components (files of hex digits, XORed together;
    /// at least two, each held by another custodian).
    LoadZmk {
        #[command(flatten)]
        store: Store,
        /// The ZMK's id.
        #[arg(long)]
        id: String,
        /// A component file (give it two or three times).
        #[arg(long = "component", required = true)]
        components: Vec<PathBuf>,
        /// `tdes` or `aes`.
        #[arg(long, default_value = "tdes")]
        algorithm: String,
        /// The ZMK's check value as its custodians were told it (hex).
        #[arg(long)]
        kcv: Option<String>,
    },
    /// payShield: add a key formed at the HSM (a ZMK from its custodians' components) to the
    /// key table, as its token under the LMK and its check value.
    AddToken {
        #[command(flatten)]
        store: Store,
        /// The key's id.
        #[arg(long)]
        id: String,
        /// zmk, tpk, tak, zpk, zak or bdk.
        #[arg(long)]
        usage: String,
        /// The key under the LMK (U and 32 hex digits).
        #[arg(long)]
        token: String,
        /// Its check value (6 hex digits).
        #[arg(long)]
        kcv: String,
    },
    /// Import a working key delivered under a ZMK.
    Import(ImportArgs),
    /// Replace a working key (the same as import, for an id that exists).
    Rotate(ImportArgs),
}

/// The store of a configuration's `[security]` section.
#[derive(Args, Debug)]
pub struct Store {
    /// The switch's configuration file.
    #[arg(long)]
    config: PathBuf,
}

#[derive(Args, Debug)]
pub struct ImportArgs {
    #[command(flatten)]
    store: Store,
    /// The key's id.
    #[arg(long)]
    id: String,
    /// What it is for: tpk, tak, zpk, zak, bdk.
    #[arg(long)]
    usage: String,
    /// The id of the ZMK (or KBPK) it is under.
    #[arg(long)]
    zmk: String,
    /// A TR-31 key block (version B or D).
    #[arg(long, conflicts_with = "x917")]
    tr31: Option<String>,
    /// The key encrypted under the ZMK by X9.17 (ECB), hex.
    #[arg(long)]
    x917: Option<String>,
    /// The key's algorithm (X9.17): tdes or aes.
    #[arg(long, default_value = "tdes")]
    algorithm: String,
    /// Its check value as delivered (hex); the import fails when it does not match.
    #[arg(long)]
    kcv: Option<String>,
}

/// The configured module, opened for one command.
enum Opened {
    Software(SoftwareModule),
    PayShield(switchyard_payshield::PayShield),
}

fn open(store: &Store) -> anyhow::Result<Opened> {
    let plan = crate::config::load(Some(&store.config))
        .map_err(|problems| anyhow!(problems.join("; ")))?;
    let sec = plan
        .config
        .security
        .ok_or_else(|| anyhow!("{}: no [security] section", store.config.display()))?;
    Ok(match sec.module.as_str() {
        "payshield" => Opened::PayShield(crate::card_security::open_payshield(
            &sec,
            &prometheus::Registry::new(),
        )?),
        _ => Opened::Software(crate::card_security::open_software(&sec)?),
    })
}

impl Opened {
    fn list(&self) -> Vec<KeyInfo> {
        match self {
            Opened::Software(m) => m.list(),
            Opened::PayShield(p) => p
                .table()
                .list()
                .into_iter()
                .map(|(id, t)| KeyInfo {
                    id,
                    usage: t.usage,
                    algorithm: Algorithm::Tdes,
                    kcv: from_hex(&t.kcv)
                        .ok()
                        .and_then(|k| k.try_into().ok())
                        .unwrap_or_default(),
                })
                .collect(),
        }
    }

    fn module(&self) -> &dyn SecurityModule {
        match self {
            Opened::Software(m) => m,
            Opened::PayShield(p) => p,
        }
    }
}

/// A runtime for a command's few network calls.
pub(crate) fn runtime() -> Result<tokio::runtime::Runtime, crate::codec_cmd::Failure> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| fail(crate::codec_cmd::EX_IOERR)(e.into()))
}

fn print(info: &KeyInfo) {
    println!(
        "{:<24} {:<4} {:<4} kcv {}",
        info.id,
        info.usage.name(),
        info.algorithm.name(),
        to_hex(&info.kcv)
    );
}

fn algorithm(name: &str) -> anyhow::Result<Algorithm> {
    Algorithm::from_name(name).ok_or_else(|| anyhow!("--algorithm {name:?}: tdes or aes"))
}

fn kcv(text: &Option<String>) -> anyhow::Result<Option<Vec<u8>>> {
    text.as_deref()
        .map(|t| from_hex(t).map_err(|e| anyhow!("--kcv: {e}")))
        .transpose()
}

pub fn run(command: KeysCommand) -> CmdResult {
    match command {
        KeysCommand::List(store) => {
            let opened = open(&store).map_err(fail(EX_CONFIG))?;
            for info in opened.list() {
                print(&info);
            }
            Ok(())
        }
        KeysCommand::LoadZmk {
            store,
            id,
            components,
            algorithm: name,
            kcv: expected,
        } => {
            if components.len() < 2 {
                return Err(fail(EX_USAGE)(anyhow!(
                    "a ZMK is loaded from at least two components (dual control)"
                )));
            }
            let mut key = Zeroizing::new(Vec::new());
            for path in &components {
                let text = Zeroizing::new(
                    std::fs::read_to_string(path)
                        .map_err(|e| fail(EX_DATAERR)(anyhow!("{}: {e}", path.display())))?,
                );
                let part = Zeroizing::new(
                    from_hex(text.trim())
                        .map_err(|e| fail(EX_DATAERR)(anyhow!("{}: {e}", path.display())))?,
                );
                if key.is_empty() {
                    key.extend_from_slice(&part);
                } else if part.len() != key.len() {
                    return Err(fail(EX_DATAERR)(anyhow!(
                        "{}: a component of another length",
                        path.display()
                    )));
                } else {
                    key.iter_mut().zip(part.iter()).for_each(|(k, p)| *k ^= p);
                }
            }
            let zmk = Key::new(algorithm(&name).map_err(fail(EX_USAGE))?, &key)
                .map_err(|e| fail(EX_DATAERR)(e.into()))?;
            let expected = kcv(&expected).map_err(fail(EX_USAGE))?;
            switchyard_hsm::wrap::check(&zmk, expected.as_deref())
                .map_err(|e| fail(EX_DATAERR)(e.into()))?;
            let Opened::Software(module) = open(&store).map_err(fail(EX_CONFIG))? else {
                return Err(fail(EX_USAGE)(anyhow!(
                    "with a payShield the ZMK is formed at the HSM from its components: add its token with `keys add-token`"
                )));
            };
            let info = module
                .add(&id, KeyUsage::Zmk, zmk)
                .map_err(|e| fail(EX_DATAERR)(e.into()))?;
            print(&info);
            Ok(())
        }
        KeysCommand::AddToken {
            store,
            id,
            usage,
            token,
            kcv,
        } => {
            let Opened::PayShield(hsm) = open(&store).map_err(fail(EX_CONFIG))? else {
                return Err(fail(EX_USAGE)(anyhow!(
                    "add-token is for a payShield's key table; the software module loads ZMKs with load-zmk"
                )));
            };
            let usage = KeyUsage::from_name(&usage)
                .ok_or_else(|| fail(EX_USAGE)(anyhow!("--usage {usage:?}")))?;
            let kcv = kcv.to_uppercase();
            hsm.table()
                .insert(
                    &id,
                    switchyard_payshield::tokens::Token { usage, token, kcv },
                )
                .map_err(|e| fail(EX_DATAERR)(e.into()))?;
            let info = runtime()?
                .block_on(hsm.key_info(&id))
                .map_err(|e| fail(EX_DATAERR)(e.into()))?;
            print(&info);
            Ok(())
        }
        KeysCommand::Import(args) => import(args, false),
        KeysCommand::Rotate(args) => import(args, true),
    }
}

fn import(args: ImportArgs, rotate: bool) -> CmdResult {
    let opened = open(&args.store).map_err(fail(EX_CONFIG))?;
    let usage = KeyUsage::from_name(&args.usage)
        .filter(|u| *u != KeyUsage::Zmk)
        .ok_or_else(|| {
            fail(EX_USAGE)(anyhow!(
                "--usage {:?}: tpk, tak, zpk, zak or bdk",
                args.usage
            ))
        })?;
    let before = opened.list().into_iter().find(|k| k.id == args.id);
    if rotate && before.is_none() {
        return Err(fail(EX_USAGE)(anyhow!(
            "no key {:?} to rotate (import it first)",
            args.id
        )));
    }
    let x917 = args
        .x917
        .as_deref()
        .map(from_hex)
        .transpose()
        .map_err(|e| fail(EX_USAGE)(anyhow!("--x917: {e}")))?;
    let wrapped = match (&args.tr31, &x917) {
        (Some(block), None) => WrappedKey::Tr31(block),
        (None, Some(key)) => WrappedKey::X917 {
            key,
            algorithm: algorithm(&args.algorithm).map_err(fail(EX_USAGE))?,
        },
        _ => return Err(fail(EX_USAGE)(anyhow!("give --tr31 BLOCK or --x917 HEX"))),
    };
    let expected = kcv(&args.kcv).map_err(fail(EX_USAGE))?;
    let import = KeyImport {
        id: &args.id,
        usage,
        zmk: &args.zmk,
        wrapped,
        kcv: expected.as_deref(),
    };
    let info = runtime()?
        .block_on(opened.module().import_key(import))
        .map_err(|e| fail(EX_DATAERR)(e.into()))?;
    if let Some(before) = before {
        println!("replaced kcv {}", to_hex(&before.kcv));
    }
    print(&info);
    Ok(())
}
