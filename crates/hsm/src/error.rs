//! The security module's one error type. No variant carries a key, a PIN or a PIN block.

/// What went wrong.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HsmError {
    /// A key of the wrong length for its algorithm.
    #[error("{algorithm} key of {len} bytes (expected {expected})")]
    KeyLength {
        /// The algorithm.
        algorithm: &'static str,
        /// The length given.
        len: usize,
        /// The lengths it takes.
        expected: &'static str,
    },
    /// Not hexadecimal, at this offset.
    #[error("not hexadecimal at offset {at}")]
    Hex {
        /// Offset of the bad digit (or the length, when odd).
        at: usize,
    },
    /// A PIN that is not 4 to 12 decimal digits.
    #[error("PIN of {len} characters: 4 to 12 decimal digits")]
    Pin {
        /// Its length.
        len: usize,
    },
    /// A PAN the PIN block format cannot use (it needs 13 to 19 digits).
    #[error("PAN of {len} characters: 13 to 19 decimal digits")]
    Pan {
        /// Its length.
        len: usize,
    },
    /// A decrypted PIN block that is not a valid block of its format.
    #[error("PIN block is not a valid format {format} block: {reason}")]
    PinBlock {
        /// The ISO 9564-1 format expected.
        format: u8,
        /// What is wrong (never the block's digits).
        reason: &'static str,
    },
    /// A key of one algorithm where another is needed (a TDES key for PIN block format 4).
    #[error("the {role} must be a {needs} key")]
    WrongAlgorithm {
        /// What the key was for.
        role: &'static str,
        /// The algorithm it needs.
        needs: &'static str,
    },
    /// A key block or wrapped key that fails its check (MAC, length, header), or a check
    /// value that does not match. Never the key.
    #[error("key block: {0}")]
    KeyBlock(String),
    /// No key of this id in the module.
    #[error("no key {0:?} in the security module")]
    UnknownKey(String),
    /// A key used for what its usage does not allow (key separation).
    #[error("key {id:?} is a {usage} key; this operation needs a {needs} key")]
    Usage {
        /// The key's id.
        id: String,
        /// Its usage.
        usage: &'static str,
        /// What the operation takes.
        needs: &'static str,
    },
    /// The key store or master key could not be read or written (path, line and why; never
    /// a key).
    #[error("key store: {0}")]
    Store(String),
    /// A hardware module's client failed: connection, timeout or an error code.
    #[error("security module: {0}")]
    Module(String),
    /// A key serial number of the wrong length or with an exhausted counter.
    #[error("key serial number: {0}")]
    Ksn(&'static str),
}

/// Results of this crate.
pub type Result<T> = std::result::Result<T, HsmError>;
