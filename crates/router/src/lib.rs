//! `switchyard-router`: the routing core. Decides where each request goes and what each
//! terminal is told, and writes the audit pair; it is driven through the [`IssuerPort`]
//! trait, so it can be tested without sockets.
//!
//! # Layout
//! - [`routes`]: the route table (BIN prefixes and ranges, MTI, processing code).
//! - [`flow`]: [`Router`]: the transaction flow and the response-code policy;
//!   [`TerminalHandler`] plugs it into the mux's acceptor.
//! - [`metrics`]: Prometheus metrics with bounded labels.
//! - [`error`]: the one error type.

#![forbid(unsafe_code)]

pub mod error;
pub mod flow;
pub mod metrics;
pub mod routes;

pub use error::RouterError;
pub use flow::{now_us, translate, IssuerPort, Router, TerminalHandler};
pub use metrics::RouterMetrics;
pub use routes::{BinRange, Route, RouteRule, RouteTable};
