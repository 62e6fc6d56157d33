//! End-to-end tests: the real `teal` binary as a daemon on port 0, real demo-app
//! processes, real sockets, a real SQLite file.

mod support;

mod analysis;
mod cli;
mod cycle;
mod drain;
mod handoff;
#[cfg(feature = "kubernetes")]
mod kubernetes;
mod observe;
mod recovery;
mod specs;
mod tls;
mod zero_downtime;
