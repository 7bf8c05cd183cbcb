//! The crate's one error type.

/// The error type of `switchyard-router`.
#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    /// The route table is invalid; one line per problem.
    #[error("routes: {}", .0.join("; "))]
    Routes(Vec<String>),
    /// A route names a link that does not exist.
    #[error("route table names unknown issuer link(s): {}", .0.join(", "))]
    UnknownLinks(Vec<String>),
    /// The registry file is invalid; one line per problem.
    #[error("registry: {}", .0.join("; "))]
    Registry(Vec<String>),
    /// Metrics could not be registered.
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}
