//! Analysis providers that reach outside teal: `prometheus` (an instant query over the
//! HTTP API), `web` (an HTTP call, its JSON read with a JSON path, or just its status)
//! and `job` (a local command, judged by its exit code). The `builtin` provider reads
//! teal's own proxy and lives with the analysis driver.
//!
//! Every function turns what happened into a [`Measurement`]: a value, no data, or an
//! error that says what went wrong; none of them panics or gives up the run.

use std::process::Stdio;
use std::time::Duration;

use http::Method;
use serde_json::Value as Json;
use teal_core::analysis::json_path;
use teal_core::analysis::{HttpMethod, JobMetric, Measurement, PrometheusMetric, Value, WebMetric};
use tokio::io::AsyncReadExt;

use crate::http_client::{self, Outgoing};

/// Output of a job kept with its measurement: the last this many bytes.
const KEPT_OUTPUT: usize = 4096;

/// `prometheus`: `GET {address}/api/v1/query?query=...`. A scalar is a number, a
/// vector the list of its sample values; an empty vector is no data.
pub async fn prometheus(metric: &PrometheusMetric) -> Measurement {
    let query: String = form_urlencoded::Serializer::new(String::new())
        .append_pair("query", &metric.query)
        .finish();
    let url = format!(
        "{}/api/v1/query?{query}",
        metric.address.trim_end_matches('/')
    );
    let mut request = Outgoing::get(&url, metric.timeout);
    request.headers = headers(&metric.headers);
    let answer = match http_client::send(request).await {
        Ok(answer) => answer,
        Err(error) => return Measurement::failed(format!("prometheus: {error}")),
    };
    let body: Json = match serde_json::from_slice(&answer.body) {
        Ok(body) => body,
        Err(_) => {
            return Measurement::failed(format!(
                "prometheus answered {} with a body that is not JSON",
                answer.status
            ));
        }
    };
    if body["status"] != "success" {
        return Measurement::failed(format!(
            "prometheus: {} ({})",
            body["error"].as_str().unwrap_or("query failed"),
            body["errorType"].as_str().unwrap_or("error")
        ));
    }
    prometheus_value(&body["data"])
}

/// Reads `data` of a successful query answer.
fn prometheus_value(data: &Json) -> Measurement {
    let sample = |pair: &Json| -> Option<f64> {
        // [timestamp, "value"]; Prometheus writes NaN and infinities as strings too.
        let text = pair.get(1)?.as_str()?;
        match text {
            "NaN" => Some(f64::NAN),
            "+Inf" => Some(f64::INFINITY),
            "-Inf" => Some(f64::NEG_INFINITY),
            _ => text.parse().ok(),
        }
    };
    match data["resultType"].as_str() {
        Some("scalar") => match sample(&data["result"]) {
            Some(value) => Measurement::of(Value::Number(value)),
            None => Measurement::failed("prometheus: a scalar without a value"),
        },
        Some("vector") => {
            let Some(series) = data["result"].as_array() else {
                return Measurement::failed("prometheus: a vector without results");
            };
            let values: Option<Vec<f64>> = series.iter().map(|s| sample(&s["value"])).collect();
            match values {
                Some(values) if values.is_empty() => Measurement::no_data(),
                Some(values) => Measurement::of(Value::List(values)),
                None => Measurement::failed("prometheus: a sample without a value"),
            }
        }
        Some(other) => Measurement::failed(format!(
            "prometheus: a {other} result; expected a scalar or an instant vector"
        )),
        None => Measurement::failed("prometheus: an answer without resultType"),
    }
}

/// `web`: with `jsonPath`, the selected part of the JSON answer (a non-2xx answer is
/// an error); without, the status code.
pub async fn web(metric: &WebMetric) -> Measurement {
    let method = match metric.method {
        HttpMethod::Get => Method::GET,
        HttpMethod::Post => Method::POST,
        HttpMethod::Put => Method::PUT,
    };
    let request = Outgoing {
        method,
        url: &metric.url,
        headers: headers(&metric.headers),
        json: metric.body.is_some(),
        body: metric.body.clone(),
        timeout: metric.timeout,
    };
    let answer = match http_client::send(request).await {
        Ok(answer) => answer,
        Err(error) => return Measurement::failed(error),
    };
    let Some(json_path) = &metric.json_path else {
        return Measurement::of(Value::Number(f64::from(answer.status.as_u16())));
    };
    if !answer.status.is_success() {
        return Measurement::failed(format!("answered {}", answer.status));
    }
    let body: Json = match serde_json::from_slice(&answer.body) {
        Ok(body) => body,
        Err(error) => {
            return Measurement::failed(format!("the answer is not JSON: {error}"));
        }
    };
    let path = match json_path::parse(json_path) {
        Ok(path) => path,
        Err(error) => return Measurement::failed(error),
    };
    match json_path::select(&path, &body) {
        None => Measurement::no_data(),
        Some(selected) => match to_value(&selected) {
            Some(value) => Measurement::of(value),
            None => Measurement::failed(format!(
                "{json_path} selects {selected}, which is not a number, true/false, text or a \
                 list of numbers"
            )),
        },
    }
}

/// A JSON value as a condition's `result`.
pub fn to_value(json: &Json) -> Option<Value> {
    match json {
        Json::Number(n) => n.as_f64().map(Value::Number),
        Json::Bool(b) => Some(Value::Bool(*b)),
        Json::String(s) => Some(Value::String(s.clone())),
        Json::Array(items) => items
            .iter()
            .map(Json::as_f64)
            .collect::<Option<Vec<_>>>()
            .map(Value::List),
        _ => None,
    }
}

/// `job`: runs the command; the value is its exit code, and the end of its output is
/// kept. A command still running at its timeout is killed (with its children) and
/// the measurement is an error.
pub async fn job(metric: &JobMetric, env: &[(String, String)]) -> Measurement {
    let Some((program, args)) = metric.command.split_first() else {
        return Measurement::failed("job: empty command");
    };
    let mut command = tokio::process::Command::new(program);
    command
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(error) => return Measurement::failed(format!("job: cannot run {program}: {error}")),
    };
    let pid = child.id();
    let mut stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let run = async {
        let mut out = Vec::new();
        let mut err = Vec::new();
        let (read_out, read_err, status) = tokio::join!(
            stdout.read_to_end(&mut out),
            stderr.read_to_end(&mut err),
            child.wait()
        );
        let _ = (read_out, read_err);
        out.extend_from_slice(&err);
        (status, out)
    };
    match tokio::time::timeout(metric.timeout, run).await {
        Ok((Ok(status), output)) => {
            let output = tail(&output);
            // Killed by a signal: reported as the shell does (128 + signal).
            let code = status.code().unwrap_or_else(|| {
                use std::os::unix::process::ExitStatusExt;
                128 + status.signal().unwrap_or(0)
            });
            Measurement {
                value: Some(Value::Number(f64::from(code))),
                error: None,
                output,
            }
        }
        Ok((Err(error), _)) => Measurement::failed(format!("job: waiting for {program}: {error}")),
        Err(_) => {
            if let Some(pid) = pid {
                // The whole process group: a shell's children go too.
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            Measurement::failed(format!(
                "job: {program} still running after {}; killed",
                seconds(metric.timeout)
            ))
        }
    }
}

fn seconds(duration: Duration) -> String {
    format!("{}s", duration.as_secs())
}

fn tail(output: &[u8]) -> Option<String> {
    if output.is_empty() {
        return None;
    }
    let start = output.len().saturating_sub(KEPT_OUTPUT);
    let text = String::from_utf8_lossy(&output[start..]).into_owned();
    Some(if start > 0 {
        format!("…{text}")
    } else {
        text
    })
}

fn headers(headers: &[teal_core::analysis::Header]) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|h| (h.key.clone(), h.value.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn prometheus_answers_become_values() {
        let scalar = json!({"resultType": "scalar", "result": [1.5, "0.99"]});
        assert_eq!(
            prometheus_value(&scalar),
            Measurement::of(Value::Number(0.99))
        );
        let vector = json!({"resultType": "vector", "result": [
            {"metric": {"a": "1"}, "value": [1.5, "12"]},
            {"metric": {"a": "2"}, "value": [1.5, "NaN"]},
        ]});
        let Measurement {
            value: Some(Value::List(values)),
            ..
        } = prometheus_value(&vector)
        else {
            panic!("a list");
        };
        assert_eq!(values[0], 12.0);
        assert!(values[1].is_nan());
        let empty = json!({"resultType": "vector", "result": []});
        assert_eq!(prometheus_value(&empty), Measurement::no_data());
        let matrix = json!({"resultType": "matrix", "result": []});
        assert!(prometheus_value(&matrix).error.unwrap().contains("matrix"));
    }
}
