//! The crate's one error type.
//!
//! Like the codec's errors, these carry positions, sizes and names, never message content:
//! they can be logged as they are. Each variant says which side it came from
//! ([`Side::Downstream`]: a terminal; [`Side::Upstream`]: an issuer host; [`Side::Local`]:
//! our own configuration or state), and link errors say whether the issuer may have acted on
//! the request ([`MuxError::outcome_unknown`]), which decides between a plain decline and a
//! reversal in the router.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use crate::framing::LengthPrefix;

/// Where an error came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The terminal side (acceptor connections).
    Downstream,
    /// The issuer side (link connections).
    Upstream,
    /// Configuration, certificates or local state.
    Local,
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Side::Downstream => "downstream",
            Side::Upstream => "upstream",
            Side::Local => "local",
        })
    }
}

/// The error type of `switchyard-mux`.
#[derive(Debug, thiserror::Error)]
pub enum MuxError {
    /// A length prefix is not a number in its encoding (or counts less than itself).
    #[error("bad {prefix} length prefix at stream offset {offset}")]
    BadLengthPrefix {
        /// The prefix kind the framing expects.
        prefix: LengthPrefix,
        /// Byte offset of the prefix in the stream.
        offset: u64,
    },
    /// A frame announces more bytes than the configured maximum; nothing was allocated.
    #[error("frame of {length} bytes at stream offset {offset} exceeds the maximum of {max}")]
    FrameTooLong {
        /// Bytes the prefix announced (header and message).
        length: usize,
        /// The configured maximum.
        max: usize,
        /// Byte offset of the prefix in the stream.
        offset: u64,
    },
    /// A frame is shorter than the fixed header that must start it.
    #[error("frame of {length} bytes at stream offset {offset} is shorter than its {header}-byte header")]
    FrameTooShort {
        /// Bytes the prefix announced.
        length: usize,
        /// The header's length.
        header: usize,
        /// Byte offset of the prefix in the stream.
        offset: u64,
    },
    /// The stream ended in the middle of a frame.
    #[error(
        "stream ended inside a frame at stream offset {offset}: {available} of {needed} bytes"
    )]
    TruncatedFrame {
        /// Byte offset of the frame's prefix in the stream.
        offset: u64,
        /// Bytes the frame needs, prefix included (0 when even the prefix was incomplete).
        needed: usize,
        /// Bytes that arrived.
        available: usize,
    },
    /// An outgoing frame is larger than the prefix or the maximum allows.
    #[error("outgoing frame of {length} bytes exceeds the maximum of {max}")]
    OutgoingTooLong {
        /// Bytes of header and message.
        length: usize,
        /// The largest the framing can send.
        max: usize,
    },
    /// A socket operation failed.
    #[error("{side} i/o: {source}")]
    Io {
        /// Which side's socket.
        side: Side,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// A certificate, key or CA file could not be used.
    #[error("TLS material {path}: {reason}")]
    TlsMaterial {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// rustls refused a configuration (e.g. a key that does not match the certificate).
    #[error("TLS configuration: {0}")]
    TlsConfig(String),
    /// The link's in-flight table is full: the request was not sent.
    #[error("issuer link {link}: busy ({limit} requests in flight)")]
    LinkBusy {
        /// The link's name.
        link: Arc<str>,
        /// The configured bound.
        limit: usize,
    },
    /// The link has no ready connection: the request was not sent.
    #[error("issuer link {link}: down")]
    LinkDown {
        /// The link's name.
        link: Arc<str>,
    },
    /// The work before sending (recording the request) failed: the request was not sent.
    #[error("issuer link {link}: request not sent (recording it failed)")]
    NotSent {
        /// The link's name.
        link: Arc<str>,
    },
    /// A request with the same match key is already in flight: the request was not sent.
    #[error("issuer link {link}: a request with the same match key is in flight")]
    DuplicateInFlight {
        /// The link's name.
        link: Arc<str>,
    },
    /// The request was sent and no response came by its deadline: outcome unknown.
    #[error("issuer link {link}: no response within {timeout_ms} ms")]
    Timeout {
        /// The link's name.
        link: Arc<str>,
        /// The deadline that passed, in milliseconds.
        timeout_ms: u64,
    },
    /// The connection carrying the request closed before its response: outcome unknown.
    #[error("issuer link {link}: connection lost with the request in flight")]
    ConnectionLost {
        /// The link's name.
        link: Arc<str>,
    },
    /// The issuer answered with a message that does not decode: outcome unknown.
    #[error("issuer link {link}: malformed response: {source}")]
    MalformedResponse {
        /// The link's name.
        link: Arc<str>,
        /// Where the response failed to decode.
        #[source]
        source: switchyard_iso8583::Error,
    },
    /// The issuer's response decoded but was refused by the switch (its MAC did not verify):
    /// outcome unknown, so the request is reversed.
    #[error("issuer link {link}: response refused: {reason}")]
    ResponseRefused {
        /// The link's name.
        link: Arc<str>,
        /// Why (never a key or a MAC).
        reason: &'static str,
    },
    /// A message could not be built, decoded or patched (local data).
    #[error("{side} message: {source}")]
    Codec {
        /// Which side's message.
        side: Side,
        /// The codec's error (field and offset, never a value).
        #[source]
        source: switchyard_iso8583::Error,
    },
    /// A configuration value is unusable.
    #[error("configuration: {0}")]
    Config(String),
}

impl MuxError {
    /// Which side the error came from.
    pub fn side(&self) -> Side {
        match self {
            MuxError::BadLengthPrefix { .. }
            | MuxError::FrameTooLong { .. }
            | MuxError::FrameTooShort { .. }
            | MuxError::TruncatedFrame { .. } => Side::Downstream,
            MuxError::Io { side, .. } | MuxError::Codec { side, .. } => *side,
            MuxError::LinkBusy { .. }
            | MuxError::LinkDown { .. }
            | MuxError::Timeout { .. }
            | MuxError::ConnectionLost { .. }
            | MuxError::MalformedResponse { .. }
            | MuxError::ResponseRefused { .. } => Side::Upstream,
            MuxError::OutgoingTooLong { .. }
            | MuxError::TlsMaterial { .. }
            | MuxError::TlsConfig(_)
            | MuxError::DuplicateInFlight { .. }
            | MuxError::NotSent { .. }
            | MuxError::Config(_) => Side::Local,
        }
    }

    /// Whether the issuer may have acted on the request (it was written to a connection and
    /// no answer was read): the router must reverse it rather than treat it as declined.
    pub fn outcome_unknown(&self) -> bool {
        matches!(
            self,
            MuxError::Timeout { .. }
                | MuxError::ConnectionLost { .. }
                | MuxError::MalformedResponse { .. }
                | MuxError::ResponseRefused { .. }
        )
    }

    /// Whether the stream could not be cut into frames (the connection must close).
    pub fn is_framing(&self) -> bool {
        matches!(
            self,
            MuxError::BadLengthPrefix { .. }
                | MuxError::FrameTooLong { .. }
                | MuxError::FrameTooShort { .. }
                | MuxError::TruncatedFrame { .. }
        )
    }

    pub(crate) fn io(side: Side, source: std::io::Error) -> Self {
        MuxError::Io { side, source }
    }
}

/// Result alias for this crate.
pub type Result<T, E = MuxError> = std::result::Result<T, E>;
