// Small helpers shared by the pages: DOM building (text only, never HTML strings), the
// JSON API, time formats.

export const STATES = ["queued", "running", "succeeded", "failed", "cancelled"];
export const NODE_STATES = ["pending", "queued", "running", "retrying", "mapping",
  "succeeded", "failed", "skipped"];

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

export function fmtTime(ts) {
  if (ts === null || ts === undefined) return "-";
  const d = new Date(ts * 1000);
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ` +
    `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
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

export function progressBar(done, failed, total) {
  const pct = (n) => (total ? (100 * n) / total : 0);
  const bar = h("span", { class: "bar", title: `${done}/${total} nodes done` },
    h("span", { class: "fill st-succeeded" }),
    h("span", { class: "fill st-failed" }));
  bar.children[0].style.width = pct(done) + "%";
  bar.children[1].style.width = pct(failed) + "%";
  return h("span", { class: "progress" }, bar, h("span", { class: "count" }, `${done}/${total}`));
}

export function errorBox(message) {
  return h("div", { class: "error-box", role: "alert" }, message);
}

export function shortId(id) {
  return id.slice(0, 8) + "…";
}
