"""B5: the routing benchmark. The benchmark itself is `routing` (see its docstring); this is its
entry from `scripts/bench` (`run`, `splice`: its rows and section into BENCHMARKS.md) and on
its own:

    cd scripts && python3 -B -m benchlib.b5 [--smoke] [--items N] [--no-build] [--keep] [--write]
"""

import argparse
import shutil
import sys
import tempfile

from . import common, routing


def run(workdir, smoke, command):
    return routing.run(workdir, smoke=smoke, command=command)


def splice(result):
    routing.splice_markdown(common.BENCH_MD, result)


def main():
    ap = argparse.ArgumentParser(description=routing.__doc__.split("\n", 1)[0])
    ap.add_argument("--smoke", action="store_true", help=f"{routing.SMOKE_ITEMS} items per scenario; writes nothing")
    ap.add_argument("--items", type=int, help="items per scenario (ad hoc: writes nothing unless --write)")
    ap.add_argument("--no-build", action="store_true", help="use the release binaries already built")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (logs, configs, outputs)")
    ap.add_argument("--write", action="store_true", help="update B5 in BENCHMARKS.md (not with --smoke)")
    args = ap.parse_args()
    workdir = tempfile.mkdtemp(prefix="batchyard-b5-")
    try:
        if not args.no_build:
            common.build()
        result = routing.run(workdir, smoke=args.smoke, items=args.items, command="python3 -m benchlib.b5 --write")
        for r in result["rows"]:
            print(f"{r[0]:<4} {r[2]:<14} {r[3]:<70} {'(smoke)' if args.smoke else routing.verdict(r[4])}\n     {r[1]}")
        if args.write and not args.smoke:
            splice(result)
            common.log(f"updated B5 in {common.BENCH_MD}")
        return 0
    except common.BenchError as e:
        common.log(f"FAILED: {e}")
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        common.PROCS.stop_all()
        if args.keep:
            common.log(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
