//! Routing: path normalisation, then the most specific route for host, path and method.

pub(crate) mod path;
mod router;

pub use router::*;
