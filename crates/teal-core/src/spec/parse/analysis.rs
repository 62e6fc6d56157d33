//! Stage two for analysis: an AnalysisTemplate's args and metrics, and a rollout's
//! `prePromotionAnalysis`, `postPromotionAnalysis`, `loadTest`, `webhooks` and
//! `notifications`. Conditions are parsed and type-checked here, against the types the
//! metric's provider produces, so a bad expression is an apply error with its line.

use std::collections::HashSet;
use std::time::Duration;

use serde_saphyr::Spanned;

use super::{Errors, count, is_token, name_value, number, seconds};
use crate::analysis::args::{STANDARD_ARGS, references};
use crate::analysis::template::{
    DEFAULT_CONSECUTIVE_ERROR_LIMIT, DEFAULT_JOB_TIMEOUT, DEFAULT_PROMETHEUS_TIMEOUT,
    DEFAULT_WEB_TIMEOUT, parse_duration,
};
use crate::analysis::{
    Arg, BuiltinMetric, Condition, Header, HttpMethod, JobMetric, KubernetesJobMetric, Measure,
    Metric, PrometheusMetric, Provider, Service, Types, WebMetric,
};
use crate::spec::raw::{
    RawArg, RawHttpHeader, RawLoadTest, RawMetric, RawNotification, RawProvider,
    RawRolloutAnalysis, RawTypedAnalysisTemplate, RawWebhook,
};
use crate::spec::{
    LoadTest, NameValue, Notification, NotificationFormat, RolloutAnalysis, Webhook, WebhookKind,
};

/// The typed args and metrics of a template (the name is checked by the caller).
pub(super) fn validate_template(
    raw: &RawTypedAnalysisTemplate,
    errors: &mut Errors<'_>,
) -> (Vec<Arg>, Vec<Metric>) {
    let spec = &raw.spec.value;
    let mut args = Vec::new();
    let mut arg_names = HashSet::new();
    for (index, arg) in spec.args.iter().flatten().enumerate() {
        let path = format!("spec.args[{index}].name");
        if !is_arg_name(&arg.name.value) {
            errors.at(
                &arg.name.referenced,
                &path,
                format!(
                    "expected a name of letters, digits, '-' and '_', found \"{}\"",
                    arg.name.value.escape_debug()
                ),
            );
        } else if !arg_names.insert(arg.name.value.clone()) {
            errors.at(
                &arg.name.referenced,
                &path,
                format!("arg \"{}\" is declared twice", arg.name.value),
            );
        }
        args.push(to_arg(arg));
    }
    let known: HashSet<&str> = arg_names
        .iter()
        .map(String::as_str)
        .chain(STANDARD_ARGS)
        .collect();

    let Some(raw_metrics) = &spec.metrics else {
        errors.at(
            &raw.spec.referenced,
            "spec.metrics",
            "missing required field \"metrics\", expected a list of metrics to measure".to_owned(),
        );
        return (args, Vec::new());
    };
    if raw_metrics.value.is_empty() {
        errors.at(
            &raw_metrics.referenced,
            "spec.metrics",
            "expected at least one metric, found an empty list".to_owned(),
        );
    }
    let mut metrics = Vec::new();
    let mut metric_names = HashSet::new();
    for (index, metric) in raw_metrics.value.iter().enumerate() {
        let path = format!("spec.metrics[{index}]");
        if metric.name.value.trim().is_empty() {
            errors.at(
                &metric.name.referenced,
                &format!("{path}.name"),
                "expected a metric name, found an empty one".to_owned(),
            );
        } else if !metric_names.insert(metric.name.value.clone()) {
            errors.at(
                &metric.name.referenced,
                &format!("{path}.name"),
                format!(
                    "metric \"{}\" is defined twice in this template",
                    metric.name.value
                ),
            );
        }
        if let Some(metric) = validate_metric(metric, &path, &known, errors) {
            metrics.push(metric);
        }
    }
    (args, metrics)
}

fn to_arg(raw: &RawArg) -> Arg {
    Arg {
        name: raw.name.value.clone(),
        value: raw.value.as_ref().map(|v| v.value.clone()),
    }
}

fn is_arg_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

fn validate_metric(
    raw: &RawMetric,
    path: &str,
    known_args: &HashSet<&str>,
    errors: &mut Errors<'_>,
) -> Option<Metric> {
    let before = errors.count();
    let duration = |field: &Option<Spanned<String>>, name: &str, errors: &mut Errors<'_>| {
        let field = field.as_ref()?;
        match parse_duration(&field.value) {
            Ok(duration) => Some(duration),
            Err(message) => {
                errors.at(&field.referenced, &format!("{path}.{name}"), message);
                None
            }
        }
    };
    let interval = duration(&raw.interval, "interval", errors);
    if let (Some(field), Some(interval)) = (&raw.interval, interval)
        && interval < Duration::from_secs(1)
    {
        errors.at(
            &field.referenced,
            &format!("{path}.interval"),
            format!(
                "expected an interval of at least 1s, found \"{}\"",
                field.value
            ),
        );
    }
    let initial_delay = duration(&raw.initial_delay, "initialDelay", errors).unwrap_or_default();
    let count_value = raw.count.as_ref().map(|field| {
        count(
            Some(field),
            &format!("{path}.count"),
            1,
            1,
            i64::MAX,
            errors,
        )
    });
    if let (Some(field), Some(count), None) = (&raw.count, count_value, &raw.interval)
        && count > 1
    {
        errors.at(
            &field.referenced,
            &format!("{path}.count"),
            format!("a count of {count} needs an interval between the measurements"),
        );
    }
    // Argo: without an interval a metric is measured once.
    let count_value = match (count_value, &raw.interval) {
        (None, None) => Some(1),
        (count, _) => count,
    };
    let limit = |field: &Option<Spanned<i64>>, name: &str, default: u32, errors: &mut _| {
        count(
            field.as_ref(),
            &format!("{path}.{name}"),
            default,
            0,
            i64::from(u32::MAX),
            errors,
        )
    };
    let failure_limit = limit(&raw.failure_limit, "failureLimit", 0, errors);
    let inconclusive_limit = limit(&raw.inconclusive_limit, "inconclusiveLimit", 0, errors);
    let consecutive_error_limit = limit(
        &raw.consecutive_error_limit,
        "consecutiveErrorLimit",
        DEFAULT_CONSECUTIVE_ERROR_LIMIT,
        errors,
    );

    let provider = match &raw.provider {
        Some(provider) => {
            validate_provider(provider, &format!("{path}.provider"), known_args, errors)
        }
        None => {
            errors.at(
                &raw.name.referenced,
                &format!("{path}.provider"),
                "missing required field \"provider\", expected one of builtin, prometheus, \
                 web or job"
                    .to_owned(),
            );
            None
        }
    };
    let types = provider.as_ref().map_or(Types::ANY, Provider::result_types);
    let condition = |field: &Option<Spanned<String>>, name: &str, errors: &mut Errors<'_>| {
        let field = field.as_ref()?;
        match Condition::parse(&field.value, types) {
            Ok(condition) => Some(condition),
            Err(error) => {
                errors.at(
                    &field.referenced,
                    &format!("{path}.{name}"),
                    format!("in \"{}\" at {error}", field.value.escape_debug()),
                );
                None
            }
        }
    };
    let mut success_condition = condition(&raw.success_condition, "successCondition", errors);
    let failure_condition = condition(&raw.failure_condition, "failureCondition", errors);
    if errors.count() > before {
        return None;
    }
    let provider = provider?;
    // A job passes when its command exits 0, unless the template says otherwise.
    if matches!(provider, Provider::Job(_) | Provider::KubernetesJob(_))
        && success_condition.is_none()
        && failure_condition.is_none()
    {
        success_condition = Condition::parse("result == 0", Types::NUMBER).ok();
    }
    Some(Metric {
        name: raw.name.value.clone(),
        interval,
        initial_delay,
        count: count_value,
        success_condition,
        failure_condition,
        failure_limit,
        inconclusive_limit,
        consecutive_error_limit,
        provider,
    })
}

fn validate_provider(
    spanned: &Spanned<RawProvider>,
    path: &str,
    known_args: &HashSet<&str>,
    errors: &mut Errors<'_>,
) -> Option<Provider> {
    let raw = &spanned.value;
    let set: Vec<&str> = [
        raw.builtin.as_ref().map(|_| "builtin"),
        raw.prometheus.as_ref().map(|_| "prometheus"),
        raw.web.as_ref().map(|_| "web"),
        raw.job.as_ref().map(|_| "job"),
    ]
    .into_iter()
    .flatten()
    .collect();
    if set.len() != 1 {
        errors.at(
            &spanned.referenced,
            path,
            match set.as_slice() {
                [] => "expected one of builtin, prometheus, web or job, found none".to_owned(),
                many => format!(
                    "expected exactly one provider, found {}",
                    many.join(" and ")
                ),
            },
        );
        return None;
    }
    // Every string a provider uses may carry {{args.NAME}}: check the names now.
    let text = |field: &Spanned<String>, name: &str, errors: &mut Errors<'_>| {
        check_arg_references(field, &format!("{path}.{name}"), known_args, errors);
        field.value.clone()
    };
    if let Some(builtin) = &raw.builtin {
        let builtin = &builtin.value;
        let measure = Measure::ALL
            .iter()
            .find(|(name, _)| *name == builtin.measure.value)
            .map(|(_, measure)| *measure);
        if measure.is_none() {
            let names: Vec<&str> = Measure::ALL.iter().map(|(name, _)| *name).collect();
            errors.at(
                &builtin.measure.referenced,
                &format!("{path}.builtin.measure"),
                format!(
                    "expected one of {}, found \"{}\"",
                    names.join(", "),
                    builtin.measure.value.escape_debug()
                ),
            );
        }
        let color = match builtin.color.as_ref().map(|c| (c, c.value.as_str())) {
            None => None,
            Some((_, "preview")) => Some(Service::Preview),
            Some((_, "active")) => Some(Service::Active),
            Some((field, other)) => {
                errors.at(
                    &field.referenced,
                    &format!("{path}.builtin.color"),
                    format!(
                        "expected preview or active (the service whose color is measured), \
                         found \"{}\"",
                        other.escape_debug()
                    ),
                );
                None
            }
        };
        return Some(Provider::Builtin(BuiltinMetric {
            measure: measure?,
            color,
        }));
    }
    if let Some(prometheus) = &raw.prometheus {
        let prometheus = &prometheus.value;
        let address = text(&prometheus.address, "prometheus.address", errors);
        check_url(
            &prometheus.address,
            &format!("{path}.prometheus.address"),
            errors,
        );
        let query = text(&prometheus.query, "prometheus.query", errors);
        if query.trim().is_empty() {
            errors.at(
                &prometheus.query.referenced,
                &format!("{path}.prometheus.query"),
                "expected a PromQL query, found an empty one".to_owned(),
            );
        }
        let timeout = seconds(
            prometheus.timeout.as_ref(),
            &format!("{path}.prometheus.timeout"),
            DEFAULT_PROMETHEUS_TIMEOUT.as_secs(),
            1,
            errors,
        );
        let headers = headers(
            prometheus.headers.as_deref(),
            &format!("{path}.prometheus"),
            known_args,
            errors,
        );
        return Some(Provider::Prometheus(PrometheusMetric {
            address,
            query,
            timeout,
            headers,
        }));
    }
    if let Some(web) = &raw.web {
        let web = &web.value;
        let url = text(&web.url, "web.url", errors);
        check_url(&web.url, &format!("{path}.web.url"), errors);
        let method = match web.method.as_ref().map(|m| (m, m.value.as_str())) {
            None | Some((_, "GET")) => HttpMethod::Get,
            Some((_, "POST")) => HttpMethod::Post,
            Some((_, "PUT")) => HttpMethod::Put,
            Some((field, other)) => {
                errors.at(
                    &field.referenced,
                    &format!("{path}.web.method"),
                    format!(
                        "expected GET, POST or PUT, found \"{}\"",
                        other.escape_debug()
                    ),
                );
                HttpMethod::Get
            }
        };
        let body = web.body.as_ref().map(|body| {
            if method == HttpMethod::Get {
                errors.at(
                    &body.referenced,
                    &format!("{path}.web.body"),
                    "a body needs method POST or PUT".to_owned(),
                );
            }
            text(body, "web.body", errors)
        });
        let timeout = seconds(
            web.timeout_seconds.as_ref(),
            &format!("{path}.web.timeoutSeconds"),
            DEFAULT_WEB_TIMEOUT.as_secs(),
            1,
            errors,
        );
        let json_path = web.json_path.as_ref().map(|json_path| {
            let value = text(json_path, "web.jsonPath", errors);
            if let Err(message) = crate::analysis::json_path::parse(&value) {
                errors.at(
                    &json_path.referenced,
                    &format!("{path}.web.jsonPath"),
                    message,
                );
            }
            value
        });
        let headers = headers(
            web.headers.as_deref(),
            &format!("{path}.web"),
            known_args,
            errors,
        );
        return Some(Provider::Web(WebMetric {
            url,
            method,
            headers,
            body,
            timeout,
            json_path,
        }));
    }
    let job_spanned = raw.job.as_ref()?;
    let job = &job_spanned.value;
    let timeout = seconds(
        job.timeout_seconds.as_ref(),
        &format!("{path}.job.timeoutSeconds"),
        DEFAULT_JOB_TIMEOUT.as_secs(),
        1,
        errors,
    );
    match (&job.command, &job.spec) {
        (Some(_), Some(spec)) => {
            errors.at(
                &spec.referenced,
                &format!("{path}.job.spec"),
                "set command (a local command) or spec (a Kubernetes Job), not both".to_owned(),
            );
            return None;
        }
        (None, Some(spec)) => {
            if !spec.value.is_object() {
                errors.at(
                    &spec.referenced,
                    &format!("{path}.job.spec"),
                    "expected a Kubernetes JobSpec (an object with a template)".to_owned(),
                );
                return None;
            }
            return Some(Provider::KubernetesJob(KubernetesJobMetric {
                metadata: job.metadata.clone().unwrap_or(serde_json::Value::Null),
                spec: spec.value.clone(),
                timeout,
            }));
        }
        (None, None) => {
            errors.at(
                &job_spanned.referenced,
                &format!("{path}.job"),
                "expected command (a local command) or spec (a Kubernetes Job)".to_owned(),
            );
            return None;
        }
        (Some(_), None) => {}
    }
    let command_field = job.command.as_ref()?;
    if command_field.value.is_empty() {
        errors.at(
            &command_field.referenced,
            &format!("{path}.job.command"),
            "expected a program and its arguments, found an empty list".to_owned(),
        );
    }
    let command = command_field
        .value
        .iter()
        .enumerate()
        .map(|(index, part)| text(part, &format!("job.command[{index}]"), errors))
        .collect();
    Some(Provider::Job(JobMetric { command, timeout }))
}

fn headers(
    raw: Option<&[RawHttpHeader]>,
    path: &str,
    known_args: &HashSet<&str>,
    errors: &mut Errors<'_>,
) -> Vec<Header> {
    raw.unwrap_or_default()
        .iter()
        .enumerate()
        .map(|(index, header)| {
            if !is_token(&header.key.value) {
                errors.at(
                    &header.key.referenced,
                    &format!("{path}.headers[{index}].key"),
                    format!(
                        "expected a header name, found \"{}\"",
                        header.key.value.escape_debug()
                    ),
                );
            }
            let value_path = format!("{path}.headers[{index}].value");
            check_arg_references(&header.value, &value_path, known_args, errors);
            Header {
                key: header.key.value.clone(),
                value: header.value.value.clone(),
            }
        })
        .collect()
}

/// Reports malformed `{{...}}` tags and names that are neither declared nor standard.
fn check_arg_references(
    field: &Spanned<String>,
    path: &str,
    known: &HashSet<&str>,
    errors: &mut Errors<'_>,
) {
    match references(&field.value) {
        Err(error) => errors.at(&field.referenced, path, error.to_string()),
        Ok(names) => {
            for name in names {
                if !known.contains(name.as_str()) {
                    errors.at(
                        &field.referenced,
                        path,
                        format!(
                            "{{{{args.{name}}}}} names no arg: declare it in spec.args, or use \
                             one of teal's: {}",
                            STANDARD_ARGS.join(", ")
                        ),
                    );
                }
            }
        }
    }
}

/// An `http://` or `https://` URL; one that starts with an arg is checked when it runs.
fn check_url(field: &Spanned<String>, path: &str, errors: &mut Errors<'_>) {
    let url = field.value.trim_start();
    if url.starts_with("{{") {
        return;
    }
    if !(url.starts_with("http://") || url.starts_with("https://")) || url.len() < "http://x".len()
    {
        errors.at(
            &field.referenced,
            path,
            format!(
                "expected an http:// or https:// URL, found \"{}\"",
                field.value.escape_debug()
            ),
        );
    }
}

/// `prePromotionAnalysis` / `postPromotionAnalysis`.
pub(super) fn rollout_analysis(
    raw: &Spanned<RawRolloutAnalysis>,
    path: &str,
    errors: &mut Errors<'_>,
) -> RolloutAnalysis {
    let templates = &raw.value.templates;
    if templates.value.is_empty() {
        errors.at(
            &templates.referenced,
            &format!("{path}.templates"),
            "expected at least one {templateName: NAME}, found an empty list".to_owned(),
        );
    }
    let mut seen = HashSet::new();
    for (index, template) in templates.value.iter().enumerate() {
        if !seen.insert(template.template_name.value.as_str()) {
            errors.at(
                &template.template_name.referenced,
                &format!("{path}.templates[{index}].templateName"),
                format!(
                    "template \"{}\" is listed twice",
                    template.template_name.value
                ),
            );
        }
    }
    let args = raw
        .value
        .args
        .iter()
        .flatten()
        .enumerate()
        .map(|(index, arg)| {
            if !is_arg_name(&arg.name.value) {
                errors.at(
                    &arg.name.referenced,
                    &format!("{path}.args[{index}].name"),
                    format!(
                        "expected a name of letters, digits, '-' and '_', found \"{}\"",
                        arg.name.value.escape_debug()
                    ),
                );
            }
            NameValue {
                name: arg.name.value.clone(),
                value: arg.value.value.clone(),
            }
        })
        .collect();
    RolloutAnalysis {
        templates: templates
            .value
            .iter()
            .map(|t| t.template_name.value.clone())
            .collect(),
        args,
    }
}

/// `loadTest`.
pub(super) fn load_test(
    raw: &Spanned<RawLoadTest>,
    path: &str,
    errors: &mut Errors<'_>,
) -> LoadTest {
    let load = &raw.value;
    let rate = number(
        Some(&load.requests_per_second),
        &format!("{path}.requestsPerSecond"),
        1,
        1,
        10_000,
        errors,
    );
    let concurrency = count(
        load.concurrency.as_ref(),
        &format!("{path}.concurrency"),
        4,
        1,
        256,
        errors,
    );
    let duration = load.duration_seconds.as_ref().map(|field| {
        seconds(
            Some(field),
            &format!("{path}.durationSeconds"),
            60,
            1,
            errors,
        )
    });
    let mut paths = Vec::new();
    for (index, field) in load.paths.iter().flatten().enumerate() {
        if !field.value.starts_with('/') {
            errors.at(
                &field.referenced,
                &format!("{path}.paths[{index}]"),
                format!(
                    "expected a path starting with '/', found \"{}\"",
                    field.value.escape_debug()
                ),
            );
        }
        paths.push(field.value.clone());
    }
    if paths.is_empty() {
        paths.push("/".to_owned());
    }
    let headers = load
        .headers
        .iter()
        .flatten()
        .enumerate()
        .map(|(index, header)| name_value(header, &format!("{path}.headers[{index}]"), errors))
        .collect();
    LoadTest {
        requests_per_second: u32::try_from(rate).unwrap_or(1),
        concurrency,
        duration,
        paths,
        headers,
    }
}

/// `webhooks`.
pub(super) fn webhooks(raw: &[RawWebhook], path: &str, errors: &mut Errors<'_>) -> Vec<Webhook> {
    let mut names = HashSet::new();
    raw.iter()
        .enumerate()
        .filter_map(|(index, hook)| {
            let path = format!("{path}[{index}]");
            if hook.name.value.trim().is_empty() {
                errors.at(
                    &hook.name.referenced,
                    &format!("{path}.name"),
                    "expected a webhook name, found an empty one".to_owned(),
                );
            } else if !names.insert(hook.name.value.clone()) {
                errors.at(
                    &hook.name.referenced,
                    &format!("{path}.name"),
                    format!("webhook \"{}\" is defined twice", hook.name.value),
                );
            }
            check_url(&hook.url, &format!("{path}.url"), errors);
            let timeout = seconds(
                hook.timeout_seconds.as_ref(),
                &format!("{path}.timeoutSeconds"),
                10,
                1,
                errors,
            );
            let kind = match hook.kind.value.as_str() {
                "confirm-promotion" => WebhookKind::ConfirmPromotion,
                "rollback" => WebhookKind::Rollback,
                other => {
                    errors.at(
                        &hook.kind.referenced,
                        &format!("{path}.type"),
                        format!(
                            "expected confirm-promotion or rollback, found \"{}\"",
                            other.escape_debug()
                        ),
                    );
                    return None;
                }
            };
            Some(Webhook {
                name: hook.name.value.clone(),
                kind,
                url: hook.url.value.clone(),
                timeout,
            })
        })
        .collect()
}

/// `notifications`.
pub(super) fn notifications(
    raw: &[RawNotification],
    path: &str,
    errors: &mut Errors<'_>,
) -> Vec<Notification> {
    raw.iter()
        .enumerate()
        .map(|(index, notification)| {
            let path = format!("{path}[{index}]");
            check_url(&notification.url, &format!("{path}.url"), errors);
            let format = match notification.format.as_ref().map(|f| (f, f.value.as_str())) {
                None | Some((_, "json")) => NotificationFormat::Json,
                Some((_, "slack")) => NotificationFormat::Slack,
                Some((field, other)) => {
                    errors.at(
                        &field.referenced,
                        &format!("{path}.format"),
                        format!("expected json or slack, found \"{}\"", other.escape_debug()),
                    );
                    NotificationFormat::Json
                }
            };
            Notification {
                url: notification.url.value.clone(),
                format,
            }
        })
        .collect()
}
