// The environments list (#/environments): every environment of the tenant (GET /v1/environments,
// page by page) with its status, template, newest run, age and time to live, a filter by name and
// status, and a refresh every few seconds while one of them has a run in progress.

import { ago, badge, h, replace, when } from "../dom.js";

const PAGE = 500; // the most GET /v1/environments answers at once
const MAX_PAGES = 20; // 10,000 environments: beyond that the list says it stopped
const REFRESH_MS = 4000;
const BUSY = new Set(["deploying", "destroying"]);
const RUN_ENDED = new Set(["succeeded", "failed", "cancelled", "rejected"]);
const STATUSES = ["new", "deploying", "deployed", "failed", "destroying", "destroyed"];

export async function render(ctx) {
  ctx.title("Environments");
  const aborter = new AbortController();
  const signal = aborter.signal;
  const first = await loadAll(ctx.api, signal);

  const filterInput = h("input", {
    id: "env-filter", type: "search", name: "filter", autocomplete: "off", placeholder: "name",
    "aria-describedby": "env-count",
  });
  const statusSelect = h("select", { id: "env-status", name: "status" },
    h("option", { value: "" }, "Any status"),
    STATUSES.map((status) => h("option", { value: status }, status)));
  const count = h("p.muted", { id: "env-count", role: "status" });
  const body = h("tbody");
  const notice = h("p.error", { role: "alert" });
  const table = h("table.env-list",
    h("caption.visually-hidden", {}, "Environments of the tenant"),
    h("thead", {}, h("tr", {},
      ["Name", "Status", "Template", "Last run", "Age", "Time to live"].map((label) => h("th", { scope: "col" }, label)))),
    body);
  const filters = h("form.env-filters", { role: "search", on: { submit: (event) => event.preventDefault() } },
    h("label", { for: "env-filter" }, "Filter by name"), filterInput,
    h("label", { for: "env-status" }, "Status"), statusSelect);
  const emptyState = h("div.empty.card", {},
    h("p", {}, "There are no environments in this tenant yet."),
    h("p", {}, h("a", { href: "#/catalog" }, "Launch one from the catalog")));
  const heading = h("h1", { id: "env-heading" }, "Environments");
  const el = h("section.env-page", { "aria-labelledby": "env-heading" }, heading);

  let environments = first;
  const applyFilter = () => {
    const text = filterInput.value.trim().toLowerCase();
    const status = statusSelect.value;
    let shown = 0;
    for (const row of body.rows) {
      const visible = row.dataset.name.includes(text) && (!status || row.dataset.status === status);
      row.hidden = !visible;
      if (visible) shown++;
    }
    count.textContent = shown === environments.list.length
      ? `${shown} environment${shown === 1 ? "" : "s"}`
      : `${shown} of ${environments.list.length} environments`;
  };
  const show = () => {
    if (!environments.list.length) {
      replace(el, heading, emptyState);
      return;
    }
    if (table.parentNode !== el) replace(el, heading, filters, count, notice, table);
    const now = Date.now();
    replace(body, environments.list.map((environment) => row(environment, now)));
    applyFilter();
    if (environments.truncated) {
      notice.textContent = `Only the first ${PAGE * MAX_PAGES} environments are shown.`;
    }
  };
  filterInput.addEventListener("input", applyFilter);
  statusSelect.addEventListener("change", applyFilter);
  show();

  // Live-ish: while some environment has a run in progress, and whenever the tab regains focus.
  let timer = null;
  let refreshing = false; // one refresh at a time (the timer and a focus may coincide)
  const refresh = async () => {
    if (refreshing) return;
    refreshing = true;
    clearTimeout(timer);
    try {
      environments = await loadAll(ctx.api, signal);
      show();
    } catch (error) {
      if (signal.aborted) return;
      notice.textContent = `Could not refresh the list: ${error.message}`;
    } finally {
      refreshing = false;
    }
    schedule();
  };
  const schedule = () => {
    if (!signal.aborted && environments.list.some(busy)) {
      timer = setTimeout(refresh, REFRESH_MS);
    }
  };
  const onFocus = () => refresh();
  window.addEventListener("focus", onFocus);
  schedule();

  return {
    el,
    dispose: () => {
      aborter.abort();
      clearTimeout(timer);
      window.removeEventListener("focus", onFocus);
    },
  };
}

// Deploying or destroying, or its newest run (a day-2 action, a drift check ...) not ended yet.
function busy({ status, latest_run: run }) {
  return BUSY.has(status) || Boolean(run && !RUN_ENDED.has(run.status));
}

// Every environment, a page of PAGE at a time (after = the last name of the previous page).
async function loadAll(api, signal) {
  const list = [];
  let after = "";
  for (let page = 0; page < MAX_PAGES; page++) {
    const query = new URLSearchParams({ limit: String(PAGE) });
    if (after) query.set("after", after);
    const { environments } = await api.get(`/v1/environments?${query}`, { signal });
    list.push(...environments);
    if (environments.length < PAGE) return { list, truncated: false };
    after = environments[environments.length - 1].name;
  }
  return { list, truncated: true };
}

function row(environment, now) {
  const { name, status, template, latest_run: run, created_at: created, expires_at: expires } = environment;
  return h("tr", { dataset: { name, status } },
    h("th", { scope: "row" }, h("a", { href: `#/environments/${encodeURIComponent(name)}` }, name)),
    h("td", {}, badge(status)),
    h("td", {}, `${template.name}@${template.version}`),
    h("td", {}, run ? lastRun(run, now) : h("span.muted", {}, "none")),
    h("td", {}, created ? h("time", { datetime: created, title: when(created) }, ago(created, now)) : ""),
    h("td", {}, expires ? timeToLive(expires, now) : h("span.muted", {}, "none")));
}

function lastRun(run, now) {
  const at = run.finished_at || run.started_at || run.requested_at;
  return h("span.last-run", {},
    badge(run.status), " ",
    h("a", { href: `#/runs/${encodeURIComponent(run.run_id)}` }, run.purpose || run.action),
    at ? [" ", h("time.muted", { datetime: at, title: when(at) }, ago(at, now))] : null);
}

function timeToLive(expires, now) {
  const seconds = Math.round((new Date(expires).getTime() - now) / 1000);
  const text = seconds <= 0 ? "expiring now" : `expires in ${span(seconds)}`;
  return h("time", { datetime: expires, title: when(expires) }, text);
}

// 90 -> "1m", 7500 -> "2h 5m", 200000 -> "2d 7h".
export function span(seconds) {
  const days = Math.floor(seconds / 86400);
  const hours = Math.floor((seconds % 86400) / 3600);
  const minutes = Math.floor((seconds % 3600) / 60);
  if (days) return hours ? `${days}d ${hours}h` : `${days}d`;
  if (hours) return minutes ? `${hours}h ${minutes}m` : `${hours}h`;
  return minutes ? `${minutes}m` : `${seconds}s`;
}
