// batchyard dashboard: plain DOM, no dependencies. Every string from the API goes through
// textContent or setAttribute, never through the HTML parser.
"use strict";

(function () {
  const TOKEN_KEY = "batchyard.token";
  const REFRESH_MS = 5000;
  const SERIES = ["pending", "in_flight", "delayed", "dead"];
  const SERIES_LABEL = { pending: "pending", in_flight: "in flight", delayed: "delayed", dead: "dead" };
  const SVG_NS = "http://www.w3.org/2000/svg";

  let timer = null;
  let selected = null; // the batch id shown in the detail panel
  let userSelected = false;
  let lastSpend = []; // spend by model of the selected batch: [[model, usd]]
  let generation = 0; // bumps on log in/out so late answers of an old session are dropped

  const $ = (sel) => document.querySelector(sel);
  const panels = []; // [{panel, load, render}] registered by panels.js

  // h("td", {class: "num"}, "text", node, ...): an element with attributes and children.
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v !== undefined && v !== null && v !== false) el.setAttribute(k, String(v));
    }
    for (const c of children) {
      if (c === null || c === undefined) continue;
      el.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return el;
  }

  function svg(tag, attrs) {
    const el = document.createElementNS(SVG_NS, tag);
    for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, String(v));
    return el;
  }

  // ---- formatting ----------------------------------------------------------------------

  const num = (v) => (typeof v === "number" && Number.isFinite(v) ? v : null);
  const int = (v) => (num(v) === null ? "—" : Math.round(v).toLocaleString("en-US"));

  function usd(v) {
    const n = num(v);
    if (n === null) return "—";
    if (n !== 0 && Math.abs(n) < 0.01) return "$" + n.toFixed(4);
    return "$" + n.toFixed(2);
  }

  function pct(v) {
    return typeof v === "number" && isFinite(v) ? Math.round(v * 100) + "%" : "—";
  }

  function duration(secs) {
    const s = num(secs);
    if (s === null || s < 0) return "—";
    if (s < 60) return Math.round(s) + " s";
    if (s < 3600) return Math.floor(s / 60) + " min " + Math.round(s % 60) + " s";
    const hrs = Math.floor(s / 3600);
    return hrs + " h " + Math.floor((s % 3600) / 60) + " min";
  }

  // Unix seconds, unix milliseconds or an RFC 3339 string, as milliseconds.
  function toMs(v) {
    if (typeof v === "number" && Number.isFinite(v)) return v < 1e12 ? v * 1000 : v;
    if (typeof v === "string" && v !== "") {
      const n = Number(v);
      if (Number.isFinite(n)) return toMs(n);
      const p = Date.parse(v);
      return Number.isNaN(p) ? null : p;
    }
    return null;
  }

  function clock(v) {
    const ms = toMs(v);
    if (ms === null) return "—";
    const d = new Date(ms);
    const sameDay = d.toDateString() === new Date().toDateString();
    return sameDay ? d.toLocaleTimeString() : d.toLocaleString();
  }

  // A full local date and time, YYYY-MM-DD HH:MM, for columns read across days.
  function dateTime(v) {
    const ms = toMs(v);
    if (ms === null) return "—";
    const d = new Date(ms);
    const two = (n) => String(n).padStart(2, "0");
    return d.getFullYear() + "-" + two(d.getMonth() + 1) + "-" + two(d.getDate()) + " " +
      two(d.getHours()) + ":" + two(d.getMinutes());
  }

  // {code: n} or [{code|model|name, count|cost_usd|usd|...}] as [[name, value]], biggest first.
  function pairs(v) {
    let out = [];
    if (Array.isArray(v)) {
      for (const item of v) {
        if (!item || typeof item !== "object") continue;
        const name = item.code ?? item.model ?? item.name ?? item.key;
        const value = [item.count, item.cost_usd, item.usd, item.spend_usd, item.jobs, item.value]
          .find((x) => num(x) !== null);
        if (name !== undefined) out.push([String(name), value ?? 0]);
      }
    } else if (v && typeof v === "object") {
      for (const [k, x] of Object.entries(v)) {
        const value = num(x) ?? (x && typeof x === "object"
          ? [x.count, x.cost_usd, x.usd, x.jobs].find((y) => num(y) !== null) ?? 0 : 0);
        out.push([k, value]);
      }
    }
    out.sort((a, b) => b[1] - a[1]);
    return out;
  }

  // ---- API -----------------------------------------------------------------------------

  class Unauthorized extends Error {}

  async function api(path) {
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (!token) throw new Unauthorized("not signed in");
    const res = await fetch(path, {
      headers: { Authorization: "Bearer " + token, Accept: "application/json" },
      cache: "no-store",
    });
    if (res.status === 401) throw new Unauthorized("the server refused the token (401)");
    if (!res.ok) {
      let msg = "HTTP " + res.status;
      try {
        const body = await res.json();
        if (body && body.error && body.error.message) msg += ": " + body.error.message;
      } catch (_) { /* not JSON */ }
      throw new Error(path + " → " + msg);
    }
    return res.json();
  }

  async function post(path, body) {
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (!token) throw new Unauthorized("not signed in");
    const res = await fetch(path, {
      method: "POST",
      headers: { Authorization: "Bearer " + token, "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
    if (res.status === 401) throw new Unauthorized("the server refused the token (401)");
    let data = null;
    try { data = await res.json(); } catch (_) { /* not JSON */ }
    if (!res.ok) {
      const msg = data && data.error && data.error.message ? data.error.message : "HTTP " + res.status;
      throw new Error(msg);
    }
    return data;
  }

  function panelError(panel, err) {
    const p = $(panel + " .panel-error");
    if (!p) return;
    p.textContent = err ? String(err.message || err) : "";
    p.hidden = !err;
  }

  // ---- login ---------------------------------------------------------------------------

  function showLogin(message) {
    generation++;
    if (timer) clearTimeout(timer);
    timer = null;
    $("#dash").hidden = true;
    $("#logout").hidden = true;
    $("#login").hidden = false;
    $("#status").textContent = "";
    const msg = $("#login-msg");
    msg.textContent = message || "";
    msg.hidden = !message;
    const input = $("#token");
    input.value = "";
    input.focus();
  }

  function showDash() {
    generation++;
    $("#login").hidden = true;
    $("#dash").hidden = false;
    $("#logout").hidden = false;
    refresh();
  }

  function logout(message) {
    sessionStorage.removeItem(TOKEN_KEY);
    selected = null;
    userSelected = false;
    showLogin(message);
  }

  // ---- refresh -------------------------------------------------------------------------

  async function refresh() {
    const gen = generation;
    if (timer) clearTimeout(timer);
    timer = null;
    const calls = [
      ["#queues-panel", Promise.all([api("/api/queues"), api("/api/queues/history")]), renderQueues],
      ["#batches-panel", api("/api/batches?limit=50"), renderBatches],
      // panels.js adds the models and pipelines panels.
      ...panels.map((p) => [p.panel, p.load(), p.render]),
    ];
    const results = await Promise.allSettled(calls.map((c) => c[1]));
    if (gen !== generation) return;
    if (results.some((r) => r.status === "rejected" && r.reason instanceof Unauthorized)) {
      logout("Your token was not accepted (HTTP 401). Sign in again.");
      return;
    }
    let failures = 0;
    results.forEach((r, i) => {
      const [panel, , render] = calls[i];
      if (r.status === "fulfilled") {
        try {
          render(r.value);
          panelError(panel, null);
        } catch (e) {
          failures++;
          panelError(panel, e);
        }
      } else {
        failures++;
        panelError(panel, r.reason);
      }
    });
    // The detail needs the batch list first (it picks a default batch).
    try {
      await refreshDetail(gen);
      panelError("#detail-panel", null);
    } catch (e) {
      if (gen !== generation) return;
      if (e instanceof Unauthorized) {
        logout("Your token was not accepted (HTTP 401). Sign in again.");
        return;
      }
      failures++;
      panelError("#detail-panel", e);
    }
    if (gen !== generation) return;
    renderModelSpend();
    $("#status").textContent = (failures ? "partly updated " : "updated ") + new Date().toLocaleTimeString();
    if (timer) clearTimeout(timer);
    timer = setTimeout(refresh, REFRESH_MS);
  }

  // ---- queues --------------------------------------------------------------------------

  function renderQueues([current, history]) {
    const queues = (current && Array.isArray(current.queues)) ? current.queues : [];
    const tbody = $("#queues-table tbody");
    tbody.replaceChildren(...queues.map((q) => h("tr", {},
      h("td", { class: "mono" }, q.name ?? "—"),
      h("td", { class: "num" }, int(q.total_pending ?? q.pending)),
      h("td", { class: "num" }, int(q.in_flight)),
      h("td", { class: "num" }, int(q.delayed)),
      h("td", { class: "num" }, int(q.dead)))));
    // The share of the workers each tenant got in the last minute, beside its weight's target.
    const tenants = (current && Array.isArray(current.tenants)) ? current.tenants : [];
    $("#tenant-shares").textContent = tenants.length === 0 ? "" : "share of the last "
      + int(current.share_window_secs) + " s: " + tenants.map((t) => String(t.tenant) + " "
      + pct(t.share) + " (target " + pct(t.target) + ", weight " + int(t.weight) + ")").join(" · ");
    $("#queues-table").hidden = queues.length === 0;
    $("#queues-empty").hidden = queues.length !== 0;
    $("#queues-sampled").textContent = current && current.sampled_at !== undefined
      ? "sampled " + clock(current.sampled_at) : "";

    const points = (history && Array.isArray(history.points) ? history.points : [])
      .map((p) => ({ t: toMs(p.t), ...Object.fromEntries(SERIES.map((s) => [s, num(p[s]) ?? 0])) }))
      .filter((p) => p.t !== null);
    // The current depth is fresher than the last history sample: add it as the newest point.
    const now = current ? toMs(current.sampled_at) : null;
    if (queues.length && now !== null && (!points.length || now > points[points.length - 1].t)) {
      const p = { t: now };
      for (const s of SERIES) p[s] = queues.reduce((a, q) => a + (num(q[s]) ?? 0), 0);
      points.push(p);
    }
    drawChart(points);
  }

  function drawChart(points) {
    const chart = $("#queue-chart");
    const W = 640, H = 220, L = 44, R = 10, T = 10, B = 22;
    chart.replaceChildren();
    $("#chart-empty").hidden = points.length > 0;
    const legend = $("#chart-legend");
    legend.replaceChildren(...SERIES.map((s) =>
      h("span", {}, h("span", { class: "swatch s-" + s }), SERIES_LABEL[s])));
    chart.setAttribute("data-points", String(points.length));
    if (!points.length) return;
    const t1 = points[points.length - 1].t;
    const t0 = Math.min(points[0].t, t1 - 60 * 1000);
    const maxV = Math.max(1, ...points.flatMap((p) => SERIES.map((s) => p[s])));
    const top = niceCeil(maxV);
    const x = (t) => L + ((t - t0) / Math.max(1, t1 - t0)) * (W - L - R);
    const y = (v) => T + (1 - v / top) * (H - T - B);
    for (let i = 0; i <= 4; i++) {
      const v = (top * i) / 4;
      chart.append(svg("line", { class: "grid", x1: L, x2: W - R, y1: y(v), y2: y(v) }));
      const label = svg("text", { class: "axis-label", x: L - 6, y: y(v) + 3, "text-anchor": "end" });
      label.textContent = int(v);
      chart.append(label);
    }
    for (const [t, anchor] of [[t0, "start"], [t1, "end"]]) {
      const label = svg("text", { class: "axis-label", x: x(t), y: H - 6, "text-anchor": anchor });
      label.textContent = new Date(t).toLocaleTimeString();
      chart.append(label);
    }
    for (const s of SERIES) {
      const d = points.map((p, i) => (i ? "L" : "M") + x(p.t).toFixed(1) + " " + y(p[s]).toFixed(1)).join(" ");
      chart.append(svg("path", { class: "series s-" + s, d, "data-series": s }));
      const last = points[points.length - 1];
      chart.append(svg("circle", { class: "s-" + s, cx: x(last.t), cy: y(last[s]), r: 3 }));
    }
  }

  // The smallest 4 × step (step 1, 2 or 5 × 10^k, at least 1) at or above v: whole ticks.
  function niceCeil(v) {
    const raw = Math.max(1, v / 4);
    const mag = Math.pow(10, Math.floor(Math.log10(raw)));
    for (const m of [1, 2, 5, 10]) if (m * mag >= raw) return 4 * m * mag;
    return 40 * mag;
  }

  // ---- batches -------------------------------------------------------------------------

  function statusClass(status) {
    if (status === "completed") return "ok";
    if (status === "failed" || status === "expired") return "bad";
    if (status === "cancelled" || status === "cancelling") return "warn";
    return "run";
  }

  function progressBar(b) {
    const c = b.request_counts || {};
    const total = num(c.total) ?? 0;
    const done = num(c.completed) ?? 0;
    const failed = num(c.failed) ?? 0;
    // A batch that ended with nothing run (its input was refused) is a full red bar.
    const refused = total === 0 && (b.status === "failed" || b.status === "expired");
    let frac = total > 0 ? (done + failed) / total : num(b.progress);
    if (frac !== null && frac > 1) frac = frac / 100; // a percentage
    const pct = frac === null ? 0 : Math.max(0, Math.min(1, frac)) * 100;
    const bar = h("div", { class: "progress", role: "progressbar", "aria-valuemin": 0, "aria-valuemax": 100, "aria-valuenow": Math.round(pct) });
    const ok = h("div", { class: "done" });
    const bad = h("div", { class: "failed" });
    const okPct = total > 0 ? (done / total) * 100 : (refused ? 0 : pct);
    const badPct = total > 0 ? (failed / total) * 100 : (refused ? 100 : 0);
    ok.style.width = okPct + "%";
    bad.style.left = okPct + "%";
    bad.style.width = badPct + "%";
    bar.append(ok, bad);
    const label = total > 0
      ? int(done) + " / " + int(total) + (failed ? " · " + int(failed) + " failed" : "")
      : (refused ? "nothing ran · " + b.status : Math.round(pct) + "%");
    return h("div", {}, bar, h("span", { class: "progress-label" }, label));
  }

  function renderBatches(body) {
    const rows = body && Array.isArray(body.data) ? body.data : [];
    if (!userSelected || !rows.some((b) => b.id === selected)) {
      selected = rows.length ? rows[0].id : null;
      userSelected = false;
    }
    const tbody = $("#batches-table tbody");
    tbody.replaceChildren(...rows.map((b) => {
      const tr = h("tr", { "data-batch": b.id, class: b.id === selected ? "selected" : null },
        h("td", { class: "mono" }, b.id ?? "—"),
        h("td", {}, h("span", { class: "badge " + statusClass(b.status) }, String(b.status ?? "unknown").replace(/_/g, " ")),
          num(b.deadline_at) !== null ? h("span", { class: "reason" }, "deadline in " + duration(b.deadline_at - Date.now() / 1000)) : null),
        h("td", {}, b.task ?? "—"),
        h("td", {}, progressBar(b)),
        h("td", { class: "num" }, num(b.rate_per_sec) === null ? "—" : b.rate_per_sec.toFixed(1) + "/s"),
        h("td", { class: "num" }, duration(b.eta_secs)),
        h("td", { class: "num" }, usd(b.cost_usd) + (num(b.budget_usd) !== null ? " / " + usd(b.budget_usd) : "")),
        h("td", { class: "mono", title: clock(b.created_at) }, dateTime(b.created_at)));
      tr.addEventListener("click", () => {
        selected = b.id;
        userSelected = true;
        for (const r of tbody.children) r.classList.toggle("selected", r === tr);
        refreshDetail(generation).then(renderModelSpend, (e) => panelError("#detail-panel", e));
      });
      return tr;
    }));
    $("#batches-table").hidden = rows.length === 0;
    $("#batches-empty").hidden = rows.length !== 0;
  }

  // ---- batch detail --------------------------------------------------------------------

  async function refreshDetail(gen) {
    if (!selected) {
      $("#detail-id").textContent = "";
      $("#detail-empty").textContent = "No batch to show yet.";
      $("#detail-empty").hidden = false;
      $("#detail-body").hidden = true;
      lastSpend = [];
      return;
    }
    const id = selected;
    const b = await api("/api/batches/" + encodeURIComponent(id));
    if (gen !== generation || id !== selected) return;
    $("#detail-id").textContent = id;
    $("#detail-empty").textContent = "Select a batch.";
    $("#detail-empty").hidden = true;
    $("#detail-body").hidden = false;
    const why = b.reason || (b.waiting_for || []).map((w) => "waiting: " + w).join("\n");
    $("#detail-reason").textContent = why;
    $("#detail-reason").hidden = !why;
    if (window.batchyard.renderLane) window.batchyard.renderLane(b.offload);
    const s = b.share;
    const running = s && !["completed", "failed", "expired", "cancelled"].includes(b.status);
    $("#detail-share").textContent = running ? "tenant " + String(s.tenant) + ", priority "
      + String(s.priority) + ": " + pct(s.share) + " of the workers in the last "
      + int(s.window_secs) + " s (target " + pct(s.target) + ")" : "";
    $("#detail-share").hidden = !running;

    const dead = pairs(b.dead_letters_by_code);
    $("#dead-table tbody").replaceChildren(...dead.map(([code, n]) => {
      const cmd = "batchyard retry " + id + " --code " + code;
      const text = h("code", { title: "run this to replay these dead letters" }, cmd);
      const copy = h("button", { type: "button", class: "secondary small" }, "copy");
      copy.addEventListener("click", () => copyText(cmd, text, copy));
      const replay = h("button", { type: "button", class: "small replay" }, "replay");
      replay.addEventListener("click", () => {
        replay.disabled = true;
        post("/api/batches/" + encodeURIComponent(id) + "/retry", { code: code })
          .then((r) => { replay.textContent = "replaying " + int(r.retried); panelError("#detail-panel", null); })
          .catch((err) => {
            if (err instanceof Unauthorized) { showLogin(err.message); return; }
            replay.disabled = false;
            panelError("#detail-panel", err);
          });
      });
      return h("tr", { "data-code": code },
        h("td", { class: "mono" }, code),
        h("td", { class: "num" }, int(n)),
        h("td", {}, h("div", { class: "cmd" }, text, copy, replay)));
    }));
    $("#dead-table").hidden = dead.length === 0;
    $("#dead-empty").hidden = dead.length !== 0;

    const errs = pairs(b.errors_by_code);
    $("#errors-table tbody").replaceChildren(...errs.map(([code, n]) =>
      h("tr", {}, h("td", { class: "mono" }, code), h("td", { class: "num" }, int(n)))));
    $("#errors-table").hidden = errs.length === 0;
    $("#errors-empty").hidden = errs.length !== 0;
    // Spend and errors by code come from the manifest, written when the batch finishes.
    const later = b.partial ? "Known once the batch finishes." : null;
    $("#errors-empty").textContent = later || "No errors.";
    $("#spend-empty").textContent = later || "No spend yet.";

    lastSpend = pairs(b.spend_by_model);
    const top = Math.max(0, ...lastSpend.map((p) => p[1]));
    $("#spend-bars").replaceChildren(...lastSpend.map(([model, v]) => {
      const fill = h("span");
      fill.style.width = (top > 0 ? (v / top) * 100 : 0) + "%";
      return h("div", { class: "bar-row" },
        h("span", { class: "mono" }, model), h("div", { class: "bar" }, fill), h("span", { class: "num" }, usd(v)));
    }));
    $("#spend-empty").hidden = lastSpend.length !== 0;
  }

  function copyText(cmd, codeEl, button) {
    const done = (ok) => {
      button.textContent = ok ? "copied" : "select & copy";
      setTimeout(() => { button.textContent = "copy"; }, 1500);
    };
    const selectIt = () => {
      const range = document.createRange();
      range.selectNodeContents(codeEl);
      const sel = window.getSelection();
      sel.removeAllRanges();
      sel.addRange(range);
    };
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(cmd).then(() => done(true), () => { selectIt(); done(false); });
    } else {
      selectIt();
      done(false);
    }
  }

  // ---- models (rendered by panels.js) ------------------------------------------------

  function renderModelSpend() {
    const spend = new Map(lastSpend);
    for (const tr of $("#models-table tbody").children) {
      const cell = tr.querySelector("td.spend");
      const v = spend.get(tr.getAttribute("data-model"));
      if (cell) cell.textContent = v === undefined ? "—" : usd(v);
    }
  }

  // What panels.js builds on; it runs after this file (both are deferred, in order).
  window.batchyard = { $, h, num, int, usd, duration, clock, toMs, api, post, panelError, panels,
    refresh: () => refresh() };

  // ---- start ---------------------------------------------------------------------------

  document.addEventListener("DOMContentLoaded", () => {
    $("#login-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      const token = $("#token").value.trim();
      if (!token) return;
      sessionStorage.setItem(TOKEN_KEY, token);
      $("#token").value = "";
      showDash();
    });
    $("#logout").addEventListener("click", () => logout("Signed out."));
    document.addEventListener("visibilitychange", () => {
      if (!document.hidden && sessionStorage.getItem(TOKEN_KEY) && !$("#dash").hidden) refresh();
    });
    if (sessionStorage.getItem(TOKEN_KEY)) showDash();
    else showLogin("");
  });
})();
