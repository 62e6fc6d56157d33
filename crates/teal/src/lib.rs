//! teal: the daemon, the CLI and the demo.

pub mod cli;
pub mod client;
pub mod daemon;
pub mod dashboard;
pub mod demo;
pub mod demo_app;
pub mod handoff;
pub mod http_client;
pub mod kube_cli;
pub mod metrics;
pub mod providers;
pub mod render;
pub mod server;
pub mod store;
