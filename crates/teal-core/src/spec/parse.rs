//! Stage two: raw documents to validated specs, with every error located.
//!
//! [`parse_documents`] cuts the file into documents, parses each with the raw types of
//! [`super::raw`] (stage one), then checks values and applies defaults here. Every
//! document is checked even when others fail, and all problems are returned together.

use std::collections::HashMap;
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use serde_saphyr::{Location, Spanned};

use crate::analysis::template::parse_duration;

use super::raw::{
    self, Chunk, RawAnalysisTemplate, RawBlueGreen, RawHeader, RawNameValue, RawProbe, RawProcess,
    RawProxy, RawRollout, RawTls, RawTypedAnalysisTemplate, Shape, Stage1Error,
};
use super::{
    API_VERSION, AnalysisTemplateSpec, BlueGreen, Document, EnvVar, NameValue, PreviewMatch, Probe,
    ProbeAction, Process, ProxySettings, RolloutSpec, Template, TlsFiles, UpstreamProtocol,
};

/// The `apiVersion` of Argo Rollouts manifests, accepted so they load unchanged.
pub const ARGO_API_VERSION: &str = "argoproj.io/v1alpha1";

/// Most instances per color a Rollout may ask for.
pub const MAX_REPLICAS: u32 = 100;

/// One problem in a spec file, located as precisely as the parser allows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpecError {
    /// The file name as given to [`parse_documents`].
    pub file: String,
    /// 1-based line, when known.
    pub line: Option<u64>,
    /// 1-based column, when known.
    pub column: Option<u64>,
    /// Field path such as `spec.strategy.blueGreen.activeService.listen`; empty for
    /// problems with the document as a whole.
    pub path: String,
    /// What is wrong and what was expected.
    pub message: String,
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(column) = self.column {
                write!(f, ":{column}")?;
            }
        }
        if !self.path.is_empty() {
            write!(f, ": {}", self.path)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Every problem found in a file; never empty.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct SpecErrors(pub Vec<SpecError>);

impl fmt::Display for SpecErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, error) in self.0.iter().enumerate() {
            if index > 0 {
                writeln!(f)?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

/// Parses every document of a spec file.
///
/// `file` names the file in errors; `base_dir` is the file's directory, used for a
/// relative (or missing) `workingDir` and relative TLS files, which are therefore
/// absolute whenever `base_dir` is (this crate does no I/O, so it cannot make it so).
/// Returns all errors at once, sorted by line and column. A file without documents
/// (empty, or only comments) gives an empty list.
pub fn parse_documents(
    file: &str,
    text: &str,
    base_dir: &Path,
) -> Result<Vec<Document>, SpecErrors> {
    let mut errors = Errors {
        file,
        list: Vec::new(),
    };
    let mut documents = Vec::new();
    // (kind, name) -> line of the document that defined it first.
    let mut seen: HashMap<(&'static str, String), u64> = HashMap::new();
    for chunk in raw::split_documents(text) {
        if let Some(document) = parse_document(&chunk, base_dir, &mut seen, &mut errors) {
            documents.push(document);
        }
    }
    if errors.list.is_empty() {
        return Ok(documents);
    }
    // Errors without a position (rare) go last. The sort is stable, so errors at the
    // same place keep the order they were found in.
    errors
        .list
        .sort_by_key(|e| (e.line.unwrap_or(u64::MAX), e.column.unwrap_or(0)));
    Err(SpecErrors(errors.list))
}

/// The errors found so far, and the file they are in.
struct Errors<'a> {
    file: &'a str,
    list: Vec<SpecError>,
}

impl Errors<'_> {
    /// Records a stage-two problem with the value at `location`.
    fn at(&mut self, location: &Location, path: &str, message: String) {
        // Location 0 means saphyr did not know; never report a line 0.
        let known = location.line() > 0;
        self.list.push(SpecError {
            file: self.file.to_owned(),
            line: known.then(|| location.line()),
            column: known.then(|| location.column()),
            path: path.to_owned(),
            message,
        });
    }

    /// Records a stage-one (serde or YAML) problem.
    fn stage1(&mut self, error: Stage1Error) {
        self.list.push(SpecError {
            file: self.file.to_owned(),
            line: error.line,
            column: error.column,
            path: error.path,
            message: error.message,
        });
    }

    fn count(&self) -> usize {
        self.list.len()
    }
}

/// Parses and validates one document; None when it has errors (already recorded).
fn parse_document(
    chunk: &Chunk,
    base_dir: &Path,
    seen: &mut HashMap<(&'static str, String), u64>,
    errors: &mut Errors<'_>,
) -> Option<Document> {
    // Read apiVersion and kind first: the kind decides which type the document is, and a
    // YAML syntax error anywhere in the document is reported here, once.
    let header: Spanned<RawHeader> = match raw::deserialize_document(chunk, Shape::Typed) {
        Ok(header) => header,
        Err(error) => {
            errors.stage1(error);
            return None;
        }
    };
    let before = errors.count();
    match &header.value.api_version {
        Some(version) if version.value == API_VERSION || version.value == ARGO_API_VERSION => {}
        Some(version) => errors.at(
            &version.referenced,
            "apiVersion",
            format!(
                "expected \"{API_VERSION}\" (or \"{ARGO_API_VERSION}\"), found \"{}\"",
                version.value.escape_debug()
            ),
        ),
        None => errors.at(
            &header.referenced,
            "apiVersion",
            format!("missing required field \"apiVersion\", expected \"{API_VERSION}\""),
        ),
    }
    let Some(kind) = &header.value.kind else {
        errors.at(
            &header.referenced,
            "kind",
            "missing required field \"kind\", expected Rollout or AnalysisTemplate".to_owned(),
        );
        return None;
    };
    let document = match kind.value.as_str() {
        "Rollout" => {
            let raw: RawRollout = match raw::deserialize_document(chunk, Shape::Typed) {
                Ok(raw) => raw,
                Err(error) => {
                    errors.stage1(error);
                    return None;
                }
            };
            check_unique(&raw.metadata.name, "Rollout", seen, errors);
            validate_rollout(raw, base_dir, errors).map(Document::Rollout)
        }
        "AnalysisTemplate" => {
            let raw: RawAnalysisTemplate = match raw::deserialize_document(chunk, Shape::FreeSpec) {
                Ok(raw) => raw,
                Err(error) => {
                    errors.stage1(error);
                    return None;
                }
            };
            check_unique(&raw.metadata.name, "AnalysisTemplate", seen, errors);
            let name = validate_name(&raw.metadata.name, errors);
            // The same document again, typed: the free-form read keeps the spec as
            // written, this one checks every field of it.
            let typed: RawTypedAnalysisTemplate =
                match raw::deserialize_document(chunk, Shape::Typed) {
                    Ok(typed) => typed,
                    Err(error) => {
                        errors.stage1(error);
                        return None;
                    }
                };
            let (args, metrics) = analysis::validate_template(&typed, errors);
            Some(Document::AnalysisTemplate(AnalysisTemplateSpec {
                name,
                spec: serde_json::Value::Object(raw.spec),
                args,
                metrics,
            }))
        }
        other => {
            errors.at(
                &kind.referenced,
                "kind",
                format!(
                    "unknown kind \"{}\", expected Rollout or AnalysisTemplate",
                    other.escape_debug()
                ),
            );
            None
        }
    };
    // Any error in this document (apiVersion included) makes the whole document invalid.
    if errors.count() > before {
        return None;
    }
    document
}

/// Rejects a second document with the same kind and name in one file.
fn check_unique(
    name: &Spanned<String>,
    kind: &'static str,
    seen: &mut HashMap<(&'static str, String), u64>,
    errors: &mut Errors<'_>,
) {
    let line = name.referenced.line();
    match seen.get(&(kind, name.value.clone())) {
        Some(first) => errors.at(
            &name.referenced,
            "metadata.name",
            format!(
                "duplicate {kind} \"{}\": a {kind} with this name is already defined at line {first}",
                name.value.escape_debug()
            ),
        ),
        None => {
            seen.insert((kind, name.value.clone()), line);
        }
    }
}

/// Validates a Rollout, applying defaults. Builds the whole spec even after an error,
/// so that every field is checked; returns None if anything was wrong.
fn validate_rollout(
    raw: RawRollout,
    base_dir: &Path,
    errors: &mut Errors<'_>,
) -> Option<RolloutSpec> {
    let before = errors.count();
    let name = validate_name(&raw.metadata.name, errors);
    let spec = raw.spec;
    let replicas = count(
        spec.replicas.as_ref(),
        "spec.replicas",
        1,
        1,
        i64::from(MAX_REPLICAS),
        errors,
    );
    let progress_deadline = seconds(
        spec.progress_deadline_seconds.as_ref(),
        "spec.progressDeadlineSeconds",
        600,
        1,
        errors,
    );
    let template = &spec.template;
    let process = validate_process(&template.process, base_dir, errors);
    let readiness_probe = template
        .readiness_probe
        .as_ref()
        .map(|probe| validate_probe(probe, "spec.template.readinessProbe", errors));
    let liveness_probe = template
        .liveness_probe
        .as_ref()
        .map(|probe| validate_probe(probe, "spec.template.livenessProbe", errors));
    let termination_grace_period = seconds(
        template.termination_grace_period_seconds.as_ref(),
        "spec.template.terminationGracePeriodSeconds",
        30,
        0,
        errors,
    );
    let strategy = validate_blue_green(&spec.strategy.blue_green, replicas, base_dir, errors);
    if errors.count() > before {
        return None;
    }
    Some(RolloutSpec {
        name,
        replicas,
        template: Template {
            process,
            readiness_probe,
            liveness_probe,
            termination_grace_period,
        },
        progress_deadline,
        strategy: strategy?,
    })
}

/// `metadata.name`: a DNS label (1-63 of `a-z`, `0-9`, `-`; alphanumeric at both ends),
/// as Kubernetes requires, so names are safe in paths, URLs and logs.
fn validate_name(name: &Spanned<String>, errors: &mut Errors<'_>) -> String {
    let text = &name.value;
    let alphanumeric = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    let valid = !text.is_empty()
        && text.len() <= 63
        && text.chars().all(|c| alphanumeric(c) || c == '-')
        && text.starts_with(alphanumeric)
        && text.ends_with(alphanumeric);
    if !valid {
        errors.at(
            &name.referenced,
            "metadata.name",
            format!(
                "expected a name of 1 to 63 lowercase letters, digits and '-', starting and \
                 ending with a letter or digit, found \"{}\"",
                text.escape_debug()
            ),
        );
    }
    text.clone()
}

/// An optional whole number within `min..=max`, or `default` when absent. An
/// out-of-range value is reported, and `default` stands in so checking can go on.
fn number(
    field: Option<&Spanned<i64>>,
    path: &str,
    default: i64,
    min: i64,
    max: i64,
    errors: &mut Errors<'_>,
) -> i64 {
    let Some(field) = field else {
        return default;
    };
    let value = field.value;
    if (min..=max).contains(&value) {
        return value;
    }
    let expected = if max == i64::MAX || max == i64::from(u32::MAX) {
        format!("a whole number of at least {min}")
    } else {
        format!("a whole number from {min} to {max}")
    };
    errors.at(
        &field.referenced,
        path,
        format!("expected {expected}, found {value}"),
    );
    default
}

/// A count such as replicas or a probe threshold.
fn count(
    field: Option<&Spanned<i64>>,
    path: &str,
    default: u32,
    min: u32,
    max: i64,
    errors: &mut Errors<'_>,
) -> u32 {
    let value = number(field, path, i64::from(default), i64::from(min), max, errors);
    // `number` kept the value within u32's range; the fallback is never used.
    u32::try_from(value).unwrap_or(default)
}

/// A `...Seconds` field as a Duration.
fn seconds(
    field: Option<&Spanned<i64>>,
    path: &str,
    default: u64,
    min: u64,
    errors: &mut Errors<'_>,
) -> Duration {
    // Defaults and minimums are small constants, far below i64::MAX.
    let default = i64::try_from(default).unwrap_or(i64::MAX);
    let min = i64::try_from(min).unwrap_or(0);
    let value = number(field, path, default, min, i64::MAX, errors);
    Duration::from_secs(u64::try_from(value).unwrap_or(0))
}

fn validate_process(raw: &RawProcess, base_dir: &Path, errors: &mut Errors<'_>) -> Process {
    let path = "spec.template.process";
    let command: Vec<String> = raw.command.value.iter().map(|c| c.value.clone()).collect();
    match raw.command.value.first() {
        None => errors.at(
            &raw.command.referenced,
            &format!("{path}.command"),
            "expected at least one element, the program to run, found an empty list".to_owned(),
        ),
        Some(program) if program.value.is_empty() => errors.at(
            &program.referenced,
            &format!("{path}.command[0]"),
            "expected the program to run, found an empty string".to_owned(),
        ),
        Some(_) => {}
    }

    let mut env = Vec::new();
    // name -> line of its first definition
    let mut env_lines: HashMap<&str, u64> = HashMap::new();
    for (index, var) in raw.env.iter().flatten().enumerate() {
        let name_path = format!("{path}.env[{index}].name");
        let name = &var.name.value;
        if name.is_empty() || name.contains(['=', '\0']) {
            errors.at(
                &var.name.referenced,
                &name_path,
                format!(
                    "expected a variable name without '=' or NUL, found \"{}\"",
                    name.escape_debug()
                ),
            );
        } else if name == "PORT" {
            errors.at(
                &var.name.referenced,
                &name_path,
                "PORT is set by teal to each instance's own port; use $(PORT) in command or \
                 args to refer to it"
                    .to_owned(),
            );
        } else if let Some(first) = env_lines.get(name.as_str()) {
            errors.at(
                &var.name.referenced,
                &name_path,
                format!(
                    "duplicate env name \"{}\", already set at line {first}",
                    name.escape_debug()
                ),
            );
        } else {
            env_lines.insert(name, var.name.referenced.line());
        }
        env.push(EnvVar {
            name: name.clone(),
            value: var.value.value.clone(),
        });
    }

    let working_dir = match &raw.working_dir {
        None => base_dir.to_path_buf(),
        Some(dir) => {
            if dir.value.is_empty() {
                errors.at(
                    &dir.referenced,
                    &format!("{path}.workingDir"),
                    "expected a directory, found an empty string".to_owned(),
                );
            }
            resolve_path(base_dir, Path::new(&dir.value))
        }
    };

    Process {
        command,
        args: raw.args.clone().unwrap_or_default(),
        env,
        working_dir: Some(working_dir),
    }
}

/// `path` taken from `base_dir` when relative; `.` components dropped so the result
/// reads naturally (`..` is kept: removing it would be wrong across symlinks).
fn resolve_path(base_dir: &Path, path: &Path) -> PathBuf {
    let joined = base_dir.join(path);
    let mut clean = PathBuf::new();
    for component in joined.components() {
        if component != Component::CurDir {
            clean.push(component);
        }
    }
    clean
}

fn validate_probe(raw: &Spanned<RawProbe>, path: &str, errors: &mut Errors<'_>) -> Probe {
    let probe = &raw.value;
    let action = match (&probe.http_get, &probe.tcp_socket) {
        (Some(http), None) => {
            let request_path = match &http.value.path {
                None => "/".to_owned(),
                Some(request_path) => {
                    if !request_path.value.starts_with('/') {
                        errors.at(
                            &request_path.referenced,
                            &format!("{path}.httpGet.path"),
                            format!(
                                "expected a path starting with '/', found \"{}\"",
                                request_path.value.escape_debug()
                            ),
                        );
                    }
                    request_path.value.clone()
                }
            };
            ProbeAction::HttpGet { path: request_path }
        }
        (None, Some(_)) => ProbeAction::TcpSocket,
        (Some(_), Some(tcp)) => {
            errors.at(
                &tcp.referenced,
                path,
                "expected exactly one of httpGet or tcpSocket, found both".to_owned(),
            );
            ProbeAction::TcpSocket
        }
        (None, None) => {
            errors.at(
                &raw.referenced,
                path,
                "expected one of httpGet or tcpSocket, found neither".to_owned(),
            );
            ProbeAction::TcpSocket
        }
    };
    let field = |name: &str| format!("{path}.{name}");
    let no_max = i64::from(u32::MAX);
    Probe {
        action,
        initial_delay: seconds(
            probe.initial_delay_seconds.as_ref(),
            &field("initialDelaySeconds"),
            0,
            0,
            errors,
        ),
        period: seconds(
            probe.period_seconds.as_ref(),
            &field("periodSeconds"),
            10,
            1,
            errors,
        ),
        timeout: seconds(
            probe.timeout_seconds.as_ref(),
            &field("timeoutSeconds"),
            1,
            1,
            errors,
        ),
        success_threshold: count(
            probe.success_threshold.as_ref(),
            &field("successThreshold"),
            1,
            1,
            no_max,
            errors,
        ),
        failure_threshold: count(
            probe.failure_threshold.as_ref(),
            &field("failureThreshold"),
            3,
            1,
            no_max,
            errors,
        ),
    }
}

fn validate_blue_green(
    spanned: &Spanned<RawBlueGreen>,
    replicas: u32,
    base_dir: &Path,
    errors: &mut Errors<'_>,
) -> Option<BlueGreen> {
    let raw = &spanned.value;
    let path = "spec.strategy.blueGreen";
    let active_path = format!("{path}.activeService.listen");
    let preview_path = format!("{path}.previewService.listen");
    let active = match &raw.active_service {
        Some(service) => listen_address(&service.listen, &active_path, errors),
        None => {
            errors.at(
                &spanned.referenced,
                &format!("{path}.activeService"),
                "missing required field \"activeService\", expected {listen: ADDRESS}, the \
                 address users connect to"
                    .to_owned(),
            );
            None
        }
    };
    let preview = match &raw.preview_service {
        None => None,
        Some(service) => {
            let preview = listen_address(&service.listen, &preview_path, errors);
            if let (Some(active), Some(found)) = (active, preview)
                && addresses_collide(active, found)
            {
                errors.at(
                    &service.listen.referenced,
                    &preview_path,
                    format!(
                        "expected an address other than activeService.listen ({active}), \
                         found {found}: both cannot listen on port {}",
                        found.port()
                    ),
                );
            }
            preview
        }
    };

    let active_tls = raw
        .active_service
        .as_ref()
        .and_then(|service| service.tls.as_ref())
        .and_then(|tls| validate_tls(tls, &format!("{path}.activeService.tls"), base_dir, errors));
    let preview_tls = raw
        .preview_service
        .as_ref()
        .and_then(|service| service.tls.as_ref())
        .and_then(|tls| validate_tls(tls, &format!("{path}.previewService.tls"), base_dir, errors));

    let preview_match = match &raw.preview_match {
        None => PreviewMatch::default(),
        Some(found) => PreviewMatch {
            cookie: found
                .cookie
                .as_ref()
                .map(|c| name_value(c, &format!("{path}.previewMatch.cookie"), errors)),
            header: found
                .header
                .as_ref()
                .map(|h| name_value(h, &format!("{path}.previewMatch.header"), errors)),
        },
    };

    let preview_replica_count = raw.preview_replica_count.as_ref().map(|field| {
        // Validated against this rollout's replicas, so the message names that bound.
        count(
            Some(field),
            &format!("{path}.previewReplicaCount"),
            1,
            1,
            i64::from(replicas),
            errors,
        )
    });
    let abort_scale_down_delay = seconds(
        raw.abort_scale_down_delay_seconds.as_ref(),
        &format!("{path}.abortScaleDownDelaySeconds"),
        30,
        0,
        errors,
    );
    let auto_promotion_enabled = raw
        .auto_promotion_enabled
        .as_ref()
        .is_none_or(|enabled| enabled.value);
    let auto_promotion_delay = seconds(
        raw.auto_promotion_seconds.as_ref(),
        &format!("{path}.autoPromotionSeconds"),
        0,
        0,
        errors,
    );
    let scale_down_delay = seconds(
        raw.scale_down_delay_seconds.as_ref(),
        &format!("{path}.scaleDownDelaySeconds"),
        30,
        0,
        errors,
    );
    let drain_timeout = seconds(
        raw.drain_timeout_seconds.as_ref(),
        &format!("{path}.drainTimeoutSeconds"),
        30,
        0,
        errors,
    );
    let pre_promotion_analysis = raw.pre_promotion_analysis.as_ref().map(|found| {
        analysis::rollout_analysis(found, &format!("{path}.prePromotionAnalysis"), errors)
    });
    let post_promotion_analysis = raw.post_promotion_analysis.as_ref().map(|found| {
        analysis::rollout_analysis(found, &format!("{path}.postPromotionAnalysis"), errors)
    });
    let load_test = raw
        .load_test
        .as_ref()
        .map(|found| analysis::load_test(found, &format!("{path}.loadTest"), errors));
    if let (Some(found), None) = (&raw.load_test, &pre_promotion_analysis) {
        errors.at(
            &found.referenced,
            &format!("{path}.loadTest"),
            "a loadTest runs during prePromotionAnalysis, and there is none".to_owned(),
        );
    }
    let webhooks = analysis::webhooks(
        raw.webhooks.as_deref().unwrap_or_default(),
        &format!("{path}.webhooks"),
        errors,
    );
    let notifications = analysis::notifications(
        raw.notifications.as_deref().unwrap_or_default(),
        &format!("{path}.notifications"),
        errors,
    );
    let proxy = raw
        .proxy
        .as_ref()
        .map(|found| validate_proxy(found, &format!("{path}.proxy"), errors))
        .unwrap_or_default();
    // Only now, with every field checked: a bad active address ends the strategy here.
    Some(BlueGreen {
        active_listen: active?,
        preview_listen: preview,
        active_tls,
        preview_tls,
        preview_match,
        auto_promotion_enabled,
        auto_promotion_delay,
        scale_down_delay,
        // Argo's convention: 0 means the aborted candidate is never scaled down.
        abort_scale_down_delay: (!abort_scale_down_delay.is_zero())
            .then_some(abort_scale_down_delay),
        preview_replica_count,
        drain_timeout,
        pre_promotion_analysis,
        post_promotion_analysis,
        load_test,
        webhooks,
        notifications,
        proxy,
    })
}

/// `blueGreen.proxy`: every field optional, durations Go-style.
fn validate_proxy(raw: &RawProxy, path: &str, errors: &mut Errors<'_>) -> ProxySettings {
    // `min`: the shortest duration that makes sense (a zero connect timeout would fail
    // every connection).
    let mut duration = |field: &Option<Spanned<String>>, name: &str, min: Duration| {
        let field = field.as_ref()?;
        let path = format!("{path}.{name}");
        match parse_duration(&field.value) {
            Ok(duration) if duration >= min => Some(duration),
            Ok(_) => {
                errors.at(
                    &field.referenced,
                    &path,
                    format!(
                        "expected a duration of at least {min:?}, found \"{}\"",
                        field.value.escape_debug()
                    ),
                );
                None
            }
            Err(message) => {
                errors.at(&field.referenced, &path, message);
                None
            }
        }
    };
    let at_least_1ms = Duration::from_millis(1);
    let connect_timeout = duration(&raw.connect_timeout, "connectTimeout", at_least_1ms);
    let response_header_timeout = duration(
        &raw.response_header_timeout,
        "responseHeaderTimeout",
        at_least_1ms,
    );
    let upstream_idle_timeout = duration(
        &raw.upstream_idle_timeout,
        "upstreamIdleTimeout",
        at_least_1ms,
    );
    let upgraded_drain_timeout = duration(
        &raw.upgraded_drain_timeout,
        "upgradedDrainTimeout",
        Duration::ZERO,
    );
    let cooldown = raw
        .passive_health
        .as_ref()
        .and_then(|health| duration(&health.cooldown, "passiveHealth.cooldown", Duration::ZERO));
    let bytes = |field: &Option<Spanned<i64>>, name: &str, min: i64, errors: &mut Errors<'_>| {
        let field = field.as_ref()?;
        let value = number(
            Some(field),
            &format!("{path}.{name}"),
            -1,
            min,
            i64::MAX,
            errors,
        );
        u64::try_from(value).ok()
    };
    // A head needs room for at least a request line and a Host header.
    let max_request_header_bytes = bytes(
        &raw.max_request_header_bytes,
        "maxRequestHeaderBytes",
        64,
        errors,
    );
    let max_request_body_bytes = bytes(
        &raw.max_request_body_bytes,
        "maxRequestBodyBytes",
        0,
        errors,
    );
    let passive_health_failures = raw.passive_health.as_ref().and_then(|health| {
        let field = health.consecutive_failures.as_ref()?;
        Some(count(
            Some(field),
            &format!("{path}.passiveHealth.consecutiveFailures"),
            0,
            0,
            i64::from(u32::MAX),
            errors,
        ))
    });
    let upstream_protocol =
        raw.upstream_protocol
            .as_ref()
            .map(|field| match field.value.as_str() {
                "http1" => UpstreamProtocol::Http1,
                "h2c" => UpstreamProtocol::H2c,
                other => {
                    errors.at(
                        &field.referenced,
                        &format!("{path}.upstreamProtocol"),
                        format!("expected http1 or h2c, found \"{}\"", other.escape_debug()),
                    );
                    UpstreamProtocol::Http1
                }
            });
    ProxySettings {
        connect_timeout,
        response_header_timeout,
        upstream_idle_timeout,
        upgraded_drain_timeout,
        max_request_header_bytes,
        max_request_body_bytes,
        passive_health_failures,
        passive_health_cooldown: cooldown,
        upstream_protocol,
    }
}

/// Parses a `listen` address: an IP literal with a port, or `localhost:PORT`.
fn listen_address(
    raw: &Spanned<String>,
    path: &str,
    errors: &mut Errors<'_>,
) -> Option<SocketAddr> {
    let text = raw.value.trim();
    let parsed = text.parse::<SocketAddr>().ok().or_else(|| {
        // `localhost` is the one name accepted: resolving others would be I/O.
        let (host, port) = text.rsplit_once(':')?;
        let port = port.parse::<u16>().ok()?;
        host.eq_ignore_ascii_case("localhost")
            .then(|| SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
    });
    if parsed.is_none() {
        errors.at(
            &raw.referenced,
            path,
            format!(
                "expected an address like 127.0.0.1:8080, found \"{}\"",
                raw.value.escape_debug()
            ),
        );
    }
    parsed
}

/// A service's `tls`: both files are required; relative paths are taken from
/// `base_dir`. Whether they hold a usable certificate and key is checked when the
/// listener is set up (this crate reads no files).
fn validate_tls(
    raw: &Spanned<RawTls>,
    path: &str,
    base_dir: &Path,
    errors: &mut Errors<'_>,
) -> Option<TlsFiles> {
    let mut file = |field: &Option<Spanned<String>>, name: &str, what: &str| match field {
        None => {
            errors.at(
                &raw.referenced,
                &format!("{path}.{name}"),
                format!("missing required field \"{name}\", expected the path of the PEM {what}"),
            );
            None
        }
        Some(found) if found.value.trim().is_empty() => {
            errors.at(
                &found.referenced,
                &format!("{path}.{name}"),
                format!("expected the path of the PEM {what}, found an empty string"),
            );
            None
        }
        Some(found) => Some(resolve_path(base_dir, Path::new(&found.value))),
    };
    let cert_file = file(&raw.value.cert_file, "certFile", "certificate chain");
    let key_file = file(&raw.value.key_file, "keyFile", "private key");
    Some(TlsFiles {
        cert_file: cert_file?,
        key_file: key_file?,
    })
}

/// Whether two listeners would fight over one port: the same address, or the same
/// port where one listens on every address (`0.0.0.0` or `[::]`). Port 0 asks the OS
/// for a free port, so it never collides.
fn addresses_collide(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port()
        && a.port() != 0
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

/// A `previewMatch` cookie or header. Names must be RFC 9110 tokens (which also makes
/// them non-empty): anything else could never match a request.
fn name_value(raw: &RawNameValue, path: &str, errors: &mut Errors<'_>) -> NameValue {
    if !is_token(&raw.name.value) {
        errors.at(
            &raw.name.referenced,
            &format!("{path}.name"),
            format!(
                "expected a non-empty name of letters, digits and !#$%&'*+-.^_`|~, found \"{}\"",
                raw.name.value.escape_debug()
            ),
        );
    }
    NameValue {
        name: raw.name.value.clone(),
        value: raw.value.value.clone(),
    }
}

/// RFC 9110 `token`: one or more `tchar`s.
fn is_token(text: &str) -> bool {
    !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c))
}

mod analysis;
#[cfg(test)]
mod tests;
