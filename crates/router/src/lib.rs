//! `switchyard-router`: the routing core. Decides where each request goes and what each
//! terminal is told, and writes the audit pair; it is driven through the [`IssuerPort`]
//! trait, so it can be tested without sockets.
//!
//! # Layout
//! - [`routes`]: the route table (BIN prefixes and ranges, MTI, processing code).
//! - [`flow`]: [`Router`]: the transaction flow and the response-code policy;
//!   [`TerminalHandler`] plugs it into the mux's acceptor.
//! - [`integrity`]: in-flight records, crash recovery, duplicate detection, undelivered
//!   approvals; [`saf`]: reversals and the store-and-forward queue.
//! - [`registry`]: merchants, terminals and the abnormal-activity rules.
//! - [`metrics`]: Prometheus metrics with bounded labels.
//! - [`error`]: the one error type.

#![forbid(unsafe_code)]

pub mod error;
pub mod flow;
pub mod integrity;
pub mod metrics;
pub mod registry;
pub mod routes;
pub mod saf;

pub use error::RouterError;
pub use flow::{now_us, translate, IssuerPort, Router, TerminalHandler};
pub use integrity::{recover, Integrity};
pub use metrics::RouterMetrics;
pub use registry::{Refusal, Registry, RuleState};
pub use routes::{BinRange, Route, RouteRule, RouteTable, StandIn};
pub use saf::{ReversalBasis, SafConfig, SafEntry, SafEvent, SafQueue};
