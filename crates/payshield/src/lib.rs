//! `switchyard-payshield`: a client for the Thales payShield 9000/10K host command
//! interface as a [`SecurityModule`](switchyard_hsm::module::SecurityModule), and a
//! simulator of that interface (`switchyard sim hsm`) doing the work with this workspace's
//! software cryptography, so that the client is tested end to end here.
//!
//! # Wire
//! Each message: a 2-byte big-endian length, then the message header (a fixed number of
//! characters, configurable; the client sends a counter and checks it comes back), then the
//! command code (2 characters) and its fields; a response has the response code (the
//! command's second letter advanced: `CA` -> `CB`), a 2-digit error code (`00` is success),
//! then its fields.
//!
//! # Commands used (fields as this client sends them)
//! | command | what | fields |
//! |---|---|---|
//! | `NC` -> `ND` | diagnostics | - ; answers the LMK check value (16H) and a version |
//! | `CA` -> `CB` | PIN from a TPK to a ZPK | TPK, ZPK, max PIN length `12`, PIN block (16H), source format, destination format, account (12N) |
//! | `CC` -> `CD` | PIN from a ZPK to another | source ZPK, destination ZPK, then as `CA` |
//! | `CI` -> `CJ` | PIN from DUKPT to a ZPK | BDK, ZPK, KSN descriptor (3H), KSN (20H), PIN block, destination format, account |
//! | `M6` -> `M7` | generate a MAC | mode `0`, input `1` (hex), size `1` (8 bytes), algorithm (`1` ISO 9797-1 alg. 1, `3` alg. 3), padding `1`, key type (3H), key, length (4H), message (hex) |
//! | `M8` -> `M9` | verify a MAC | as `M6`, then the MAC (16H); error `01` when it does not verify |
//! | `BU` -> `BV` | key check value | key type (3H), length flag `1`, key; answers 16H |
//! | `A6` -> `A7` | import a key under a ZMK | key type (3H), ZMK, LMK scheme `U`, then `X` + the key under the ZMK (X9.17, 32H) or `R` + a TR-31 block; answers the key under the LMK and its check value (6H) |
//!
//! Keys travel as LMK tokens (`U` + 32 hex digits: double-length TDES under the HSM's local
//! master key); the switch keeps a table of key id -> token ([`tokens`]), never a clear key.
//! PIN block format codes: `01` ISO 0, `05` ISO 1, `47` ISO 3. Key type codes: `000` ZMK,
//! `001` ZPK, `002` TPK, `003` TAK, `008` ZAK, `009` BDK.
//!
//! The simulator's LMK variant scheme is its own (not Thales'), and neither side has been
//! run against a real payShield here: field layouts follow the host command reference as
//! far as these commands go, and a deployment checks them against its HSM's firmware.
//! AES keys (format 4 PIN blocks, AES DUKPT, AES-CMAC) and DUKPT MACs are not carried by
//! this client: it says so in its error, and the software module does them.

#![forbid(unsafe_code)]

pub mod client;
pub mod simulator;
pub mod tokens;
pub mod wire;

pub use client::{PayShield, PayShieldConfig};
pub use simulator::HsmSimulator;
pub use tokens::TokenTable;

/// The crate's one error type.
#[derive(Debug, thiserror::Error)]
pub enum PayShieldError {
    /// A message that does not parse, with where.
    #[error("payShield message: {0}")]
    Wire(String),
    /// The key table could not be read or written.
    #[error("key table: {0}")]
    Table(String),
    /// Connection, timeout or I/O.
    #[error("payShield {0}")]
    Io(String),
}

/// The payShield key type code of a key usage.
pub fn key_type(usage: switchyard_hsm::module::KeyUsage) -> &'static str {
    use switchyard_hsm::module::KeyUsage;
    match usage {
        KeyUsage::Zmk => "000",
        KeyUsage::Zpk => "001",
        KeyUsage::Tpk => "002",
        KeyUsage::Tak => "003",
        KeyUsage::Zak => "008",
        KeyUsage::Bdk => "009",
    }
}

/// The payShield code of a PIN block format (`None`: not carried by this client).
pub fn format_code(format: switchyard_hsm::pin::Format) -> Option<&'static str> {
    use switchyard_hsm::pin::Format;
    match format {
        Format::Iso0 => Some("01"),
        Format::Iso1 => Some("05"),
        Format::Iso3 => Some("47"),
        Format::Iso4 => None,
    }
}

/// The format of a payShield PIN block format code.
pub fn format_of(code: &str) -> Option<switchyard_hsm::pin::Format> {
    use switchyard_hsm::pin::Format;
    match code {
        "01" => Some(Format::Iso0),
        "05" => Some(Format::Iso1),
        "47" => Some(Format::Iso3),
        _ => None,
    }
}

/// The clear text of a payShield error code.
pub fn error_text(code: &str) -> &'static str {
    match code {
        "01" => "verification failure",
        "10" => "source key parity error",
        "11" => "destination key parity error",
        "12" => "contents of user storage not available",
        "13" => "master key parity error",
        "15" => "invalid input data",
        "20" => "PIN block does not contain valid values",
        "23" => "invalid PIN block format code",
        "24" => "PIN is fewer than 4 or more than 12 digits long",
        "27" => "key check value mismatch",
        "68" => "command disabled",
        _ => "error",
    }
}
