//! The daemon's `/metrics`, in Prometheus' text format.

use teal_core::Color;
use teal_core::api::RolloutView;
use teal_core::rollout::Phase;
use teal_proxy::{ColorStats, LATENCY_BUCKETS_MS};

/// A rollout as shown, with its proxy's counters per color: the revision the color
/// serves and what was counted since it began serving it.
pub type RolloutMetrics = (RolloutView, Vec<(Color, u64, ColorStats)>);

/// One metric family: its header and its samples, written together as the format
/// requires.
struct Family {
    name: &'static str,
    kind: &'static str,
    help: &'static str,
    samples: Vec<String>,
}

impl Family {
    fn new(name: &'static str, kind: &'static str, help: &'static str) -> Family {
        Family {
            name,
            kind,
            help,
            samples: Vec::new(),
        }
    }

    fn sample(&mut self, suffix: &str, labels: &str, value: impl std::fmt::Display) {
        self.samples
            .push(format!("{}{suffix}{{{labels}}} {value}", self.name));
    }
}

/// Renders every rollout's state and its proxy's counters.
pub fn render(rollouts: &[RolloutMetrics]) -> String {
    let mut phase = Family::new(
        "teal_rollout_phase",
        "gauge",
        "1 for the rollout's current phase.",
    );
    let mut revision = Family::new(
        "teal_rollout_revision",
        "gauge",
        "The newest revision of the rollout.",
    );
    let mut active = Family::new(
        "teal_rollout_active_revision",
        "gauge",
        "The revision users are routed to.",
    );
    let mut switches = Family::new(
        "teal_rollout_switches_total",
        "counter",
        "Times users were switched to another color.",
    );
    let mut aborts = Family::new(
        "teal_rollout_aborts_total",
        "counter",
        "Times a candidate was aborted.",
    );
    let mut instances = Family::new("teal_instances", "gauge", "Wanted instances per color.");
    let mut ready = Family::new(
        "teal_instances_ready",
        "gauge",
        "Ready instances per color.",
    );
    let mut requests = Family::new(
        "teal_proxy_requests_total",
        "counter",
        "Requests routed to a color.",
    );
    let mut responses = Family::new(
        "teal_proxy_responses_total",
        "counter",
        "Responses by status class.",
    );
    let mut errors = Family::new(
        "teal_proxy_errors_total",
        "counter",
        "502/503/504 answers teal made itself.",
    );
    let mut in_flight = Family::new("teal_proxy_in_flight", "gauge", "Requests being served.");
    let mut upgraded = Family::new(
        "teal_proxy_upgraded_connections",
        "gauge",
        "Upgraded connections (WebSocket) open.",
    );
    let mut bytes = Family::new(
        "teal_proxy_bytes_total",
        "counter",
        "Body bytes from clients (in) and to clients (out), upgraded connections included.",
    );
    let mut latency = Family::new(
        "teal_proxy_response_seconds",
        "histogram",
        "Time to the response head.",
    );
    let mut analysis_phase = Family::new(
        "teal_analysis_run_phase",
        "gauge",
        "1 for the phase of the latest analysis run of the newest revision.",
    );
    let mut analysis_measurements = Family::new(
        "teal_analysis_measurements",
        "gauge",
        "Measurements of the latest analysis run, per metric and verdict.",
    );

    for (view, stats) in rollouts {
        let rollout = format!("rollout=\"{}\"", view.name);
        for candidate in [
            Phase::Healthy,
            Phase::Progressing,
            Phase::Paused,
            Phase::Degraded,
        ] {
            let labels = format!("{rollout},phase=\"{candidate}\"");
            phase.sample("", &labels, u8::from(view.phase == candidate));
        }
        revision.sample("", &rollout, view.revision);
        active.sample("", &rollout, view.active_revision.unwrap_or(0));
        switches.sample("", &rollout, view.status.switches);
        if let Some(run) = &view.analysis {
            let run_labels = format!(
                "{rollout},kind=\"{}\",revision=\"{}\"",
                run.kind, run.revision
            );
            for candidate in ["Running", "Successful", "Failed", "Error", "Inconclusive"] {
                analysis_phase.sample(
                    "",
                    &format!("{run_labels},phase=\"{candidate}\""),
                    u8::from(run.phase.as_str() == candidate),
                );
            }
            for metric in &run.metrics {
                let name = metric.name.replace('\\', "\\\\").replace('"', "\\\"");
                for (verdict, count) in [
                    ("Successful", metric.successful),
                    ("Failed", metric.failed),
                    ("Inconclusive", metric.inconclusive),
                    ("Error", metric.errors),
                ] {
                    analysis_measurements.sample(
                        "",
                        &format!("{run_labels},metric=\"{name}\",verdict=\"{verdict}\""),
                        count,
                    );
                }
            }
        }
        aborts.sample("", &rollout, view.status.aborts);
        for color in &view.colors {
            let labels = format!(
                "{rollout},color=\"{}\",revision=\"{}\"",
                color.color, color.revision
            );
            instances.sample("", &labels, color.replicas);
            ready.sample("", &labels, color.ready);
        }
        for (color, revision, stat) in stats {
            let labels = format!("{rollout},color=\"{color}\",revision=\"{revision}\"");
            requests.sample("", &labels, stat.requests);
            for (class, count) in [
                ("2xx", stat.responses_2xx),
                ("3xx", stat.responses_3xx),
                ("4xx", stat.responses_4xx),
                ("5xx", stat.responses_5xx),
            ] {
                responses.sample("", &format!("{labels},class=\"{class}\""), count);
            }
            errors.sample("", &labels, stat.proxy_errors);
            in_flight.sample("", &labels, stat.in_flight);
            upgraded.sample("", &labels, stat.upgraded);
            bytes.sample("", &format!("{labels},direction=\"in\""), stat.bytes_in);
            bytes.sample("", &format!("{labels},direction=\"out\""), stat.bytes_out);
            let mut cumulative = 0;
            for (index, count) in stat.latency_buckets.iter().enumerate() {
                cumulative += count;
                let le = LATENCY_BUCKETS_MS
                    .get(index)
                    .map_or("+Inf".to_owned(), |ms| (ms / 1000.0).to_string());
                latency.sample("_bucket", &format!("{labels},le=\"{le}\""), cumulative);
            }
            latency.sample("_sum", &labels, stat.latency_sum_micros as f64 / 1e6);
            latency.sample("_count", &labels, cumulative);
        }
    }

    let mut out = String::new();
    for family in [
        phase,
        revision,
        active,
        switches,
        aborts,
        instances,
        ready,
        requests,
        responses,
        errors,
        in_flight,
        upgraded,
        bytes,
        latency,
        analysis_phase,
        analysis_measurements,
    ] {
        out.push_str(&format!(
            "# HELP {} {}\n# TYPE {} {}\n",
            family.name, family.help, family.name, family.kind
        ));
        for sample in family.samples {
            out.push_str(&sample);
            out.push('\n');
        }
    }
    out
}
