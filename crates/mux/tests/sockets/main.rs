//! Tests of the multiplexer over real sockets on 127.0.0.1: terminals, the acceptor, TLS,
//! issuer links against fake issuer hosts. Every wait is bounded by a timeout.

// Test helpers outside #[test] functions: a failed unwrap is a failed test here.
#![allow(clippy::unwrap_used)]

mod acceptor;
mod link;
mod support;
mod tls;
