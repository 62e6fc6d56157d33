//! Stage one: serde types that mirror the YAML exactly and reject unknown fields.
//!
//! These types only describe the *shape* of a document. Every value stage two checks is
//! wrapped in [`Spanned`] so its errors can point at the value's line and column.
//! Numbers are read as `i64` even where only positive values make sense: a negative
//! number then reaches stage two, which says which range was expected, instead of
//! failing here with a bare "invalid u32".
//!
//! This module also splits a file into documents and runs serde on one document,
//! turning serde-saphyr's errors into located, path-carrying [`Stage1Error`]s.

use serde::Deserialize;
use serde::de::{DeserializeOwned, IgnoredAny};
use serde_saphyr::{Error as YamlError, Location, MessageFormatter, Options, Spanned};

/// Only `apiVersion` and `kind`, read leniently (other fields are skipped) to decide
/// which full type the document is parsed into. Both are optional here so that a
/// missing one is reported at the start of the document (read as `Spanned<RawHeader>`)
/// rather than wherever serde stopped reading.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct RawHeader {
    pub api_version: Option<Spanned<String>>,
    pub kind: Option<Spanned<String>>,
}

/// `kind: Rollout`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawRollout {
    /// Checked (and reported if missing) through [`RawHeader`]; listed so
    /// `deny_unknown_fields` accepts it.
    #[allow(dead_code)]
    pub api_version: Option<IgnoredAny>,
    /// Checked through [`RawHeader`].
    #[allow(dead_code)]
    pub kind: Option<IgnoredAny>,
    pub metadata: RawMetadata,
    pub spec: RawRolloutSpec,
}

/// `kind: AnalysisTemplate`. Its `spec` is free-form until the analysis engine types
/// it; reading it as a JSON object already rejects a spec that is not a mapping.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawAnalysisTemplate {
    /// Checked through [`RawHeader`].
    #[allow(dead_code)]
    pub api_version: Option<IgnoredAny>,
    /// Checked through [`RawHeader`].
    #[allow(dead_code)]
    pub kind: Option<IgnoredAny>,
    pub metadata: RawMetadata,
    pub spec: serde_json::Map<String, serde_json::Value>,
}

/// `kind: AnalysisTemplate`, typed. Read besides [`RawAnalysisTemplate`], which keeps
/// the `spec` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawTypedAnalysisTemplate {
    /// Checked through [`RawHeader`].
    #[allow(dead_code)]
    pub api_version: Option<IgnoredAny>,
    /// Checked through [`RawHeader`].
    #[allow(dead_code)]
    pub kind: Option<IgnoredAny>,
    /// Checked through [`RawAnalysisTemplate`].
    #[allow(dead_code)]
    pub metadata: RawMetadata,
    pub spec: Spanned<RawAnalysisTemplateSpec>,
}

/// An AnalysisTemplate's `spec`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAnalysisTemplateSpec {
    pub args: Option<Vec<RawArg>>,
    /// Optional here so stage two reports a missing one with the other problems.
    pub metrics: Option<Spanned<Vec<RawMetric>>>,
}

/// One `spec.args` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawArg {
    pub name: Spanned<String>,
    pub value: Option<Spanned<String>>,
}

/// One `spec.metrics` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawMetric {
    pub name: Spanned<String>,
    pub interval: Option<Spanned<String>>,
    pub initial_delay: Option<Spanned<String>>,
    pub count: Option<Spanned<i64>>,
    pub success_condition: Option<Spanned<String>>,
    pub failure_condition: Option<Spanned<String>>,
    pub failure_limit: Option<Spanned<i64>>,
    pub inconclusive_limit: Option<Spanned<i64>>,
    pub consecutive_error_limit: Option<Spanned<i64>>,
    /// Optional here so stage two reports a missing one with the other problems.
    pub provider: Option<Spanned<RawProvider>>,
}

/// A metric's `provider`: exactly one field must be set (checked in stage two).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawProvider {
    pub builtin: Option<Spanned<RawBuiltin>>,
    pub prometheus: Option<Spanned<RawPrometheus>>,
    pub web: Option<Spanned<RawWeb>>,
    pub job: Option<Spanned<RawJob>>,
}

/// `provider.builtin`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBuiltin {
    pub measure: Spanned<String>,
    pub color: Option<Spanned<String>>,
}

/// `provider.prometheus`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPrometheus {
    pub address: Spanned<String>,
    pub query: Spanned<String>,
    pub timeout: Option<Spanned<i64>>,
    pub headers: Option<Vec<RawHttpHeader>>,
}

/// `provider.web`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawWeb {
    pub url: Spanned<String>,
    pub method: Option<Spanned<String>>,
    pub headers: Option<Vec<RawHttpHeader>>,
    pub body: Option<Spanned<String>>,
    pub timeout_seconds: Option<Spanned<i64>>,
    pub json_path: Option<Spanned<String>>,
}

/// `provider.job`: a local command (`command`), or Argo's Kubernetes Job
/// (`metadata`, `spec`), which only teal controller runs.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawJob {
    /// Spanned as a whole so an empty list can be pointed at.
    pub command: Option<Spanned<Vec<Spanned<String>>>>,
    pub timeout_seconds: Option<Spanned<i64>>,
    /// Argo's Job: labels and annotations for it.
    pub metadata: Option<serde_json::Value>,
    /// Argo's Job: its `spec` (a `batch/v1` JobSpec).
    pub spec: Option<Spanned<serde_json::Value>>,
}

/// `headers[]` of `prometheus` and `web`: `{key, value}` as in Argo.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHttpHeader {
    pub key: Spanned<String>,
    pub value: Spanned<String>,
}

/// `metadata`. Labels and annotations are accepted so Kubernetes-style manifests
/// load, but teal has no use for them.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMetadata {
    pub name: Spanned<String>,
    #[allow(dead_code)]
    pub labels: Option<IgnoredAny>,
    #[allow(dead_code)]
    pub annotations: Option<IgnoredAny>,
}

/// A Rollout's `spec`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawRolloutSpec {
    pub replicas: Option<Spanned<i64>>,
    pub progress_deadline_seconds: Option<Spanned<i64>>,
    pub template: RawTemplate,
    pub strategy: RawStrategy,
}

/// `spec.template`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawTemplate {
    pub process: RawProcess,
    pub readiness_probe: Option<Spanned<RawProbe>>,
    pub liveness_probe: Option<Spanned<RawProbe>>,
    pub termination_grace_period_seconds: Option<Spanned<i64>>,
}

/// `template.process`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawProcess {
    /// Spanned as a whole so an empty list can be pointed at.
    pub command: Spanned<Vec<Spanned<String>>>,
    pub args: Option<Vec<String>>,
    pub env: Option<Vec<RawEnvVar>>,
    pub working_dir: Option<Spanned<String>>,
}

/// One `env` entry. `value` is required: Kubernetes' `valueFrom` has no meaning here.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEnvVar {
    pub name: Spanned<String>,
    pub value: Spanned<String>,
}

/// A readiness or liveness probe.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawProbe {
    pub http_get: Option<Spanned<RawHttpGet>>,
    pub tcp_socket: Option<Spanned<RawTcpSocket>>,
    pub initial_delay_seconds: Option<Spanned<i64>>,
    pub period_seconds: Option<Spanned<i64>>,
    pub timeout_seconds: Option<Spanned<i64>>,
    pub success_threshold: Option<Spanned<i64>>,
    pub failure_threshold: Option<Spanned<i64>>,
}

/// `httpGet`. There is no `port`: teal always probes the instance's own port.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHttpGet {
    /// Default `/`, as in Kubernetes.
    pub path: Option<Spanned<String>>,
}

/// `tcpSocket: {}`; it takes no fields (the port is the instance's own).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTcpSocket {}

/// `spec.strategy`. Only Argo's `blueGreen` exists here; `canary` is an unknown field.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawStrategy {
    /// Spanned so a missing `activeService` can be reported at this mapping.
    pub blue_green: Spanned<RawBlueGreen>,
}

/// `spec.strategy.blueGreen`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawBlueGreen {
    /// Required; optional here so stage two reports it with the other problems.
    pub active_service: Option<RawService>,
    pub preview_service: Option<RawService>,
    pub preview_match: Option<RawPreviewMatch>,
    pub auto_promotion_enabled: Option<Spanned<bool>>,
    pub auto_promotion_seconds: Option<Spanned<i64>>,
    pub scale_down_delay_seconds: Option<Spanned<i64>>,
    pub abort_scale_down_delay_seconds: Option<Spanned<i64>>,
    pub preview_replica_count: Option<Spanned<i64>>,
    pub drain_timeout_seconds: Option<Spanned<i64>>,
    pub pre_promotion_analysis: Option<Spanned<RawRolloutAnalysis>>,
    pub post_promotion_analysis: Option<Spanned<RawRolloutAnalysis>>,
    pub load_test: Option<Spanned<RawLoadTest>>,
    pub webhooks: Option<Vec<RawWebhook>>,
    pub notifications: Option<Vec<RawNotification>>,
    pub proxy: Option<RawProxy>,
}

/// `proxy` of `blueGreen`: durations as Go writes them (`"5s"`), sizes in bytes.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawProxy {
    pub connect_timeout: Option<Spanned<String>>,
    pub response_header_timeout: Option<Spanned<String>>,
    pub upstream_idle_timeout: Option<Spanned<String>>,
    pub upgraded_drain_timeout: Option<Spanned<String>>,
    pub max_request_header_bytes: Option<Spanned<i64>>,
    pub max_request_body_bytes: Option<Spanned<i64>>,
    pub passive_health: Option<RawPassiveHealth>,
    pub upstream_protocol: Option<Spanned<String>>,
}

/// `proxy.passiveHealth`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawPassiveHealth {
    pub consecutive_failures: Option<Spanned<i64>>,
    pub cooldown: Option<Spanned<String>>,
}

/// `prePromotionAnalysis` / `postPromotionAnalysis`, as in Argo.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRolloutAnalysis {
    pub templates: Spanned<Vec<RawTemplateRef>>,
    pub args: Option<Vec<RawArgValue>>,
}

/// `templates[]` of a rollout's analysis.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawTemplateRef {
    pub template_name: Spanned<String>,
}

/// `args[]` of a rollout's analysis: `{name, value}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawArgValue {
    pub name: Spanned<String>,
    pub value: Spanned<String>,
}

/// `loadTest`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawLoadTest {
    pub requests_per_second: Spanned<i64>,
    pub concurrency: Option<Spanned<i64>>,
    pub duration_seconds: Option<Spanned<i64>>,
    pub paths: Option<Vec<Spanned<String>>>,
    pub headers: Option<Vec<RawNameValue>>,
}

/// `webhooks[]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawWebhook {
    pub name: Spanned<String>,
    #[serde(rename = "type")]
    pub kind: Spanned<String>,
    pub url: Spanned<String>,
    pub timeout_seconds: Option<Spanned<i64>>,
}

/// `notifications[]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNotification {
    pub url: Spanned<String>,
    pub format: Option<Spanned<String>>,
}

/// `activeService` / `previewService`: where teal listens, not a Kubernetes Service name.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawService {
    pub listen: Spanned<String>,
    pub tls: Option<Spanned<RawTls>>,
}

/// `tls` of a service.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawTls {
    /// Required; optional here so stage two reports a missing one with the other
    /// problems.
    pub cert_file: Option<Spanned<String>>,
    /// Required, as `cert_file`.
    pub key_file: Option<Spanned<String>>,
}

/// `previewMatch`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPreviewMatch {
    pub cookie: Option<RawNameValue>,
    pub header: Option<RawNameValue>,
}

/// `cookie` / `header` inside `previewMatch`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNameValue {
    pub name: Spanned<String>,
    pub value: Spanned<String>,
}

/// One document's text, cut out of the file.
#[derive(Debug)]
pub(super) struct Chunk {
    /// The document, preceded by one empty line per line of the file before it, so the
    /// YAML parser's line numbers (and every [`Spanned`] location) are file lines.
    pub text: String,
}

/// Splits a file into its documents.
///
/// A line starting with `---` followed by a space, tab or line end is a document
/// marker. YAML forbids that sequence at the start of a line inside any node, even a
/// quoted or block scalar, so cutting on those lines is exact and lets one broken
/// document leave the others readable. `%` directive lines directly before a marker
/// belong to the document that marker starts. Documents with only blank lines and
/// comments are dropped.
pub(super) fn split_documents(text: &str) -> Vec<Chunk> {
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let mut starts = vec![0];
    for (index, line) in lines.iter().enumerate() {
        if index > 0 && is_document_marker(line) {
            let mut start = index;
            while start > 0 && lines[start - 1].starts_with('%') {
                start -= 1;
            }
            // A directive run at the top of the file stays with the first document.
            if start > 0 {
                starts.push(start);
            }
        }
    }
    let mut chunks = Vec::new();
    for (position, &start) in starts.iter().enumerate() {
        let end = starts.get(position + 1).copied().unwrap_or(lines.len());
        let body = &lines[start..end];
        if body.iter().all(|line| is_blank_line(line)) {
            continue;
        }
        let mut chunk = "\n".repeat(start);
        for line in body {
            chunk.push_str(line);
        }
        chunks.push(Chunk { text: chunk });
    }
    chunks
}

fn is_document_marker(line: &str) -> bool {
    match line.strip_prefix("---") {
        Some(rest) => rest.is_empty() || rest.starts_with([' ', '\t', '\r', '\n']),
        None => false,
    }
}

/// True for lines that carry no content: blank, comments, and bare document markers.
fn is_blank_line(line: &str) -> bool {
    let mut rest = line.trim();
    if is_document_marker(line) {
        rest = line[3..].trim();
    } else if rest == "..." {
        rest = "";
    }
    rest.is_empty() || rest.starts_with('#')
}

/// A stage-one failure, already in the terms of a [`super::SpecError`].
#[derive(Debug)]
pub(super) struct Stage1Error {
    pub line: Option<u64>,
    pub column: Option<u64>,
    pub path: String,
    pub message: String,
}

/// Which parts of a document are free-form, so [`clean_path`] leaves their keys alone.
#[derive(Clone, Copy, Debug)]
pub(super) enum Shape {
    /// Only `metadata.labels` and `metadata.annotations` are free-form.
    Typed,
    /// An AnalysisTemplate: `spec` is free-form too.
    FreeSpec,
}

/// Parses one document into `T`, with the field path and location of any error.
pub(super) fn deserialize_document<T: DeserializeOwned>(
    chunk: &Chunk,
    shape: Shape,
) -> Result<T, Stage1Error> {
    let mut options = Options::default();
    // Reject unquoted numbers and booleans where a string is expected (`value: 3`), as
    // Kubernetes does, instead of silently turning them into text.
    options.no_schema = true;
    // Errors are rendered by teal, not as saphyr's source snippets.
    options.with_snippet = false;

    let mut failed_path = None;
    let result =
        serde_saphyr::with_deserializer_from_str_with_options(&chunk.text, options, |de| {
            serde_path_to_error::deserialize::<_, T>(de).map_err(|error| {
                failed_path = Some(error.path().clone());
                error.into_inner()
            })
        });
    result.map_err(|error| {
        let described = describe(&error, &chunk.text);
        let mut path = match &failed_path {
            Some(path) => clean_path(path, described.keep_last_value, shape),
            None => String::new(),
        };
        // Serde reports a missing field on the mapping that lacks it; naming the field
        // itself tells the reader what to add.
        if let Some(field) = described.missing_field {
            if !path.is_empty() {
                path.push('.');
            }
            path.push_str(field);
        }
        Stage1Error {
            line: described.location.map(|l| l.line()),
            column: described.location.map(|l| l.column()),
            path,
            message: described.message,
        }
    })
}

/// Builds the YAML-spelled field path from serde_path_to_error's path.
///
/// saphyr's [`Spanned<T>`] reads `T` as the `value` field of a synthetic mapping, so an
/// error inside a spanned value carries an extra `value` segment that is not in the
/// file (`spec.replicas.value`). teal's types have real `value` keys only in an `env`,
/// `args` or `headers` entry and in `previewMatch.cookie`/`header`, so a `value`
/// segment is dropped unless
/// it follows one of those, is the unknown key an unknown-field error names, or lies
/// in a free-form part of the document (labels, annotations, an AnalysisTemplate's spec).
fn clean_path(path: &serde_path_to_error::Path, keep_last_value: bool, shape: Shape) -> String {
    use serde_path_to_error::Segment;

    let segments: Vec<&Segment> = path.iter().collect();
    let mut kept: Vec<String> = Vec::new();
    for (index, segment) in segments.iter().enumerate() {
        match segment {
            Segment::Seq { index } => kept.push(format!("[{index}]")),
            Segment::Map { key } | Segment::Enum { variant: key } => {
                let is_last = index + 1 == segments.len();
                let real = key != "value"
                    || in_free_form(&kept, shape)
                    || (is_last && keep_last_value)
                    || holds_value_key(&kept);
                if real {
                    kept.push(key.clone());
                }
            }
            // A key that is not a string, or an error (say, a duplicate key) before the
            // key was read: nothing useful to show.
            Segment::Unknown => {}
        }
    }
    let mut text = String::new();
    for part in kept {
        if !text.is_empty() && !part.starts_with('[') {
            text.push('.');
        }
        text.push_str(&part);
    }
    text
}

/// True when the path so far is inside a part of the document no raw type describes.
fn in_free_form(kept: &[String], shape: Shape) -> bool {
    let starts_with = |prefix: &[&str]| {
        kept.len() >= prefix.len() && kept.iter().zip(prefix).all(|(a, b)| a == b)
    };
    starts_with(&["metadata", "labels"])
        || starts_with(&["metadata", "annotations"])
        || (matches!(shape, Shape::FreeSpec) && starts_with(&["spec"]))
}

/// True when the path so far ends at a mapping that has a real `value` key.
fn holds_value_key(kept: &[String]) -> bool {
    match kept {
        [.., list, index]
            if matches!(list.as_str(), "env" | "args" | "headers") && index.starts_with('[') =>
        {
            true
        }
        [.., last] => last == "cookie" || last == "header",
        [] => false,
    }
}

/// A saphyr error in teal's words.
struct Described {
    location: Option<Location>,
    message: String,
    /// Set for a missing-field error: the field, to be appended to the path.
    missing_field: Option<&'static str>,
    /// Set for an unknown-field error: the path's last `value` is the user's key.
    keep_last_value: bool,
}

/// Rewrites the errors users meet most into "what is wrong, what was expected"; the
/// rest keep saphyr's own wording.
fn describe(error: &YamlError, source: &str) -> Described {
    let mut inner = error;
    // Snippet and alias wrappers only add context; the cause is inside.
    while let YamlError::WithSnippet { error, .. } | YamlError::AliasError { error, .. } = inner {
        inner = error;
    }
    // saphyr reports line 0 when it does not know where an error is.
    let location = error.location().filter(|l| l.line() > 0);
    let found = location.and_then(|l| found_text(source, l));
    let found_suffix = match &found {
        Some(found) => format!(", found {found}"),
        None => String::new(),
    };
    let mut missing_field = None;
    let mut keep_last_value = false;
    let message = match inner {
        YamlError::SerdeUnknownField {
            field, expected, ..
        } => {
            keep_last_value = true;
            if expected.is_empty() {
                format!("unknown field \"{field}\", this mapping takes no fields")
            } else {
                format!(
                    "unknown field \"{field}\", expected one of: {}",
                    expected.join(", ")
                )
            }
        }
        YamlError::SerdeMissingField { field, .. } => {
            missing_field = Some(*field);
            format!("missing required field \"{field}\"")
        }
        YamlError::InvalidScalar { ty, .. } => {
            format!("expected {}{found_suffix}", expected_words(ty))
        }
        YamlError::SerdeInvalidType {
            unexpected,
            expected,
            ..
        } => format!("expected {}, found {unexpected}", expected_words(expected)),
        YamlError::Unexpected { expected, .. } => {
            format!("expected {}{found_suffix}", expected_words(expected))
        }
        YamlError::QuotingRequired { value, .. } => {
            format!("expected a string, found {value}; quote it: \"{value}\"")
        }
        YamlError::NullIntoString { .. } => "expected a string, found nothing".to_owned(),
        YamlError::DuplicateMappingKey { key, .. } => match key {
            Some(key) => format!("duplicate key \"{key}\""),
            None => "duplicate key".to_owned(),
        },
        YamlError::ExternalMessage { .. }
        | YamlError::Eof { .. }
        | YamlError::IndentationError { .. } => {
            let text = serde_saphyr::DefaultMessageFormatter.format_message(inner);
            format!("invalid YAML: {text}")
        }
        other => serde_saphyr::DefaultMessageFormatter
            .format_message(other)
            .into_owned(),
    };
    Described {
        location,
        message,
        missing_field,
        keep_last_value,
    }
}

/// What serde or saphyr call a type, in the words of a YAML file.
fn expected_words(expected: &str) -> String {
    let words = match expected {
        "i8" | "i16" | "i32" | "i64" | "u8" | "u16" | "u32" | "u64" => "a whole number",
        "f32" | "f64" => "a number",
        "bool" | "boolean" | "a boolean" => "true or false",
        "string scalar" | "a string" => "a string",
        "mapping start" | "a map" => "a mapping",
        "sequence start" | "a sequence" => "a list",
        other if other.starts_with("struct ") => "a mapping",
        other => other,
    };
    words.to_owned()
}

/// The source text an error points at, quoted, or the kind of node that starts there.
fn found_text(source: &str, location: Location) -> Option<String> {
    let span = location.span();
    let start = usize::try_from(span.byte_offset()?).ok()?;
    let len = usize::try_from(span.byte_len()?).ok()?;
    let rest = source.get(start..)?;
    if rest.starts_with('[') || rest.starts_with("- ") {
        return Some("a list".to_owned());
    }
    if rest.starts_with('{') {
        return Some("a mapping".to_owned());
    }
    let text = rest.get(..len)?;
    if text.is_empty() {
        return None;
    }
    Some(format!("\"{}\"", text.escape_debug()))
}
