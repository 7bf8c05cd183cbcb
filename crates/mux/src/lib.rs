//! `switchyard-mux`: everything between a socket and a decoded
//! [`MessageView`](switchyard_iso8583::MessageView), for both sides of the switch.
//!
//! # Layout
//! - [`framing`]: the length-prefix variants real hosts use, as a tokio-util codec; frames
//!   are `Bytes` split off the read buffer, never copied.
//! - [`tls`]: rustls (ring provider, TLS 1.2/1.3) for servers and clients, optional mutual
//!   TLS, certificates reloadable without restart.
//! - [`acceptor`]: the terminal listener: connection limits, frame and idle deadlines,
//!   bounded in-flight requests per connection, answers in any order, 39 = 30 for
//!   undecodable frames.
//! - [`link`]: issuer links: persistent connections shared by many requests, match keys,
//!   STAN remapping by patching, a bounded in-flight table, deadlines and late responses,
//!   sign-on, echo, failover and reconnect with backoff.
//! - [`error`]: the one error type; errors carry positions and names, never card data.
//!
//! Writes are coalesced on both sides: frames queued at the same time leave in one write.

#![forbid(unsafe_code)]

pub mod acceptor;
pub mod error;
pub mod framing;
mod io;
pub mod link;
pub mod tls;

pub use acceptor::{
    format_error_response, Acceptor, AcceptorConfig, AcceptorStats, ConnectionInfo, Handler,
};
pub use error::{MuxError, Result, Side};
pub use framing::{Frame, FrameCodec, Framing, Header, LengthPrefix, Patch};
pub use io::IoCounters;
pub use link::{
    Backoff, BeforeSend, ConnectionState, Endpoint, Forwarded, IssuerLink, IssuerRequestHandler,
    LateResponse, LateResponseHandler, LinkConfig, LinkStats, NoHook, Selection,
};
pub use tls::{ClientTls, ClientTlsFiles, ServerTls, ServerTlsFiles};
