"""B7: Redis memory per pending job and per finished batch after finalization.

Per pending job: `used_memory` growth across a `batchyard submit` ÷ its lines. B3 measures
exactly that over its 1,000,000 lines; when B3 ran in the same invocation its figure is used,
else B7 submits its own lines on a fresh redis-server.

Per finished batch: on a fresh redis-server, one warm-up batch first (it creates the stream,
the consumer group, loads the Lua scripts and the per-model health keys: one-off state), then
`used_memory` and every key (`SCAN`, with `MEMORY USAGE` and `TTL`) are read; K small batches
are submitted and run to `completed` by one `batchyard worker --exit-when-idle 1`, which
exits (so no client buffers are counted), and both are read again. Bytes per finished batch =
the growth ÷ K; the keys that appeared are grouped by pattern (the batch id replaced by
`{id}`), and the growth of keys that were already there (the batch index) is shown too, so the
figure is explained by what Redis holds.
"""

import os
import re
import subprocess
import time

from .common import (
    BATCHYARD,
    PROCS,
    BenchError,
    Redis,
    RedisServer,
    child_env,
    log,
    submit,
    tail,
    wait_child,
    write_config,
    write_jsonl,
)

TERMINAL = ("completed", "failed", "expired", "cancelled")


def scan_keys(port, limit=100_000):
    """Every key (SCAN, bounded), with MEMORY USAGE and TTL, over a connection of its own that is
    closed before the next used_memory reading (its buffers would count otherwise)."""
    client = Redis(port)
    try:
        return _scan(client, limit)
    finally:
        client.close()


def _scan(client, limit):
    keys, cursor = {}, "0"
    for _ in range(10_000):
        cursor, batch = client.cmd("SCAN", cursor, "COUNT", 1000)
        for k in batch:
            keys[k] = None
        if cursor == "0" or len(keys) >= limit:
            break
    return {k: (client.cmd("MEMORY", "USAGE", k, "SAMPLES", 0) or 0, client.cmd("TTL", k)) for k in keys}


def pattern(key, ids):
    for i in ids:
        if i in key:
            return key.replace(i, "<id>")
    return key


def settled_memory(client):
    """used_memory once a departed client's buffers are freed (Redis frees them in its cron)."""
    time.sleep(1.0)
    info = client.cmd("INFO", "memory")
    return {f: int(re.search(rf"^{f}:(\d+)", info, re.M).group(1)) for f in ("used_memory", "used_memory_overhead")}


def run_worker(workdir, config, tag, timeout):
    path = os.path.join(workdir, f"worker-{tag}.log")
    with open(path, "w") as out:
        p = PROCS.start(
            [BATCHYARD, "--config", config, "worker", "--concurrency", "16", "--exit-when-idle", "1"],
            stdout=out, stderr=subprocess.STDOUT, cwd=workdir, env=child_env(),
        )
    rc, secs, _ = wait_child(p, timeout)
    if rc != 0:
        raise BenchError(f"B7: batchyard worker exited {rc}:\n{tail(path)}")
    return secs, path


def pending_per_job(workdir, n, timeout):
    """Used only without B3: used_memory growth across a submit of n lines ÷ n."""
    jsonl = os.path.join(workdir, f"b7-pending-{n}.jsonl")
    write_jsonl(jsonl, n)
    server = RedisServer(workdir, "b7-pending")
    try:
        config, _ = write_config(workdir, "bench-b7-pending", server.url)
        before = server.client.used_memory()
        submit(workdir, config, jsonl, timeout, "b7-pending")
        after = server.client.used_memory()
        log(f"B7: redis +{(after - before) / n:,.0f} B per pending job ({n:,} lines submitted)")
        return {"lines": n, "before": before, "after": after, "per_job": (after - before) / n, "source": "B7"}
    finally:
        server.stop()
        os.remove(jsonl)


def run_round(workdir, config, client, jsonl, k, tag, timeout):
    """Submits k batches, runs one worker until idle; returns their ids once all completed."""
    t0 = time.monotonic()
    ids = [submit(workdir, config, jsonl, timeout, f"{tag}-{i}")[0] for i in range(k)]
    secs, wlog = run_worker(workdir, config, tag, timeout)
    states = [client.cmd("HGET", f"by:batch:{{{i}}}", "state") for i in ids]
    bad = [(i, s) for i, s in zip(ids, states) if s != "completed"]
    if bad:
        raise BenchError(f"B7: {len(bad)} of {k} batches did not complete (first: {bad[0]}):\n{tail(wlog)}")
    log(f"B7 {tag}: {k} batch(es) submitted and completed in {time.monotonic() - t0:.1f} s (worker {secs:.1f} s)")
    return ids


def finished_per_batch(workdir, k, items, timeout):
    """A warm-up batch, then two rounds of k batches; per batch from round B (round A's growth
    is reported too: it holds what the first rounds add once)."""
    server = RedisServer(workdir, "b7")
    c = server.client
    try:
        config, _ = write_config(workdir, "bench-b7", server.url)
        jsonl = os.path.join(workdir, f"b7-{items}.jsonl")
        write_jsonl(jsonl, items)
        ids = run_round(workdir, config, c, jsonl, 1, "b7-warm", timeout)
        scan_keys(server.port)  # whatever a first scan allocates once is in neither round
        m0 = settled_memory(c)
        ids += run_round(workdir, config, c, jsonl, k, "b7-a", timeout)
        before = scan_keys(server.port)
        m1 = settled_memory(c)
        ids += run_round(workdir, config, c, jsonl, k, "b7-b", timeout)
        m2 = settled_memory(c)
        after = scan_keys(server.port)
        groups = {}
        for key, (size, ttl) in after.items():
            if key in before:
                continue
            g = groups.setdefault(pattern(key, ids), {"keys": 0, "bytes": 0, "ttl": set()})
            g["keys"] += 1
            g["bytes"] += size
            g["ttl"].add("none" if ttl == -1 else f"{ttl} s" if ttl >= 0 else "gone")
        grown = {key: after[key][0] - size for key, (size, _) in before.items() if key in after and after[key][0] != size}
        gone = [key for key in before if key not in after]
        mem = [m["used_memory"] for m in (m0, m1, m2)]
        res = {
            "k": k, "items": items, "mem": mem, "per_batch": (mem[2] - mem[1]) / k, "round_a": (mem[1] - mem[0]) / k,
            "overhead": (m2["used_memory_overhead"] - m1["used_memory_overhead"]) / k,
            "keys_before": len(before), "keys_after": len(after),
            "groups": {p: dict(g, ttl=sorted(g["ttl"])) for p, g in sorted(groups.items())},
            "grown": grown, "gone": gone,
            "key_bytes_per_batch": (sum(g["bytes"] for g in groups.values()) + sum(grown.values())) / k,
        }
        log(
            f"B7: used_memory after warm-up / round A / round B: {' / '.join(f'{m:,}' for m in mem)}; "
            f"{res['per_batch']:,.0f} B per finished batch (round B; round A {res['round_a']:,.0f}); "
            f"keys {len(before)} → {len(after)}: "
            + ", ".join(f"{p} ×{g['keys']} ({g['bytes'] / max(g['keys'], 1):,.0f} B each, TTL {'/'.join(g['ttl'])})" for p, g in res["groups"].items())
            + (f"; grown: {', '.join(f'{key} {d:+,} B' for key, d in grown.items())}" if grown else "")
            + (f"; gone: {', '.join(gone)}" if gone else "")
            + f"; used_memory_overhead {res['overhead']:+,.0f} B per batch"
        )
        os.remove(jsonl)
        return res
    finally:
        server.stop()


def bench_memory(workdir, sizes, timeout, b3=None):
    """B7. `b3`: B3's result when it ran (its per-pending-job figure is reused)."""
    if b3:
        pending = {"lines": b3["lines"], "before": b3["redis_before"], "after": b3["redis_after"],
                   "per_job": b3["redis_per_job"], "source": "B3"}
    else:
        pending = pending_per_job(workdir, sizes["b7_pending"], timeout)
    return {"pending": pending, "finished": finished_per_batch(workdir, sizes["b7_batches"], sizes["b7_items"], timeout)}


def keys_text(f):
    parts = [
        f"`{p}` {g['bytes'] / f['k']:,.0f} B ({g['keys'] / f['k']:g} key{'s' if g['keys'] != f['k'] else ''}, TTL {'/'.join(g['ttl'])})"
        for p, g in f["groups"].items()
    ]
    parts += [f"`{key}` grew {d / f['k']:+,.0f} B" for key, d in f["grown"].items()]
    return ", ".join(parts) or "no new keys"


def b7_rows(r):
    p, f = r["pending"], r["finished"]
    src = f"B3's submit of {p['lines']:,} lines" if p["source"] == "B3" else f"a submit of {p['lines']:,} lines"
    return [
        ("B7", "Redis memory per pending job (used_memory growth across a submit ÷ lines)", "— (reported)",
         f"{p['per_job']:,.0f} bytes ({src}: {p['before']:,} → {p['after']:,})", None),
        ("B7", f"Redis memory per finished batch after finalization (used_memory growth ÷ {f['k']} batches of "
         f"{f['items']} items, second round of {f['k']}; every worker exited)", "— (reported)",
         f"{f['per_batch']:,.0f} bytes per batch; what each leaves: {keys_text(f)} = {f['key_bytes_per_batch']:,.0f} B by "
         f"MEMORY USAGE, plus {f['overhead']:,.0f} B of keyspace overhead; first round: {f['round_a']:,.0f} B per batch", None),
    ]


def b7_lines(r):
    f = r["finished"]
    return [
        f"- B7 finished batches: used_memory after the warm-up batch, after round A and after round B ({f['k']} batches "
        f"of {f['items']} items each): {' / '.join(f'{m:,}' for m in f['mem'])}; keys {f['keys_before']} → {f['keys_after']} "
        f"over round B" + (f"; keys gone: {', '.join(f['gone'])}" if f["gone"] else "") + f". Round A grew "
        f"{f['round_a']:,.0f} B per batch, round B {f['per_batch']:,.0f}: round B is the figure, as round A also holds "
        "what the first rounds after a start add once (allocator and stream internals). No per-batch key has a TTL "
        "when `TTL none` is shown: those bytes stay until the batch is deleted.",
        "- B7 method: per pending job, `INFO memory` `used_memory` before and after a `batchyard submit` on a fresh "
        "redis-server, ÷ lines (B3's run when B3 ran). Per finished batch: a fresh redis-server; one warm-up batch run to "
        "`completed` (stream, consumer group, Lua scripts, health keys), then two rounds of K batches, each submitted and "
        "run to `completed` by one `batchyard worker --exit-when-idle 1` that exits before the reading (taken 1 s later, "
        "so departed clients' buffers are freed); the figure is round B's growth ÷ K; the keys round B added (`SCAN`, "
        "`MEMORY USAGE ... SAMPLES 0`, `TTL`) are grouped by pattern with the batch id as `<id>`, and the growth of keys "
        "already there is shown as such.",
    ]
