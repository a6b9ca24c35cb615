#!/usr/bin/env python3
"""Drives the dashboard in a real headless Chromium over the DevTools protocol.

Run by tests/dashboard.rs against a live `batchyard serve`. Environment:
  BATCHYARD_DASH_URL       http://127.0.0.1:PORT/ (the page)
  BATCHYARD_DASH_TOKEN     a valid API token
  BATCHYARD_DASH_BATCH     the id of a batch that must show up in the table; empty: nothing
                           was submitted, and the panels must show their empty states
  BATCHYARD_DASH_SHOT      where to write the PNG screenshot
  BATCHYARD_CHROMIUM       the chromium binary
  BATCHYARD_DASH_TMP       a scratch folder (chromium's profile)
  BATCHYARD_DASH_LANE      instead of the steps below, check one batch's offload lane:
                           {"batch": ID, "provider_id": ID, "offloaded": N} (tests/offload_lanes.rs)

Steps: load the page; a wrong token must bring the form back with a message; log in with the
real token (typed into the form with Input.insertText, submitted with a mouse click); wait for
the queue chart, the queue table, the batch table and the batch detail to render live data;
compare the dead letters with /api/batches/{id}; screenshot; log out. Every wait is bounded.
Exit 0 on success, 1 on a failed check, 77 when websocket-client is missing (the caller decides
whether that is a skip).
"""

import base64
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

try:
    import websocket  # PyPI: websocket-client
except ImportError:
    print("the websocket-client Python package is missing (pip install websocket-client)")
    sys.exit(77)


def log(msg):
    print(f"[dashboard_check] {msg}", file=sys.stderr, flush=True)


class Fail(Exception):
    pass


class Cdp:
    """One page session: commands by id, events kept for inspection."""

    def __init__(self, ws_url):
        self.ws = websocket.create_connection(ws_url, timeout=30, suppress_origin=True)
        self.next_id = 0
        self.events = []

    def call(self, method, timeout=30, **params):
        self.next_id += 1
        mid = self.next_id
        self.ws.send(json.dumps({"id": mid, "method": method, "params": params}))
        deadline = time.time() + timeout
        while True:
            left = deadline - time.time()
            if left <= 0:
                raise Fail(f"no answer to {method} within {timeout}s")
            self.ws.settimeout(left)
            msg = json.loads(self.ws.recv())
            if msg.get("id") == mid:
                if "error" in msg:
                    raise Fail(f"{method}: {msg['error']}")
                return msg.get("result", {})
            if "method" in msg:
                self.events.append(msg)

    def eval(self, expr):
        r = self.call("Runtime.evaluate", expression=expr, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in r:
            raise Fail(f"evaluating {expr[:80]!r}: {r['exceptionDetails']}")
        return r.get("result", {}).get("value")

    def wait_for(self, what, expr, timeout):
        """Polls `expr` (which returns {ok, ...}) until ok; raises with the last state."""
        deadline = time.time() + timeout
        state = None
        while time.time() < deadline:
            state = self.eval(expr)
            if state and state.get("ok"):
                return state
            time.sleep(0.25)
        raise Fail(f"timed out after {timeout}s waiting for {what}; last state: {json.dumps(state)}")

    def click(self, selector):
        box = self.eval(
            "(() => { const r = document.querySelector(%s).getBoundingClientRect();"
            " return {x: r.x + r.width / 2, y: r.y + r.height / 2}; })()" % json.dumps(selector)
        )
        for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", type=kind, x=box["x"], y=box["y"],
                      button="left", clickCount=1)

    def type_into(self, selector, text):
        self.eval("document.querySelector(%s).focus()" % json.dumps(selector))
        self.call("Input.insertText", text=text)

    def close(self):
        try:
            self.ws.close()
        except Exception:
            pass


def start_chromium(binary, profile):
    args = [
        binary, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--no-first-run", "--no-default-browser-check", "--disable-extensions",
        "--disable-background-networking", "--disable-sync", "--metrics-recording-only",
        "--hide-scrollbars", "--mute-audio", "--window-size=1400,1500",
        f"--user-data-dir={profile}", "--remote-debugging-port=0", "about:blank",
    ]
    proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    found = {}
    tail = []

    def read():
        for line in proc.stderr:
            tail.append(line.rstrip())
            del tail[:-40]
            m = re.search(r"DevTools listening on (ws://\S+)", line)
            if m and "ws" not in found:
                found["ws"] = m.group(1)
        # keep draining until chromium exits so it never blocks on a full pipe

    threading.Thread(target=read, daemon=True).start()
    deadline = time.time() + 30
    while "ws" not in found:
        if proc.poll() is not None:
            raise Fail("chromium exited early (%s):\n%s" % (proc.returncode, "\n".join(tail)))
        if time.time() > deadline:
            stop(proc)
            raise Fail("chromium printed no DevTools address within 30s:\n" + "\n".join(tail))
        time.sleep(0.05)
    return proc, found["ws"], tail


def stop(proc):
    """TERM to chromium's own process group (it and its helpers, nothing else), then KILL."""
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def page_ws(browser_ws):
    """The websocket of the first page target, from the /json/list endpoint."""
    host = browser_ws.split("/")[2]
    deadline = time.time() + 15
    while time.time() < deadline:
        with urllib.request.urlopen(f"http://{host}/json/list", timeout=5) as r:
            for t in json.load(r):
                if t.get("type") == "page" and t.get("webSocketDebuggerUrl"):
                    return t["webSocketDebuggerUrl"]
        time.sleep(0.2)
    raise Fail("chromium has no page target")


def api(base, path, token):
    req = urllib.request.Request(base.rstrip("/") + path, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.load(r)


# The reason tests/dashboard.rs pauses model `large` with (PAUSE_REASON there).
PAUSE_REASON = 'quota <b>exceeded</b> & "retry" <script>later</script>'

# What the page shows, for the waits below.
STATE_JS = r"""
(() => {
  const q = (s) => document.querySelector(s);
  const visible = (s) => { const e = q(s); return !!e && !e.closest("[hidden]"); };
  const paths = [...document.querySelectorAll("#queue-chart path.series")];
  const batchIds = [...document.querySelectorAll("#batches-table tbody tr")].map((r) => r.getAttribute("data-batch"));
  const queueCells = [...document.querySelectorAll("#queues-table tbody td.num")].map((td) => td.textContent.trim());
  return {
    login: visible("#login"), dash: visible("#dash"),
    loginMsg: q("#login-msg").hidden ? "" : q("#login-msg").textContent,
    chartPoints: Number(q("#queue-chart").getAttribute("data-points") || 0),
    pathPoints: paths.map((p) => (p.getAttribute("d") || "").split(/[ML]/).filter((s) => s.trim()).length),
    batchIds, queueCells, batchesEmpty: visible("#batches-empty"),
    batchRow: (() => { const r = q("#batches-table tbody tr"); return r ? r.textContent : ""; })(),
    progress: [...document.querySelectorAll("#batches-table .progress")].map((p) => p.getAttribute("aria-valuenow")),
    detailId: q("#detail-id").textContent, detailShown: visible("#detail-body"),
    deadCodes: [...document.querySelectorAll("#dead-table tbody tr")].map((r) => r.getAttribute("data-code")),
    deadCmds: [...document.querySelectorAll("#dead-table code")].map((c) => c.textContent),
    deadEmpty: visible("#dead-empty"),
    models: [...document.querySelectorAll("#models-table tbody tr")].map((r) => r.getAttribute("data-model")),
    modelStates: [...document.querySelectorAll("#models-table .badge")].map((b) => b.textContent),
    pipelines: [...document.querySelectorAll("#pipelines-table tbody tr")].map((r) => r.getAttribute("data-pipeline")),
    pipelineRuns: [...document.querySelectorAll("#pipelines-table tbody tr")].map((r) => r.children[3].textContent),
    errors: [...document.querySelectorAll(".panel-error")].filter((e) => !e.hidden).map((e) => e.textContent),
    status: q("#status").textContent,
  };
})()
"""


REFUSED = ""


def check_refused(cdp, refused):
    """A batch refused at validation: a full red bar that says nothing ran, and its reason in
    the detail; every created cell is a full date."""
    want = json.dumps(refused)
    row = cdp.eval(
        "(() => { const r = document.querySelector('#batches-table tr[data-batch=%s]');"
        " return r && {done: r.querySelector('.progress .done').style.width,"
        " failed: r.querySelector('.progress .failed').style.width,"
        " label: r.querySelector('.progress-label').textContent}; })()" % want
    )
    if not row or row["failed"] != "100%" or row["done"] != "0%" or "nothing ran" not in row["label"]:
        raise Fail(f"the refused batch {refused} is not a full red bar saying nothing ran: {row}")
    created = cdp.eval(
        "[...document.querySelectorAll('#batches-table tbody tr')].map((r) => r.lastElementChild.textContent)"
    )
    if not created or not all(re.fullmatch(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}", c) for c in created):
        raise Fail(f"the created column is not a full date: {created}")
    cdp.click(f"#batches-table tbody tr[data-batch={want}] td")
    st = cdp.wait_for(
        "the refusal reason",
        "(() => { const e = document.querySelector('#detail-reason');"
        " return {ok: document.querySelector('#detail-id').textContent === %s && !!e && !e.hidden"
        " && /line 1/.test(e.textContent), text: e && e.textContent}; })()" % want,
        20,
    )
    log(f"refused batch: bar {row}, reason {st['text']!r}, created {created}")


def open_page(cdp, url):
    """Loads the page at a fixed size and waits for the login form."""
    cdp.call("Page.enable")
    cdp.call("Runtime.enable")
    cdp.call("Log.enable")
    cdp.call("Emulation.setDeviceMetricsOverride", width=1400, height=1500, deviceScaleFactor=1, mobile=False)
    cdp.call("Page.navigate", url=url)
    cdp.wait_for("the login form", "({ok: document.readyState === 'complete' && !!document.querySelector('#login:not([hidden])')})", 20)


def check(cdp, url, token, batch, shot):
    open_page(cdp, url)

    # A wrong token: the API answers 401 and the form comes back with a message.
    cdp.type_into("#token", "definitely-not-a-token")
    cdp.click("#login-submit")
    st = cdp.wait_for("the 401 message", "(() => { const s = %s; s.ok = s.login && /401/.test(s.loginMsg); return s; })()" % STATE_JS, 20)
    log(f"wrong token refused: {st['loginMsg']!r}")

    # The real token, typed and submitted.
    cdp.type_into("#token", token)
    cdp.click("#login-submit")
    if not batch:
        # Nothing submitted yet: every panel shows its empty state, none an error.
        st = cdp.wait_for(
            "the empty states",
            "(() => { const s = %s; s.ok = s.dash && s.batchIds.length === 0 && s.batchesEmpty"
            " && !s.detailShown && s.queueCells.length > 0 && s.queueCells.every((c) => c === '0')"
            " && s.models.length > 0 && s.pipelines.includes('nightly') && s.pipelineRuns.every((r) => /never ran/.test(r))"
            " && s.errors.length === 0 && /updated/.test(s.status); return s; })()" % STATE_JS,
            30,
        )
        log(f"empty dashboard: {json.dumps(st)}")
        shoot(cdp, shot)
        return check_console(cdp)
    want = json.dumps(batch)
    st = cdp.wait_for(
        "live data in every panel",
        "(() => { const s = %s; s.ok = s.dash && s.chartPoints > 0 && s.pathPoints.length === 4"
        " && s.pathPoints.every((n) => n === s.chartPoints) && s.batchIds.includes(%s)"
        " && s.queueCells.length > 0 && s.queueCells.every((c) => /^[0-9,]+$/.test(c))"
        " && s.detailShown && s.models.length > 0 && s.errors.length === 0; return s; })()" % (STATE_JS, want),
        90,
    )
    log(f"rendered: {json.dumps(st)}")
    if REFUSED:
        check_refused(cdp, REFUSED)
    paused = cdp.eval(
        "(() => { const r = document.querySelector('#models-table tr[data-model=\"large\"]');"
        " return r && {badge: r.querySelector('.badge').textContent,"
        " reason: (r.querySelector('.reason') || {}).textContent,"
        " markup: document.querySelectorAll('#models-table b, #models-table script').length}; })()"
    )
    if not paused or paused["badge"] != "paused" or paused["reason"] != PAUSE_REASON or paused["markup"]:
        raise Fail(f"the paused model `large` is not shown as paused with its reason as text: {paused}")
    log(f"paused model: {paused}")
    token_in_storage = cdp.eval("sessionStorage.getItem('batchyard.token')")
    if token_in_storage != token:
        raise Fail("the token is not in sessionStorage")

    # Select our batch and compare its dead letters with the API.
    cdp.click(f"#batches-table tbody tr[data-batch={want}] td")
    detail = api(url, f"/api/batches/{batch}", token)
    dead = detail.get("dead_letters_by_code") or {}
    codes = sorted(dead.keys()) if isinstance(dead, dict) else sorted(d.get("code") for d in dead)
    st = cdp.wait_for(
        "the batch detail",
        "(() => { const s = %s; s.ok = s.detailId === %s && s.detailShown; return s; })()" % (STATE_JS, want),
        20,
    )
    if codes:
        st = cdp.wait_for(
            "dead letters with replay commands",
            "(() => { const s = %s; s.ok = s.deadCodes.length === %d; return s; })()" % (STATE_JS, len(codes)),
            20,
        )
        if sorted(st["deadCodes"]) != codes:
            raise Fail(f"dead letter codes {st['deadCodes']} != API {codes}")
        for code in codes:
            cmd = f"batchyard retry {batch} --code {code}"
            if cmd not in st["deadCmds"]:
                raise Fail(f"no replay command {cmd!r} in {st['deadCmds']}")
        log(f"dead letters shown with replay commands: {st['deadCmds']}")
    elif not st["deadEmpty"]:
        raise Fail("no dead letters, but the empty state is not shown")

    # The pipelines panel: "Run now" submits a batch through the API, and the row shows it.
    cdp.click("#pipelines-table tbody tr[data-pipeline=nightly] button")
    st = cdp.wait_for(
        "a pipeline run from the dashboard",
        "(() => { const s = %s; s.ok = s.pipelineRuns.some((r) => /submitted batch_/.test(r)); return s; })()" % STATE_JS,
        30,
    )
    runs = api(url, "/api/pipelines/nightly/runs", token).get("runs") or []
    shown = " ".join(st["pipelineRuns"])
    if not runs or runs[0].get("outcome") != "submitted" or runs[0].get("batch_id") not in shown:
        raise Fail(f"the dashboard's pipeline run is not the API's newest run: {shown!r} vs {runs[:1]}")
    log(f"pipeline run from the dashboard: {shown!r}")

    shoot(cdp, shot)

    # Log out: the form is back and the token is gone.
    cdp.click("#logout")
    cdp.wait_for("the login form after log out",
                 "({ok: !document.querySelector('#login').hidden && sessionStorage.getItem('batchyard.token') === null})", 10)
    check_console(cdp)


def check_lane(cdp, url, token, lane, shot):
    """Log in, select the batch, and find its offload lane as the API has it: the counts per
    lane and the provider batch with the fake's id."""
    open_page(cdp, url)
    cdp.type_into("#token", token)
    cdp.click("#login-submit")
    want = json.dumps(lane["batch"])
    cdp.wait_for("the batch row", "({ok: !!document.querySelector('#batches-table tr[data-batch=%s]')})" % want, 30)
    cdp.click(f"#batches-table tbody tr[data-batch={want}] td")
    st = cdp.wait_for(
        "the offload lane",
        "(() => { const q = (s) => document.querySelector(s);"
        " const cell = (k) => (q('#lane-table td[data-lane=' + k + ']') || {}).textContent;"
        " const rows = [...document.querySelectorAll('#provider-batches-table tbody tr')];"
        " const s = {id: q('#detail-id').textContent, shown: !q('#lane').hidden,"
        " deadline: q('#lane-deadline').textContent, offloaded: cell('offloaded'), waiting: cell('waiting'),"
        " realtime: cell('realtime'), pbs: rows.map((r) => r.getAttribute('data-provider-batch')),"
        " text: rows.map((r) => r.textContent)};"
        " s.ok = s.id === %s && s.shown && s.pbs.includes(%s) && s.offloaded === %s; return s; })()"
        % (want, json.dumps(lane["provider_id"]), json.dumps(str(lane["offloaded"]))),
        30,
    )
    if "left" not in st["deadline"]:
        raise Fail(f"the deadline line says no time left: {st['deadline']!r}")
    log(f"offload lane: {json.dumps(st)}")
    shoot(cdp, shot)
    check_console(cdp)


def shoot(cdp, shot):
    png = cdp.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
    with open(shot, "wb") as f:
        f.write(base64.b64decode(png["data"]))
    log(f"screenshot: {shot}")


def check_console(cdp):
    problems = []
    for ev in cdp.events:
        if ev["method"] == "Runtime.exceptionThrown":
            problems.append(ev["params"]["exceptionDetails"].get("text", "exception"))
        elif ev["method"] == "Log.entryAdded":
            e = ev["params"]["entry"]
            # The wrong token's 401 is expected; anything else at error level is not.
            if e.get("level") == "error" and "401" not in e.get("text", ""):
                problems.append(f"{e.get('source')}: {e.get('text')}")
        elif ev["method"] == "Runtime.consoleAPICalled" and ev["params"].get("type") == "error":
            problems.append("console.error: " + json.dumps(ev["params"].get("args")))
    if problems:
        raise Fail("the page logged errors:\n" + "\n".join(problems))


def main():
    env = os.environ
    url, token, batch = env["BATCHYARD_DASH_URL"], env["BATCHYARD_DASH_TOKEN"], env.get("BATCHYARD_DASH_BATCH", "")
    global REFUSED
    REFUSED = env.get("BATCHYARD_DASH_REFUSED", "")
    shot, binary, tmp = env["BATCHYARD_DASH_SHOT"], env["BATCHYARD_CHROMIUM"], env["BATCHYARD_DASH_TMP"]
    profile = tempfile.mkdtemp(prefix="chromium-profile-", dir=tmp)
    proc, browser_ws, tail = start_chromium(binary, profile)
    log(f"chromium pid {proc.pid}, {browser_ws}")
    cdp = None
    try:
        cdp = Cdp(page_ws(browser_ws))
        lane = env.get("BATCHYARD_DASH_LANE", "")
        if lane:
            check_lane(cdp, url, token, json.loads(lane), shot)
        else:
            check(cdp, url, token, batch, shot)
        try:
            cdp.call("Browser.close", timeout=5)
        except Exception:
            pass
    except Fail as e:
        print(f"FAIL: {e}")
        if cdp is not None:
            try:
                png = cdp.call("Page.captureScreenshot", format="png", timeout=10)
                with open(shot, "wb") as f:
                    f.write(base64.b64decode(png["data"]))
                print(f"(screenshot of the failure: {shot})")
            except Exception:
                pass
        return 1
    finally:
        if cdp is not None:
            cdp.close()
        stop(proc)
        log(f"chromium stopped (exit {proc.returncode})")
    print("ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
