// The run page: the graph as SVG with every node coloured by its state, polled while the
// run goes on; a node's (or a group's) detail; cancel, resume and retry; the form that
// signals a waiting wait_for() node (an approval, or any JSON payload).
import {
  api, badge, clear, errorBox, fill, fmtDuration, fmtTime, h, progressBar, svg, tracebackView,
} from "./util.js";

const POLL_MS = 1000;
const FINAL = ["succeeded", "failed", "cancelled"];
const LABEL_CHARS = 21;
const MEMBERS_SHOWN = 500; // members of a group listed in a folded run's detail

function cut(text, n) {
  return text.length > n ? text.slice(0, n - 1) + "…" : text;
}

// A group's colour: the most pressing state among its members.
function aggregate(counts, total) {
  for (const s of ["failed", "running", "retrying", "mapping", "waiting", "queued", "upstream_failed", "cancelled"]) {
    if (counts[s]) return s;
  }
  const done = (counts.succeeded || 0) + (counts.skipped || 0);
  if (done === total) return counts.succeeded ? "succeeded" : "skipped";
  return "pending";
}

function edgePath(points) {
  let d = `M${points[0][0]},${points[0][1]}`;
  for (let i = 1; i < points.length; i++) {
    const [x0, y0] = points[i - 1];
    const [x1, y1] = points[i];
    const dx = (x1 - x0) / 2;
    d += ` C${x0 + dx},${y0} ${x1 - dx},${y1} ${x1},${y1}`;
  }
  return d;
}

function drawGraph(layout, onSelect) {
  const boxes = new Map();
  const root = svg("svg", {
    class: "dag", width: layout.width, height: layout.height,
    viewBox: `0 0 ${layout.width} ${layout.height}`, role: "group",
    "aria-label": `graph of ${layout.node_count} nodes`,
  }, svg("defs", {}, svg("marker", {
    id: "arrow", viewBox: "0 0 10 10", refX: 10, refY: 5, markerWidth: 7, markerHeight: 7,
    orient: "auto-start-reverse",
  }, svg("path", { d: "M0,0 L10,5 L0,10 z", class: "arrowhead" }))));
  const edges = svg("g", { class: "edges" });
  for (const e of layout.edges) {
    edges.append(svg("path", {
      d: edgePath(e.points), class: "edge", "marker-end": "url(#arrow)",
      "data-source": e.source, "data-target": e.target,
    }));
  }
  root.append(edges);
  for (const box of layout.nodes) {
    const sub = svg("text", { class: "sub", x: box.w / 2, y: box.h - 7, "text-anchor": "middle" });
    const title = svg("title", {}, box.label);
    const g = svg("g", {
      class: `node kind-${box.kind}`, "data-node": box.id, "data-kind": box.kind,
      transform: `translate(${box.x},${box.y})`, tabindex: 0, role: "button",
    }, title);
    if (box.kind === "map") {
      g.append(svg("rect", { class: "stack", x: 5, y: -5, width: box.w, height: box.h, rx: 6 }));
    }
    g.append(svg("rect", { class: "box", width: box.w, height: box.h, rx: 6 }));
    if (box.kind === "join") {
      g.append(svg("rect", { class: "join-mark", width: 5, height: box.h, rx: 2 }));
    }
    const labelY = box.kind === "group" ? 17 : (box.kind === "task" ? box.h / 2 + 4 : 16);
    g.append(svg("text", { class: "label", x: box.w / 2, y: labelY, "text-anchor": "middle" },
      cut(box.label, box.kind === "group" ? 26 : LABEL_CHARS)));
    const bar = svg("g", { class: "segments" });
    if (box.kind === "group") g.append(bar);
    g.append(sub);
    const select = () => onSelect(box);
    g.addEventListener("click", select);
    g.addEventListener("keydown", (ev) => { if (ev.key === "Enter" || ev.key === " ") select(); });
    root.append(g);
    boxes.set(box.id, { box, g, sub, bar, title });
  }
  return { root, boxes };
}

function paint(drawing, status) {
  for (const { box, g, sub, bar, title } of drawing.boxes.values()) {
    let state;
    let text = "";
    if (box.kind === "group") {
      // a folded run (a large one) counts each group's states on the server
      const counts = status.folded ? { ...(status.groups[box.id] || {}) } : {};
      if (!status.folded) {
        for (const m of box.members) {
          const s = status.nodes[m].state;
          counts[s] = (counts[s] || 0) + 1;
        }
      }
      state = aggregate(counts, box.members.length);
      const done = (counts.succeeded || 0) + (counts.skipped || 0);
      text = `${done}/${box.members.length} done` + (counts.failed ? `, ${counts.failed} failed` : "");
      clear(bar);
      let x = 8;
      const width = box.w - 16;
      for (const s of ["succeeded", "skipped", "failed", "upstream_failed", "cancelled",
        "running", "retrying", "queued", "mapping", "waiting", "pending"]) {
        if (!counts[s]) continue;
        const w = (width * counts[s]) / box.members.length;
        bar.append(svg("rect", { class: `seg st-${s}`, x, y: box.h - 22, width: w, height: 5 }));
        x += w;
      }
    } else {
      const node = status.nodes[box.id];
      state = node.state;
      const items = status.items[box.id];
      if (items) {
        text = `${items.states.succeeded || 0}/${items.count} items`;
      } else if (box.kind === "map") {
        text = `map over ${box.map_source}`;
      } else if (box.kind === "join") {
        text = `join of ${box.preds.length}`;
      }
      if (node.attempts > 1) text += (text ? " · " : "") + `${node.attempts} attempts`;
      if (node.started) {  // how long it ran (or runs so far)
        const ran = (node.finished || status.now) - node.started;
        text += (text ? " · " : "") + fmtDuration(Math.max(0, ran)) + (node.finished ? "" : "+");
      }
    }
    sub.textContent = text;
    title.textContent = `${box.label}: ${state}`;
    g.dataset.state = state;
    g.setAttribute("class", `node kind-${box.kind} st-${state}`);
  }
}

function field(label, value) {
  if (value === null || value === undefined || value === "") return null;
  return h("div", { class: "fact" }, h("dt", {}, label), h("dd", {}, value));
}

// every attempt at a node, oldest first: who ran it, when, for how long, how it ended
function historyView(history) {
  if (!history || !history.length) return null;
  return h("section", { id: "history" }, h("h3", {}, `Attempts (${history.length})`),
    h("table", { class: "plain history" },
      h("tr", {}, ["#", "outcome", "worker", "started", "ran for", "error"].map((c) => h("th", {}, c))),
      history.map((a, i) => h("tr", { class: "attempt" },
        h("td", { class: "num" }, String(i + 1)), h("td", {}, badge(a.outcome)),
        h("td", { class: "mono small" }, a.worker || ""),
        h("td", {}, a.started ? fmtTime(a.started) : ""),
        h("td", { class: "num" }, a.started && a.finished ? fmtDuration(a.finished - a.started) : ""),
        h("td", {}, a.error ? `${a.error.type}: ${a.error.message}` : "")))));
}

// An error's line and, unless ``brief``, its traceback with the internal frames folded
// (the run's panel is brief: the traceback is shown once, in the failed node's panel)
function errorView(err, brief = false) {
  if (!err) return null;
  const where = err.node ? `node ${err.node}: ` : "";
  return h("div", { class: "node-error" },
    h("p", { class: "err-line" }, `${where}${err.type || "Error"}: ${err.message || ""}`),
    !brief && err.traceback ? h("details", { open: true }, h("summary", {}, "traceback"),
      tracebackView(err.traceback)) : null);
}

// The run's nodes on a time line: a bar from start to end for each node that started,
// with its wait in the queue before it, in the order they started.
function timelineView(status, onPick) {
  const rows = Object.entries(status.nodes).filter(([, n]) => n.started)
    .sort((a, b) => a[1].started - b[1].started);
  if (!rows.length) return h("p", { class: "muted" }, "No node has started yet.");
  const begin = status.created;
  const end = Math.max(status.finished || status.now,
    ...rows.map(([, n]) => n.finished || status.now));
  const span = Math.max(end - begin, 0.001);
  const pos = (t) => `${(100 * (t - begin)) / span}%`;
  const width = (a, b) => `${Math.max((100 * (b - a)) / span, 0.2)}%`;
  return h("div", {},
    h("div", { class: "axis" }, h("span", {}, "node"),
      h("span", {}, `0 … ${fmtDuration(span)}`), h("span", {}, "ran for")),
    rows.map(([id, n]) => {
      const stop = n.finished || status.now;
      const track = h("div", { class: "track" });
      if (n.queued && n.queued < n.started) {
        const w = h("span", { class: "span wait", title: `waited ${fmtDuration(n.started - n.queued)} in its queue` });
        w.style.left = pos(n.queued);
        w.style.width = width(n.queued, n.started);
        track.append(w);
      }
      const bar = h("span", { class: `span st-${n.state}`, title: `${id}: ${n.state}` });
      bar.style.left = pos(n.started);
      bar.style.width = width(n.started, stop);
      track.append(bar);
      return h("div", { class: "row", "data-node": id, onclick: () => onPick(id) },
        h("span", { class: "mono" }, id), track,
        h("span", { class: "num" }, fmtDuration(stop - n.started) + (n.finished ? "" : "+")));
    }));
}

export async function runPage(root, runId) {
  const title = h("h1", {}, "Run ", h("span", { class: "mono" }, runId));
  const head = h("div", { class: "run-head", id: "run-head" });
  const notice = h("div", { id: "notice" });
  const cancel = h("button", { type: "button", id: "cancel", class: "danger", disabled: true },
    "Cancel run");
  const terminate = h("button", { type: "button", id: "terminate", class: "danger", disabled: true,
    title: "Cancel, and stop the running nodes through Celery's revoke(terminate=True)" },
    "Cancel and terminate");
  const resume = h("button", { type: "button", id: "resume", disabled: true }, "Resume run");
  const actions = h("div", { class: "actions" }, cancel, terminate, resume);
  const failure = h("div", { id: "run-error" });
  const graphBox = h("div", { class: "graph", id: "graph" });
  const legend = h("div", { class: "legend" },
    ["pending", "queued", "running", "retrying", "mapping", "waiting", "succeeded", "failed",
      "skipped", "upstream_failed", "cancelled"]
      .map((s) => h("span", {}, h("i", { class: `swatch st-${s}` }), s)));
  const detail = h("aside", { class: "detail", id: "detail" },
    h("p", { class: "muted" }, "Select a node to see its attempts, worker, times, result and error."));
  const waiting = h("div", { id: "waiting" });
  const steps = h("div", { id: "steps" });
  const inputs = h("div", { id: "inputs" });
  fill(root, title, head, actions, notice, failure,
    h("div", { class: "run-body" }, h("div", { class: "graph-col" }, graphBox, legend), detail),
    steps, waiting, inputs);

  let status = null;
  let selected = null; // the box whose detail is shown
  let timer = null;
  let layout;
  try {
    [layout, status] = await Promise.all([api(`runs/${runId}/graph`), api(`runs/${runId}`)]);
  } catch (err) {
    fill(root, title, errorBox(err.message));
    return;
  }
  const drawing = drawGraph(layout, (box) => select(box));
  graphBox.append(drawing.root);
  const zoom = h("button", { type: "button", id: "zoom" }, "Actual size");
  zoom.addEventListener("click", () => {
    const natural = graphBox.classList.toggle("natural");
    zoom.textContent = natural ? "Fit to width" : "Actual size";
  });
  const timeline = h("div", { class: "timeline", id: "timeline", hidden: true });
  graphBox.after(timeline);
  const views = h("button", { type: "button", id: "show-timeline" }, "Timeline");
  views.addEventListener("click", () => {
    const showing = timeline.hidden;
    timeline.hidden = !showing;
    graphBox.hidden = showing;
    views.textContent = showing ? "Graph" : "Timeline";
    if (showing) renderTimeline();
  });
  graphBox.before(h("div", { class: "graph-tools" }, views, zoom,
    h("span", { class: "muted small" }, `${layout.node_count} nodes` + (layout.grouped
      ? ", drawn with groups: select a group to list its members" : ""))));

  function renderHead() {
    const p = status.progress;
    fill(head, h("dl", { class: "facts" },
      field("flow", status.flow || h("span", { class: "muted" }, "graph " + status.graph_id.slice(0, 12))),
      field("state", badge(status.state, "run-state")),
      field("in line", status.position ? `#${status.position}, waiting for a concurrency slot` : null),
      field("started", fmtTime(status.created)),
      field(status.finished ? "finished" : "running for",
        status.finished ? `${fmtTime(status.finished)} (${fmtDuration(status.finished - status.created)})`
          : fmtDuration(status.now - status.created)),
      field("progress", progressBar(p.done, p.failed, p.total, p.parts)),
      field("deadline", status.deadline ? fmtTime(status.deadline) : null),
      field("parent", status.parent ? h("span", {}, h("a", { href: `runs/${status.parent}`,
        class: "mono", id: "parent-link" }, status.parent), ` (node ${status.parent_node})`) : null),
      field("children", Object.keys(status.children || {}).length
        ? Object.entries(status.children).map(([node, id]) => h("div", {},
          h("a", { href: `runs/${id}`, class: "mono child-link" }, id), ` (node ${node})`))
        : null),
      field("resumed", status.resumed ? fmtTime(status.resumed) : null)));
    cancel.disabled = !status.actions.cancel;
    terminate.disabled = !status.actions.cancel;
    resume.disabled = !status.actions.resume;
    fill(failure, status.error ? h("section", { class: "panel failed" },
      h("h2", {}, status.state === "cancelled" ? "Cancelled" : "Failed"), errorView(status.error, true),
      status.error.node && status.nodes[status.error.node] ? h("p", { class: "muted small" },
        "Its traceback is in node ", h("a", { href: "#", class: "mono", onclick: (ev) => {
          ev.preventDefault(); select(boxOf(status.error.node), status.error.node); } },
        status.error.node), "'s panel.") : null) : null);
    const after = Object.entries(status.steps || {});
    fill(steps, after.length ? h("section", { class: "panel" },
      h("h2", {}, "Handlers and compensations"),
      status.outcome && !FINAL.includes(status.state)
        ? h("p", { class: "muted" }, `The run ends as ${status.outcome} once these have run.`) : null,
      h("table", { class: "plain" }, after.map(([id, s]) => h("tr", { "data-step": id },
        h("td", { class: "mono" }, id), h("td", {}, s.role), h("td", {}, badge(s.state)),
        h("td", {}, s.error ? `${s.error.type}: ${s.error.message}` : ""))))) : null);
    const stalled = Object.entries(status.stalled || {});
    fill(waiting, stalled.length ? h("section", { class: "panel" },
      h("h2", {}, "Waiting"),
      h("table", { class: "plain" }, stalled.map(([node, why]) =>
        h("tr", {}, h("td", { class: "mono" }, node), h("td", {}, why))))) : null);
    fill(inputs, h("details", { class: "panel" }, h("summary", {}, "Run inputs"),
      h("pre", {}, JSON.stringify(status.inputs, null, 2))));
  }

  async function showNode(nodeId) {
    let d;
    try {
      d = await api(`runs/${runId}/nodes/${encodeURIComponent(nodeId)}`);
    } catch (err) {
      fill(detail, errorBox(err.message));
      return;
    }
    if (!selected || (selected.id !== nodeId && !selected.members.includes(nodeId))) return;
    const link = (id) => h("a", { href: "#", class: "mono", onclick: (ev) => { ev.preventDefault(); select(boxOf(id), id); } }, id);
    const signal = d.signal ? signalForm(nodeId) : null;
    const retry = d.retry ? h("button", { type: "button", id: "retry-node", onclick: () => act(
      `runs/${runId}/nodes/${encodeURIComponent(nodeId)}/retry`, `node ${nodeId} sent again`) },
    "Retry this node") : null;
    fill(detail, 
      selected.kind === "group" ? h("p", {}, h("a", { href: "#", onclick: (ev) => { ev.preventDefault(); select(selected); } }, "‹ " + selected.label)) : null,
      h("h2", {}, h("span", { class: "mono" }, nodeId), " ", badge(d.state, "node-state")),
      h("dl", { class: "facts" },
        field("task", h("span", { class: "mono" }, d.task)),
        field("task id", h("span", { class: "mono small" }, d.task_id)),
        field("Flower", d.flower ? h("a", { href: d.flower, target: "_blank", rel: "noopener", id: "flower-link" }, "open task in Flower") : null),
        field("attempts", String(d.attempts)),
        field("worker", d.worker),
        field("queue", d.queue),
        field("queued", d.queued ? fmtTime(d.queued) : null),
        field("started", d.started ? fmtTime(d.started) : null),
        field("finished", d.finished ? fmtTime(d.finished) : null),
        field("ran for", d.started && d.finished ? fmtDuration(d.finished - d.started) : null),
        field("sent again", d.redelivered ? `${d.redelivered}x by the reconciler` : null),
        field("worker lost", d.lost ? `${d.lost}x` : null),
        field("why it waits", d.waiting),
        field("waiting since", d.waiting_since ? fmtTime(d.waiting_since) : null),
        field("signalled", d.signalled ? fmtTime(d.signalled) : null),
        field("child run", d.child ? h("a", { href: `runs/${d.child}`, class: "mono" }, d.child) : null),
        field("after", d.preds.length ? d.preds.map(link).flatMap((a, i) => (i ? [", ", a] : [a])) : null),
        field("before", d.succs.length ? d.succs.map(link).flatMap((a, i) => (i ? [", ", a] : [a])) : null),
        field("bound", Object.keys(d.bound).length ? h("code", {}, JSON.stringify(d.bound)) : null)),
      retry,
      signal,
      d.error ? h("section", {}, h("h3", {}, "Error"), errorView(d.error)) : null,
      historyView(d.history),
      d.result ? h("section", {}, h("h3", {}, `Result (${d.result.size} bytes)`),
        d.result.preview === null ? h("p", { class: "muted" }, "too large to preview")
          : h("pre", { class: "result", id: "result" }, d.result.preview + (d.result.truncated ? "\n…" : ""))) : null,
      d.items ? h("section", {}, h("h3", {}, `Items (${d.items.count})`),
        h("table", { class: "plain" }, d.items.shown.map((it) => h("tr", {},
          h("td", { class: "num" }, String(it.index)), h("td", {}, badge(it.state)),
          h("td", {}, it.worker || ""), h("td", { class: "num" }, String(it.attempts)))))) : null);
  }

  // one form per waiting node, kept across refreshes so what is typed stays
  const forms = new Map();
  function signalForm(nodeId) {
    if (forms.has(nodeId)) return forms.get(nodeId);
    const path = `runs/${runId}/nodes/${encodeURIComponent(nodeId)}/signal`;
    const by = h("input", { type: "text", id: "signal-by", placeholder: "your name" });
    const payload = h("textarea", { id: "signal-payload", rows: 3, class: "mono" },
      '{"approved": true, "by": ""}');
    const send = (body) => act(path, `signal ${nodeId} sent`, { payload: body });
    const approval = (approved) => () => send({ approved, by: by.value });
    const custom = () => {
      let body;
      try {
        body = JSON.parse(payload.value);
      } catch (err) {
        fill(notice, errorBox(`the payload is not JSON: ${err.message}`));
        return;
      }
      send(body);
    };
    const form = h("section", { class: "signal", id: "signal-form" },
      h("h3", {}, `Signal ${nodeId}`),
      h("p", { class: "muted small" }, "The run waits here; its result is the payload you send."),
      h("label", {}, "by ", by), " ",
      h("button", { type: "button", id: "approve", onclick: approval(true) }, "Approve"), " ",
      h("button", { type: "button", id: "reject", class: "danger", onclick: approval(false) }, "Reject"),
      h("details", {}, h("summary", {}, "Another payload (JSON)"), payload,
        h("button", { type: "button", id: "send-signal", onclick: custom }, "Send")));
    forms.set(nodeId, form);
    return form;
  }

  function showGroup(box) {
    // a folded run: the group's counts, and its first members (select one for its state)
    const members = status.folded ? box.members.slice(0, MEMBERS_SHOWN) : box.members;
    const rows = members.map((m) => h("tr", {},
      h("td", {}, h("a", { href: "#", class: "mono", onclick: (ev) => { ev.preventDefault(); select(box, m); } }, m)),
      status.folded ? null : h("td", {}, badge(status.nodes[m].state))));
    const counts = status.folded ? Object.entries(status.groups[box.id] || {}) : [];
    fill(detail, h("h2", {}, box.label), h("p", { class: "muted" }, `${box.members.length} nodes`),
      counts.length ? h("table", { class: "plain group-counts" }, counts.map(([s, n]) =>
        h("tr", {}, h("td", {}, badge(s)), h("td", { class: "num" }, String(n))))) : null,
      h("table", { class: "plain members" }, rows),
      members.length < box.members.length
        ? h("p", { class: "muted small" }, `first ${members.length} of ${box.members.length} shown`) : null);
  }

  function boxOf(nodeId) {
    return drawing.boxes.get(layout.unit_of[nodeId]).box;
  }

  function select(box, member) {
    selected = { ...box, focus: member || null };
    for (const { g } of drawing.boxes.values()) g.classList.remove("selected");
    drawing.boxes.get(box.id).g.classList.add("selected");
    if (box.kind === "group" && !member) showGroup(box);
    else showNode(member || box.id);
  }

  function renderTimeline() {
    if (!timeline.hidden) fill(timeline, timelineView(status, (id) => select(boxOf(id), id)));
  }

  function refreshDetail() {
    if (!selected) return;
    if (selected.kind === "group" && !selected.focus) showGroup(selected);
    else showNode(selected.focus || selected.id);
  }

  async function act(path, done, body = {}) {
    try {
      await api(path, { method: "POST", body });
      fill(notice, h("div", { class: "ok-box", role: "status" }, done));
    } catch (err) {
      fill(notice, errorBox(err.message));
    }
    clearTimeout(timer);
    await poll();
  }

  cancel.addEventListener("click", () => {
    if (window.confirm(`Cancel run ${runId}? No pending node starts after this.`)) {
      act(`runs/${runId}/cancel`, "run cancelled");
    }
  });
  terminate.addEventListener("click", () => {
    if (window.confirm(`Cancel run ${runId} and terminate its running nodes?`)) {
      act(`runs/${runId}/cancel`, "run cancelled, running nodes terminated", { terminate: true });
    }
  });
  resume.addEventListener("click", () => act(`runs/${runId}/resume`, "run resumed"));

  async function poll() {
    try {
      status = await api(`runs/${runId}`);
      if (notice.querySelector(".error-box")) clear(notice);
    } catch (err) {
      fill(notice, errorBox(err.message));
      timer = setTimeout(poll, POLL_MS * 3);
      return;
    }
    renderHead();
    paint(drawing, status);
    renderTimeline();
    refreshDetail();
    if (!FINAL.includes(status.state)) timer = setTimeout(poll, POLL_MS);
  }

  renderHead();
  paint(drawing, status);
  if (!FINAL.includes(status.state)) timer = setTimeout(poll, POLL_MS);
}
