//! What can go wrong when asking the platform to do something.
//!
//! Problems of a running instance (a crash, a failing probe, a command that does not
//! exist) are not errors here: the instance keeps being retried and the reason shows
//! in [`crate::InstanceStatus::problem`].

use std::io;
use std::path::PathBuf;

/// A request the platform could not carry out.
#[derive(Debug, thiserror::Error)]
pub enum PlatformError {
    /// `open` was called outside a tokio runtime; the platform needs one for its tasks.
    #[error("the local platform must be opened inside a tokio runtime")]
    NoRuntime,
    /// The run directory (or a directory inside it) could not be created or read.
    #[error("cannot prepare {}: {source}", path.display())]
    RunDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The rollout name cannot be used in file names (it is part of log paths).
    #[error("rollout name {0:?} cannot be used as a directory name")]
    BadRolloutName(String),
    /// The template's command is empty, so there is nothing to run.
    #[error("the template of {0} has an empty command")]
    EmptyCommand(String),
    /// `shutdown_all` has run; the platform starts nothing any more.
    #[error("the platform is shutting down")]
    ShuttingDown,
    /// `suspend` has run: another daemon is taking the instances over.
    #[error("the platform is handing its instances over to another daemon")]
    Suspended,
}
