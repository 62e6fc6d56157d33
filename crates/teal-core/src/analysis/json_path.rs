//! `jsonPath` of a `web` metric: which part of the JSON answer is the value.
//!
//! Argo writes it as Kubernetes does, in braces (`{$.data.ok}`); RFC 9535 JSONPath
//! without the braces is accepted too. The query itself is evaluated by
//! `serde_json_path`.

use serde_json::Value as Json;
use serde_json_path::JsonPath;

/// Parses a `jsonPath`, with or without Argo's braces.
pub fn parse(text: &str) -> Result<JsonPath, String> {
    let trimmed = text.trim();
    let inner = trimmed
        .strip_prefix('{')
        .and_then(|rest| rest.strip_suffix('}'))
        .unwrap_or(trimmed)
        .trim();
    JsonPath::parse(inner).map_err(|error| {
        format!("expected a JSONPath such as \"{{$.data.ok}}\", found \"{text}\": {error}")
    })
}

/// The part of `answer` that `path` selects: one node as itself, several as a list,
/// none as None (no data).
pub fn select(path: &JsonPath, answer: &Json) -> Option<Json> {
    let nodes = path.query(answer).all();
    match nodes.as_slice() {
        [] => None,
        [one] => Some((*one).clone()),
        many => Some(Json::Array(
            many.iter().map(|node| (*node).clone()).collect(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn argo_braces_and_plain_paths_select_the_same_value() {
        let answer = json!({"data": {"ok": true, "rates": [0.5, 0.99]}});
        for text in ["{$.data.ok}", "$.data.ok", " { $.data.ok } "] {
            let path = parse(text).expect(text);
            assert_eq!(select(&path, &answer), Some(json!(true)), "{text}");
        }
        let rates = parse("$.data.rates[*]").unwrap();
        assert_eq!(select(&rates, &answer), Some(json!([0.5, 0.99])));
        let first = parse("{$.data.rates[0]}").unwrap();
        assert_eq!(select(&first, &answer), Some(json!(0.5)));
    }

    #[test]
    fn a_missing_field_is_no_data_and_a_bad_path_says_what_was_expected() {
        let path = parse("$.data.missing").unwrap();
        assert_eq!(select(&path, &json!({"data": {}})), None);
        let error = parse("{data.ok}").unwrap_err();
        assert!(error.contains("expected a JSONPath"), "{error}");
        assert!(error.contains("{data.ok}"), "{error}");
    }
}
