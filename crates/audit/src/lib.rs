//! `switchyard-audit`: the bank's record of every transaction the switch touches.
//!
//! Append-only segment files, group-committed (one write and one `fdatasync` for many
//! records), each record CRC-checked and chained to the one before by HMAC-SHA256 under a
//! chain key, so that any edit, deletion or reordering is found by [`verify`]. Messages are
//! stored in protected form: PAN as 6 + 4 plus a keyed hash, tracks, PIN blocks and CVVs
//! never, EMV data only through an allow-list.
//!
//! # Layout
//! - [`format`]: segment header and record layout, CRC and chain.
//! - [`log`]: [`AuditLog`]: recovery on open, the group-commit writer, the failed state.
//! - [`reader`]: reading every record, checked ([`read_checked`], [`verify`]) or not.
//! - [`record`]: [`PairRecord`] and the protected form of a message.
//! - [`payload`]: how records are written into payloads (MessagePack; JSON in older logs).
//! - [`query`]: filters and reconciliation totals.
//! - [`keys`]: the chain and PAN keys.

#![forbid(unsafe_code)]

pub mod error;
pub mod format;
pub mod keys;
pub mod log;
pub mod payload;
pub mod query;
pub mod reader;
pub mod record;
pub mod tail;
mod waiter;

pub use error::{AuditError, Result};
pub use format::RecordKind;
pub use keys::{AuditKeys, ChainKey, KeySource, PanHash, PanKey, DEMO_WARNING};
pub use log::{AuditConfig, AuditLog, AuditStats, BatchObserver, Recovery};
pub use query::{query, report, Filter, QueryReport, Report, ReportRow, Reporter, Totals};
pub use reader::{
    for_each, for_each_recent, read_checked, verify, OnDamage, RecordRef, Skipped, VerifyReport,
};
pub use record::{
    additional_amount, protect, FieldTexts, Outcome, PairRecord, PartialAmount, ProtectedMessage,
    ProtectedPan, ShortText,
};
pub use tail::{read_frame, split_frames, ChainCheck, Tail};
