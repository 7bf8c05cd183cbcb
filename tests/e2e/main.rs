//! End-to-end tests: the real `switchyard` binary as a process, and the codec against a
//! real peer (pyiso8583). Linked into one test binary so the workspace builds it once.

// Test helpers outside #[test] functions: a failed unwrap is a failed test here.
#![allow(clippy::unwrap_used)]

mod audit_cli;
mod books;
mod cli;
mod cluster;
mod deploy;
mod integrity;
mod interop;
mod loadbench;
mod security;
mod support;
mod switch;
