//! Stage one: serde types that mirror the YAML exactly and reject unknown fields.
