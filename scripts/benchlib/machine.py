"""What the machine is and how busy it is (for the report's caveats)."""

import datetime
import os
import platform
import subprocess

from .common import PROCS


def sh(cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


def machine():
    mem = "unknown"
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal:"):
                mem = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
                break
    except OSError:
        pass
    cpu = "unknown"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "nproc": sh(["nproc"]),
        "memory": mem,
        "cpu": cpu,
        "kernel": platform.release(),
        "rustc": sh(["rustc", "--version"]),
        "redis": sh(["redis-server", "--version"]),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def busy_others():
    """Compilers and other heavy processes running now that this script did not start."""
    mine = {os.getpid()} | {p.pid for p in PROCS.live}
    names = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) in mine:
            continue
        try:
            comm = open(f"/proc/{pid}/comm").read().strip()
        except OSError:
            continue
        if comm in ("rustc", "cargo", "cc", "ld", "clippy-driver", "rust-analyzer") or comm.startswith("ld."):
            names[comm] = names.get(comm, 0) + 1
    return names


def loadavg():
    try:
        return open("/proc/loadavg").read().split()[:3]
    except OSError:
        return ["?"] * 3
