//! teal's pure core.
//!
//! Everything here is deterministic and free of I/O: time is an argument, and the
//! compiler keeps tokio, sockets and files out (the crate does not depend on them).
//! The daemon asks this crate what to do; it never decides by itself.

#![warn(missing_docs)]

pub mod analysis;
pub mod api;
pub mod color;
pub mod metrics;
pub mod rollout;
pub mod spec;
pub mod world;

pub use color::Color;
