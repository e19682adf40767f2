// #/runs/ID: one run, live. The header (environment, action, status, who, times, Cancel), the DAG
// of its activities (graph.js lays it out; drawn once as SVG, then only changed nodes' classes are
// updated), a virtualised list of every activity, and the panel of the one selected: details,
// approval decision, and its log (logs.js). Statuses change at once from the run's event stream;
// the details come from GET /v1/runs/ID, fetched again at most about once a second.

import { ApiError } from "../api.js";
import { aggregateStatus, finishedCount, layout, shortLabel } from "../graph.js";
import { logViewer } from "../logs.js";
import { badge, duration, h, replace, s, toast, when } from "../dom.js";

const COLLAPSE_OVER = 50; // with more resources than this, each starts as one node
const ROW_H = 34; // the activity list's row height (px): rows are placed, not flowed
const LIST_OVERSCAN = 8;
const TERMINAL_RUN = new Set(["succeeded", "failed", "cancelled", "rejected"]);
const RUN_RANK = { requested: 0, queued: 1, running: 2, cancelling: 3 }; // terminal: 4
const ACT_RANK = { pending: 0, dispatched: 1, running: 2, waiting: 2 }; // finished: 3
const GLYPH = {
  succeeded: "✓", failed: "✗", timed_out: "✗", lost: "✗", running: "▶", dispatched: "▶",
  waiting: "‖", pending: "…", skipped: "–", cancelled: "⊘",
};
// What each activity event makes of the activity's status.
const EVENT_STATUS = {
  "activity.dispatched": () => "dispatched",
  "activity.started": () => "running",
  "activity.completed": () => "succeeded",
  "activity.failed": (e) => (e.timed_out ? "timed_out" : "failed"),
  "activity.cancelled": () => "cancelled",
  "activity.lost": () => "lost",
  "activity.timed_out": () => "timed_out",
  "approval.requested": () => "waiting",
};
const RUN_EVENT_STATUS = {
  "run.queued": () => "queued",
  "run.started": () => "running",
  "run.cancel_requested": () => "cancelling",
  "run.completed": (e) => e.status,
  "run.rejected": () => "rejected",
};

export async function render(ctx, runId) {
  const controller = new AbortController();
  const run = await ctx.api.get(runPath(runId), { signal: controller.signal });
  const page = new RunPage(ctx, runId, run, controller);
  page.start();
  return { el: page.el, dispose: () => page.dispose() };
}

function runPath(runId) {
  return `/v1/runs/${encodeURIComponent(runId)}`;
}

const runRank = (status) => RUN_RANK[status] ?? 4;
const actRank = (a) => [a.attempts || 0, ACT_RANK[a.status] ?? 3];
// Whether row (or event) `a` says as much as `b` or more: a later attempt, or further along in one.
const notOlder = (a, b) => {
  const [x, y] = [actRank(a), actRank(b)];
  return x[0] > y[0] || (x[0] === y[0] && x[1] >= y[1]);
};

class RunPage {
  constructor(ctx, runId, run, controller) {
    this.ctx = ctx;
    this.runId = runId;
    this.controller = controller;
    this.run = run;
    this.acts = new Map(); // id -> activity row (as GET answers it, patched by events)
    this.order = []; // ids in compiled order
    this.collapsed = new Set();
    this.nodes = new Map(); // node id (activity id, or resource:NAME) -> SVG <g>
    this.drawnIn = new Map(); // activity id -> node id it is drawn in
    this.selected = "";
    this.panel = null; // {id, el, details, decide, logs}
    this.filter = "";
    this.refresh = { timer: 0, fetching: false, dirty: false, last: 0, interval: 1000, tries: 0 };
    ctx.title(`Run ${runId}`);
    this.build();
    this.setActivities(run.activities || [], true);
  }

  get signal() { return this.controller.signal; }

  start() {
    this.ticker = setInterval(() => { if (!TERMINAL_RUN.has(this.run.status)) this.updateTimes(); }, 1000);
    const wanted = this.ctx.query?.get("activity");
    if (wanted && this.acts.has(wanted)) this.select(wanted, { focus: false });
    if (!TERMINAL_RUN.has(this.run.status)) this.follow();
  }

  dispose() {
    this.controller.abort();
    clearInterval(this.ticker);
    clearTimeout(this.refresh.timer);
    this.panel?.logs?.dispose();
  }

  // ---- layout of the page ----------------------------------------------------------------

  build() {
    const run = this.run;
    this.statusEl = h("span");
    this.timesEl = h("dl.run-facts");
    this.messageEl = h("p.run-message", { hidden: true });
    this.errorsEl = h("ul.run-errors", { hidden: true });
    this.banner = h("div.run-approvals", { hidden: true, role: "region", "aria-label": "Waiting approvals" });
    this.liveEl = h("p.run-live.muted", { role: "status" });
    this.cancelEl = this.cancelControls();
    const purpose = run.purpose ? ` (${run.purpose})` : "";
    const header = h("header.run-head", {},
      h("h1", {}, `${run.action || "Run"}${purpose} of `,
        h("a", { href: `#/environments/${encodeURIComponent(run.environment)}` }, run.environment)),
      h("p.run-status", {}, "Status ", this.statusEl, h("span.muted", {}, ` · run ${this.runId}`)),
      this.timesEl, this.messageEl, this.errorsEl, this.cancelEl, this.liveEl);

    this.graphBox = h("div.graph-scroll");
    this.graphInfo = h("span.muted");
    const graph = h("section.run-graph", { "aria-labelledby": "run-graph-h" },
      h("h2", { id: "run-graph-h" }, "Graph"),
      h("div.graph-tools", {},
        h("button", { type: "button", on: { click: () => this.collapseAll(false) } }, "Expand all"),
        h("button", { type: "button", on: { click: () => this.collapseAll(true) } }, "Collapse all"),
        this.graphInfo),
      this.graphBox);

    this.listBox = h("div.act-list", { role: "list", "aria-label": "Activities" });
    this.listSpacer = h("div.act-spacer");
    this.listBox.append(this.listSpacer);
    this.listBox.addEventListener("scroll", () => this.drawList(), { passive: true });
    const filter = h("input", { id: "act-filter", type: "search", placeholder: "id or status",
      on: { input: () => {
        this.filter = filter.value.trim().toLowerCase();
        this.listRows = null;
        this.listBox.scrollTop = 0;
        this.drawList();
      } } });
    this.listEmpty = h("p.muted", { hidden: true });
    const list = h("section.run-list", { "aria-labelledby": "run-list-h" },
      h("h2", { id: "run-list-h" }, "Activities"),
      h("div.list-tools", {}, h("label", { for: "act-filter" }, "Filter"), filter),
      this.listEmpty, this.listBox);

    this.panelBox = h("div.run-panel-box");
    this.el = h("div.run-page", {}, header, this.banner, graph, h("div.run-lower", {}, list, this.panelBox));
    this.updateHeader();
  }

  cancelControls() {
    if (!this.ctx.can("operator")) return h("div.run-cancel", { hidden: true });
    const error = h("p.error", { role: "alert" });
    const reason = h("input", { id: "cancel-reason", type: "text", maxlength: 4096 });
    const confirm = h("div.cancel-confirm", { hidden: true },
      h("label", { for: "cancel-reason" }, "Reason (optional)"), reason,
      h("button.danger", { type: "button", on: { click: () => this.cancel(reason.value, error, confirm) } },
        "Yes, cancel it"),
      h("button", { type: "button", on: { click: () => { confirm.hidden = true; ask.focus(); } } }, "Keep running"));
    const ask = h("button.danger", { type: "button",
      on: { click: () => { confirm.hidden = false; reason.focus(); } } }, "Cancel run");
    return h("div.run-cancel", {}, ask, confirm, error);
  }

  async cancel(reason, error, confirm) {
    error.textContent = "";
    try {
      await this.ctx.api.post(`${runPath(this.runId)}/cancel`, reason ? { reason } : {}, { signal: this.signal });
      confirm.hidden = true;
      this.setRunStatus("cancelling");
      toast("Cancelling the run…");
    } catch (failure) {
      if (!this.signal.aborted) error.textContent = failure.message;
    }
  }

  updateHeader() {
    const run = this.run;
    replace(this.statusEl, badge(run.status));
    this.statusEl.dataset.status = run.status;
    this.updateTimes();
    this.messageEl.hidden = !run.message;
    this.messageEl.textContent = run.message || "";
    const errors = run.errors || [];
    this.errorsEl.hidden = !errors.length;
    replace(this.errorsEl, errors.map((p) =>
      h("li", {}, [p.file && `${p.file}:${p.line}: `, p.path && `${p.path}: `, p.message].filter(Boolean).join(""))));
    this.cancelEl.hidden = !this.ctx.can("operator") || TERMINAL_RUN.has(run.status) || run.status === "cancelling";
  }

  updateTimes() {
    const run = this.run;
    const facts = [
      ["Requested by", run.requested_by || "—"],
      ["Requested", when(run.requested_at) || "—"],
      ["Started", when(run.started_at) || "—"],
      ["Finished", when(run.finished_at) || "—"],
      ["Duration", duration(run.started_at, run.finished_at) || "—"],
    ];
    replace(this.timesEl, facts.map(([k, v]) => h("div", {}, h("dt", {}, k), h("dd", {}, v))));
  }

  // ---- activities ------------------------------------------------------------------------

  // Take a fresh list of activity rows: redraw everything when the set of ids changed (the run
  // was compiled meanwhile), else merge row by row, keeping what events said more recently.
  setActivities(rows, first = false) {
    const sameSet = !first && rows.length === this.order.length && rows.every((r) => this.acts.has(r.id));
    if (!sameSet) {
      const known = this.acts;
      const merged = (r) => (known.has(r.id) && !notOlder(r, known.get(r.id)) ? { ...r, ...pick(known.get(r.id)) } : r);
      this.acts = new Map(rows.map((r) => [r.id, merged(r)]));
      this.order = rows.map((r) => r.id);
      this.byResource = new Map();
      for (const r of rows) {
        if (!r.resource) continue;
        if (!this.byResource.has(r.resource)) this.byResource.set(r.resource, []);
        this.byResource.get(r.resource).push(r.id);
      }
      const resources = new Set(rows.map((r) => r.resource).filter(Boolean));
      if (first || !this.graphDrawn) this.collapsed = resources.size > COLLAPSE_OVER ? resources : new Set();
      this.drawGraph();
      this.listRows = null;
      this.drawList();
      this.updateBanner();
      return;
    }
    for (const row of rows) {
      const current = this.acts.get(row.id);
      if (notOlder(row, current)) {
        const changed = row.status !== current.status;
        this.acts.set(row.id, row);
        if (changed) this.statusChanged(row.id);
      }
    }
    this.drawList();
    this.updateBanner();
    this.updatePanel();
  }

  // An event's news about one activity, shown at once.
  patchActivity(id, status, event) {
    const current = this.acts.get(id);
    if (!current) { this.scheduleRefresh(); return; } // not in the rows yet: fetch them
    if (!notOlder({ status, attempts: event.attempt || 0 }, current)) return; // a replayed, older event
    const next = { ...current, status, attempts: Math.max(current.attempts || 0, event.attempt || 0) };
    if (event.agent) next.agent = event.agent;
    if (status === "running") next.started_at = event.occurred_at;
    if (ACT_RANK[status] === undefined) {
      next.finished_at = event.occurred_at;
      if (event.reason !== undefined) next.reason = event.reason;
      if (event.exit_code !== undefined) next.exit_code = event.exit_code;
      if (event.outputs) next.outputs = event.outputs;
    } else if (status === "dispatched") {
      next.finished_at = undefined;
      next.reason = "";
    }
    this.acts.set(id, next);
    if (next.status !== current.status) this.statusChanged(id);
  }

  statusChanged(id) {
    const nodeId = this.drawnIn.get(id);
    if (nodeId) this.paintNode(nodeId);
    this.listDirty = true;
  }

  // ---- the graph -------------------------------------------------------------------------

  drawGraph() {
    const activities = this.order.map((id) => this.acts.get(id));
    this.nodes.clear();
    this.drawnIn.clear();
    if (!activities.length) {
      replace(this.graphBox, h("p.muted", {}, this.run.status === "rejected"
        ? "The run was rejected: it has no activities." : "The run has not been compiled yet."));
      this.graphInfo.textContent = "";
      this.graphDrawn = false;
      return;
    }
    const shape = layout(activities, { collapsed: this.collapsed });
    const svg = s("svg", { width: shape.width, height: shape.height, viewBox: `0 0 ${shape.width} ${shape.height}`,
      class: "rg", "aria-label": "Graph of the run's activities, left to right" });
    const edges = s("g", { class: "rg-edges", "aria-hidden": "true" },
      shape.edges.map((e) => s("path", { d: e.d, class: "rg-edge" })));
    const frames = shape.frames.map((f) => this.frameElement(f));
    svg.append(...frames, edges);
    for (const node of shape.nodes) {
      const g = this.nodeElement(node);
      svg.append(g);
      this.nodes.set(node.id, g);
      for (const id of node.members || [node.id]) this.drawnIn.set(id, node.id);
      this.paintNode(node.id);
    }
    replace(this.graphBox, svg);
    const resources = new Set(activities.map((a) => a.resource).filter(Boolean)).size;
    this.graphInfo.textContent =
      `${plural(activities.length, "activity", "activities")} in ${plural(resources, "resource")}` +
      (this.collapsed.size ? `; ${this.collapsed.size.toLocaleString()} collapsed` : "");
    this.graphDrawn = true;
    this.graphBox.dataset.drawn = String(shape.nodes.length);
    performance.mark("trellis:run-graph-drawn");
  }

  frameElement(frame) {
    const toggle = s("g", { class: "rg-toggle", tabindex: 0, role: "button", "aria-expanded": "true",
      "aria-label": `Collapse resource ${frame.resource}`, transform: `translate(${frame.w - 30},4)` },
    s("rect", { width: 24, height: 20, rx: 4 }), s("text", { x: 12, y: 15, "text-anchor": "middle" }, "−"));
    activate(toggle, () => this.toggle(frame.resource, true));
    return s("g", { class: "rg-frame", transform: `translate(${frame.x},${frame.y})`, "data-resource": frame.resource },
      s("rect", { width: frame.w, height: frame.h, rx: 8 }),
      s("text", { class: "rg-frame-title", x: 10, y: 19 }, truncate(frame.resource, Math.floor((frame.w - 40) / 8))),
      toggle);
  }

  nodeElement(node) {
    const g = s("g", { class: `rg-node${node.kind === "resource" ? " rg-group" : ""}`, tabindex: 0, role: "button",
      transform: `translate(${node.x},${node.y})` });
    if (node.kind === "resource") {
      g.dataset.resource = node.resource;
      g.setAttribute("aria-expanded", "false");
    } else {
      g.dataset.activity = node.id;
      if (this.acts.get(node.id)?.kind === "approval") g.classList.add("rg-approval");
    }
    const label = node.kind === "resource" ? `${node.label} (${node.members.length})` : node.label;
    g.append(
      s("title", {}, node.kind === "resource"
        ? `resource ${node.resource}: ${node.members.length} activities` : node.id),
      s("rect", { width: node.w, height: node.h, rx: 6 }),
      s("text", { class: "rg-label", x: 10, y: 18 }, truncate(label, 22)),
      s("text", { class: "rg-status", x: 10, y: 35 }));
    activate(g, () => (node.kind === "resource" ? this.toggle(node.resource, false) : this.select(node.id)));
    return g;
  }

  // The node's colour class, status text and accessible name, from its activity (or members).
  paintNode(nodeId) {
    const g = this.nodes.get(nodeId);
    if (!g) return;
    let status;
    let text;
    let name;
    if (nodeId.startsWith("resource:")) {
      const resource = nodeId.slice("resource:".length);
      const statuses = this.membersOf(resource).map((a) => a.status);
      status = aggregateStatus(statuses);
      text = `${GLYPH[status] || ""} ${status} · ${finishedCount(statuses)}/${statuses.length} done`;
      name = `Resource ${resource}, ${statuses.length} activities: ${status}, ${finishedCount(statuses)} done. Expand`;
    } else {
      const a = this.acts.get(nodeId);
      status = a.status;
      text = `${GLYPH[status] || ""} ${status}${a.attempts > 1 ? ` · attempt ${a.attempts}` : ""}`;
      name = `${nodeId}: ${status}`;
    }
    g.setAttribute("class", g.getAttribute("class").replace(/ ?st-[a-z_]+/g, "") + ` st-${status}`);
    g.dataset.status = status;
    g.setAttribute("aria-label", name);
    g.lastChild.textContent = text;
  }

  membersOf(resource) {
    return (this.byResource.get(resource) || []).map((id) => this.acts.get(id));
  }

  toggle(resource, collapse) {
    if (collapse) this.collapsed.add(resource);
    else this.collapsed.delete(resource);
    const scroll = [this.graphBox.scrollLeft, this.graphBox.scrollTop];
    this.drawGraph();
    [this.graphBox.scrollLeft, this.graphBox.scrollTop] = scroll;
    const focus = collapse ? this.nodes.get(`resource:${resource}`)
      : this.nodes.get(this.membersOf(resource)[0]?.id);
    focus?.focus();
  }

  collapseAll(collapse) {
    this.collapsed = collapse ? new Set(this.order.map((id) => this.acts.get(id).resource).filter(Boolean)) : new Set();
    this.drawGraph();
  }

  // ---- the virtualised activity list -----------------------------------------------------

  visibleIds() {
    if (this.filter && this.listDirty) this.listRows = null; // statuses changed: refilter
    if (!this.listRows) {
      const f = this.filter;
      const shown = (id) => id.toLowerCase().includes(f) || this.acts.get(id).status.includes(f);
      this.listRows = f ? this.order.filter(shown) : this.order;
    }
    return this.listRows;
  }

  drawList() {
    const ids = this.visibleIds();
    this.listSpacer.style.height = `${ids.length * ROW_H}px`;
    const top = this.listBox.scrollTop;
    const first = Math.max(0, Math.floor(top / ROW_H) - LIST_OVERSCAN);
    const last = Math.min(ids.length, Math.ceil((top + (this.listBox.clientHeight || 400)) / ROW_H) + LIST_OVERSCAN);
    const focused = this.listSpacer.contains(document.activeElement) ? document.activeElement.dataset.id : "";
    const rows = [];
    for (let i = first; i < last; i += 1) {
      const a = this.acts.get(ids[i]);
      const row = h("div.act-row", { role: "listitem", "aria-setsize": ids.length, "aria-posinset": i + 1 },
        h("button.act-open", { type: "button", "aria-current": a.id === this.selected ? "true" : undefined,
          dataset: { id: a.id }, on: { click: () => this.select(a.id) } },
        badge(a.status), h("span.act-id", {}, a.id),
        h("span.act-time.muted", {}, duration(a.started_at, a.finished_at))));
      row.style.top = `${i * ROW_H}px`;
      rows.push(row);
    }
    replace(this.listSpacer, rows);
    this.listEmpty.hidden = ids.length > 0;
    this.listEmpty.textContent = this.order.length ? "No activity matches the filter." : "No activities yet.";
    // Rows are drawn again on every change: keep the keyboard where it was.
    if (focused) [...this.listSpacer.querySelectorAll("button")].find((b) => b.dataset.id === focused)?.focus();
    this.listDirty = false;
  }

  // ---- waiting approvals -----------------------------------------------------------------

  updateBanner() {
    const waiting = this.order.filter((id) => {
      const a = this.acts.get(id);
      return a.kind === "approval" && a.status === "waiting";
    });
    if (waiting.join("\n") === this.bannerShows) return; // unchanged: leave focus where it is
    this.bannerShows = waiting.join("\n");
    this.banner.hidden = !waiting.length;
    replace(this.banner, waiting.length ? [
      h("strong", {}, waiting.length === 1 ? "An approval is waiting: " : `${waiting.length} approvals are waiting: `),
      waiting.map((id) => h("button.link", { type: "button", on: { click: () => this.select(id) } }, `review ${id}`)),
    ] : []);
  }

  // ---- the selected activity's panel -----------------------------------------------------

  select(id, { focus = true } = {}) {
    if (!this.acts.has(id)) return;
    const before = this.selected;
    this.selected = id;
    for (const nodeId of [this.drawnIn.get(before), this.drawnIn.get(id)]) {
      this.nodes.get(nodeId)?.classList.toggle("selected", nodeId === this.drawnIn.get(id));
    }
    const hash = `#/runs/${encodeURIComponent(this.runId)}?activity=${encodeURIComponent(id)}`;
    history.replaceState(null, "", hash); // a link to this activity, without a hashchange
    this.panel?.logs?.dispose();
    this.panel = this.panelFor(id);
    replace(this.panelBox, this.panel.el);
    this.updatePanel();
    this.drawList();
    if (focus) this.panel.heading.focus();
  }

  closePanel() {
    const id = this.selected;
    this.panel?.logs?.dispose();
    this.panel = null;
    this.selected = "";
    replace(this.panelBox);
    this.nodes.get(this.drawnIn.get(id))?.classList.remove("selected");
    history.replaceState(null, "", `#/runs/${encodeURIComponent(this.runId)}`);
    this.drawList();
    this.nodes.get(this.drawnIn.get(id))?.focus();
  }

  panelFor(id) {
    const a = this.acts.get(id);
    const heading = h("h2", { id: "panel-h", tabindex: -1 }, id);
    const details = h("div.panel-details");
    const decide = a.kind === "approval" ? this.decisionForm(id) : null;
    const live = !TERMINAL_RUN.has(this.run.status);
    const logs = logViewer({ api: this.ctx.api, runId: this.runId, activityId: id, live });
    const el = h("aside.run-panel", { "aria-labelledby": "panel-h" },
      h("div.panel-head", {}, heading,
        h("button", { type: "button", on: { click: () => this.closePanel() } }, "Close")),
      details, decide?.el, logs.el);
    return { id, el, heading, details, decide, logs };
  }

  updatePanel() {
    if (!this.panel) return;
    const a = this.acts.get(this.panel.id);
    const facts = [
      ["Status", badge(a.status)], ["Kind", a.kind], ["Resource", a.resource || "(the environment)"],
      ["Stage", a.stage || "—"], ["Attempts", String(a.attempts || 0)], ["Agent", a.agent || "—"],
      ["Started", when(a.started_at) || "—"], ["Finished", when(a.finished_at) || "—"],
      ["Duration", duration(a.started_at, a.finished_at) || "—"],
      ["Exit code", a.exit_code ?? "—"], ["Depends on", (a.depends_on || []).join(", ") || "—"],
    ];
    const outputs = Object.keys(a.outputs || {}).length ? JSON.stringify(a.outputs, null, 2) : "";
    replace(this.panel.details,
      h("dl.panel-facts", {}, facts.map(([k, v]) => h("div", {}, h("dt", {}, k), h("dd", {}, v)))),
      a.reason ? [h("h3", {}, "Reason"), h("p.reason", {}, a.reason)] : null,
      outputs ? [h("h3", {}, "Outputs"), h("pre.outputs", {}, outputs)] : null);
    if (this.panel.decide) this.panel.decide.el.hidden = a.status !== "waiting";
  }

  decisionForm(id) {
    const error = h("p.error", { role: "alert" });
    const comment = h("textarea", { id: "decision-comment", rows: 2, maxlength: 4096 });
    const buttons = [];
    const decide = async (decision) => {
      error.textContent = "";
      buttons.forEach((b) => { b.disabled = true; });
      try {
        await this.ctx.api.post(`${runPath(this.runId)}/approvals/${id.split("/").map(encodeURIComponent).join("/")}`,
          { decision, comment: comment.value }, { signal: this.signal });
        toast(decision === "approve" ? "Approved." : "Rejected.");
        this.scheduleRefresh();
      } catch (failure) {
        if (this.signal.aborted) return;
        error.textContent = failure instanceof ApiError && failure.status === 403
          ? `You may not decide this approval: ${failure.message}` : failure.message;
      } finally {
        buttons.forEach((b) => { b.disabled = false; });
      }
    };
    buttons.push(h("button.primary", { type: "button", on: { click: () => decide("approve") } }, "Approve"),
      h("button.danger", { type: "button", on: { click: () => decide("reject") } }, "Reject"));
    const el = h("section.decision", { "aria-labelledby": "decision-h" },
      h("h3", { id: "decision-h" }, "Decision"),
      h("label", { for: "decision-comment" }, "Comment (optional)"), comment,
      h("div.actions", {}, buttons), error);
    return { el };
  }

  // ---- live: the event stream and the refetches ------------------------------------------

  async follow() {
    this.liveEl.textContent = "Live: following the run's events.";
    try {
      const path = `${runPath(this.runId)}/events`;
      await this.ctx.api.stream(path, (message) => this.onEvent(message), { signal: this.signal });
      if (this.signal.aborted) return;
      this.liveEl.textContent = "";
      this.scheduleRefresh();
    } catch (error) {
      if (!this.signal.aborted) this.liveEl.textContent = `Live updates stopped: ${error.message}`;
    }
  }

  onEvent(message) {
    if (!message.data) return;
    const event = JSON.parse(message.data);
    const kind = message.event;
    if (EVENT_STATUS[kind] && event.activity_id) {
      this.patchActivity(event.activity_id, EVENT_STATUS[kind](event), event);
    } else if (RUN_EVENT_STATUS[kind]) {
      this.setRunStatus(RUN_EVENT_STATUS[kind](event), event);
    }
    if (kind === "activity.heartbeat" || kind === "activity.log") return;
    if (this.listDirty) this.drawList();
    if (kind === "approval.requested" || kind.startsWith("activity.")) this.updateBanner();
    if (this.panel && event.activity_id === this.panel.id) this.updatePanel();
    this.scheduleRefresh();
  }

  setRunStatus(status, event = {}) {
    if (!status || runRank(status) < runRank(this.run.status)) return;
    this.run = { ...this.run, status };
    if (status === "running" && !this.run.started_at) this.run.started_at = event.occurred_at;
    if (TERMINAL_RUN.has(status)) {
      this.run.finished_at ||= event.occurred_at;
      if (event.message) this.run.message = event.message;
      for (const id of this.order) if (this.acts.get(id).status === "pending") this.patchActivity(id, "skipped", {});
    }
    this.updateHeader();
  }

  scheduleRefresh() {
    const r = this.refresh;
    r.dirty = true;
    if (r.timer || r.fetching || this.signal.aborted) return;
    r.timer = setTimeout(() => this.refetch(), Math.max(0, r.last + r.interval - performance.now()));
  }

  // GET the run again; the interval grows with how long the answer takes (a big run's is MBs).
  async refetch() {
    const r = this.refresh;
    Object.assign(r, { timer: 0, dirty: false, fetching: true });
    const started = performance.now();
    try {
      const run = await this.ctx.api.get(runPath(this.runId), { signal: this.signal });
      const finished = TERMINAL_RUN.has(this.run.status);
      if (runRank(run.status) >= runRank(this.run.status)) this.run = run;
      else this.run = { ...run, status: this.run.status, finished_at: this.run.finished_at };
      this.updateHeader();
      this.setActivities(run.activities || []);
      // The store follows the bus: until it has the run's end, ask again (a few times).
      if (finished && !TERMINAL_RUN.has(run.status) && (r.tries += 1) < 20) r.dirty = true;
    } catch (error) {
      if (this.signal.aborted) return;
      this.liveEl.textContent = `Could not refresh the run: ${error.message}`;
    } finally {
      r.fetching = false;
      r.last = performance.now();
      r.interval = Math.max(1000, 4 * (r.last - started));
      if (r.dirty && !this.signal.aborted) { r.dirty = false; this.scheduleRefresh(); }
    }
  }
}

// Fields an event set that a stale row must not undo.
function pick(a) {
  return { status: a.status, attempts: a.attempts, started_at: a.started_at, finished_at: a.finished_at };
}

function plural(count, one, many = `${one}s`) {
  return `${count.toLocaleString()} ${count === 1 ? one : many}`;
}

function truncate(text, max) {
  return text.length > max ? `${text.slice(0, max - 1)}…` : text;
}

// Click, Enter or Space run `fn` (an SVG <g role="button">).
function activate(el, fn) {
  el.addEventListener("click", (event) => { event.stopPropagation(); fn(); });
  el.addEventListener("keydown", (event) => {
    if (event.key === "Enter" || event.key === " ") { event.preventDefault(); event.stopPropagation(); fn(); }
  });
}
