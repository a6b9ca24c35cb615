"""B5: the routing benchmark. The benchmark itself is `routing` (see its docstring); this is its
entry from `scripts/bench` (`run`, `splice`: its rows and section into BENCHMARKS.md) and on
its own:

    cd scripts && python3 -B -m benchlib.b5 [--smoke] [--items N] [--no-build] [--keep] [--write]
"""

import sys

from . import common, routing


def run(workdir, smoke, command):
    return routing.run(workdir, smoke=smoke, command=command)


def splice(result):
    routing.splice_markdown(common.BENCH_MD, result)


def main():
    return common.standalone(
        routing.__doc__, "B5", routing.SMOKE_ITEMS,
        lambda workdir, smoke, items, command: routing.run(workdir, smoke=smoke, items=items, command=command),
        splice, " per scenario",
    )


if __name__ == "__main__":
    sys.exit(main())
