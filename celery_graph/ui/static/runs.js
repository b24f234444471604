// The runs page: recent runs, filters (state, flow, time), search, pages with a cursor.
import {
  api, badge, clear, errorBox, fill, fmtDuration, fmtTime, h, progressBar, shortId, STATES,
} from "./util.js";

const REFRESH_MS = 5000;
const RANGES = [["", "any time"], ["3600", "last hour"], ["86400", "last 24 hours"],
  ["604800", "last 7 days"], ["custom", "between…"]];

function toLocalInput(ts) {
  if (!ts) return "";
  const d = new Date(ts * 1000 - new Date().getTimezoneOffset() * 60000);
  return d.toISOString().slice(0, 16);
}

function fromLocalInput(value) {
  return value ? String(new Date(value).getTime() / 1000) : "";
}

const FINAL_NOT_OK = ["failed", "cancelled"];
const CANCELLABLE = ["running", "queued"];  // queued: waiting for a concurrency slot

export async function runsPage(root) {
  const params = new URLSearchParams(location.search);
  const filters = {
    q: params.get("q") || "",
    state: params.get("state") || "",
    flow: params.get("flow") || "",
    range: params.get("range") || "",
    since: params.get("since") || "",
    until: params.get("until") || "",
  };
  const cursors = []; // cursors of the pages before the one shown, for "Newer"
  let cursor = params.get("cursor") || "";
  let timer = null;

  const search = h("input", {
    type: "search", id: "search", placeholder: "run id, id prefix or idempotency key",
    value: filters.q, size: 36,
  });
  const stateSel = h("select", { id: "state-filter", "aria-label": "state" },
    h("option", { value: "" }, "every state"),
    STATES.map((s) => h("option", { value: s, selected: s === filters.state }, s)));
  const flowSel = h("select", { id: "flow-filter", "aria-label": "flow" },
    h("option", { value: "" }, "every flow"));
  const rangeSel = h("select", { id: "range-filter", "aria-label": "started" },
    RANGES.map(([v, label]) => h("option", { value: v, selected: v === filters.range }, label)));
  const since = h("input", { type: "datetime-local", id: "since", value: toLocalInput(+filters.since) });
  const until = h("input", { type: "datetime-local", id: "until", value: toLocalInput(+filters.until) });
  const custom = h("span", { class: "custom-range" }, since, " – ", until);
  const form = h("form", { class: "filters", id: "filters" },
    search, stateSel, flowSel, rangeSel, custom,
    h("button", { type: "submit" }, "Apply"));
  const status = h("div", { class: "muted small", id: "list-status" });
  const table = h("table", { class: "runs", id: "runs" });
  const newer = h("button", { type: "button", id: "newer", disabled: true }, "‹ Newer");
  const older = h("button", { type: "button", id: "older", disabled: true }, "Older ›");
  const pager = h("div", { class: "pager" }, newer, older, status);
  const message = h("div");
  // bulk actions on the selected runs: each is cancelled or resumed through its own call;
  // the selection outlives the page's refresh
  const selected = new Set();
  const allBox = h("input", { type: "checkbox", id: "pick-all", "aria-label": "select every run shown",
    onchange: () => {
      for (const b of picks()) {
        b.checked = allBox.checked;
        if (b.checked) selected.add(b.dataset.run); else selected.delete(b.dataset.run);
      }
      syncBulk();
    } });
  const bulkCancel = h("button", { type: "button", id: "bulk-cancel", class: "danger", disabled: true },
    "Cancel selected");
  const bulkResume = h("button", { type: "button", id: "bulk-resume", disabled: true }, "Resume selected");
  const bulkNote = h("span", { class: "muted small", id: "bulk-note" });
  const bulk = h("div", { class: "runs-actions" }, bulkCancel, bulkResume, bulkNote);
  function picks() { return [...table.querySelectorAll("input.pick")]; }
  function chosen(states) { return picks().filter((b) => b.checked && states.includes(b.dataset.state)); }
  function syncBulk() {
    bulkCancel.disabled = !chosen(CANCELLABLE).length;
    bulkResume.disabled = !chosen(FINAL_NOT_OK).length;
    const n = picks().filter((b) => b.checked).length;
    bulkNote.textContent = n ? `${n} selected` : "";
  }
  async function bulkAct(action, states, question) {
    const ids = chosen(states).map((b) => b.dataset.run);
    if (!ids.length || (question && !window.confirm(question(ids.length)))) return;
    const failed = [];
    for (const id of ids) {
      try {
        await api(`runs/${id}/${action}`, { method: "POST", body: {} });
      } catch (err) {
        failed.push(`${id.slice(0, 8)}: ${err.message}`);
      }
    }
    const done = ids.length - failed.length;
    fill(message, failed.length ? errorBox(`${action}: ${done} of ${ids.length} done; ${failed.join("; ")}`)
      : h("div", { class: "ok-box", role: "status", id: "bulk-done" },
        `${action === "cancel" ? "cancelled" : "resumed"} ${done} run${done === 1 ? "" : "s"}`));
    allBox.checked = false;
    selected.clear();
    await load(true);
  }
  bulkCancel.addEventListener("click", () => bulkAct("cancel", CANCELLABLE,
    (n) => `Cancel ${n} run${n === 1 ? "" : "s"}? No pending node of them starts after this.`));
  bulkResume.addEventListener("click", () => bulkAct("resume", FINAL_NOT_OK));
  fill(root, h("h1", {}, "Runs"), form, message, bulk, table, pager);

  function showCustom() {
    custom.hidden = rangeSel.value !== "custom";
  }
  showCustom();

  api("flows").then((data) => {
    for (const name of data.names) {
      flowSel.append(h("option", { value: name, selected: name === filters.flow }, name));
    }
    if (filters.flow && !data.names.includes(filters.flow)) {
      flowSel.append(h("option", { value: filters.flow, selected: true }, filters.flow));
    }
  }).catch(() => {});

  function query() {
    const q = { q: filters.q, state: filters.state, flow: filters.flow, cursor, limit: 50 };
    if (filters.range === "custom") {
      q.since = filters.since;
      q.until = filters.until;
    } else if (filters.range) {
      q.since = String(Date.now() / 1000 - Number(filters.range));
    }
    return q;
  }

  function remember() {
    const p = new URLSearchParams();
    for (const key of ["q", "state", "flow", "range"]) if (filters[key]) p.set(key, filters[key]);
    if (filters.range === "custom") {
      if (filters.since) p.set("since", filters.since);
      if (filters.until) p.set("until", filters.until);
    }
    if (cursor) p.set("cursor", cursor);
    const qs = p.toString();
    history.replaceState(null, "", qs ? "?" + qs : location.pathname);
  }

  function row(run) {
    const link = h("a", { href: `runs/${run.run_id}`, class: "mono", title: run.run_id },
      shortId(run.run_id));
    const err = run.error ? `${run.error.node ? run.error.node + ": " : ""}${run.error.type}` : "";
    const pick = h("input", { type: "checkbox", class: "pick", "aria-label": `select run ${run.run_id}`,
      checked: selected.has(run.run_id),
      onchange: () => { if (pick.checked) selected.add(run.run_id); else selected.delete(run.run_id); syncBulk(); } });
    pick.dataset.run = run.run_id;
    pick.dataset.state = run.state;
    return h("tr", { "data-run": run.run_id, "data-state": run.state },
      h("td", {}, pick),
      h("td", {}, link, run.matched ? h("span", { class: "muted small" }, ` (${run.matched})`) : null),
      h("td", {}, run.flow || h("span", { class: "muted", title: run.graph_id || "" },
        "graph " + (run.graph_id || "").slice(0, 8))),
      h("td", {}, badge(run.state),
        run.position ? h("span", { class: "muted small" }, ` #${run.position} in line`) : null,
        run.resumed ? h("span", { class: "muted small" }, " resumed") : null,
        run.parent ? h("span", { class: "muted small" }, " child of ",
          h("a", { href: `runs/${run.parent}`, class: "mono parent-link" }, shortId(run.parent))) : null),
      h("td", { class: "nowrap" }, fmtTime(run.created)),
      h("td", { class: "num" }, fmtDuration(run.duration) + (run.finished ? "" : "+")),
      h("td", {}, progressBar(run.done, 0, run.nodes, {
        succeeded: run.done,
        // what a run that ended without succeeding did not do
        [run.state === "failed" ? "upstream_failed" : "cancelled"]:
          FINAL_NOT_OK.includes(run.state) ? run.nodes - run.done : 0,
      })),
      h("td", { class: "err", title: run.error ? run.error.message : "" }, err));
  }

  async function load(keepMessage = false) {
    clearTimeout(timer);
    remember();
    try {
      const page = await api("runs", { params: query() });
      if (!keepMessage) clear(message);
      fill(table, 
        h("thead", {}, h("tr", {}, h("th", {}, allBox), ["Run", "Flow", "State", "Started",
          "Duration", "Progress", "Error"].map((t) => h("th", {}, t)))),
        h("tbody", {}, page.runs.length ? page.runs.map(row)
          : h("tr", {}, h("td", { colspan: 8, class: "muted empty" },
            filters.q ? "No run has that id or idempotency key." : "No runs match."))));
      syncBulk();
      older.disabled = !page.next;
      older.onclick = () => { cursors.push(cursor); cursor = page.next; load(); };
      newer.disabled = cursors.length === 0 && !cursor;
      newer.onclick = () => { cursor = cursors.pop() || ""; load(); };
      const bits = [];
      if (page.total !== null && page.total !== undefined) bits.push(`${page.total} runs`);
      bits.push({ index: "from the indexes", "index+scan": "from the indexes and a scan",
        scan: "", running: "running runs", search: "search" }[page.source] || "");
      if (page.source !== "search" && page.scanned > page.runs.length * 2) {
        bits.push(`${page.scanned} read`);
      }
      for (const note of page.notes) bits.push(note);
      status.textContent = bits.filter(Boolean).join(" · ");
      if (!cursor && !filters.q) {
        timer = setTimeout(() => { if (!document.hidden) load(); else timer = setTimeout(load, REFRESH_MS); }, REFRESH_MS);
      }
    } catch (err) {
      fill(message, errorBox(err.message));
      timer = setTimeout(load, REFRESH_MS);
    }
  }

  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    filters.q = search.value.trim();
    filters.state = stateSel.value;
    filters.flow = flowSel.value;
    filters.range = rangeSel.value;
    filters.since = fromLocalInput(since.value);
    filters.until = fromLocalInput(until.value);
    cursor = "";
    cursors.length = 0;
    load();
  });
  for (const el of [stateSel, flowSel, rangeSel]) {
    el.addEventListener("change", () => {
      showCustom();
      if (el !== rangeSel || rangeSel.value !== "custom") form.requestSubmit();
    });
  }
  await load();
}
