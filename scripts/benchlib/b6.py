"""B6: orchestration overhead per job, read from the real worker's own histogram.

The worker times every delivery it handles and subtracts the time spent inside provider
calls, deliberate waits (limiter sleeps, retry backoff, when the waiting code reports them)
and batch finalization; the rest is recorded as `batchyard_job_overhead_seconds`
(`workers/src/metrics/overhead.rs`). B6 runs `batchyard worker --metrics-addr 127.0.0.1:0`
against the zero-latency simulated provider (as B1 does), scrapes `/metrics` once every job
has been recorded, and reads p50/p99 off the buckets: linear interpolation inside the bucket
that holds the rank (as Prometheus's `histogram_quantile` does), with that bucket's bounds
printed so the resolution is plain. The target is decided exactly, not interpolated: 1 ms is
a bucket bound, so "p99 <= 1 ms" holds iff at least 99% of the deliveries fall in `le="0.001"`.
The mean is exact too (`_sum / _count`).

Two kinds of run. `B6` (judged; 3 runs in the full benchmark, the median one by p99 is the
figure and all are listed): `--concurrency 1`, so a job's wall time is its own path (route,
the cache and health checks, encode, store, settle, ack) and not time spent queued behind
other jobs of the same process. `B6-c64` (reported): B1's `--concurrency 64` on the same
saturating load, where each job also waits for the CPU behind up to 63 others: by Little's
law its wall time is about concurrency ÷ throughput whatever the per-job cost, so it
measures saturation (B1's subject), not overhead.
"""

import os
import re
import subprocess
import time
import urllib.request

from .common import (
    BATCHYARD,
    POLL,
    PROCS,
    BenchError,
    RedisServer,
    child_env,
    log,
    submit,
    tail,
    write_config,
    write_jsonl,
)
from .machine import busy_others, loadavg

B6_CONCURRENCY = 1  # the judged runs (see the module doc)
B6_SATURATED = 64  # B6-c64, B1's setting
B6_TARGET_S = 0.001
B6_TARGET = "p99 <= 1 ms"
OVERHEAD = "batchyard_job_overhead_seconds"
JOB_DURATION = "batchyard_job_duration_seconds"
CALL_DURATION = "batchyard_provider_call_duration_seconds"


def scrape(url):
    try:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback
        with opener.open(url, timeout=30) as r:
            return r.read().decode(errors="replace")
    except OSError as e:
        raise BenchError(f"GET {url} failed: {e}")


def histogram(text, name):
    """{"buckets": [(le, cumulative count)], "sum", "count"} of one histogram, its label sets
    summed (`le` aside), or None when the text has no such series."""
    buckets, total, count = {}, 0.0, 0
    seen = False
    for line in text.splitlines():
        if not line.startswith(name):
            continue
        m = re.match(rf'^{name}(_bucket|_sum|_count)(?:\{{(.*)\}})?\s+(\S+)', line)
        if not m:
            continue
        seen = True
        kind, labels, value = m.group(1), m.group(2) or "", float(m.group(3))
        if kind == "_bucket":
            le = re.search(r'le="([^"]+)"', labels)
            if le:
                bound = float("inf") if le.group(1) == "+Inf" else float(le.group(1))
                buckets[bound] = buckets.get(bound, 0) + int(value)
        elif kind == "_sum":
            total += value
        else:
            count += int(value)
    if not seen:
        return None
    return {"buckets": sorted(buckets.items()), "sum": total, "count": count}


def quantile(h, q):
    """(value, lower bound, upper bound) of the q-quantile: linear inside the bucket holding the
    rank; in the +Inf bucket the value is None (only "more than the last bound" is known)."""
    rank = q * h["count"]
    lo, below = 0.0, 0
    for le, cum in h["buckets"]:
        if cum >= rank and cum > 0:
            if le == float("inf"):
                return None, lo, le
            inside = cum - below
            frac = (rank - below) / inside if inside else 1.0
            return lo + (le - lo) * frac, lo, le
        lo, below = le, cum
    return None, lo, float("inf")


def share_within(h, bound):
    """Exact share of observations <= `bound` (which must be a bucket bound)."""
    for le, cum in h["buckets"]:
        if abs(le - bound) < 1e-12:
            return cum / h["count"] if h["count"] else 0.0
    raise BenchError(f"{bound} s is not a bucket bound of {OVERHEAD}")


def us(secs):
    if secs is None:
        return "—"
    return f"{secs * 1e6:,.0f} µs" if secs < 0.001 else f"{secs * 1e3:,.2f} ms"


def bound_text(lo, hi):
    return f"{us(lo)}–{us(hi) if hi != float('inf') else '+Inf'}"


def run_b6(workdir, jsonl, n, concurrency, timeout, rid, k=1):
    """One B6 run: fresh redis, submit n lines, a worker serving metrics, until every job is in
    the histogram."""
    name = f"bench-{rid.lower()}-{k}"
    server = RedisServer(workdir, name)
    worker = None
    try:
        config, _ = write_config(workdir, name, server.url)
        batch_id, sub_secs, _, _ = submit(workdir, config, jsonl, timeout, name)
        key = f"by:batch:{{{batch_id}}}"
        log_path = os.path.join(workdir, f"worker-{name}.log")
        log(f"{rid}: submitted {n:,} in {sub_secs:.1f} s; starting batchyard worker --concurrency {concurrency} --metrics-addr 127.0.0.1:0")
        load0, others0 = loadavg(), busy_others()
        with open(log_path, "w") as out:
            t0 = time.monotonic()
            worker = PROCS.start(
                [BATCHYARD, "--config", config, "worker", "--concurrency", str(concurrency),
                 "--metrics-addr", "127.0.0.1:0"],
                stdout=out, stderr=subprocess.STDOUT, cwd=workdir, env=child_env(),
            )
        url, st, done, failed = None, None, 0, 0
        deadline = t0 + timeout
        last_log = t0
        while True:
            now = time.monotonic()
            if worker.poll() is not None:
                raise BenchError(f"{rid}: the worker exited {worker.returncode}:\n{tail(log_path)}")
            if url is None:
                m = re.search(r"metrics on (http://[0-9.]+:\d+/metrics)", open(log_path, errors="replace").read())
                url = m.group(1) if m else None
            st, done, failed = server.client.cmd("HMGET", key, "state", "completed", "failed")
            if st in ("completed", "failed", "expired", "cancelled"):
                break
            if now > deadline:
                raise BenchError(f"{rid}: batch {batch_id} was {st!r} with {done} completed of {n:,} after {timeout:.0f} s")
            if now - last_log >= 5:
                log(f"  ... {int(done or 0) + int(failed or 0):,}/{n:,} settled, state {st}")
                last_log = now
            time.sleep(POLL)
        secs = time.monotonic() - t0
        if st != "completed":
            raise BenchError(f"{rid}: batch {batch_id} ended {st!r} ({failed} failed):\n{tail(log_path)}")
        if url is None:
            raise BenchError(f"{rid}: the worker never logged `metrics on http://ADDR/metrics`:\n{tail(log_path)}")
        # The last job records its overhead just after its ack: wait until all n are in.
        scrape_deadline = time.monotonic() + 10
        while True:
            text = scrape(url)
            h = histogram(text, OVERHEAD)
            if h and h["count"] >= n:
                break
            if time.monotonic() > scrape_deadline:
                raise BenchError(f"{rid}: {OVERHEAD} holds {h['count'] if h else 'no'} observations, expected {n:,}")
            time.sleep(0.2)
        load1, others1 = loadavg(), busy_others()
        others = {k: max(others0.get(k, 0), others1.get(k, 0)) for k in set(others0) | set(others1)}
        jobs = histogram(text, JOB_DURATION)
        calls = histogram(text, CALL_DURATION)
        p50, p50_lo, p50_hi = quantile(h, 0.50)
        p99, p99_lo, p99_hi = quantile(h, 0.99)
        res = {
            "rid": rid, "k": k, "concurrency": concurrency, "jobs": n, "secs": secs, "jobs_per_sec": n / secs,
            "count": h["count"], "mean": h["sum"] / h["count"],
            "p50": p50, "p50_bucket": (p50_lo, p50_hi), "p99": p99, "p99_bucket": (p99_lo, p99_hi),
            "within": share_within(h, B6_TARGET_S), "bounds": [le for le, _ in h["buckets"]],
            "job_mean": jobs["sum"] / jobs["count"] if jobs and jobs["count"] else None,
            "calls_per_job": calls["count"] / h["count"] if calls else 0.0,
            "call_mean": calls["sum"] / calls["count"] if calls and calls["count"] else None,
            "buckets": h["buckets"], "load": (load0, load1), "others": others,
        }
        log(
            f"{rid} #{k}: {n:,} jobs in {secs:.1f} s ({n / secs:,.0f} jobs/s); overhead p50 {us(p50)} (bucket {bound_text(p50_lo, p50_hi)}), "
            f"p99 {us(p99)} (bucket {bound_text(p99_lo, p99_hi)}), mean {us(res['mean'])}, {res['within']:.3%} within 1 ms; "
            f"job duration mean {us(res['job_mean'])}; {res['calls_per_job']:.2f} provider calls per job, mean {us(res['call_mean'])}"
        )
        return res
    finally:
        if worker is not None:
            PROCS.stop(worker)
        server.stop()


def bench_overhead(workdir, n, repeats, timeout):
    """`repeats` judged runs at concurrency 1 (the median one is the figure: one run on a shared
    machine can catch a burst of other work), then one at B1's concurrency."""
    jsonl = os.path.join(workdir, f"b6-{n}.jsonl")
    write_jsonl(jsonl, n)
    try:
        runs = [run_b6(workdir, jsonl, n, B6_CONCURRENCY, timeout, "B6", k) for k in range(1, repeats + 1)]
        return runs + [run_b6(workdir, jsonl, n, B6_SATURATED, timeout, "B6-c64")]
    finally:
        os.remove(jsonl)


def measured_text(r):
    return (
        f"p50 {us(r['p50'])}, p99 {us(r['p99'])} (buckets {bound_text(*r['p50_bucket'])} and "
        f"{bound_text(*r['p99_bucket'])}); {r['within']:.3%} of jobs within 1 ms (exact); mean {us(r['mean'])}"
    )


def figure_text(r):
    return (
        f"orchestration overhead per job (handling minus provider calls, deliberate waits and finalization; "
        f"worker's `{OVERHEAD}`), `--concurrency {r['concurrency']}`, {r['jobs']:,} jobs, simulated provider at zero latency"
    )


def b6_rows(results):
    rows = []
    # Ranked by p99 (None: past the last bound); p99 > 1 ms iff fewer than 99% are within 1 ms.
    judged = sorted((r for r in results if r["rid"] == "B6"), key=lambda r: (r["p99"] is None, r["p99"] or 0.0))
    if judged:
        med = judged[len(judged) // 2]
        runs = ""
        if len(judged) > 1:
            runs = (f" (the median of {len(judged)} runs by p99: run #{med['k']}; every run's p99: "
                    + " / ".join(us(r["p99"]) for r in sorted(judged, key=lambda r: r["k"])) + ")")
        rows.append(("B6", figure_text(med), B6_TARGET, measured_text(med) + runs, med["within"] >= 0.99))
    for r in results:
        if r["rid"] == "B6-c64":
            rows.append(("B6-c64", figure_text(r) + " (B1's setting: saturated, each job also waits behind the others in flight)",
                         "— (diagnostic)", measured_text(r) + f"; {r['jobs_per_sec']:,.0f} jobs/s with {r['concurrency']} in flight", None))
    return rows


def b6_lines(results):
    """Per-run detail and the method, for BENCHMARKS.md."""
    out = []
    for r in results:
        out.append(
            f"- {r['rid']} run #{r['k']} (`--concurrency {r['concurrency']}`): {r['jobs']:,} jobs in {r['secs']:.1f} s "
            f"({r['jobs_per_sec']:,.0f} jobs/s, worker start to `completed`); overhead p50 {us(r['p50'])}, p99 {us(r['p99'])}, "
            f"mean {us(r['mean'])}; job duration (`{JOB_DURATION}`) mean {us(r['job_mean'])}; "
            f"{r['calls_per_job']:.2f} provider calls per job, mean {us(r['call_mean'])}; load average "
            f"{' '.join(r['load'][0])} at start, {' '.join(r['load'][1])} at end"
            + (f" ({', '.join(f'{v}× {k}' for k, v in sorted(r['others'].items()))} running alongside)" if r["others"] else "")
            + "; cumulative counts "
            + ", ".join(f"≤{us(le) if le != float('inf') else '+Inf'}: {cum:,}" for le, cum in r["buckets"] if cum) + "."
        )
    if results:
        out.append(
            "- B6 method: the worker's own histogram `" + OVERHEAD + "` (see `workers/src/metrics/overhead.rs`): per "
            "delivery, the handler's wall time minus the time inside provider calls and batch finalization, and minus "
            "deliberate waits (limiter sleeps, retry backoff) where the waiting code reports them (B6's setup has none: "
            "no declared limits, no retries). It includes reading the batch record, routing, cache and health "
            "checks, encoding and storing the outcome (one `file://` result file), the ledger settle and the ack; not the "
            "claim (deliveries are claimed in blocks before the handler starts; B1r measures that path). Scraped from "
            "`worker --metrics-addr 127.0.0.1:0` once all jobs were recorded; p50/p99 interpolated linearly inside the "
            "bucket holding the rank (bucket bounds, seconds: "
            + ", ".join(f"{b:g}" for b in results[0]["bounds"] if b != float("inf"))
            + ", +Inf); the verdict is exact: 1 ms is a bucket bound, so p99 <= 1 ms iff >= 99% of jobs are in "
            "`le=\"0.001\"`. B6 is judged at `--concurrency 1`; B6-c64 repeats it at B1's concurrency 64, where a job's "
            "wall time also holds its wait for the CPU behind the other jobs (about concurrency ÷ throughput by Little's "
            "law), so it shows saturation, not per-job work. The judged figure is the median of the concurrency-1 runs by p99; "
            "every run is listed above."
        )
    return out

