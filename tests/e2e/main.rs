//! End-to-end tests: the real `switchyard` binary as a process, and the codec against a
//! real peer (pyiso8583). Linked into one test binary so the workspace builds it once.

mod cli;
mod interop;
mod support;
