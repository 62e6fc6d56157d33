//! The two slots a rollout's instances live in.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// One of the two slots. The active color serves users; the other holds the candidate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Color {
    /// The first color a rollout deploys into.
    Blue,
    /// The other one.
    Green,
}

impl Color {
    /// Both colors, blue first.
    pub const ALL: [Color; 2] = [Color::Blue, Color::Green];

    /// The color that is not this one.
    pub fn other(self) -> Color {
        match self {
            Color::Blue => Color::Green,
            Color::Green => Color::Blue,
        }
    }

    /// The lowercase name used in files, logs and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Color::Blue => "blue",
            Color::Green => "green",
        }
    }
}

impl fmt::Display for Color {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The text was neither `blue` nor `green`.
#[derive(Debug, thiserror::Error)]
#[error("unknown color {0:?}: expected blue or green")]
pub struct UnknownColor(pub String);

impl FromStr for Color {
    type Err = UnknownColor;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "blue" => Ok(Color::Blue),
            "green" => Ok(Color::Green),
            other => Err(UnknownColor(other.to_owned())),
        }
    }
}
