"""B11: result segments, before and after, side by side (issue 17, section 2).

Run through `scripts/bench_segments` (it starts SeaweedFS with Prometheus metrics and sets the
AWS_* variables). Two builds of `batchyard` are compared on the same machine in one run,
alternating: BEFORE (per-item `results/<job>.json`) and AFTER (result segments).

  1. B1 on `file://`: 200,000 jobs, `worker --concurrency 64`, simulated provider at zero
     latency (B1's own runner, scripts/benchlib/b1.py), and the bare no-op consumer on the
     same input: B1r = e2e jobs/s / no-op jobs/s (medians over the rounds);
  2. 100,000 items end to end on SeaweedFS S3 and on `file://`, each build: wall time,
     finalization time (all settled -> completed), S3 / file ratio; the S3 server's own
     request counters (SeaweedFS_s3_request_total, every request of the run: submit, worker,
     finalizer) per item;
  3. the AFTER build alone: 1,000,000 items end to end on S3, its finalization time and
     requests per item (BEFORE at 1M would take about a quarter of an hour; its 100k figure
     is reported instead).

Prints one JSON object (the figures) as its last line. Python 3 standard library only.
"""

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchlib import b1, common  # noqa: E402
from benchlib.common import PROCS, log, write_jsonl  # noqa: E402

BUCKET = os.environ.get("BENCH_S3_BUCKET", "batchyard-bench")


def s3_config(workdir, name, redis_url, store_root=None):
    """Like common.write_config, with the result store on S3 (`s3://BUCKET/NAME`)."""
    path = os.path.join(workdir, f"{name}.toml")
    with open(path, "w") as f:
        f.write(
            f'[queue]\nredis_url = "{redis_url}"\nname = "{name}"\n\n'
            f'[storage]\nurl = "s3://{BUCKET}/{name}"\n'
        )
    return path, None


def s3_requests():
    """The S3 server's request counters for the bench bucket, by type."""
    port = os.environ["BENCH_S3_METRICS_PORT"]
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    counts = {}
    for line in text.splitlines():
        if line.startswith("SeaweedFS_s3_request_total{") and f'bucket="{BUCKET}"' in line:
            kind = line.split('type="', 1)[1].split('"', 1)[0]
            counts[kind] = counts.get(kind, 0) + int(float(line.rsplit(" ", 1)[1]))
    return counts


def use(binary):
    common.BATCHYARD = binary
    b1.BATCHYARD = binary


def e2e(workdir, jsonl, n, k, on_s3, timeout):
    b1.write_config = s3_config if on_s3 else common.write_config
    before = s3_requests() if on_s3 else None
    try:
        res = b1.run_e2e(workdir, jsonl, n, timeout, k)
    finally:
        # The worker's log outlives the temp dir, for a look at what it did.
        log_path = os.path.join(workdir, f"worker-{k}.log")
        if os.path.exists(log_path):
            shutil.copy(log_path, os.path.join(os.path.dirname(workdir), f"b10-worker-{k}.log"))
    if on_s3:
        after = s3_requests()
        res["s3_requests"] = {t: after.get(t, 0) - before.get(t, 0) for t in after}
        res["s3_requests_per_item"] = sum(res["s3_requests"].values()) / n
    # Stores stay until the end: deleting 200,000 files slows the file creation of the runs
    # that follow (this ext4 skips recently deleted inodes one by one), the BEFORE build's most.
    return {key: res[key] for key in ("jobs", "secs", "jobs_per_sec", "settled_secs",
                                      "finalize_secs", "peak_rss_kib", "worker_cpu")
            if key in res} | ({"s3_requests": res["s3_requests"],
                               "s3_requests_per_item": res["s3_requests_per_item"]} if on_s3 else {})


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--before", required=True, help="folder with the BEFORE batchyard binary")
    ap.add_argument("--after", required=True, help="folder with the AFTER batchyard binary")
    ap.add_argument("--noop", required=True, help="the noop_consumer binary")
    ap.add_argument("--b1-jobs", type=int, default=200_000)
    ap.add_argument("--s3-jobs", type=int, default=100_000)
    ap.add_argument("--big-jobs", type=int, default=1_000_000)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--only-big", action="store_true", help="only step 3 (the AFTER build at --big-jobs on S3)")
    args = ap.parse_args()
    builds = {label: os.path.abspath(os.path.join(d, "batchyard"))
              for label, d in (("before", args.before), ("after", args.after))}
    b1.NOOP = common.NOOP = os.path.abspath(args.noop)
    work = tempfile.mkdtemp(prefix="bench-segments-", dir=os.environ.get("BENCH_TMP", "/tmp"))
    out = {"b1": {"before": [], "after": [], "noop": []}, "s3": {}, "big": None}
    k = 0
    try:
        jsonl = os.path.join(work, "b1.jsonl")
        write_jsonl(jsonl, args.b1_jobs)
        for r in range(0 if args.only_big else args.rounds):
            for label in ("before", "after"):
                use(builds[label])
                k += 1
                out["b1"][label].append(e2e(work, jsonl, args.b1_jobs, k, False, 900))
            k += 1
            out["b1"]["noop"].append(b1.run_noop(work, jsonl, args.b1_jobs, 900, k)["jobs_per_sec"])
        if not args.only_big:
            noop = statistics.median(out["b1"]["noop"])
            for label in ("before", "after"):
                rate = statistics.median(x["jobs_per_sec"] for x in out["b1"][label])
                out["b1"][f"{label}_jobs_per_sec"] = rate
                out["b1"][f"{label}_b1r"] = rate / noop
            log(f"B1: {json.dumps({k2: v for k2, v in out['b1'].items() if not isinstance(v, list)})}")

        jsonl = os.path.join(work, "s3.jsonl")
        write_jsonl(jsonl, args.s3_jobs)
        for label in () if args.only_big else ("before", "after"):
            use(builds[label])
            k += 1
            file_run = e2e(work, jsonl, args.s3_jobs, k, False, 1800)
            k += 1
            s3_run = e2e(work, jsonl, args.s3_jobs, k, True, 3600)
            out["s3"][label] = {"file": file_run, "s3": s3_run, "ratio": s3_run["secs"] / file_run["secs"]}
            log(f"S3 vs file ({label}): {json.dumps(out['s3'][label])}")

        if args.big_jobs > 0:
            jsonl = os.path.join(work, "big.jsonl")
            write_jsonl(jsonl, args.big_jobs)
            use(builds["after"])
            k += 1
            out["big"] = e2e(work, jsonl, args.big_jobs, k, True, 3600)
            log(f"1M on S3 (after): {json.dumps(out['big'])}")
    finally:
        PROCS.stop_all() if hasattr(PROCS, "stop_all") else None
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
