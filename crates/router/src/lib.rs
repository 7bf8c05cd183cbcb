//! `switchyard-router`: the routing core. Decides where each request goes and what each
//! terminal is told, and writes the audit pair; it is driven through the [`IssuerPort`]
//! trait, so it can be tested without sockets.
//!
//! # Layout
//! - [`flow`]: [`Router`]: takes each request, makes its transaction and runs the stages
//!   over it; [`TerminalHandler`] plugs it into the mux's acceptor.
//! - `transaction`: the transaction context, one request's way through the switch: the
//!   request and its connection's facts, the route and link, the outbound message, the
//!   issuer's answer, the pair record being filled, the answer and outcome.
//! - `stages`: the flow as stages, one job and one file each, and their order in one list
//!   (`stages::run`): admission, duplicates, registry, rules, routing, translation,
//!   forwarding, reversals, stand-in, the issuer's answer; then recording the pair and
//!   replying.
//! - [`routes`]: the route table (BIN prefixes and ranges, MTI, processing code).
//! - [`integrity`]: in-flight records, crash recovery, duplicate detection, undelivered
//!   approvals; [`saf`]: reversals and the store-and-forward queue.
//! - [`registry`]: merchants, terminals and the abnormal-activity rules.
//! - [`metrics`]: Prometheus metrics with bounded labels.
//! - [`error`]: the one error type.

#![forbid(unsafe_code)]
// Each function does one thing; clippy.toml sets the limit (80 lines).
#![warn(clippy::too_many_lines)]

// The stage tests share a file with the integration tests, which name the crate.
#[cfg(test)]
extern crate self as switchyard_router;

pub mod batch;
pub mod business_day;
pub mod error;
pub mod flow;
pub mod integrity;
pub mod key_exchange;
pub mod metrics;
pub mod registry;
pub mod routes;
pub mod saf;
pub mod security;
pub mod shared;
mod stages;
mod transaction;

pub use error::RouterError;
pub use flow::{now_us, translate, IssuerPort, Router, TerminalHandler};
pub use integrity::{recover, Integrity};
pub use metrics::RouterMetrics;
pub use registry::{Refusal, Registry, RuleState};
pub use routes::{BinRange, Route, RouteRule, RouteTable, StandIn};
pub use saf::{ReversalBasis, SafConfig, SafEntry, SafEvent, SafQueue};
pub use security::{LinkSecurity, Security};
