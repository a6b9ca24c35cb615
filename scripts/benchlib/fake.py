"""`batchyard-fake-provider` on a free loopback port (B2, B5)."""

import json
import os
import re
import select
import subprocess
import time
import urllib.request

from .common import BenchError, FAKE, PROCS, cpu_secs, tail


def read_line(stream, timeout):
    """One line from a child's stdout pipe, waiting at most `timeout` s (None on timeout/EOF)."""
    fd = stream.fileno()
    buf = b""
    deadline = time.monotonic() + timeout
    while not buf.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            return None
        chunk = os.read(fd, 1)
        if not chunk:
            return None
        buf += chunk
    return buf.decode(errors="replace").strip()


class FakeProvider:
    """`batchyard-fake-provider` on a free loopback port; it prints `listening on URL`."""

    def __init__(self, workdir, tag, args):
        self.log = os.path.join(workdir, f"fake-{tag}.log")
        self.args = args
        with open(self.log, "w") as err:
            self.proc = PROCS.start([FAKE] + args, stdout=subprocess.PIPE, stderr=err, cwd=workdir)
        line = read_line(self.proc.stdout, 15)
        m = re.match(r"listening on (http://\S+)", line or "")
        if not m:
            self.stop()
            raise BenchError(f"the fake provider printed {line!r}, not `listening on URL`:\n{tail(self.log)}")
        self.url = m.group(1).rstrip("/")
        self.base_url = self.url + "/v1"

    def stats(self):
        try:
            # No proxy: the fake is on loopback whatever http_proxy says.
            opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
            with opener.open(self.url + "/stats", timeout=30) as r:
                return json.loads(r.read())
        except (OSError, ValueError) as e:
            raise BenchError(f"GET {self.url}/stats failed: {e}")

    def cpu(self):
        return cpu_secs(self.proc.pid)

    def stop(self):
        PROCS.stop(self.proc)
        try:
            self.proc.stdout.close()
        except (OSError, AttributeError):
            pass
