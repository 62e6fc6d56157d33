-- wrk script used by bench/proxy.sh: after the run, one machine-readable line with
-- requests/s, the p50/p99/p99.9 latencies (wrk's --latency prints p50 and p99 only)
-- and the errors wrk saw (socket errors, and answers with a status of 400 or more).
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "WRK requests=%d rps=%.1f p50_us=%d p99_us=%d p999_us=%d max_us=%d errors=%d non2xx=%d\n",
    summary.requests, summary.requests / (summary.duration / 1e6),
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9), latency.max,
    e.connect + e.read + e.write + e.timeout + e.status, e.status))
end
