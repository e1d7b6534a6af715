-- wrk reporter for bench/http_bench.py.
-- done() prints one machine-readable line so the harness never has to scrape wrk's
-- human-oriented summary. errors.status is wrk's own count of responses with
-- status > 399 (the same number as its "Non-2xx or 3xx responses" line); a figure is
-- trusted only when that and the read/write error counts are zero.

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH requests=%d bytes=%d duration_us=%d status=%d connect=%d read=%d write=%d"
      .. " timeout=%d p50_us=%d p99_us=%d\n",
    summary.requests, summary.bytes, summary.duration, e.status, e.connect, e.read,
    e.write, e.timeout, latency:percentile(50.0), latency:percentile(99.0)))
end
