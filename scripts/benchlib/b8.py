"""B8: the offload lane on B5's workload. The same batch run real-time only, then with
`--deadline`, so its items go through the provider's batch API at half price, in waves down
B5's cascade.

    scripts/bench --only B8            # updates only B8 in BENCHMARKS.md
    scripts/bench --only B8 --smoke    # 200 items a run; writes nothing
    cd scripts && python3 -B -m benchlib.b8 [--smoke] [--items N] [--no-build] [--keep] [--write]

Each run: B5's `invisible` documents, models, skills and validator (default `[routing]`,
`[cache] enabled = false`), the `openai`-kind provider with `batch_api = true` (batch prices:
the default half of the real-time ones), a fresh redis-server and `batchyard-fake-provider
--skills ... --batch-turnaround-ms 1000` (its OpenAI Batch API on a sped-up clock), `batchyard
submit --task answer` and one `batchyard worker --concurrency 8`, stopped once the batch has
ended. The offloaded run adds `--deadline 1h` and `[offload] poll_interval_secs = 1` (the
smoke also `min_items = 10`: its waves are small).

Reported: offload cost ÷ real-time cost (target <= 0.55), each run's cost ÷ B5's oracle at its
own prices (real-time; batch = half), every item exactly once in output ∪ errors, and the
offloaded batch's finish time against its deadline.
"""

import json
import os
import sys
import time

from . import common, routing

ITEMS = 5_000
SMOKE_ITEMS = 200
# The smoke's waves are small: below the default `min_items` (100) a group runs real-time, so
# the smoke lowers it to prove the waves still go through provider batches.
SMOKE_MIN_ITEMS = 10
DEADLINE_SECS = 3_600
TURNAROUND_MS = 1_000
TARGET = 0.55
BATCH_SHARE = 0.5  # batch prices ÷ real-time prices (the default for a provider with a batch API)
MODES = ("realtime", "offload")
SECTION = "## Offload to provider batch APIs (B8)"


def write_config(workdir, name, redis_url, base_url, min_items=None):
    """B5's `learned` config, its provider with a batch API, and quick offload ticks."""
    path = routing.write_config(workdir, name, redis_url, base_url, "learned")
    with open(path) as f:
        text = f.read()
    provider = f'base_url = "{base_url}"\n'
    if provider not in text:
        raise common.BenchError(f"B8: B5's config has no provider line {provider.strip()!r}")
    text = text.replace(provider, provider + "batch_api = true\n", 1)
    text += "\n[offload]\npoll_interval_secs = 1\n" + (f"min_items = {min_items}\n" if min_items else "")
    with open(path, "w") as f:
        f.write(text)
    return path


def run_one(workdir, mode, jsonl, n, timeout, min_items=None):
    name = f"b8-{mode}"
    fake_args = ["--skills", routing.skills_arg(), "--batch-turnaround-ms", str(TURNAROUND_MS)]
    submit = ["--deadline", f"{DEADLINE_SECS}s"] if mode == "offload" else []
    run = routing.run_batch(
        workdir, name, jsonl, n, timeout, fake_args,
        lambda redis_url, fake: write_config(workdir, name, redis_url, fake.base_url, min_items),
        submit_args=submit, until_done=True,
    )
    lines = run["ok"] + run["err"]
    ids = [l["custom_id"] for l in lines]
    steps = [s for l in lines for s in (l["batchyard"].get("cascade") or [])]
    realtime_calls = sum(int(w.get("requests") or 0) for w in run["fake"].get("windows") or [])
    rec = run["record"]
    created = int(rec.get("created_at") or 0)
    completed = int(rec.get("completed_at") or 0)
    deadline = int(rec["deadline_at"]) if rec.get("deadline_at") else None
    return {
        "cost": sum(float(l["batchyard"].get("cost_usd") or 0.0) for l in lines),
        "status_cost": run["status"].get("cost_usd"),
        "lines": len(lines),
        "distinct": len(set(ids)),
        "passed": len(run["ok"]),
        "steps": len(steps),
        "batch_steps": sum(1 for s in steps if s.get("provider_batch")),
        "realtime_calls": realtime_calls,
        "provider_batches": int((run["fake"].get("batches") or {}).get("created") or 0),
        "secs": run["secs"],
        "took": completed - created,
        "deadline_in": deadline - created if deadline else None,
        "switched": bool(rec.get("realtime_at")),
    }


def run(workdir, smoke=False, items=None, command="scripts/bench --only B8"):
    n = items or (SMOKE_ITEMS if smoke else ITEMS)
    timeout = 180.0 + n * 0.05
    items_ = routing.dataset("invisible", n)
    jsonl = os.path.join(workdir, "b8.jsonl")
    with open(jsonl, "w") as f:
        for cid, text, _ in items_:
            f.write(json.dumps({"id": cid, "text": text}) + "\n")
    truth = routing.oracle(items_)
    oracle = sum(t["oracle"] for t in truth.values())
    min_items = SMOKE_MIN_ITEMS if smoke else None
    res = {mode: run_one(workdir, mode, jsonl, n, timeout, min_items) for mode in MODES}
    rt, off = res["realtime"], res["offload"]
    ratio = off["cost"] / rt["cost"] if rt["cost"] else float("inf")
    common.log(
        f"B8: real-time ${rt['cost']:.4f} ({rt['cost'] / oracle:.3f}× oracle) in {rt['secs']:.0f} s; offload "
        f"${off['cost']:.4f} ({off['cost'] / (oracle * BATCH_SHARE):.3f}× oracle at batch prices) in {off['secs']:.0f} s, "
        f"{off['provider_batches']} provider batches; offload ÷ real-time {ratio:.3f}"
    )
    return {"rows": rows(res, n, oracle), "res": res, "n": n, "oracle": oracle, "command": command}


def rows(res, n, oracle):
    rt, off = res["realtime"], res["offload"]
    ratio = off["cost"] / rt["cost"] if rt["cost"] else float("inf")
    once = all(r["lines"] == n and r["distinct"] == n for r in res.values())
    in_time = off["deadline_in"] is not None and off["took"] <= off["deadline_in"]
    return [
        ("B8", f"offload (B5 `invisible`, {n:,} items, `--deadline {DEADLINE_SECS // 3600}h`): cost ÷ the same batch real-time only",
         f"<= {TARGET:.2f}", f"{ratio:.3f} (${off['cost']:.4f} vs ${rt['cost']:.4f})", ratio <= TARGET),
        ("B8", "offload: routed cost ÷ oracle at batch prices (real-time only: ÷ oracle at real-time prices)",
         "— (reported)",
         f"{off['cost'] / (oracle * BATCH_SHARE):.3f} (real-time {rt['cost'] / oracle:.3f}; oracle ${oracle:.4f}, at batch prices ${oracle * BATCH_SHARE:.4f})",
         None),
        ("B8", "offload: every item exactly once in output.jsonl ∪ errors.jsonl (both runs)", "all",
         f"{off['distinct']:,} of {n:,} offloaded in {off['lines']:,} lines; {rt['distinct']:,} of {n:,} real-time in {rt['lines']:,} lines",
         once),
        ("B8", "offload: finished before the deadline (batch created → completed)", "< deadline",
         f"{off['took']} s of {off['deadline_in']} s" + ("; switched to real-time" if off["switched"] else ""), in_time),
    ]


def section(result):
    res, n = result["res"], result["n"]
    md = [
        f"Measured by `{result['command']}` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: B5's `invisible` "
        f"scenario ({n:,} documents, seed {routing.SEED}, models {', '.join(m for m, *_ in routing.MODELS)} on one "
        "`openai`-kind provider with `batch_api = true`, batch prices the default half), the default learned `[routing]`, "
        f"`[cache] enabled = false`, one `batchyard worker --concurrency {routing.CONCURRENCY}`, a fresh redis-server "
        f"and fake per run (`--batch-turnaround-ms {TURNAROUND_MS}`: a provider batch takes about a second). The "
        f"offloaded run is submitted with `--deadline {DEADLINE_SECS}s` and ticks every second (`[offload] "
        "poll_interval_secs = 1`).",
        "",
    ]
    for mode in MODES:
        r = res[mode]
        md.append(
            f"- `{mode}`: ${r['cost']:.4f} (status says ${r['status_cost'] or 0:.4f}); {r['passed']:,} of {n:,} passed; "
            f"{r['steps']:,} answers, {r['batch_steps']:,} of them from provider batches; {r['realtime_calls']:,} real-time "
            f"calls; {r['provider_batches']} provider batches; {r['secs']:.0f} s from the worker's start to the end."
        )
    md += [
        "",
        "Reading the figures. Each wave sends the items waiting on one model as a provider batch; the answers that "
        "fail the check escalate and form the next wave on the next model, so the offloaded run walks the same "
        "cascade as the real-time one at half the price. A group smaller than `[offload] min_items` (100) runs "
        "real-time at the full price, which is what keeps the ratio a little above 0.50 when the last waves are "
        "small. The learned router explores at random, so the two runs' cascades differ a little too. The deadline "
        "here is far (an hour), so the switch to real-time never comes: the tight-deadline switch is tested in "
        "tests/offload.rs and tests/offload_scale.rs.",
    ]
    return md


def splice(result):
    from .report import splice as splice_rows

    splice_rows(common.BENCH_MD, result["rows"], ("B8",), SECTION, section(result))


def main():
    return common.standalone(
        __doc__, "B8", SMOKE_ITEMS,
        lambda workdir, smoke, items, command: run(workdir, smoke=smoke, items=items, command=command),
        splice,
    )


if __name__ == "__main__":
    sys.exit(main())
