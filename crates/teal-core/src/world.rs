//! What should run where, and the steps that get the world there.
//!
//! A rollout's status implies a [`World`]: which revision each color runs with how
//! many instances, and where the active and preview routes point. The reconciler
//! observes the world as it is, and [`converge`] lists the effects that close the gap,
//! in an order that never routes users to a color that is not there.

use serde::{Deserialize, Serialize};

use crate::Color;

/// What one color runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deployment {
    /// The revision number it is labelled with.
    pub revision: u64,
    /// Fingerprint of the template; equal hashes run the same thing.
    pub template_hash: String,
    /// How many instances.
    pub replicas: u32,
}

/// Both colors and both routes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct World {
    /// What blue runs, if anything.
    pub blue: Option<Deployment>,
    /// What green runs, if anything.
    pub green: Option<Deployment>,
    /// The color users are routed to; None until the first revision is ready.
    pub active: Option<Color>,
    /// The color testers are routed to; None sends them to the active color.
    pub preview: Option<Color>,
}

impl World {
    /// What `color` runs.
    pub fn deployment(&self, color: Color) -> Option<&Deployment> {
        match color {
            Color::Blue => self.blue.as_ref(),
            Color::Green => self.green.as_ref(),
        }
    }

    /// Sets what `color` runs.
    pub fn set_deployment(&mut self, color: Color, deployment: Option<Deployment>) {
        match color {
            Color::Blue => self.blue = deployment,
            Color::Green => self.green = deployment,
        }
    }
}

/// One step towards the desired world.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Effect {
    /// Run `deployment` in `color`, replacing whatever ran there.
    Start {
        /// The color to start in.
        color: Color,
        /// What to run.
        deployment: Deployment,
    },
    /// Change the number of instances of `color`, keeping what it runs.
    Scale {
        /// The color.
        color: Color,
        /// The new number of instances.
        replicas: u32,
    },
    /// The same template now carries a new revision number (an undo or re-apply of a
    /// template that still runs): no restart.
    Relabel {
        /// The color.
        color: Color,
        /// The revision it now carries.
        revision: u64,
    },
    /// Point the routes. The proxy only ever sends requests to ready instances.
    Route {
        /// Where users go.
        active: Option<Color>,
        /// Where testers go.
        preview: Option<Color>,
    },
    /// Stop every instance of `color`, after draining its in-flight requests.
    Stop {
        /// The color.
        color: Color,
    },
}

/// The effects that turn `observed` into `desired`: starts and scales first, then the
/// route change, then stops, so a route never points at a color that is gone and a
/// color is never stopped while it is still routed.
pub fn converge(desired: &World, observed: &World) -> Vec<Effect> {
    let mut effects = Vec::new();
    let mut stops = Vec::new();
    for color in Color::ALL {
        match (desired.deployment(color), observed.deployment(color)) {
            (Some(want), Some(have)) if want.template_hash == have.template_hash => {
                if want.revision != have.revision {
                    effects.push(Effect::Relabel {
                        color,
                        revision: want.revision,
                    });
                }
                if want.replicas != have.replicas {
                    effects.push(Effect::Scale {
                        color,
                        replicas: want.replicas,
                    });
                }
            }
            (Some(want), _) => effects.push(Effect::Start {
                color,
                deployment: want.clone(),
            }),
            (None, Some(_)) => stops.push(Effect::Stop { color }),
            (None, None) => {}
        }
    }
    if (desired.active, desired.preview) != (observed.active, observed.preview) {
        effects.push(Effect::Route {
            active: desired.active,
            preview: desired.preview,
        });
    }
    effects.extend(stops);
    effects
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(revision: u64, hash: &str, replicas: u32) -> Option<Deployment> {
        Some(Deployment {
            revision,
            template_hash: hash.to_owned(),
            replicas,
        })
    }

    fn world(
        blue: Option<Deployment>,
        green: Option<Deployment>,
        active: Option<Color>,
        preview: Option<Color>,
    ) -> World {
        World {
            blue,
            green,
            active,
            preview,
        }
    }

    #[test]
    fn converge_table() {
        use Color::*;
        let cases: Vec<(&str, World, World, Vec<Effect>)> = vec![
            (
                "nothing to do when the world matches",
                world(run(1, "a", 2), None, Some(Blue), None),
                world(run(1, "a", 2), None, Some(Blue), None),
                vec![],
            ),
            (
                "a candidate starts before the preview route points at it",
                world(run(1, "a", 2), run(2, "b", 1), Some(Blue), Some(Green)),
                world(run(1, "a", 2), None, Some(Blue), None),
                vec![
                    Effect::Start {
                        color: Green,
                        deployment: run(2, "b", 1).unwrap(),
                    },
                    Effect::Route {
                        active: Some(Blue),
                        preview: Some(Green),
                    },
                ],
            ),
            (
                "a promotion scales the candidate up without restarting it",
                world(run(1, "a", 2), run(2, "b", 2), Some(Blue), Some(Green)),
                world(run(1, "a", 2), run(2, "b", 1), Some(Blue), Some(Green)),
                vec![Effect::Scale {
                    color: Green,
                    replicas: 2,
                }],
            ),
            (
                "the old color stops only after the route left it",
                world(None, run(2, "b", 2), Some(Green), None),
                world(run(1, "a", 2), run(2, "b", 2), Some(Blue), Some(Green)),
                vec![
                    Effect::Route {
                        active: Some(Green),
                        preview: None,
                    },
                    Effect::Stop { color: Blue },
                ],
            ),
            (
                "an undo to a template that still runs relabels instead of restarting",
                world(run(3, "a", 2), run(2, "b", 2), Some(Blue), None),
                world(run(1, "a", 2), run(2, "b", 2), Some(Green), None),
                vec![
                    Effect::Relabel {
                        color: Blue,
                        revision: 3,
                    },
                    Effect::Route {
                        active: Some(Blue),
                        preview: None,
                    },
                ],
            ),
            (
                "a new template in the idle color replaces what ran there",
                world(run(3, "c", 1), run(2, "b", 2), Some(Green), Some(Blue)),
                world(run(1, "a", 2), run(2, "b", 2), Some(Green), None),
                vec![
                    Effect::Start {
                        color: Blue,
                        deployment: run(3, "c", 1).unwrap(),
                    },
                    Effect::Route {
                        active: Some(Green),
                        preview: Some(Blue),
                    },
                ],
            ),
        ];
        for (name, desired, observed, expected) in cases {
            assert_eq!(converge(&desired, &observed), expected, "{name}");
        }
    }
}
