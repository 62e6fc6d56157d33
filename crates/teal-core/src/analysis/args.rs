//! `{{args.NAME}}` in provider fields, as in Argo Rollouts.
//!
//! A template declares `spec.args` (a name and an optional default). When a run
//! starts, values supplied by teal ([`TealArgs`]: the rollout, revision, color and
//! preview address) and by whoever starts the run override the defaults, and every
//! `{{args.NAME}}` in a provider field is replaced ([`ArgValues::substitute`]). Like
//! Argo's, a tag may have spaces inside the braces (`{{ args.NAME }}`), and a tag that
//! is not a known arg is an error rather than left in place.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::template::Arg;
use crate::Color;
use crate::rollout::Revision;

/// The args teal supplies to every run, usable without declaring them.
pub const STANDARD_ARGS: [&str; 4] = ["rollout", "revision", "color", "preview-address"];

/// The values teal supplies when it starts a run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TealArgs {
    /// `rollout`: the rollout's name.
    pub rollout: String,
    /// `revision`: the revision under analysis.
    pub revision: Revision,
    /// `color`: the color it runs in.
    pub color: Color,
    /// `preview-address`: where testers reach it (`host:port`), when the rollout has a
    /// `previewService`.
    pub preview_address: Option<String>,
}

impl TealArgs {
    /// The values as (name, value) pairs, named as in [`STANDARD_ARGS`].
    pub fn pairs(&self) -> Vec<(String, String)> {
        let mut pairs = vec![
            ("rollout".to_owned(), self.rollout.clone()),
            ("revision".to_owned(), self.revision.to_string()),
            ("color".to_owned(), self.color.to_string()),
        ];
        if let Some(address) = &self.preview_address {
            pairs.push(("preview-address".to_owned(), address.clone()));
        }
        pairs
    }
}

/// Why args could not be resolved or substituted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ArgsError {
    /// A declared arg without a default was given no value.
    #[error("args.{name} has no value: give it a default in the template's spec.args")]
    Unresolved {
        /// The arg.
        name: String,
    },
    /// `{{args.NAME}}` names an arg that has no value.
    #[error("{{{{args.{name}}}}} names no known arg{hint}")]
    Unknown {
        /// The name inside the tag.
        name: String,
        /// Extra help, such as why a standard arg is missing.
        hint: String,
    },
    /// `{{...}}` that is not `{{args.NAME}}`, or a `{{` without `}}`.
    #[error("{message}")]
    Malformed {
        /// What is wrong.
        message: String,
    },
}

/// The value of every arg of a run.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArgValues(pub BTreeMap<String, String>);

impl ArgValues {
    /// Each declared arg takes its supplied value, else its default; an arg with
    /// neither is an error. Supplied values the template does not declare are kept too
    /// (teal's [`STANDARD_ARGS`] need no declaration).
    pub fn resolve(declared: &[Arg], supplied: &[(String, String)]) -> Result<Self, ArgsError> {
        let mut values: BTreeMap<String, String> = supplied.iter().cloned().collect();
        for arg in declared {
            if values.contains_key(&arg.name) {
                continue;
            }
            match &arg.value {
                Some(value) => {
                    values.insert(arg.name.clone(), value.clone());
                }
                None => {
                    return Err(ArgsError::Unresolved {
                        name: arg.name.clone(),
                    });
                }
            }
        }
        Ok(ArgValues(values))
    }

    /// The value of `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    /// `text` with every `{{args.NAME}}` replaced by its value.
    pub fn substitute(&self, text: &str) -> Result<String, ArgsError> {
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(open) = rest.find("{{") {
            out.push_str(&rest[..open]);
            let name = tag_name(&rest[open..])?;
            let Some(value) = self.get(name.name) else {
                let hint = if name.name == "preview-address" {
                    ": the rollout has no previewService".to_owned()
                } else {
                    String::new()
                };
                return Err(ArgsError::Unknown {
                    name: name.name.to_owned(),
                    hint,
                });
            };
            out.push_str(value);
            rest = &rest[open + name.length..];
        }
        out.push_str(rest);
        Ok(out)
    }
}

/// A parsed `{{args.NAME}}` tag.
struct Tag<'a> {
    name: &'a str,
    /// Bytes from `{{` through `}}`.
    length: usize,
}

/// Reads the tag at the start of `text` (which starts with `{{`).
fn tag_name(text: &str) -> Result<Tag<'_>, ArgsError> {
    let Some(close) = text.find("}}") else {
        return Err(ArgsError::Malformed {
            message: "\"{{\" without a closing \"}}\"".to_owned(),
        });
    };
    let inside = text[2..close].trim();
    match inside.strip_prefix("args.") {
        Some(name) if !name.is_empty() => Ok(Tag {
            name,
            length: close + 2,
        }),
        _ => Err(ArgsError::Malformed {
            message: format!(
                "\"{{{{{}}}}}\" is not an arg: write {{{{args.NAME}}}}",
                &text[2..close]
            ),
        }),
    }
}

/// The names of the args `text` uses, in order, or the first malformed tag: to check a
/// template when it is applied.
pub fn references(text: &str) -> Result<Vec<String>, ArgsError> {
    let mut names = Vec::new();
    let mut rest = text;
    while let Some(open) = rest.find("{{") {
        let tag = tag_name(&rest[open..])?;
        names.push(tag.name.to_owned());
        rest = &rest[open + tag.length..];
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arg(name: &str, value: Option<&str>) -> Arg {
        Arg {
            name: name.to_owned(),
            value: value.map(str::to_owned),
        }
    }

    fn teal() -> Vec<(String, String)> {
        TealArgs {
            rollout: "shop".to_owned(),
            revision: 7,
            color: Color::Green,
            preview_address: Some("127.0.0.1:8081".to_owned()),
        }
        .pairs()
    }

    #[test]
    fn substitution_replaces_every_tag() {
        let declared = vec![arg("job", Some("shop-api")), arg("quantile", Some("0.99"))];
        let values = ArgValues::resolve(&declared, &teal()).expect("resolves");
        let cases: Vec<(&str, Result<&str, &str>)> = vec![
            ("no tags", Ok("no tags")),
            ("{{args.rollout}}", Ok("shop")),
            (
                "http://{{args.preview-address}}/health?rev={{ args.revision }}",
                Ok("http://127.0.0.1:8081/health?rev=7"),
            ),
            ("{{args.color}}-{{args.job}}", Ok("green-shop-api")),
            (
                "histogram_quantile({{args.quantile}}, x{job=\"{{args.job}}\"})",
                Ok("histogram_quantile(0.99, x{job=\"shop-api\"})"),
            ),
            ("{ single braces } stay", Ok("{ single braces } stay")),
            ("{{args.nope}}", Err("{{args.nope}} names no known arg")),
            (
                "{{rollout}}",
                Err("\"{{rollout}}\" is not an arg: write {{args.NAME}}"),
            ),
            ("{{args.}}", Err("is not an arg")),
            ("a {{args.job", Err("\"{{\" without a closing \"}}\"")),
        ];
        for (text, expected) in cases {
            let found = values.substitute(text).map_err(|e| e.to_string());
            match (found, expected) {
                (Ok(found), Ok(expected)) => assert_eq!(found, expected, "{text}"),
                (Err(found), Err(expected)) => {
                    assert!(found.contains(expected), "{text}: {found}")
                }
                (found, expected) => panic!("{text}: {found:?}, expected {expected:?}"),
            }
        }
    }

    #[test]
    fn supplied_values_override_defaults_and_missing_ones_are_errors() {
        /// (declared, supplied) → resolved values or the error.
        type Case<'a> = (
            Vec<Arg>,
            Vec<(&'a str, &'a str)>,
            Result<Vec<(&'a str, &'a str)>, ArgsError>,
        );
        let cases: Vec<Case> = vec![
            (vec![], vec![], Ok(vec![])),
            (
                vec![arg("threshold", Some("0.99"))],
                vec![],
                Ok(vec![("threshold", "0.99")]),
            ),
            (
                vec![arg("threshold", Some("0.99"))],
                vec![("threshold", "0.9")],
                Ok(vec![("threshold", "0.9")]),
            ),
            (
                vec![arg("color", None)],
                vec![("color", "blue")],
                Ok(vec![("color", "blue")]),
            ),
            (
                vec![arg("service", None)],
                vec![],
                Err(ArgsError::Unresolved {
                    name: "service".to_owned(),
                }),
            ),
        ];
        for (declared, supplied, expected) in cases {
            let supplied: Vec<(String, String)> = supplied
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect();
            let expected = expected.map(|pairs| {
                ArgValues(
                    pairs
                        .iter()
                        .map(|(n, v)| (n.to_string(), v.to_string()))
                        .collect(),
                )
            });
            assert_eq!(
                ArgValues::resolve(&declared, &supplied),
                expected,
                "{declared:?}"
            );
        }
    }

    #[test]
    fn a_missing_preview_address_says_why() {
        let mut teal = TealArgs {
            rollout: "shop".to_owned(),
            revision: 2,
            color: Color::Blue,
            preview_address: None,
        };
        let values = ArgValues::resolve(&[], &teal.pairs()).expect("resolves");
        let error = values
            .substitute("http://{{args.preview-address}}/")
            .expect_err("no preview address");
        assert_eq!(
            error.to_string(),
            "{{args.preview-address}} names no known arg: the rollout has no previewService"
        );
        teal.preview_address = Some("127.0.0.1:9".to_owned());
        let values = ArgValues::resolve(&[], &teal.pairs()).expect("resolves");
        assert_eq!(
            values.substitute("http://{{args.preview-address}}/"),
            Ok("http://127.0.0.1:9/".to_owned())
        );
    }

    #[test]
    fn references_list_the_names_used() {
        assert_eq!(
            references("{{args.a}} and {{ args.b }} and {{args.a}}"),
            Ok(vec!["a".to_owned(), "b".to_owned(), "a".to_owned()])
        );
        assert_eq!(references("none"), Ok(vec![]));
        assert!(references("{{x}}").is_err());
    }
}
