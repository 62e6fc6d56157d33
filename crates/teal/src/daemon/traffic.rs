//! Traffic history: once a second the daemon reads each proxy's cumulative counters;
//! rates, success and latency over any window are differences of two readings.

use std::collections::VecDeque;

use teal_core::Color;
use teal_core::api::{ColorTraffic, TrafficSample, TrafficView};
use teal_core::metrics::quantile_from_buckets;
use teal_proxy::{ColorStats, LATENCY_BUCKETS_MS, Proxy};

/// How often a reading is taken.
pub const INTERVAL_MS: u64 = 1000;
/// Readings kept: five minutes.
const KEPT: usize = 301;
/// The window of the summary shown beside a rollout.
const SUMMARY_WINDOW: usize = 10;

/// One reading of both colors' counters.
#[derive(Clone, Debug)]
struct Reading {
    at_ms: u64,
    /// Per color: the revision routed there (0 when none) and its counters.
    colors: [(u64, ColorStats); 2],
}

/// The readings of one rollout, oldest first.
pub struct TrafficLog {
    readings: VecDeque<Reading>,
}

fn index(color: Color) -> usize {
    match color {
        Color::Blue => 0,
        Color::Green => 1,
    }
}

impl TrafficLog {
    /// The log of a proxy created at `now_ms`: its counters start at zero then, so
    /// that is the first reading, and requests served before the sampler's first
    /// tick are counted too.
    pub fn new(now_ms: u64) -> Self {
        let zero = Reading {
            at_ms: now_ms,
            colors: [(0, ColorStats::default()), (0, ColorStats::default())],
        };
        TrafficLog {
            readings: VecDeque::from([zero]),
        }
    }

    /// Takes a reading of `proxy` at `now_ms`.
    pub fn record(&mut self, proxy: &Proxy, now_ms: u64) {
        let routes = proxy.routes();
        let revision = |color: Color| {
            [routes.active.as_ref(), routes.preview.as_ref()]
                .into_iter()
                .flatten()
                .find(|backend| backend.color == color)
                .map_or(0, |backend| backend.revision)
        };
        let reading = Reading {
            at_ms: now_ms,
            colors: Color::ALL.map(|color| (revision(color), proxy.stats(color))),
        };
        if self.readings.len() == KEPT {
            self.readings.pop_front();
        }
        self.readings.push_back(reading);
    }

    /// Traffic over (up to) the last ten seconds.
    pub fn summary(&self) -> Vec<ColorTraffic> {
        let Some(newest) = self.readings.back() else {
            return Vec::new();
        };
        let oldest = &self.readings[self.readings.len().saturating_sub(SUMMARY_WINDOW + 1)];
        window(oldest, newest)
    }

    /// One sample per interval, oldest first.
    pub fn view(&self) -> TrafficView {
        let samples = self
            .readings
            .iter()
            .zip(self.readings.iter().skip(1))
            .map(|(older, newer)| TrafficSample {
                at_ms: newer.at_ms,
                colors: window(older, newer),
            })
            .collect();
        TrafficView {
            interval_ms: INTERVAL_MS,
            samples,
        }
    }
}

/// What each color served between two readings; a color that neither served nor was
/// routed is left out.
fn window(older: &Reading, newer: &Reading) -> Vec<ColorTraffic> {
    let seconds = (newer.at_ms.saturating_sub(older.at_ms) as f64 / 1000.0).max(0.001);
    Color::ALL
        .into_iter()
        .filter_map(|color| {
            let (revision, now) = newer.colors[index(color)];
            let (_, before) = older.colors[index(color)];
            let served = now.since(&before);
            let requests = served.requests;
            if revision == 0 && requests == 0 && now.in_flight == 0 {
                return None;
            }
            let answered = served.responses();
            let failed = served.responses_5xx;
            Some(ColorTraffic {
                color,
                revision,
                requests,
                errors: failed,
                requests_per_second: requests as f64 / seconds,
                success_rate: (answered > 0).then(|| (answered - failed) as f64 / answered as f64),
                p99_ms: quantile_from_buckets(&LATENCY_BUCKETS_MS, &served.latency_buckets, 0.99),
                in_flight: now.in_flight,
            })
        })
        .collect()
}
