//! The typed parts of an AnalysisTemplate: its args and metrics, as validated by
//! [`crate::spec::parse_documents`]. Field names and defaults follow Argo Rollouts'
//! `AnalysisTemplate`; the providers are teal's (a built-in one reading teal's own
//! proxy, and local `job`s), beside Argo's `prometheus` and `web`.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::args::{ArgValues, ArgsError};
use super::expr::{Condition, Types};

/// `spec.args[]`: a value the metrics' provider fields can use as `{{args.NAME}}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Arg {
    /// `name`.
    pub name: String,
    /// `value`: the default. Without one, the value must be supplied when a run starts
    /// (teal supplies [`super::args::STANDARD_ARGS`]).
    pub value: Option<String>,
}

/// `spec.metrics[]`: one thing to measure, how often, and how to judge it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Metric {
    /// `name`: unique within the template.
    pub name: String,
    /// `interval` (`"30s"`, `"5m"`): time between measurements. None: the metric is
    /// measured once (a `count` above 1 needs an interval).
    pub interval: Option<Duration>,
    /// `initialDelay`: wait this long after the run starts before the first
    /// measurement. Default 0.
    pub initial_delay: Duration,
    /// `count`: measurements to take. Default 1 without `interval`; with `interval`
    /// and no `count`, None: measure until the run is stopped.
    pub count: Option<u32>,
    /// `successCondition`: a measurement for which this is false is Failed (when there
    /// is no `failureCondition`). For a `job` metric without conditions, teal sets
    /// `result == 0` (the command exited 0).
    pub success_condition: Option<Condition>,
    /// `failureCondition`: a measurement for which this is true is Failed.
    pub failure_condition: Option<Condition>,
    /// `failureLimit`: Failed measurements allowed before the metric fails. Default 0.
    pub failure_limit: u32,
    /// `inconclusiveLimit`: Inconclusive measurements allowed before the metric is
    /// Inconclusive. Default 0.
    pub inconclusive_limit: u32,
    /// `consecutiveErrorLimit`: errors in a row allowed before the metric is Error.
    /// Default 4.
    pub consecutive_error_limit: u32,
    /// `provider`: where the value comes from.
    pub provider: Provider,
}

/// Argo's default `consecutiveErrorLimit`.
pub const DEFAULT_CONSECUTIVE_ERROR_LIMIT: u32 = 4;

/// The window of a built-in metric without `interval`.
pub const DEFAULT_BUILTIN_WINDOW: Duration = Duration::from_secs(10);

impl Metric {
    /// How long after `initialDelay` the first measurement waits. A built-in metric
    /// measures the traffic since its previous measurement, so its first one needs a
    /// window of traffic to look at: one `interval` (or [`DEFAULT_BUILTIN_WINDOW`]).
    /// Other providers measure at once, as in Argo (a PromQL query has its own range).
    pub fn first_window(&self) -> Duration {
        match self.provider {
            Provider::Builtin(_) => self.interval.unwrap_or(DEFAULT_BUILTIN_WINDOW),
            _ => Duration::ZERO,
        }
    }

    /// The metric with `{{args.NAME}}` replaced in its provider's fields.
    pub fn resolve(&self, args: &ArgValues) -> Result<Metric, ArgsError> {
        Ok(Metric {
            provider: self.provider.resolve(args)?,
            ..self.clone()
        })
    }
}

/// `provider`: exactly one of these.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Provider {
    /// `builtin`: teal's proxy counts every request, so no metrics server is needed.
    Builtin(BuiltinMetric),
    /// `prometheus`: an instant query.
    Prometheus(PrometheusMetric),
    /// `web`: an HTTP request; the value is the JSON answer (or a part of it).
    Web(WebMetric),
    /// `job`: a local command; the value is its exit code.
    Job(JobMetric),
    /// `job` with Argo's `spec`: a Kubernetes Job (teal controller only); the value is
    /// 0 when it succeeds, 1 when it fails.
    KubernetesJob(KubernetesJobMetric),
}

impl Provider {
    /// The provider's field name: `builtin`, `prometheus`, `web` or `job`.
    pub fn kind(&self) -> &'static str {
        match self {
            Provider::Builtin(_) => "builtin",
            Provider::Prometheus(_) => "prometheus",
            Provider::Web(_) => "web",
            Provider::Job(_) | Provider::KubernetesJob(_) => "job",
        }
    }

    /// What `result` can be for this provider: conditions are type-checked against it.
    pub fn result_types(&self) -> Types {
        match self {
            // Every built-in measure is a number; a job's value is its exit code.
            Provider::Builtin(_) | Provider::Job(_) | Provider::KubernetesJob(_) => Types::NUMBER,
            // A scalar, or an instant vector's sample values.
            Provider::Prometheus(_) => Types::NUMBER.or(Types::LIST),
            Provider::Web(_) => Types::ANY,
        }
    }

    /// The provider with `{{args.NAME}}` replaced in every string field.
    pub fn resolve(&self, args: &ArgValues) -> Result<Provider, ArgsError> {
        let headers = |headers: &[Header]| -> Result<Vec<Header>, ArgsError> {
            headers
                .iter()
                .map(|header| {
                    Ok(Header {
                        key: args.substitute(&header.key)?,
                        value: args.substitute(&header.value)?,
                    })
                })
                .collect()
        };
        Ok(match self {
            Provider::Builtin(builtin) => Provider::Builtin(builtin.clone()),
            Provider::Prometheus(prometheus) => Provider::Prometheus(PrometheusMetric {
                address: args.substitute(&prometheus.address)?,
                query: args.substitute(&prometheus.query)?,
                timeout: prometheus.timeout,
                headers: headers(&prometheus.headers)?,
            }),
            Provider::Web(web) => Provider::Web(WebMetric {
                url: args.substitute(&web.url)?,
                method: web.method,
                headers: headers(&web.headers)?,
                body: web
                    .body
                    .as_deref()
                    .map(|b| args.substitute(b))
                    .transpose()?,
                timeout: web.timeout,
                json_path: web
                    .json_path
                    .as_deref()
                    .map(|p| args.substitute(p))
                    .transpose()?,
            }),
            Provider::Job(job) => Provider::Job(JobMetric {
                command: job
                    .command
                    .iter()
                    .map(|part| args.substitute(part))
                    .collect::<Result<_, _>>()?,
                timeout: job.timeout,
            }),
            Provider::KubernetesJob(job) => Provider::KubernetesJob(KubernetesJobMetric {
                metadata: substitute_json(&job.metadata, args)?,
                spec: substitute_json(&job.spec, args)?,
                timeout: job.timeout,
            }),
        })
    }
}

/// `{{args.NAME}}` replaced in every string of a JSON document.
fn substitute_json(
    value: &serde_json::Value,
    args: &ArgValues,
) -> Result<serde_json::Value, ArgsError> {
    use serde_json::Value as Json;
    Ok(match value {
        Json::String(text) => Json::String(args.substitute(text)?),
        Json::Array(items) => Json::Array(
            items
                .iter()
                .map(|item| substitute_json(item, args))
                .collect::<Result<_, _>>()?,
        ),
        Json::Object(fields) => Json::Object(
            fields
                .iter()
                .map(|(key, item)| Ok((key.clone(), substitute_json(item, args)?)))
                .collect::<Result<_, ArgsError>>()?,
        ),
        other => other.clone(),
    })
}

/// `job: {metadata, spec, timeoutSeconds}`: Argo's Kubernetes Job, run by teal
/// controller in the rollout's namespace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KubernetesJobMetric {
    /// Labels and annotations for the Job (`metadata`), as written.
    pub metadata: serde_json::Value,
    /// The Job's `spec` (a `batch/v1` JobSpec), as written.
    pub spec: serde_json::Value,
    /// A Job still running after this is deleted and the measurement is an error.
    pub timeout: Duration,
}

/// `builtin: {measure, color}`: read from teal's proxy over the time since the
/// previous measurement (or since the run started).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuiltinMetric {
    /// `measure`.
    pub measure: Measure,
    /// `color`: whose traffic, by the service that routes to it. None: the color under
    /// analysis (the candidate).
    pub color: Option<Service>,
}

/// What a built-in metric measures. Every measure is a number; with no requests in
/// the window, the rates and latencies have no value (the measurement is Inconclusive).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Measure {
    /// `success-rate`: the fraction (0 to 1) of responses that were not 5xx.
    SuccessRate,
    /// `latency-p50`: median response time, in milliseconds.
    LatencyP50,
    /// `latency-p90`: 90th percentile response time, in milliseconds.
    LatencyP90,
    /// `latency-p99`: 99th percentile response time, in milliseconds.
    LatencyP99,
    /// `request-count`: requests answered.
    RequestCount,
    /// `error-count`: 5xx responses (teal's own 502/503 included).
    ErrorCount,
}

impl Measure {
    /// Every measure with its name in a template.
    pub const ALL: [(&'static str, Measure); 6] = [
        ("success-rate", Measure::SuccessRate),
        ("latency-p50", Measure::LatencyP50),
        ("latency-p90", Measure::LatencyP90),
        ("latency-p99", Measure::LatencyP99),
        ("request-count", Measure::RequestCount),
        ("error-count", Measure::ErrorCount),
    ];

    /// The name used in templates.
    pub fn name(self) -> &'static str {
        Measure::ALL
            .iter()
            .find(|(_, measure)| *measure == self)
            .map_or("?", |(name, _)| name)
    }
}

impl fmt::Display for Measure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Which service's color a built-in metric reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Service {
    /// The color behind the preview route (the candidate before promotion).
    Preview,
    /// The color users reach.
    Active,
}

/// An HTTP header (`{key, value}`, as in Argo).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    /// Header name.
    pub key: String,
    /// Header value.
    pub value: String,
}

/// `prometheus: {address, query, timeout, headers}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrometheusMetric {
    /// `address`: the server's base URL, `http://` or `https://`.
    pub address: String,
    /// `query`: a PromQL instant query. A scalar is a number; a vector is the list of
    /// its sample values.
    pub query: String,
    /// `timeout` (seconds): the query's time limit. Default 30 s.
    pub timeout: Duration,
    /// `headers`: sent with the query (authentication, tenants).
    pub headers: Vec<Header>,
}

/// The HTTP method of a `web` metric.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum HttpMethod {
    /// `GET`, the default.
    Get,
    /// `POST`.
    Post,
    /// `PUT`.
    Put,
}

/// `web: {url, method, headers, body, timeoutSeconds, jsonPath}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebMetric {
    /// `url`: `http://` or `https://`.
    pub url: String,
    /// `method`: default GET.
    pub method: HttpMethod,
    /// `headers`.
    pub headers: Vec<Header>,
    /// `body`: only with POST or PUT.
    pub body: Option<String>,
    /// `timeoutSeconds`: default 10 s (Argo's).
    pub timeout: Duration,
    /// `jsonPath`: the part of the JSON answer that is the value (Argo's
    /// `{$.data.ok}` style). None: the whole answer.
    pub json_path: Option<String>,
}

/// `job: {command, timeoutSeconds}`: a local command instead of Argo's Kubernetes Job.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobMetric {
    /// `command`: program and arguments; never empty.
    pub command: Vec<String>,
    /// `timeoutSeconds`: a command still running after this is killed and the
    /// measurement is an error. Default 300 s.
    pub timeout: Duration,
}

/// Default `prometheus.timeout`.
pub const DEFAULT_PROMETHEUS_TIMEOUT: Duration = Duration::from_secs(30);
/// Default `web.timeoutSeconds` (Argo's).
pub const DEFAULT_WEB_TIMEOUT: Duration = Duration::from_secs(10);
/// Default `job.timeoutSeconds`.
pub const DEFAULT_JOB_TIMEOUT: Duration = Duration::from_secs(300);

/// Parses a duration as Go's `time.ParseDuration` does (Argo's `DurationString`): one
/// or more decimal numbers with a unit, `ns`, `us` (or `µs`), `ms`, `s`, `m`, `h`, such
/// as `10s`, `1m30s`, `1.5h`, `500ms`; `0` alone is zero. Signs are refused: no
/// duration here may be negative.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let expected = || {
        format!(
            "expected a duration such as \"30s\", \"5m\" or \"1h30m\", found \"{}\"",
            text.escape_debug()
        )
    };
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    let chars: Vec<char> = text.chars().collect();
    if chars.is_empty() {
        return Err(expected());
    }
    let mut at = 0;
    let mut total_nanos = 0f64;
    while at < chars.len() {
        let start = at;
        while at < chars.len() && (chars[at].is_ascii_digit() || chars[at] == '.') {
            at += 1;
        }
        let number: String = chars[start..at].iter().collect();
        let Ok(value) = number.parse::<f64>() else {
            return Err(expected());
        };
        let unit_start = at;
        while at < chars.len() && !(chars[at].is_ascii_digit() || chars[at] == '.') {
            at += 1;
        }
        let unit: String = chars[unit_start..at].iter().collect();
        let nanos_per_unit = match unit.as_str() {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            "" => {
                return Err(format!(
                    "{}: the number needs a unit (ms, s, m or h)",
                    expected()
                ));
            }
            _ => return Err(expected()),
        };
        total_nanos += value * nanos_per_unit;
    }
    // Go's limit (about 290 years) is far beyond anything useful; refuse overflow.
    if !total_nanos.is_finite() || total_nanos >= u64::MAX as f64 {
        return Err(format!("{}: too long", expected()));
    }
    Ok(Duration::from_nanos(total_nanos.round() as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_like_go() {
        let ms = Duration::from_millis;
        let cases: Vec<(&str, Result<Duration, &str>)> = vec![
            ("10s", Ok(ms(10_000))),
            ("1m", Ok(ms(60_000))),
            ("1h30m", Ok(ms(5_400_000))),
            ("1.5h", Ok(ms(5_400_000))),
            ("500ms", Ok(ms(500))),
            ("250us", Ok(Duration::from_micros(250))),
            ("7ns", Ok(Duration::from_nanos(7))),
            ("0", Ok(Duration::ZERO)),
            ("0s", Ok(Duration::ZERO)),
            ("", Err("expected a duration")),
            ("10", Err("the number needs a unit")),
            ("-5s", Err("expected a duration")),
            ("5 s", Err("expected a duration")),
            ("5d", Err("expected a duration")),
            ("s", Err("expected a duration")),
            ("1..5s", Err("expected a duration")),
            ("99999999999999h", Err("too long")),
        ];
        for (text, expected) in cases {
            match (parse_duration(text), expected) {
                (Ok(found), Ok(expected)) => assert_eq!(found, expected, "{text}"),
                (Err(found), Err(expected)) => {
                    assert!(found.contains(expected), "{text}: {found}")
                }
                (found, expected) => panic!("{text}: {found:?}, expected {expected:?}"),
            }
        }
    }
}
