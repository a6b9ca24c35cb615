"""B1 (end-to-end jobs/s), B1r (vs a bare no-op consumer), B1-diag and B4 (worker RSS)."""

import json
import os
import re
import subprocess
import time

from .common import (
    BATCHYARD,
    BenchError,
    Cpu,
    NOOP,
    PROCS,
    RSS_EVERY,
    RedisServer,
    child_env,
    cpu_secs,
    log,
    redis_cpu,
    submit,
    tail,
    vm_kib,
    wait_child,
    write_config,
)


def pick_samples(samples, n):
    """samples: [(t, progress, rss_kib, batch state)]. The samples nearest 10% and 50% of jobs
    settled; for 100%, the last sample of the processing phase (the batch still `in_progress`:
    the last job's settle switches it to `finalizing` and starts the finalizer in the same
    worker); "finalizing": the first sample after that; "final": the last one before the
    worker exited (after finalization)."""
    # Before the first settle the process may not even have exec'd yet: not a sample of it.
    samples = [s for s in samples if s[1] > 0]
    if not samples:
        return None
    out = {}
    for pct in (10, 50):
        target = n * pct / 100
        out[pct] = min(samples, key=lambda s: (abs(s[1] - target), s[0]))
    processing = [s for s in samples if s[3] == "in_progress"]
    after = [s for s in samples if s[3] != "in_progress"]
    out[100] = processing[-1] if processing else samples[-1]
    if after:
        out["finalizing"] = after[0]
    out["final"] = samples[-1]
    return out


def run_e2e(workdir, jsonl, n, timeout, k, store_root=None):
    """One B1 run (and B4 samples): fresh redis, submit, run the worker until completed.
    `store_root`: where the `file://` result store goes (default: the temp dir); B1-diag puts
    it on tmpfs."""
    name = f"bench-e2e-{k}"
    server = RedisServer(workdir, name)
    try:
        config, store = write_config(workdir, name, server.url, store_root)
        baseline = server.client.used_memory()
        batch_id, sub_secs, _, _ = submit(workdir, config, jsonl, timeout, name)
        after_submit = server.client.used_memory()
        key = f"by:batch:{{{batch_id}}}"
        log(f"B1 e2e #{k}: submitted {n:,} in {sub_secs:.1f} s; starting batchyard worker")
        err_path = os.path.join(workdir, f"worker-{k}.log")
        samples = []
        marks = {}
        state = {"last_rss": 0.0, "last_log": time.monotonic(), "hwm": 0, "cpu": Cpu((0.0, 0.0))}
        redis_cpu0 = redis_cpu(server.client)
        with open(err_path, "w") as err:
            t0 = time.monotonic()
            p = PROCS.start(
                [BATCHYARD, "--config", config, "worker", "--concurrency", "64", "--exit-when-idle", "1"],
                stdout=err, stderr=subprocess.STDOUT, cwd=workdir, env=child_env(),
            )

            def tick():
                now = time.monotonic()
                st, done, failed = server.client.cmd("HMGET", key, "state", "completed", "failed")
                progress = int(done or 0) + int(failed or 0)
                if progress > 0 and "first" not in marks:
                    marks["first"] = now - t0
                if progress >= n and "settled" not in marks:
                    marks["settled"] = now - t0
                if st in ("completed", "failed", "expired", "cancelled") and "done" not in marks:
                    marks["done"] = now - t0
                    marks["state"] = st
                    marks["failed"] = int(failed or 0)
                    marks["cpu"] = cpu_secs(p.pid)
                    marks["redis_cpu"] = redis_cpu(server.client) - redis_cpu0
                if now - state["last_rss"] >= RSS_EVERY:
                    rss, hwm = vm_kib(p.pid)
                    if rss is not None:
                        samples.append((now - t0, progress, rss, st))
                        state["hwm"] = max(state["hwm"], hwm or 0)
                    cpu = cpu_secs(p.pid)
                    if cpu is not None:
                        state["cpu"] = cpu
                    state["last_rss"] = now
                if now - state["last_log"] >= 5:
                    log(f"  ... {progress:,}/{n:,} settled, state {st}, worker RSS {samples[-1][2] / 1024 if samples else 0:.1f} MiB")
                    state["last_log"] = now

            try:
                rc, _, _ = wait_child(p, timeout, on_tick=tick)
            except BenchError as e:
                st, done, failed = server.client.cmd("HMGET", key, "state", "completed", "failed")
                raise BenchError(f"{e}; batch {batch_id} was {st!r} with {done} completed, {failed} failed of {n:,}")
            tick_after = time.monotonic() - t0
        if rc != 0:
            raise BenchError(f"batchyard worker exited {rc}:\n{tail(err_path)}")
        # The worker exited (idle); one last look in case the end fell between polls.
        st, done, failed = server.client.cmd("HMGET", key, "state", "completed", "failed")
        if "done" not in marks:
            if st == "completed":
                marks["done"] = tick_after
                marks["state"] = st
                marks.setdefault("settled", tick_after)
            else:
                raise BenchError(
                    f"the worker exited but batch {batch_id} is {st!r} "
                    f"({done} completed, {failed} failed of {n}):\n{tail(err_path)}"
                )
        if marks["state"] != "completed":
            raise BenchError(f"batch {batch_id} ended {marks['state']!r} ({failed} failed):\n{tail(err_path)}")
        end_memory = server.client.used_memory()
        keys = server.client.cmd("DBSIZE")
        leftover = server.client.cmd("KEYS", "*") if keys <= 20 else []
        key_bytes = {k: server.client.cmd("MEMORY", "USAGE", k) for k in leftover or []}
        scripts_mem = re.search(r"^used_memory_scripts:(\d+)", server.client.cmd("INFO", "memory"), re.M)
        picked = pick_samples(samples, n)
        secs = marks["done"]
        res = {
            "k": k,
            "jobs": n,
            "secs": secs,
            "jobs_per_sec": n / secs,
            "first_secs": marks.get("first"),
            "settled_secs": marks.get("settled", secs),
            "finalize_secs": secs - marks.get("settled", secs),
            "worker_exit_secs": tick_after,
            "failed": int(failed or 0),
            "submit_secs": sub_secs,
            "rss": {pct: s[2] for pct, s in picked.items()} if picked else None,
            "rss_progress": {pct: s[1] for pct, s in picked.items()} if picked else None,
            "rss_samples_max": max(s[2] for s in samples) if samples else None,
            "peak_rss_kib": state["hwm"],
            "worker_cpu": marks.get("cpu") or state["cpu"],
            "redis_cpu": marks.get("redis_cpu"),
            "redis_baseline": baseline,
            "redis_after_submit": after_submit,
            "redis_after_final": end_memory,
            "redis_keys_after": keys,
            "redis_leftover_keys": sorted(leftover or []),
            "redis_key_bytes": key_bytes,
            "redis_scripts_bytes": int(scripts_mem.group(1)) if scripts_mem else None,
        }
        log(
            f"B1 e2e #{k}: {n:,} jobs in {secs:.2f} s = {n / secs:,.0f} jobs/s "
            f"(first settle {res['first_secs'] or 0:.2f} s, all settled {res['settled_secs']:.2f} s, "
            f"finalize {res['finalize_secs']:.2f} s; CPU: worker {res['worker_cpu']}, redis {res['redis_cpu'] or 0:.1f} s); worker RSS "
            + (rss_text(res["rss"], res["rss_progress"]) if res["rss"] else "n/a")
            + f", peak {state['hwm'] / 1024:.1f} MiB; redis after final - baseline: "
            f"{end_memory - baseline:+,} B ({keys} keys: {', '.join(f'{k} {v:,} B' for k, v in sorted(key_bytes.items()))}; "
            f"Lua scripts {res['redis_scripts_bytes'] or 0:,} B)"
        )
        # The store stays until the end: deleting 200,000 files right before the next run
        # would slow that run's file creation (ext4 scans recently deleted inodes).
        return res
    finally:
        server.stop()


RSS_LABEL = {"finalizing": "first sample in finalization", "final": "after finalize"}


def rss_text(rss, at=None):
    """`at`: the progress of each sample, to show where the 100% sample really was."""
    parts = []
    for k, v in rss.items():
        label = f"{k}%" if isinstance(k, int) else RSS_LABEL.get(k, k)
        if k == 100 and at and at.get(100) is not None:
            label += f" (last sample of processing, at {at[100]:,} settled)"
        parts.append(f"{label}: {v / 1024:.1f} MiB")
    return ", ".join(parts)


def run_noop(workdir, jsonl, n, timeout, k):
    """One B1r run: fresh redis, submit into its own queue, run the no-op consumer."""
    name = f"bench-noop-{k}"
    server = RedisServer(workdir, name)
    try:
        config, store = write_config(workdir, name, server.url)
        _, sub_secs, _, _ = submit(workdir, config, jsonl, timeout, name)
        stream = f"by:{{{name}}}:stream"
        log(f"B1r no-op #{k}: submitted {n:,} in {sub_secs:.1f} s; starting noop_consumer")
        out_path = os.path.join(workdir, f"noop-{k}.out")
        err_path = os.path.join(workdir, f"noop-{k}.err")
        marks = {}
        redis_cpu0 = redis_cpu(server.client)
        with open(out_path, "w") as out, open(err_path, "w") as err:
            t0 = time.monotonic()
            p = PROCS.start(
                [NOOP, "--redis", server.url, "--queue", name, "--expect", str(n),
                 "--concurrency", "64", "--exit-when-idle", "1"],
                stdout=out, stderr=err, cwd=workdir, env=child_env(),
            )

            def tick():
                # Jobs left: the stream's ready window and the backlog behind it (fair share).
                left = server.client.cmd("XLEN", stream) + int(server.client.cmd("GET", f"by:{{{name}}}:fair:n") or 0)
                if left == 0 and "done" not in marks:
                    marks["done"] = time.monotonic() - t0
                    marks["cpu"] = cpu_secs(p.pid)
                    marks["redis_cpu"] = redis_cpu(server.client) - redis_cpu0
                _, hwm = vm_kib(p.pid)
                marks["hwm"] = max(marks.get("hwm", 0), hwm or 0)

            rc, exit_secs, _ = wait_child(p, timeout, on_tick=tick)
        if rc != 0:
            raise BenchError(f"noop_consumer exited {rc}:\n{tail(err_path)}")
        if "done" not in marks:
            if server.client.cmd("XLEN", stream) != 0:
                raise BenchError(f"noop_consumer exited with jobs left in {stream}:\n{tail(err_path)}")
            marks["done"] = exit_secs
        try:
            own = json.loads(open(out_path).read().strip().splitlines()[-1])
        except (IndexError, ValueError) as e:
            raise BenchError(f"noop_consumer printed no JSON ({e}):\n{tail(out_path)}\n{tail(err_path)}")
        secs = marks["done"]
        res = {
            "k": k,
            "jobs": n,
            "secs": secs,
            "jobs_per_sec": n / secs,
            "own": own,
            "cpu": marks.get("cpu"),
            "redis_cpu": marks.get("redis_cpu"),
            "peak_rss_kib": marks.get("hwm", 0),
            "submit_secs": sub_secs,
        }
        log(
            f"B1r no-op #{k}: {n:,} jobs in {secs:.2f} s = {n / secs:,.0f} jobs/s "
            f"(its own clock: {own.get('jobs_per_sec', 0):,.0f} jobs/s; CPU: consumer {marks.get('cpu') or '?'}, redis {marks.get('redis_cpu') or 0:.1f} s), peak RSS {marks.get('hwm', 0) / 1024:.1f} MiB"
        )
        # The store stays until the end: deleting 200,000 files right before the next run
        # would slow that run's file creation (ext4 scans recently deleted inodes).
        return res
    finally:
        server.stop()
