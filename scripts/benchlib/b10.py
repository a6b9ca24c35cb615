"""B10: fair share. A 50,000-item batch A, then a 500-item batch B 0.5 s later, drained by 64
simulated worker slots (claim one job, 20 ms "call", ack) on the Redis queue, once with jobs
published straight into the stream (`fifo`: the order before the claim order existed) and once
through the claim order (`fair`); then the claim cost with many active batches.

    scripts/bench --only B10            # updates only B10 in BENCHMARKS.md
    scripts/bench --only B10 --smoke    # 2,000 + 100 items; writes nothing
    cd scripts && python3 -B -m benchlib.b10 [--smoke] [--no-build] [--write]

The work is `jobs/examples/fair_bench.rs` (release), against a fresh redis-server. Reported:
B's time from its publish to its last claim against the time its fair share predicts (B's
items ÷ half the fleet's measured rate; target ≤ 2×), A's total time, jobs claimed twice
(target 0), and claim throughput (8 consumers, 32 per claim, ack at once) with the same
40,000 jobs spread over 1, 10, 100 and 1,000 active batches (reported: 1,000 ÷ 1).
"""

import json
import os
import subprocess

from . import common

SECTION = "## Fair share (B10)"
EXAMPLE = os.path.join(common.ROOT, "target", "release", "examples", "fair_bench")


def build():
    cmd = ["cargo", "build", "--release", "-p", "batchyard-jobs", "--example", "fair_bench"]
    common.log("building: " + " ".join(cmd))
    p = common.PROCS.start(cmd, cwd=common.ROOT)
    try:
        rc = p.wait()
    finally:
        common.PROCS.stop(p)
    if rc != 0:
        raise common.BenchError(f"build failed ({rc}): {' '.join(cmd)}")


def run(workdir, smoke=False, items=None, command="scripts/bench --only B10", build_first=True):
    # scripts/bench builds the example with its other binaries, in one cargo invocation.
    if build_first:
        build()
    a = items or (2_000 if smoke else 50_000)
    b = 100 if smoke else 500
    redis = common.RedisServer(workdir, "b10")
    try:
        args = [EXAMPLE, "--redis", redis.url, "--a", str(a), "--b", str(b),
                "--batches", "100" if smoke else "1000"]
        common.log("B10: " + " ".join(args[1:]))
        p = common.PROCS.start(args, stdout=subprocess.PIPE, cwd=workdir)
        try:
            out, _ = p.communicate(timeout=900)
        finally:
            common.PROCS.stop(p)
        if p.returncode != 0:
            raise common.BenchError(f"fair_bench failed ({p.returncode})")
        result = json.loads(out.decode().strip().splitlines()[-1])
    finally:
        redis.stop()
    return {"rows": rows(result), "result": result, "command": command}


def rows(result):
    fifo, fair = result["starvation"]
    ratio = fair["b_secs"] / fair["b_fair_share_secs"]
    twice = fifo["claimed_twice"] + fair["claimed_twice"]
    curve = result["claim_cost"]["curve"]
    flat = curve[-1]["jobs_per_sec"] / curve[0]["jobs_per_sec"]
    return [
        ("B10", f"small batch B ({fair['b_items']} items) after A ({fair['a_items']:,}): B's time ÷ its fair share",
         "≤ 2.0×", f"{ratio:.2f}× ({fair['b_secs']:.2f} s vs {fair['b_fair_share_secs']:.2f} s; "
                   f"FIFO before: {fifo['b_secs']:.1f} s); A {fair['a_secs']:.1f} s (FIFO {fifo['a_secs']:.1f} s); "
                   f"claimed twice {twice}", ratio <= 2.0 and twice == 0),
        ("B10-cost", f"claims/s, {curve[-1]['batches']:,} active batches ÷ 1", "reported",
         f"{flat:.2f} ({curve[-1]['jobs_per_sec']:,.0f} vs {curve[0]['jobs_per_sec']:,.0f} jobs/s)", None),
    ]


def section(run_result):
    r = run_result["result"]
    lines = [
        f"`{run_result['command']}`: `jobs/examples/fair_bench.rs` on a fresh redis-server; 64 "
        "simulated slots (claim one job, 20 ms, ack), `ready_window` 256. One run each; on a shared "
        "machine the claim throughput varies by about ±30% between runs.",
        "",
        "| mode | A items | B items | B time (s) | B fair-share time (s) | A time (s) | fleet jobs/s | claimed twice |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in r["starvation"]:
        lines.append(f"| {s['mode'].replace('bench-', '')} | {s['a_items']:,} | {s['b_items']:,} | {s['b_secs']:.2f} | "
                     f"{s['b_fair_share_secs']:.2f} | {s['a_secs']:.1f} | {s['fleet_jobs_per_sec']:,.0f} | {s['claimed_twice']} |")
    lines += ["", f"Claim throughput, {r['claim_cost']['jobs']:,} jobs over N active batches (8 consumers, 32 per claim):", "",
              "| active batches | jobs/s |", "|---|---|"]
    for c in r["claim_cost"]["curve"]:
        lines.append(f"| {c['batches']:,} | {c['jobs_per_sec']:,.0f} |")
    return lines


def splice(result):
    from .report import splice as splice_rows

    splice_rows(common.BENCH_MD, result["rows"], ("B10", "B10-cost"), SECTION, section(result))


def main():
    return common.standalone(
        __doc__, "B10", 2_000,
        lambda workdir, smoke, items, command: run(workdir, smoke=smoke, items=items, command=command),
        splice,
    )


if __name__ == "__main__":
    raise SystemExit(main())
