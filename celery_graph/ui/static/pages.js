// The flows page (start a registered flow with inputs) and the workers page.
import { api, badge, clear, errorBox, fill, fmtDuration, fmtTime, h, shortId } from "./util.js";

function parseValue(raw) {
  // like `celery-graph run --input k=v`: JSON when it parses, else the text
  try {
    return JSON.parse(raw);
  } catch {
    return raw;
  }
}

// How a flow's runs went over the last day and week: runs ended, success rate, duration
// percentiles (upper bounds of the histogram's buckets, hence "≤")
function statsView(stats) {
  if (!stats) return null;
  const pct = (r) => (r === null ? "-" : `${(100 * r).toFixed(r === 1 ? 0 : 1)}%`);
  const dur = (s) => (s === null ? "-" : `≤ ${fmtDuration(s)}`);
  const row = (label, s) => h("tr", { "data-window": label },
    h("td", {}, label), h("td", { class: "num" }, String(s.runs)),
    h("td", { class: "num rate" }, pct(s.success_rate)),
    h("td", { class: "num" }, String(s.failed)), h("td", { class: "num" }, String(s.cancelled)),
    h("td", { class: "num" }, dur(s.p50)), h("td", { class: "num" }, dur(s.p95)));
  return h("table", { class: "plain stats" },
    h("tr", {}, ["", "runs ended", "succeeded", "failed", "cancelled", "p50", "p95"].map((c) => h("th", {}, c))),
    row("last day", stats.day), row("last week", stats.week));
}

function flowCard(flow) {
  const fields = flow.inputs.map((input) => h("label", { class: "input" },
    h("span", { class: "mono" }, input.name, input.required ? h("b", { title: "required" }, " *") : null),
    h("input", {
      name: input.name, required: input.required, "data-input": input.name,
      placeholder: input.required ? "required (JSON or text)" : `default ${input.default ?? "from the task"}`,
    }),
    h("span", { class: "muted small" }, "used by " + input.nodes.join(", "))));
  const key = h("input", { name: "idempotency_key", placeholder: "optional: a second start with this key returns the same run" });
  const deadline = h("input", { name: "deadline", type: "number", min: 1, step: "any", placeholder: "seconds (optional)" });
  const message = h("div");
  const form = h("form", { class: "start", "data-flow": flow.name },
    fields,
    h("label", { class: "input" }, h("span", {}, "idempotency key"), key),
    h("label", { class: "input" }, h("span", {}, "deadline"), deadline),
    h("button", { type: "submit" }, `Start ${flow.name}`), message);
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const inputs = {};
    for (const el of form.querySelectorAll("[data-input]")) {
      if (el.value !== "") inputs[el.name] = parseValue(el.value);
    }
    const body = { inputs };
    if (key.value) body.idempotency_key = key.value;
    if (deadline.value) body.deadline = Number(deadline.value);
    try {
      const started = await api(`flows/${encodeURIComponent(flow.name)}/runs`, { method: "POST", body });
      location.href = new URL(`runs/${started.run_id}`, document.baseURI).href;
    } catch (err) {
      fill(message, errorBox(err.message));
    }
  });
  return h("section", { class: "panel flow", id: `flow-${flow.name}` },
    h("h2", {}, flow.name),
    statsView(flow.stats),
    h("p", { class: "muted" }, h("span", { class: "mono" }, flow.ref), ` · ${flow.nodes} nodes · `,
      h("a", { href: `./?flow=${encodeURIComponent(flow.name)}` }, "its runs")),
    form);
}

export async function flowsPage(root) {
  fill(root, h("h1", {}, "Flows"));
  try {
    const data = await api("flows");
    if (!data.flows.length) {
      root.append(h("p", {}, "No flows to start from here. List them in the app's configuration:"),
        h("pre", {}, 'app.conf.graph_ui_flows = {"etl": "proj.flows:etl"}'));
      return;
    }
    root.append(...data.flows.map(flowCard));
  } catch (err) {
    root.append(errorBox(err.message));
  }
}

export async function workersPage(root) {
  const table = h("table", { class: "runs", id: "workers" });
  const message = h("div");
  fill(root, h("h1", {}, "Workers"), message, table,
    h("p", { class: "muted small" }, "From the heartbeat registry of graph workers; refreshed every 3 s."));
  async function load() {
    try {
      const data = await api("workers");
      clear(message);
      fill(table, 
        h("thead", {}, h("tr", {}, ["Worker", "State", "PID", "Queues", "Heartbeat", "Uptime",
          "In flight", "Processed", "OK", "Failed", "Mean"].map((t) => h("th", {}, t)))),
        h("tbody", {}, data.workers.length ? data.workers.map((w) => h("tr", { "data-worker": w.hostname },
          h("td", { class: "mono" }, w.hostname), h("td", {}, badge(w.state)),
          h("td", { class: "num" }, String(w.pid)), h("td", {}, w.queues.join(", ")),
          h("td", { class: "num" }, fmtDuration(w.heartbeat_age) + " ago"),
          h("td", { class: "num" }, fmtDuration(w.uptime)),
          h("td", { class: "num" }, String(w.in_flight)), h("td", { class: "num" }, String(w.processed)),
          h("td", { class: "num" }, String(w.succeeded)), h("td", { class: "num" }, String(w.failed)),
          h("td", { class: "num" }, w.mean_runtime === null ? "-" : w.mean_runtime.toFixed(3) + "s")))
          : h("tr", {}, h("td", { colspan: 11, class: "muted empty" },
            "No live graph workers (workers register with graph-worker or the celery-graph worker options)."))));
    } catch (err) {
      fill(message, errorBox(err.message));
    }
    setTimeout(load, 3000);
  }
  await load();
}

export async function schedulesPage(root) {
  const table = h("table", { class: "runs", id: "schedules" });
  const message = h("div");
  fill(root, h("h1", {}, "Schedules"), message, table,
    h("p", { class: "muted small" },
      "Entries of schedule() that fired: a paused schedule's fires start nothing. Refreshed every 5 s."));
  async function act(name, action) {
    try {
      await api(`schedules/${encodeURIComponent(name)}/${action}`, { method: "POST", body: {} });
      await load(false);
    } catch (err) {
      fill(message, errorBox(err.message));
    }
  }
  function row(s) {
    const button = h("button", { type: "button", "data-action": s.paused ? "resume" : "pause" },
      s.paused ? "Resume" : "Pause");
    button.addEventListener("click", () => act(s.name, s.paused ? "resume" : "pause"));
    const last = s.last_run ? h("a", { href: `runs/${s.last_run}`, class: "mono" }, shortId(s.last_run)) : "-";
    return h("tr", { "data-schedule": s.name },
      h("td", {}, s.name, s.paused ? h("span", { class: "muted small" }, " paused") : null),
      h("td", {}, s.flow || "-"), h("td", {}, s.every || "-"), h("td", {}, s.overlap || "-"),
      h("td", { class: "nowrap" }, s.last_fire ? fmtTime(s.last_fire) : "-"), h("td", {}, last),
      h("td", { class: "nowrap" }, s.paused || !s.next_fire ? "-" : fmtTime(s.next_fire)),
      h("td", { class: "num" }, String(s.runs)),
      h("td", { class: "num", title: s.skip_reason || "" }, String(s.skips)),
      h("td", {}, button));
  }
  async function load(again = true) {
    try {
      const data = await api("schedules");
      clear(message);
      fill(table,
        h("thead", {}, h("tr", {}, ["Schedule", "Flow", "Every", "Overlap", "Last fire", "Last run",
          "Next fire", "Runs", "Skips", ""].map((t) => h("th", {}, t)))),
        h("tbody", {}, data.schedules.length ? data.schedules.map(row)
          : h("tr", {}, h("td", { colspan: 10, class: "muted empty" },
            "No schedules yet: a schedule() entry is listed once beat fired it."))));
    } catch (err) {
      fill(message, errorBox(err.message));
    }
    if (again) setTimeout(load, 5000);
  }
  await load();
}
