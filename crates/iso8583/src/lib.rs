//! `switchyard-iso8583`: a zero-copy ISO 8583 codec driven by dialect specs. No I/O, no
//! async runtime: framing and sockets live in `switchyard-mux`.
//!
//! # Layout
//! - [`spec`]: the dialect model (field classes, lengths, encodings, sensitivity), loaded
//!   from TOML and validated; [`shipped`] holds the dialects in `specs/`, compiled in.
//! - [`view`]: [`MessageView`] decodes a frame held in [`bytes::Bytes`] into a table of
//!   offsets; fields are slices of the frame. Strict validation by default.
//! - [`builder`]: [`MessageBuilder`] sets fields in any order and encodes once; response
//!   helpers copy the echo fields and set field 39.
//! - [`mti`]: the message type indicator and request/response mapping.
//! - [`tlv`]: BER-TLV (field 55) on demand; composite fields via [`spec::Composite`].
//! - [`mask`]: masked output for people and JSON (PAN 6+4, no tracks, PIN blocks, CVVs).
//! - [`datetime`]: UTC calendar arithmetic for field 7 and timestamps.
//! - [`wire`]: BCD, EBCDIC, hex, character classes and length prefixes.
//! - [`error`]: the one error type; errors carry field numbers and offsets, never values.
//!
//! ```
//! use bytes::Bytes;
//! use switchyard_iso8583::{shipped, MessageBuilder, MessageView, Mti};
//!
//! let spec = shipped("iso8583-1987-ascii")?;
//! let mut request = MessageBuilder::new(spec, Mti::parse("0200").unwrap());
//! request.set(3, "000000")?.set(4, "000000001000")?.set(11, "000123")?.set(41, "TERM0001")?;
//! let frame = request.encode();
//!
//! let view = MessageView::decode(spec, frame)?;
//! assert_eq!(view.str(41), Some("TERM0001"));
//!
//! let mut response = MessageBuilder::new(spec, view.mti());
//! response.respond_to(&view, b"00")?;
//! let answer = MessageView::decode(spec, response.encode())?;
//! assert_eq!(answer.mti().as_str(), "0210");
//! assert_eq!(answer.str(39), Some("00"));
//! # Ok::<(), switchyard_iso8583::Error>(())
//! ```

#![forbid(unsafe_code)]

pub mod builder;
pub mod datetime;
pub mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod mac_input;
pub mod mask;
pub mod mti;
mod plan;
pub mod shipped;
pub mod spec;
#[doc(hidden)]
pub mod testgen;
pub mod tlv;
pub mod view;
pub mod wire;

pub use builder::MessageBuilder;
pub use error::{Error, Location, Reason, Result, Salvage};
pub use mti::Mti;
pub use shipped::shipped;
pub use spec::{Sensitivity, Spec};
pub use view::{DecodeOptions, Field, MessageView};
