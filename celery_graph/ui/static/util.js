// Small helpers shared by the pages: DOM building (text only, never HTML strings), the
// JSON API, time formats.

export const STATES = ["queued", "running", "succeeded", "failed", "cancelled"];
export const NODE_STATES = ["pending", "queued", "running", "retrying", "mapping",
  "succeeded", "failed", "skipped", "upstream_failed", "cancelled"];

const SVG_NS = "http://www.w3.org/2000/svg";

function build(el, attrs, children) {
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") {
      el.addEventListener(key.slice(2), value);
    } else if (key === "text") {
      el.textContent = value;
    } else {
      el.setAttribute(key, value === true ? "" : String(value));
    }
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

// h("a", {href: "x", class: "y"}, "text", otherNode)
export function h(tag, attrs, ...children) {
  return build(document.createElement(tag), attrs, children);
}

export function svg(tag, attrs, ...children) {
  return build(document.createElementNS(SVG_NS, tag), attrs, children);
}

export function clear(el) {
  while (el.firstChild) el.removeChild(el.firstChild);
  return el;
}

// Replace el's content with children (null, undefined and false are left out).
export function fill(el, ...children) {
  clear(el);
  return build(el, {}, children);
}

export function url(path, params) {
  const u = new URL(path, document.baseURI);
  for (const [key, value] of Object.entries(params || {})) {
    if (value !== null && value !== undefined && value !== "") u.searchParams.set(key, value);
  }
  return u;
}

export class ApiError extends Error {
  constructor(message, status) {
    super(message);
    this.status = status;
  }
}

export async function api(path, { method = "GET", body, params } = {}) {
  const options = { method, headers: { Accept: "application/json" }, credentials: "same-origin" };
  if (body !== undefined) {
    options.headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(url("api/" + path, params), options);
  } catch (err) {
    throw new ApiError("the dashboard server cannot be reached (" + err.message + ")", 0);
  }
  let data;
  try {
    data = await response.json();
  } catch {
    data = { error: response.statusText };
  }
  if (!response.ok) throw new ApiError(data.error || response.statusText, response.status);
  return data;
}

const pad = (n) => String(n).padStart(2, "0");

// The browser's time zone as an offset from UTC: "UTC", "UTC+02:00", "UTC-05:30".
export function zoneOf(d) {
  const off = -d.getTimezoneOffset();
  if (off === 0) return "UTC";
  const a = Math.abs(off);
  return `UTC${off > 0 ? "+" : "-"}${pad(Math.floor(a / 60))}:${pad(a % 60)}`;
}

// A time in the browser's zone, with the zone: "2026-12-06 03:10:40 UTC+01:00".
export function fmtTime(ts) {
  if (ts === null || ts === undefined) return "-";
  const d = new Date(ts * 1000);
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ` +
    `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())} ${zoneOf(d)}`;
}

export function fmtDuration(seconds) {
  if (seconds === null || seconds === undefined) return "-";
  if (seconds < 60) return seconds.toFixed(2) + "s";
  if (seconds < 3600) return `${Math.floor(seconds / 60)}m${pad(Math.floor(seconds % 60))}s`;
  return `${Math.floor(seconds / 3600)}h${pad(Math.floor((seconds % 3600) / 60))}m`;
}

export function badge(state, id) {
  return h("span", { class: `badge st-${state}`, "data-state": state, id }, state);
}

// A bar of a run's nodes: succeeded, skipped, failed, upstream_failed and cancelled parts
// (``parts``: {state: count}; without it, ``done`` succeeded and ``failed`` failed).
export function progressBar(done, failed, total, parts) {
  const pct = (n) => (total ? (100 * n) / total : 0);
  const shown = parts || { succeeded: done, failed };
  const order = ["succeeded", "skipped", "failed", "upstream_failed", "cancelled"];
  const title = order.filter((s) => shown[s]).map((s) => `${shown[s]} ${s}`).join(", ");
  const bar = h("span", { class: "bar", title: `${done}/${total} nodes done` + (title ? `: ${title}` : "") },
    order.map((s) => {
      const seg = h("span", { class: `fill st-${s}`, "data-part": s });
      seg.style.width = pct(shown[s] || 0) + "%";
      return seg;
    }));
  return h("span", { class: "progress" }, bar, h("span", { class: "count" }, `${done}/${total}`));
}

// Frames of celery-graph's and Celery's own code that every node's traceback carries.
const INTERNAL = /\/(celery_graph|celery|kombu|billiard)\//;

// A Python traceback with the frames of celery-graph and Celery folded away: the user's
// frames and the exception stay in view; "N internal frames" opens the rest.
export function tracebackView(text) {
  const lines = text.replace(/\s+$/, "").split("\n");
  const out = h("pre", { class: "traceback" });
  let folded = [];
  const flush = () => {
    if (!folded.length) return;
    const n = folded.filter((l) => l.startsWith("  File ")).length;
    out.append(h("details", { class: "internal" },
      h("summary", {}, `${n} internal frame${n === 1 ? "" : "s"}`), folded.join("\n")));
    folded = [];
  };
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i];
    if (line.startsWith("  File ") && INTERNAL.test(line)) {
      folded.push(line);
      while (i + 1 < lines.length && lines[i + 1].startsWith("    ")) folded.push(lines[++i]);
      continue;
    }
    flush();
    out.append(line + "\n");
  }
  flush();
  return out;
}

export function errorBox(message) {
  return h("div", { class: "error-box", role: "alert" }, message);
}

export function shortId(id) {
  return id.slice(0, 8) + "…";
}
