"""B2: rate-limit utilisation, 4 workers against the fake provider."""

import math
import os
import re
import subprocess
import time

from .common import (
    BATCHYARD,
    BenchError,
    Cpu,
    PROCS,
    RedisServer,
    TARGETS,
    child_env,
    log,
    redis_cpu,
    submit,
    tail,
)
from .fake import FakeProvider
from .machine import busy_others, loadavg


B2_WORKERS = 4
B2_CONCURRENCY = 128
B2_TPM = 2_000_000
B2_LATENCY_P50_MS = 500
B2_LATENCY_SIGMA = 0.6  # the fake's default for --latency-dist lognormal
B2_FAULTS = ["--fail-rate-500", "0.02"]  # the 5xx variant: 2% random HTTP 500


def write_b2_config(workdir, name, redis_url, base_url, rpm, window):
    """One OpenAI-kind provider (the fake) and one model with the fake's limits; health,
    retry and queue settings are the defaults. `[limits] window_secs` only when not 60."""
    path = os.path.join(workdir, f"{name}.toml")
    store = os.path.join(workdir, f"store-{name}")
    limits = f"\n[limits]\nwindow_secs = {window}\n" if window != 60 else ""
    with open(path, "w") as f:
        f.write(
            f'[queue]\nredis_url = "{redis_url}"\nname = "{name}"\n\n'
            f'[storage]\nurl = "file://{store}"\n'
            f"{limits}\n"
            f'[providers.fake]\nkind = "openai"\nbase_url = "{base_url}"\n\n'
            f'[models.small]\nprovider = "fake"\nname = "fake-small-1"\n'
            f"input_usd_per_mtok = 0.10\noutput_usd_per_mtok = 0.40\ncontext_window = 16000\ntier = 1\n"
            f"rpm = {rpm}\ntpm = {B2_TPM}\n"
        )
    return path, store


def redis_commands(client):
    """(total commands processed, script calls by EVAL/EVALSHA/FCALL) so far."""
    stats = client.cmd("INFO", "stats")
    total = re.search(r"^total_commands_processed:(\d+)", stats, re.M)
    cmdstats = client.cmd("INFO", "commandstats")
    scripts = sum(
        int(m) for m in re.findall(r"^cmdstat_(?:eval|evalsha|eval_ro|evalsha_ro|fcall|fcall_ro):calls=(\d+)", cmdstats, re.M)
    )
    return (int(total.group(1)) if total else 0), scripts


def count_log(paths):
    """What the workers' logs say about limiter requeues and failed calls."""
    out = {"requeued": 0, "failed_calls": 0, "failed_rate_limited": 0, "failed_transient": 0, "cooling": 0}
    for path in paths:
        try:
            with open(path, errors="replace") as f:
                for line in f:
                    if "retrying the job later" in line:
                        out["requeued"] += 1
                    if "provider call failed" in line:
                        out["failed_calls"] += 1
                        if "rate_limited" in line:
                            out["failed_rate_limited"] += 1
                        elif "transient" in line:
                            out["failed_transient"] += 1
                    if "cooling down" in line:
                        out["cooling"] += 1
        except OSError:
            pass
    return out


def run_b2(workdir, jsonl, n, rpm, window, timeout, tag, fault_args):
    """One B2 run: fresh redis and fake provider, submit n lines, 4 workers until they exit;
    then the fake's per-window counts."""
    name = f"bench-b2-{tag}"
    server = RedisServer(workdir, name)
    fake = None
    workers = []
    try:
        fake_args = [
            "--rpm", str(rpm), "--tpm", str(B2_TPM), "--window-secs", str(window),
            "--latency-dist", "lognormal", "--latency-p50-ms", str(B2_LATENCY_P50_MS),
        ] + fault_args
        fake = FakeProvider(workdir, tag, fake_args)
        config, _ = write_b2_config(workdir, name, server.url, fake.base_url, rpm, window)
        batch_id, sub_secs, _, _ = submit(workdir, config, jsonl, timeout, name)
        key = f"by:batch:{{{batch_id}}}"
        log(
            f"B2 {tag}: submitted {n:,} in {sub_secs:.1f} s; fake provider {fake.url} "
            f"({' '.join(fake_args)}); starting {B2_WORKERS} workers × concurrency {B2_CONCURRENCY}"
        )
        load0 = loadavg()
        others0 = busy_others()
        rcpu0 = redis_cpu(server.client)
        cmds0 = redis_commands(server.client)
        fcpu0 = fake.cpu() or Cpu((0.0, 0.0))
        logs = []
        t0 = time.monotonic()
        for i in range(B2_WORKERS):
            path = os.path.join(workdir, f"worker-b2-{tag}-{i}.log")
            logs.append(path)
            with open(path, "w") as out:
                workers.append(PROCS.start(
                    [BATCHYARD, "--config", config, "worker", "--concurrency", str(B2_CONCURRENCY), "--exit-when-idle", "3"],
                    stdout=out, stderr=subprocess.STDOUT, cwd=workdir, env=child_env(),
                ))
        rusage = {}
        marks = {}
        last_log = t0
        deadline = t0 + timeout
        while True:
            now = time.monotonic()
            for p in workers:
                if p.pid in rusage:
                    continue
                pid, status, ru = os.wait4(p.pid, os.WNOHANG)
                if pid == p.pid:
                    p.returncode = os.waitstatus_to_exitcode(status)
                    PROCS.forget(p)
                    rusage[p.pid] = ru
            st, done, failed = server.client.cmd("HMGET", key, "state", "completed", "failed")
            if st in ("completed", "failed", "expired", "cancelled") and "done" not in marks:
                marks["done"] = now - t0
                marks["state"] = st
                marks["fake_cpu"] = fake.cpu()
                marks["redis_cpu"] = redis_cpu(server.client) - rcpu0
                marks["cmds"] = redis_commands(server.client)
            if len(rusage) == len(workers):
                break
            if now > deadline:
                raise BenchError(
                    f"B2 {tag}: the workers did not finish within {timeout:.0f} s; batch {batch_id} was {st!r} "
                    f"with {done} completed, {failed} failed of {n:,}"
                )
            if now - last_log >= 10:
                log(f"  ... {int(done or 0) + int(failed or 0):,}/{n:,} settled ({done or 0} completed), state {st}, {now - t0:.0f} s")
                last_log = now
            time.sleep(0.25)
        exit_secs = time.monotonic() - t0
        bad = [(p.returncode, path) for p, path in zip(workers, logs) if p.returncode != 0]
        if bad:
            rc, path = bad[0]
            raise BenchError(f"B2 {tag}: a batchyard worker exited {rc}:\n{tail(path)}")
        st, done, failed = server.client.cmd("HMGET", key, "state", "completed", "failed")
        if "done" not in marks:
            if st not in ("completed", "failed"):
                raise BenchError(
                    f"B2 {tag}: the workers exited but batch {batch_id} is {st!r} "
                    f"({done} completed, {failed} failed of {n:,}):\n{tail(logs[0])}"
                )
            marks.update(done=exit_secs, state=st, fake_cpu=fake.cpu(),
                         redis_cpu=redis_cpu(server.client) - rcpu0, cmds=redis_commands(server.client))
        stats = fake.stats()
        load1 = loadavg()
        others1 = busy_others()
        windows = stats.get("windows") or []
        full = windows[1:-1]
        if not full:
            raise BenchError(f"B2 {tag}: the run spanned {len(windows)} windows: no full window to measure")
        per_window = [w["requests"] for w in full]
        rejected = sum(w.get("rejected", 0) for w in windows)
        calls = stats.get("requests", 0)
        wcpu = Cpu((
            sum(ru.ru_utime for ru in rusage.values()),
            sum(ru.ru_stime for ru in rusage.values()),
        ))
        fcpu = marks["fake_cpu"] or fcpu0
        fcpu = Cpu((fcpu[0] - fcpu0[0], fcpu[1] - fcpu0[1]))
        cmds1 = marks["cmds"]
        completed, failed = int(done or 0), int(failed or 0)
        res = {
            "tag": tag,
            "faults": " ".join(fault_args),
            "fake_args": " ".join(fake_args),
            "jobs": n,
            "rpm": rpm,
            "window": window,
            "secs": marks["done"],
            "exit_secs": exit_secs,
            "state": marks["state"],
            "completed": completed,
            "failed": failed,
            "success": completed / n,
            "windows": windows,
            "full": per_window,
            "util": sum(per_window) / (len(per_window) * rpm),
            "util_min": min(per_window) / rpm,
            "calls": calls,
            "by_status": stats.get("by_status", {}),
            "rejected": rejected,
            "share_429": rejected / calls if calls else 0.0,
            "max_window": stats.get("max_requests_per_window"),
            "max_tokens_window": stats.get("max_tokens_per_window"),
            "worker_cpu": wcpu,
            "fake_cpu": fcpu,
            "redis_cpu": marks["redis_cpu"],
            "redis_cmds": cmds1[0] - cmds0[0],
            "redis_scripts": cmds1[1] - cmds0[1],
            "logs": count_log(logs),
            "submit_secs": sub_secs,
            "load": (load0, load1),
            "others": {k: max(others0.get(k, 0), others1.get(k, 0)) for k in set(others0) | set(others1)},
        }
        log(
            f"B2 {tag}: {completed:,}/{n:,} completed ({failed} failed) in {res['secs']:.1f} s "
            f"(workers exited at {exit_secs:.1f} s); steady-state use {res['util']:.2%} of {rpm:,} per {window} s "
            f"(full windows: {' / '.join(f'{x:,}' for x in per_window)}); 429: {rejected:,} of {calls:,} calls "
            f"({res['share_429']:.2%}); by status {res['by_status']}; CPU: workers {wcpu}, fake {fcpu}, "
            f"redis {res['redis_cpu']:.1f} s ({res['redis_cmds']:,} commands, {res['redis_scripts']:,} script calls); "
            f"logs: {res['logs']}; load {' '.join(load0)} → {' '.join(load1)}"
        )
        return res
    finally:
        for p in workers:
            PROCS.stop(p)
        if fake is not None:
            fake.stop()
        server.stop()


def b2_limit_text(r):
    return f"{r['rpm']:,} RPM" if r["window"] == 60 else f"{r['rpm']:,} requests per {r['window']} s window"


def b2_rows(rid, r):
    """The three B2 rows for one run."""
    setup = (
        f"{B2_WORKERS} workers × concurrency {B2_CONCURRENCY}, fake provider at {b2_limit_text(r)} / "
        f"{B2_TPM:,} TPM, lognormal latency p50 {B2_LATENCY_P50_MS} ms, {r['jobs']:,} jobs"
        + (f", `{r['faults']}`" if r["faults"] else "")
    )
    win = "60 s" if r["window"] == 60 else f"{r['window']} s"
    return [
        (rid, f"share of the RPM ceiling used over the steady state (requests admitted per full {win} window ÷ limit; {setup})",
         TARGETS["B2u"],
         f"{r['util']:.1%} (full windows: {' / '.join(f'{x:,}' for x in r['full'])}; lowest {r['util_min']:.1%})",
         r["util"] >= 0.97),
        (rid, "share of calls answered 429 (fake's rejected ÷ all calls it got)", TARGETS["B2r"],
         f"{r['share_429']:.2%} ({r['rejected']:,} of {r['calls']:,} calls)", r["share_429"] <= 0.005),
        (rid, "item success (completed ÷ jobs)", TARGETS["B2s"],
         f"{r['success']:.2%} ({r['completed']:,} of {r['jobs']:,}; {r['failed']:,} failed)", r["completed"] == r["jobs"]),
    ]


def b2_mean_latency_ms():
    return B2_LATENCY_P50_MS * math.exp(B2_LATENCY_SIGMA ** 2 / 2)


def b2_note(r, nproc):
    """What limited one B2 run, from what was measured."""
    secs = r["secs"]
    cores = int(nproc) if str(nproc).isdigit() else 1
    w, f, rc = r["worker_cpu"].total, r["fake_cpu"].total, r["redis_cpu"]
    busy = (w + f + rc) / (secs * cores)
    rate = r["util"] * r["rpm"] / r["window"]
    in_flight = rate * b2_mean_latency_ms() / 1000
    slots = B2_WORKERS * B2_CONCURRENCY
    lg = r["logs"]
    text = (
        f"What limits B2{' with ' + r['faults'] if r['faults'] else ''}: over {secs:.0f} s the {B2_WORKERS} workers used "
        f"{r['worker_cpu']} of CPU ({w / secs:.2f} cores), the fake provider {r['fake_cpu']} ({f / secs:.2f} cores), "
        f"Redis {rc:.1f} s ({rc / secs:.2f} cores; {r['redis_scripts'] / r['calls']:.1f} script calls, limiter "
        f"admission attempts included, per provider call): {busy:.0%} of the {cores} cores. "
        f"At {rate:,.1f} admitted calls/s and a mean latency of {b2_mean_latency_ms():.0f} ms about {in_flight:.0f} calls are at the "
        f"provider at once, so most of the {slots} claim slots sit in limiter waits; {lg['requeued']:,} jobs were handed back "
        f"to the queue because their wait would pass the limiter's max wait, and the workers logged {lg['failed_calls']:,} failed calls "
        f"({lg['failed_rate_limited']:,} rate-limited, {lg['failed_transient']:,} transient)"
    )
    polls = r["redis_scripts"] / r["calls"] if r["calls"] else 0.0
    if r["util"] >= 0.97:
        text += (
            f". The admitted rate is the shared limiter's own pacing: it admits `pace` = 98.5% of the declared limit "
            f"by design (the rest is headroom against 429s), measured here as {r['util']:.1%}"
            + (f", with the machine {busy:.0%} busy" if busy >= 0.5 else "; CPU had room")
        )
    else:
        text += (
            f". The rate fell short with the machine {busy:.0%} busy"
            + (": CPU contention (the workers, the fake and Redis share the cores with other work) is the likely limit"
               if busy >= 0.8 else ": not CPU-bound, so the limiter's waits (or requeues) left capacity unused")
        )
    if polls > 20:
        text += (
            f". What the waiting costs: {polls:,.0f} Redis script calls per provider call, because each of the "
            f"~{max(slots - in_flight, 0):.0f} waiting jobs asks the limiter again when its suggested wait ends and nearly "
            f"all are told to wait again; that is most of Redis's {rc / secs:.2f} cores, and the workers' "
            f"{w / r['calls'] * 1000:.1f} ms of CPU per call go mostly to the same polling."
        )
    else:
        text += "."
    return text
