// batchyard dashboard panels that build on app.js (window.batchyard): models, scheduled
// pipelines, and the offload lane of the selected batch. Same rule as app.js: API strings go through textContent/setAttribute only.
"use strict";

(function () {
  const { $, h, num, int, usd, duration, clock, toMs, api, post, panelError, panels } = window.batchyard;

  // ---- models --------------------------------------------------------------------------

  function modelState(m) {
    const state = String(m.state ?? "unknown");
    const s = state.toLowerCase();
    let cls = "", label = state.replace(/_/g, " ");
    if (s === "healthy" || s === "ok") cls = "ok";
    else if (s.startsWith("cool")) cls = "warn";
    else if (s === "paused" || s === "disabled") cls = "bad";
    const until = toMs(m.until_ms);
    if (until !== null && until > Date.now()) label += " · " + duration((until - Date.now()) / 1000) + " left";
    return h("td", {}, h("span", { class: "badge " + cls }, label),
      m.reason ? h("span", { class: "reason" }, m.reason) : null);
  }

  function renderModels(body) {
    const models = Array.isArray(body) ? body : (body && Array.isArray(body.data) ? body.data : []);
    $("#models-table tbody").replaceChildren(...models.map((m) => h("tr", { "data-model": m.model },
      h("td", { class: "mono" }, m.model ?? "—"),
      h("td", {}, m.provider ?? "—"),
      h("td", { class: "num" }, m.tier ?? "—"),
      modelState(m),
      h("td", { class: "num spend" }, "—"))));
    $("#models-table").hidden = models.length === 0;
    $("#models-empty").hidden = models.length !== 0;
  }

  panels.push({ panel: "#models-panel", load: () => api("/api/models"), render: renderModels });

  // ---- pipelines -----------------------------------------------------------------------

  function outcomeClass(outcome) {
    if (outcome === "submitted") return "ok";
    if (outcome === "nothing_new") return "";
    return "bad";
  }

  function lastRun(r) {
    if (!r) return h("td", { class: "muted" }, "never ran");
    const parts = [h("span", { class: "badge " + outcomeClass(r.outcome) }, String(r.outcome ?? "—").replace(/_/g, " "))];
    if (r.batch_id) {
      parts.push(" ", h("span", { class: "mono" }, r.batch_id), " ",
        int(r.items) + " item(s), " + (r.state ?? "—") + ", " + usd(r.cost_usd));
    }
    parts.push(h("span", { class: "reason" }, clock(r.tick) + " (" + (r.trigger ?? "—") + ")" +
      (r.error ? " · " + r.error : "")));
    return h("td", {}, ...parts);
  }

  function runButton(p) {
    const button = h("button", { type: "button", class: "small secondary" }, "Run now");
    button.addEventListener("click", async () => {
      button.disabled = true;
      button.textContent = "Running…";
      try {
        const run = await post("/api/pipelines/" + encodeURIComponent(p.name) + "/run", {});
        button.textContent = run && run.batch_id ? "Submitted " + run.batch_id
          : String(run && run.outcome || "done").replace(/_/g, " ");
        panelError("#pipelines-panel", null);
        window.batchyard.refresh();
      } catch (e) {
        button.textContent = "Run now";
        panelError("#pipelines-panel", e);
      } finally {
        button.disabled = false;
      }
    });
    return button;
  }

  function renderPipelines(body) {
    const rows = body && Array.isArray(body.pipelines) ? body.pipelines : [];
    $("#pipelines-table tbody").replaceChildren(...rows.map((p) => h("tr", { "data-pipeline": p.name },
      h("td", { class: "mono" }, p.name ?? "—"),
      h("td", {}, h("span", { class: "mono" }, p.schedule ?? "—"), h("span", { class: "reason" }, p.timezone ?? "")),
      h("td", {}, p.enabled ? clock(p.next_fire) : h("span", { class: "badge" }, "disabled")),
      lastRun(p.last_run),
      h("td", {}, p.task ?? "—", h("span", { class: "reason" }, p.budget_usd != null ? "cap " + usd(p.budget_usd) : "no cap")),
      h("td", {}, runButton(p)))));
    $("#pipelines-table").hidden = rows.length === 0;
    $("#pipelines-empty").hidden = rows.length !== 0;
  }

  panels.push({ panel: "#pipelines-panel", load: () => api("/api/pipelines"), render: renderPipelines });

  // ---- the offload lane of the selected batch (app.js calls this with `offload`) ----------

  function phaseClass(pb) {
    if (pb.phase === "done") return String(pb.ended ?? "").startsWith("completed") ? "ok" : "warn";
    if (pb.phase === "cancelling") return "warn";
    return "run";
  }

  function renderLane(lane) {
    $("#lane").hidden = !lane;
    if (!lane) return;
    const left = num(lane.seconds_left) === 0 ? "passed" : duration(lane.seconds_left) + " left";
    const switched = lane.realtime_at != null ? " · switched to real-time at " + clock(lane.realtime_at) : "";
    $("#lane-deadline").textContent = "deadline " + clock(lane.deadline_at) + " (" + left + ")" + switched +
      (lane.unknown ? " · counts unknown: " + lane.unknown : "");
    const l = lane.lanes;
    $("#lane-table tbody").replaceChildren(h("tr", {},
      ...["realtime", "offloaded", "waiting", "done"].map((k) =>
        h("td", { class: "num", "data-lane": k }, l ? int(l[k]) : "unknown"))));
    const pbs = Array.isArray(lane.provider_batches) ? lane.provider_batches : [];
    $("#provider-batches-table tbody").replaceChildren(...pbs.map((pb) => h("tr", { "data-provider-batch": pb.provider_id ?? "" },
      h("td", {}, h("span", { class: "mono" }, pb.provider_id ?? "(no id yet)"), h("span", { class: "reason" }, pb.key ?? "")),
      h("td", { class: "mono" }, pb.model ?? "—"),
      h("td", {}, h("span", { class: "badge " + phaseClass(pb) }, String(pb.phase ?? "—") + (pb.ended ? ": " + pb.ended : "")),
        pb.given_back ? h("span", { class: "reason" }, "given back to real-time") : null),
      h("td", { class: "num" }, int(pb.items)),
      h("td", { class: "num" }, duration(pb.age_secs)))));
    $("#provider-batches-table").hidden = pbs.length === 0;
    $("#provider-batches-empty").hidden = pbs.length !== 0;
  }

  window.batchyard.renderLane = renderLane;
})();
