// batchyard dashboard panels that build on app.js (window.batchyard): models and scheduled
// pipelines. Same rule as app.js: API strings go through textContent/setAttribute only.
"use strict";

(function () {
  const { $, h, int, usd, duration, clock, toMs, api, post, panelError, panels } = window.batchyard;

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
})();
