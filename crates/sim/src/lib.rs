//! `switchyard-sim`: the simulators the CLI, the tests and the benchmarks use.
//!
//! - [`issuer`]: an issuer host that approves, declines, delays, stays silent or drops
//!   connections as configured, and keeps a ledger of approvals and reversals.
//! - [`terminal`]: a load generator of many terminals with unique STANs, closed or open
//!   loop, reporting throughput, latency percentiles and response codes.

#![forbid(unsafe_code)]

pub mod card_security;
pub mod issuer;
mod rng;
pub mod terminal;

pub use issuer::{IssuerSim, IssuerSimConfig, Ledger};
pub use terminal::{run, LoadReport, TerminalSimConfig, TEST_PANS};

/// The crate's one error type.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// A setting is unusable.
    #[error("simulator configuration: {0}")]
    Config(String),
}
