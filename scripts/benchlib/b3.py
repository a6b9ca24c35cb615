"""B3: `batchyard submit` of 1,000,000 lines (and Redis memory per pending job)."""

import os

from .common import BenchError, RedisServer, log, redis_cpu, submit, write_config, write_jsonl


def bench_submit(workdir, n, timeout):
    """B3 (+ Redis memory per pending job)."""
    log(f"B3: generating {n:,} lines")
    jsonl = os.path.join(workdir, f"submit-{n}.jsonl")
    size = write_jsonl(jsonl, n)
    server = RedisServer(workdir, "b3")
    try:
        config, _ = write_config(workdir, "bench-submit", server.url)
        before = server.client.used_memory()
        log(f"B3: batchyard submit of {n:,} lines (redis on port {server.port})")
        rcpu0 = redis_cpu(server.client)
        batch_id, wall, maxrss, cpu = submit(workdir, config, jsonl, timeout, "b3")
        rcpu = redis_cpu(server.client) - rcpu0
        after = server.client.used_memory()
        # Fair share: the stream holds a window of ready jobs, the rest wait in the batch's
        # backlog (counted in `fair:n`); together they are every job once.
        xlen = server.client.cmd("XLEN", "by:{bench-submit}:stream")
        waiting = int(server.client.cmd("GET", "by:{bench-submit}:fair:n") or 0)
        if xlen + waiting != n:
            raise BenchError(
                f"after submit the stream holds {xlen} entries and the backlog {waiting}, expected {n} in all"
            )
        res = {
            "lines": n,
            "bytes": size,
            "secs": wall,
            "lines_per_sec": n / wall,
            "peak_rss_kib": maxrss,
            "redis_before": before,
            "redis_after": after,
            "redis_per_job": (after - before) / n,
            "batch": batch_id,
            "cpu": cpu,
            "redis_cpu": rcpu,
        }
        log(
            f"B3: {wall:.2f} s ({n / wall:,.0f} lines/s), peak RSS {maxrss / 1024:.1f} MiB, "
            f"redis +{(after - before) / n:,.0f} B per pending job; CPU: submit {cpu or '?'} (last read before exit), redis {rcpu:.1f} s"
        )
        return res
    finally:
        server.stop()
        os.remove(jsonl)
