// Entry point: picks the page from the path (relative to <base>), shows where the
// dashboard reads from.
import { api } from "./util.js";
import { runsPage } from "./runs.js";
import { runPage } from "./run.js";
import { flowsPage, schedulesPage, workersPage } from "./pages.js";

function route() {
  const base = new URL(document.baseURI).pathname;
  const path = location.pathname.startsWith(base) ? location.pathname.slice(base.length) : "";
  const run = /^runs\/([0-9a-f]{32})$/.exec(path);
  if (run) return ["runs", (root) => runPage(root, run[1])];
  if (path === "flows") return ["flows", flowsPage];
  if (path === "workers") return ["workers", workersPage];
  if (path === "schedules") return ["schedules", schedulesPage];
  return ["runs", runsPage];
}

const [name, page] = route();
for (const link of document.querySelectorAll("nav a")) {
  if (link.dataset.page === name) link.classList.add("current");
}
api("info").then((info) => {
  const el = document.getElementById("info");
  el.textContent = `key prefix ${info.key_prefix}`;
  el.title = info.indexed_since ? "runs indexed by flow and state" : "no secondary indexes: filters scan";
}).catch(() => {});
page(document.getElementById("main"));
