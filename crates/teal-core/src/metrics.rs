//! Reading latency histograms: the proxy counts responses per latency bucket, and
//! quantiles are estimated from the counts of a time window.

/// Estimates the `quantile` (0.0..=1.0) of a histogram given per-bucket counts (not
/// cumulative) and the buckets' upper bounds; `counts` has one more entry than
/// `bounds`, for values above the last bound. Interpolates linearly inside the bucket,
/// as Prometheus' `histogram_quantile` does. None when the histogram is empty.
pub fn quantile_from_buckets(bounds: &[f64], counts: &[u64], quantile: f64) -> Option<f64> {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return None;
    }
    let target = quantile.clamp(0.0, 1.0) * total as f64;
    let mut below = 0u64;
    for (index, &count) in counts.iter().enumerate() {
        if count > 0 && (below + count) as f64 >= target {
            let lower = if index == 0 { 0.0 } else { bounds[index - 1] };
            // Above the last bound there is no upper edge: report the last bound, as
            // Prometheus does, rather than invent one.
            let Some(&upper) = bounds.get(index) else {
                return bounds.last().copied();
            };
            let within = (target - below as f64) / count as f64;
            return Some(lower + (upper - lower) * within);
        }
        below += count;
    }
    bounds.last().copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOUNDS: [f64; 3] = [1.0, 10.0, 100.0];

    #[test]
    fn quantiles_interpolate_inside_the_bucket() {
        let cases: Vec<(&str, [u64; 4], f64, Option<f64>)> = vec![
            ("empty", [0, 0, 0, 0], 0.99, None),
            ("all in the first bucket", [10, 0, 0, 0], 0.5, Some(0.5)),
            (
                "p99 of 99 fast and 1 slow lands in the fast bucket's top",
                [99, 0, 1, 0],
                0.99,
                Some(1.0),
            ),
            (
                "p99 with 2% slow falls in the slow bucket",
                [98, 0, 2, 0],
                0.99,
                Some(10.0 + 90.0 * 0.5),
            ),
            (
                "beyond the last bound reports the last bound",
                [0, 0, 0, 5],
                0.99,
                Some(100.0),
            ),
            ("median across buckets", [2, 2, 0, 0], 0.5, Some(1.0)),
        ];
        for (name, counts, quantile, expected) in cases {
            assert_eq!(
                quantile_from_buckets(&BOUNDS, &counts, quantile),
                expected,
                "{name}"
            );
        }
    }
}
