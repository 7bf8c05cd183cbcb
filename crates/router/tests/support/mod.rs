//! What the router's integration tests share.

#![allow(dead_code)] // Each test binary uses a part of it.

pub mod common;
