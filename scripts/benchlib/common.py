"""Helpers every benchmark uses: paths and sizes, process control (everything started is
stopped by PID), a minimal Redis client and throwaway redis-server, inputs and configs,
`batchyard submit`, the release build."""

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time


ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RELEASE = os.path.join(ROOT, "target", "release")
BATCHYARD = os.path.join(RELEASE, "batchyard")
NOOP = os.path.join(RELEASE, "examples", "noop_consumer")
FAKE = os.path.join(RELEASE, "batchyard-fake-provider")
BENCH_MD = os.path.join(ROOT, "BENCHMARKS.md")

POLL = 0.1  # progress poll interval, seconds
RSS_EVERY = 0.25  # worker RSS sample interval, seconds

FULL = {"e2e_jobs": 200_000, "submit_lines": 1_000_000, "pairs": 2, "step_timeout": 600.0,
        "b2_jobs": 20_000, "b2_rpm": 6_000, "b2_window": 60,
        "b6_jobs": 50_000, "b6_repeats": 3, "b7_batches": 100, "b7_items": 10, "b7_pending": 200_000}
# B2 in the smoke: the same code path with 5 s windows (fake and `[limits] window_secs`) and
# 100 requests per window, 200 jobs: about 10 s a run. B6 and B7: a few seconds each.
SMOKE = {"e2e_jobs": 2_000, "submit_lines": 10_000, "pairs": 1, "step_timeout": 60.0,
         "b2_jobs": 200, "b2_rpm": 100, "b2_window": 5,
         "b6_jobs": 300, "b6_repeats": 1, "b7_batches": 5, "b7_items": 5, "b7_pending": 2_000}

TARGETS = {
    "B1": ">= 10,000 jobs/s",
    "B1r": ">= 0.3",
    "B3t": "<= 20 s",
    "B3m": "<= 150 MiB",
    "B4m": "<= 100 MiB",
    "B4f": "last <= 1.2 x 50% sample",
    "B2u": ">= 97%",
    "B2r": "<= 0.5%",
    "B2s": "100%",
}
# What --only can pick (B1 also runs B1r, B4 and B1-diag; B6 also runs B6-c64).
BENCH_IDS = ("B1", "B2", "B3", "B5", "B6", "B7", "B8", "B9", "B10")
# B5, the routing benchmark, lives in benchlib/routing.py (see its docstring).
SHM = "/dev/shm"  # B1-diag's tmpfs


class BenchError(Exception):
    """A benchmark could not run (not: it was slow)."""


def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---------------------------------------------------------------------------------------------
# processes: everything started is registered and stopped by PID at the end


class Procs:
    def __init__(self):
        self.live = []  # Popen objects

    def start(self, cmd, **kw):
        p = subprocess.Popen(cmd, **kw)
        self.live.append(p)
        return p

    def forget(self, p):
        if p in self.live:
            self.live.remove(p)

    def stop(self, p, grace=5.0):
        """SIGTERM, wait up to `grace`, then SIGKILL; by PID only (its direct children too,
        for wrappers such as /usr/bin/time that would otherwise orphan them)."""
        if p.returncode is None:
            kids = children(p.pid)
            for pid in [p.pid] + kids:
                try:
                    os.kill(pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline:
                if p.poll() is not None:
                    break
                time.sleep(0.05)
            else:
                for pid in [p.pid] + kids:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                try:
                    p.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    pass
        self.forget(p)

    def stop_all(self):
        for p in list(reversed(self.live)):
            self.stop(p)


PROCS = Procs()


def children(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except (OSError, ValueError):
        return []


def wait_child(p, timeout, on_tick=None, tick=POLL):
    """Waits for `p` with os.wait4 (so its own rusage is known), calling `on_tick()` every
    `tick` seconds. Returns (exit code, wall seconds since call, rusage). Raises BenchError on
    timeout after stopping `p`."""
    t0 = time.monotonic()
    deadline = t0 + timeout
    while True:
        pid, status, ru = os.wait4(p.pid, os.WNOHANG)
        if pid == p.pid:
            p.returncode = os.waitstatus_to_exitcode(status)
            PROCS.forget(p)
            return p.returncode, time.monotonic() - t0, ru
        if time.monotonic() > deadline:
            PROCS.stop(p)
            raise BenchError(f"{os.path.basename(p.args[0])} did not finish within {timeout:.0f} s")
        if on_tick is not None:
            on_tick()
        time.sleep(tick)


def vm_kib(pid):
    """(VmRSS, VmHWM) of a live process in KiB, or (None, None)."""
    rss = hwm = None
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
                elif line.startswith("VmHWM:"):
                    hwm = int(line.split()[1])
    except OSError:
        pass
    return rss, hwm


CLK_TCK = os.sysconf("SC_CLK_TCK")


class Cpu(tuple):
    """(user, system) CPU seconds."""

    @property
    def total(self):
        return self[0] + self[1]

    def __str__(self):
        return f"{self.total:.1f} s ({self[0]:.1f} user + {self[1]:.1f} sys)"


def cpu_secs(pid):
    """User and system CPU seconds used so far by a live process (a Cpu), or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return Cpu((int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK))
    except (OSError, ValueError, IndexError):
        return None


def redis_cpu(client):
    info = client.cmd("INFO", "cpu")
    vals = [float(m) for m in re.findall(r"^used_cpu_(?:user|sys):([\d.]+)", info, re.M)]
    return sum(vals)


def gnu_time():
    """/usr/bin/time if it is GNU time (for %M), else None."""
    try:
        r = subprocess.run(["/usr/bin/time", "--version"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return "/usr/bin/time" if "GNU" in r.stdout + r.stderr else None


GNU_TIME = gnu_time()


def tail(path, n=15):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-n:])
    except FileNotFoundError:
        return "(no log)"


def child_env():
    """The environment for batchyard: no BATCHYARD_* overrides, default logging."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATCHYARD_")}
    env.pop("RUST_LOG", None)
    env.pop("LOG_FORMAT", None)
    return env


# ---------------------------------------------------------------------------------------------
# a minimal RESP client (stdlib only), so polling costs no process spawns


class Redis:
    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.buf = b""

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def _line(self):
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise BenchError("redis closed the connection")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def _exact(self, n):
        while len(self.buf) < n + 2:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise BenchError("redis closed the connection")
            self.buf += chunk
        data, self.buf = self.buf[:n], self.buf[n + 2 :]
        return data

    def _reply(self):
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise BenchError(f"redis error: {rest.decode(errors='replace')}")
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            return None if n < 0 else self._exact(n).decode(errors="replace")
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [self._reply() for _ in range(n)]
        raise BenchError(f"unexpected redis reply {line[:40]!r}")

    def cmd(self, *args):
        out = [b"*%d\r\n" % len(args)]
        for a in args:
            b = a if isinstance(a, bytes) else str(a).encode()
            out.append(b"$%d\r\n%s\r\n" % (len(b), b))
        self.sock.sendall(b"".join(out))
        return self._reply()

    def used_memory(self):
        info = self.cmd("INFO", "memory")
        m = re.search(r"^used_memory:(\d+)", info, re.M)
        return int(m.group(1)) if m else None


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """A throwaway redis-server: free loopback port, no persistence, its own dir."""

    def __init__(self, workdir, tag):
        self.dir = os.path.join(workdir, f"redis-{tag}")
        os.makedirs(self.dir, exist_ok=True)
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}"
        self.log = os.path.join(self.dir, "redis.log")
        self.proc = PROCS.start(
            [
                "redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                "--save", "", "--appendonly", "no", "--dir", self.dir,
                "--daemonize", "no", "--logfile", self.log,
            ],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=self.dir,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                self.client = Redis(self.port)
                if self.client.cmd("PING") == "PONG":
                    break
            except (OSError, BenchError):
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise BenchError(f"redis-server did not start on port {self.port}:\n{tail(self.log)}")
            time.sleep(0.05)

    def stop(self):
        if getattr(self, "client", None) is not None:
            self.client.close()
        PROCS.stop(self.proc)


# ---------------------------------------------------------------------------------------------
# inputs and config

WORDS = (
    "batch queue worker model token prompt router budget stream redis ledger retry "
    "summary document contract invoice latency provider escalate tier context window "
    "output result manifest cheap adequate offline request response careful quick brown "
    "fox jumps over lazy dog alpha beta gamma delta epsilon zeta theta kappa lambda sigma "
    "omega north south east west river mountain valley forest meadow harbor island"
).split()


def phrases():
    """4096 deterministic ~50-char phrases; a line's text is 4 of them picked from i."""
    out = []
    x = 12345
    for _ in range(4096):
        words = []
        while sum(len(w) + 1 for w in words) < 48:
            x = (x * 1103515245 + 12345) & 0x7FFFFFFF
            words.append(WORDS[(x >> 8) % len(WORDS)])
        out.append(" ".join(words) + " ")
    return out


def write_jsonl(path, n):
    """Streams n OpenAI batch lines to `path` (never builds the file in memory)."""
    t0 = time.monotonic()
    ph = phrases()
    head = '{"custom_id":"r-'
    mid = '","method":"POST","url":"/v1/chat/completions","body":{"model":"auto","messages":[{"role":"user","content":"'
    end = '"}],"max_tokens":50}}\n'
    with open(path, "w", buffering=1 << 20) as f:
        for i in range(n):
            h = (i * 2654435761) & 0xFFFFFFFF
            text = (
                f"item {i}: "
                + ph[h & 4095] + ph[(h >> 12) & 4095] + ph[(i * 7 + (h >> 20)) & 4095] + ph[(i + 17) & 4095]
            )
            f.write(f"{head}{i}{mid}{text.rstrip()}{end}")
    size = os.path.getsize(path)
    log(f"wrote {n:,} lines to {os.path.basename(path)} ({size / 1e6:.1f} MB) in {time.monotonic() - t0:.1f} s")
    return size


def write_config(workdir, name, redis_url, store_root=None):
    """No providers and no models: the built-in simulated trio at zero latency. The result
    store is `store-NAME` in `store_root` (default: the temp dir)."""
    path = os.path.join(workdir, f"{name}.toml")
    store = os.path.join(store_root or workdir, f"store-{name}")
    with open(path, "w") as f:
        f.write(
            f'[queue]\nredis_url = "{redis_url}"\nname = "{name}"\n\n'
            f'[storage]\nurl = "file://{store}"\n'
        )
    return path, store


def submit(workdir, config, jsonl, timeout, tag):
    """Runs `batchyard submit --json`; returns (batch id, wall s, peak RSS KiB).

    The peak RSS comes from GNU time's %M when installed (exact: wait4 of a child forked by
    the small `time` process), else from the last VmHWM read while polling every 20 ms.
    (wait4 from here would not do: Linux carries the forking Python's RSS into the child's
    ru_maxrss.)"""
    out_path = os.path.join(workdir, f"submit-{tag}.out")
    err_path = os.path.join(workdir, f"submit-{tag}.err")
    rss_path = os.path.join(workdir, f"submit-{tag}.maxrss")
    cmd = [BATCHYARD, "--config", config, "submit", jsonl, "--json"]
    if GNU_TIME:
        cmd = [GNU_TIME, "-f", "%M", "-o", rss_path] + cmd
    hwm = {"kib": 0, "cpu": None}

    def tick():
        pids = children(p.pid) if GNU_TIME else [p.pid]
        for pid in pids:
            _, h = vm_kib(pid)
            if h:
                hwm["kib"] = max(hwm["kib"], h)
            cpu = cpu_secs(pid)
            if cpu is not None:
                hwm["cpu"] = cpu

    with open(out_path, "w") as out, open(err_path, "w") as err:
        p = PROCS.start(cmd, stdout=out, stderr=err, cwd=workdir, env=child_env())
        rc, wall, _ = wait_child(p, timeout, on_tick=tick, tick=0.02)
    if rc != 0:
        raise BenchError(f"batchyard submit exited {rc}:\n{tail(err_path)}")
    peak = hwm["kib"]
    if GNU_TIME:
        try:
            peak = int(open(rss_path).read().split()[-1])
        except (OSError, ValueError, IndexError):
            pass
    lines = [l for l in open(out_path).read().splitlines() if l.strip()]
    try:
        batch = json.loads(lines[-1])
        batch_id = batch["id"]
    except (IndexError, ValueError, KeyError) as e:
        raise BenchError(f"batchyard submit --json printed no batch ({e}):\n{tail(out_path)}")
    return batch_id, wall, peak, hwm["cpu"]


# ---------------------------------------------------------------------------------------------


def build():
    # One cargo invocation: the three packages' dependencies are built once with one set of
    # features. Built one package at a time, each package's feature set differs, so about 70
    # dependencies were compiled again for the example and the fake (about 4 of the bench's
    # 10 minutes of build on 2 cores).
    cmd = [
        "cargo", "build", "--release",
        "-p", "batchyard", "--bin", "batchyard",
        "-p", "batchyard-workers", "--example", "noop_consumer",
        "-p", "batchyard-fake-provider", "--bin", "batchyard-fake-provider",
        "-p", "batchyard-jobs", "--example", "fair_bench",
    ]
    log("building: " + " ".join(cmd))
    p = PROCS.start(cmd, cwd=ROOT)
    try:
        rc = p.wait()
    finally:
        PROCS.stop(p)
    if rc != 0:
        raise BenchError(f"build failed ({rc}): {' '.join(cmd)}")
    for path in (BATCHYARD, NOOP, FAKE, os.path.join(RELEASE, "examples", "fair_bench")):
        if not os.access(path, os.X_OK):
            raise BenchError(f"build produced no {path}")


def verdict(ok):
    """A B5 / B9 row's verdict word; `None`: reported only."""
    return "n/a (reported)" if ok is None else ("PASS" if ok else "SHORT")


def standalone(doc, bench_id, smoke_items, run_fn, splice_fn, smoke_note=""):
    """`python3 -m benchlib.b5` / `benchlib.b9`: build, run `run_fn(workdir, smoke, items,
    command)`, print its rows, splice them into BENCHMARKS.md with `--write`."""
    ap = argparse.ArgumentParser(description=doc.split("\n", 1)[0])
    ap.add_argument("--smoke", action="store_true", help=f"{smoke_items} items per run{smoke_note}; writes nothing")
    ap.add_argument("--items", type=int, help="items per run (ad hoc: writes nothing unless --write)")
    ap.add_argument("--no-build", action="store_true", help="use the release binaries already built")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (logs, configs, outputs)")
    ap.add_argument("--write", action="store_true", help=f"update {bench_id} in BENCHMARKS.md (not with --smoke)")
    args = ap.parse_args()
    workdir = tempfile.mkdtemp(prefix=f"batchyard-{bench_id.lower()}-")
    try:
        if not args.no_build:
            build()
        result = run_fn(workdir, args.smoke, args.items, f"python3 -m benchlib.{bench_id.lower()} --write")
        for r in result["rows"]:
            print(f"{r[0]:<4} {r[2]:<14} {r[3]:<70} {'(smoke)' if args.smoke else verdict(r[4])}\n     {r[1]}")
        if args.write and not args.smoke:
            splice_fn(result)
            log(f"updated {bench_id} in {BENCH_MD}")
        return 0
    except BenchError as e:
        log(f"FAILED: {e}")
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        PROCS.stop_all()
        if args.keep:
            log(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
