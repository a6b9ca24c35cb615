"""B5: the routing benchmark. It lives in `scripts/bench_routing.py` (see its docstring); this
runs it with the helpers of this package and splices its rows and section into BENCHMARKS.md."""

import os
import sys
import types

from . import common, fake

SCRIPTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def routing():
    sys.dont_write_bytecode = True  # no scripts/__pycache__
    if SCRIPTS not in sys.path:
        sys.path.insert(0, SCRIPTS)
    import bench_routing

    return bench_routing


def helpers():
    """What bench_routing calls `b`: the shared helpers, as attributes."""
    names = {k: getattr(common, k) for k in dir(common) if not k.startswith("_")}
    return types.SimpleNamespace(**names, FakeProvider=fake.FakeProvider)


def run(workdir, smoke, command):
    return routing().run(helpers(), workdir, smoke=smoke, command=command)


def splice(result):
    routing().splice_markdown(common.BENCH_MD, result)
