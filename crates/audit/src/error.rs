//! The crate's one error type. Errors name files, offsets and sequence numbers; they never
//! quote record content.

use std::path::PathBuf;

/// The error type of `switchyard-audit`.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// A file operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// A directory given as an audit log is not one.
    #[error("{dir}: {reason}")]
    NotALog {
        /// The directory (or file) given.
        dir: PathBuf,
        /// Why it is not a log.
        reason: String,
    },
    /// A segment holds something that is not a valid record where one should be.
    #[error("{segment} at byte offset {offset}: {reason}")]
    Corrupt {
        /// The segment file.
        segment: PathBuf,
        /// Byte offset in that file.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// The log stopped accepting records after a write or fsync failure. It does not retry:
    /// the switch stops approving and alerts.
    #[error("audit log failed and accepts no records: {0}")]
    Failed(String),
    /// The log was closed.
    #[error("audit log is closed")]
    Closed,
    /// The writer's queue is full (fire-and-forget records only).
    #[error("audit queue full ({0} records)")]
    QueueFull(usize),
    /// A record is larger than the configured maximum.
    #[error("record of {size} bytes exceeds the maximum of {max}")]
    TooLarge {
        /// The record's payload size.
        size: usize,
        /// The maximum.
        max: usize,
    },
    /// Another process holds the log directory.
    #[error("{0} is locked by another writer")]
    Locked(PathBuf),
    /// A key is missing or unusable.
    #[error("key {name}: {reason}")]
    Key {
        /// Which key (`chain`, `pan`).
        name: &'static str,
        /// What is wrong (never the key itself).
        reason: String,
    },
    /// A record's payload does not read as the record its kind says.
    #[error("record {seq}: payload does not parse: {reason}")]
    Payload {
        /// The record's sequence number.
        seq: u64,
        /// The parser's complaint.
        reason: String,
    },
    /// A configuration value is unusable.
    #[error("audit configuration: {0}")]
    Config(String),
}

impl AuditError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        AuditError::Io {
            path: path.into(),
            source,
        }
    }
}

/// Result alias for this crate.
pub type Result<T, E = AuditError> = std::result::Result<T, E>;
