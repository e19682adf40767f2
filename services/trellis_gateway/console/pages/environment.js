// One environment (#/environments/NAME): its status, template, variables and outputs (sensitive
// ones masked), the environments it reads and those reading it, its last drift check, schedules
// (with Extend), day-2 actions and run history; and, for operators, Deploy, Destroy (confirmed
// first) and a button per action, each landing on the run it started. Controls the role may not
// use are not rendered at all. While a run is in progress the page refreshes every few seconds.

import { ApiError } from "../api.js";
import { ago, badge, duration, h, replace, toast, when } from "../dom.js";
import { span } from "./environments.js";

const RUNS_PAGE = 20;
const REFRESH_MS = 3000;
const BUSY = new Set(["deploying", "destroying"]);
const RUN_ENDED = new Set(["succeeded", "failed", "cancelled", "rejected"]);
const MASK = "********";

export async function render(ctx, name) {
  ctx.title(name);
  const aborter = new AbortController();
  const { signal } = aborter;
  const base = `/v1/environments/${encodeURIComponent(name)}`;
  const runsPath = `/v1/runs?environment=${encodeURIComponent(name)}&limit=${RUNS_PAGE}`;
  const get = (path) => ctx.api.get(path, { signal });
  const orError = (promise) => promise.catch((error) => ({ error })); // a section shows its own failure
  const operator = ctx.can("operator");

  const [first, firstRuns, firstSchedules, firstActions] = await Promise.all([
    get(base), get(runsPath), orError(get(`${base}/schedules`)), orError(get(`${base}/actions`)),
  ]);
  const state = {
    environment: first,
    runs: firstRuns.runs,
    moreRuns: firstRuns.runs.length === RUNS_PAGE,
    schedules: firstSchedules,
    actions: firstActions,
  };

  const alert = h("p.error", { role: "alert" });
  const fail = (what, error) => {
    if (signal.aborted) return;
    alert.textContent = `${what}: ${error instanceof ApiError ? error.message : String(error)}`;
  };
  // Every button that starts a run: disabled while its request is out, then off to the run.
  const start = async (button, what, path, body) => {
    alert.textContent = "";
    button.disabled = true;
    try {
      const { run_id: runId } = await ctx.api.post(path, body, { signal });
      ctx.navigate(`#/runs/${encodeURIComponent(runId)}`);
    } catch (error) {
      fail(`Could not ${what}`, error);
    } finally {
      button.disabled = false;
    }
  };

  const dialog = destroyDialog(name, (button) => start(button, "destroy", `${base}/runs`, { action: "destroy" }));
  const deploy = (event) => start(event.currentTarget, "deploy", `${base}/runs`, { action: "deploy" });
  const askDestroy = () => {
    alert.textContent = "";
    dialog.showModal();
  };
  const controls = operator
    ? h("div.actions.env-controls", {},
      h("button.primary", { type: "button", on: { click: deploy } }, "Deploy"),
      h("button.danger", { type: "button", on: { click: askDestroy } }, "Destroy"))
    : null;

  const summary = h("dl.env-summary");
  const sections = {
    variables: h("section", { "aria-labelledby": "env-variables" }),
    outputs: h("section", { "aria-labelledby": "env-outputs" }),
    links: h("section", { "aria-labelledby": "env-links" }),
    drift: h("section", { "aria-labelledby": "env-drift" }),
    schedules: h("section", { "aria-labelledby": "env-schedules" }),
    actions: h("section", { "aria-labelledby": "env-actions" }),
    runs: h("section", { "aria-labelledby": "env-runs" }),
  };

  const extend = async (form, schedule) => {
    alert.textContent = "";
    const input = form.elements.duration;
    const body = { duration: input.value.trim() };
    if (schedule.kind !== "ttl") body.schedule = schedule.name;
    try {
      const after = await ctx.api.post(`${base}/extend`, body, { signal });
      toast(after.expires_at ? `${schedule.name} now expires ${when(after.expires_at)}` : `${schedule.name} extended`);
      state.schedules = await orError(get(`${base}/schedules`));
      paintSchedules();
    } catch (error) {
      fail(`Could not extend ${schedule.name}`, error);
      input.focus();
    }
  };
  const runAction = (button, action) =>
    start(button, `run ${action}`, `${base}/actions/${encodeURIComponent(action)}`, {});
  const more = async (button) => {
    button.disabled = true;
    try {
      const last = state.runs[state.runs.length - 1].run_id;
      const page = await get(`${runsPath}&before=${encodeURIComponent(last)}`);
      state.runs = [...state.runs, ...page.runs];
      state.moreRuns = page.runs.length === RUNS_PAGE;
      paintRuns();
      // The button was repainted: keep the keyboard where the new rows begin.
      const links = sections.runs.querySelectorAll("tbody a");
      (links[state.runs.length - page.runs.length] || sections.runs.querySelector("button.more"))?.focus();
    } catch (error) {
      fail("Could not load more runs", error);
      button.disabled = false;
    }
  };

  const paintSchedules = () => replace(sections.schedules,
    ...schedulesSection(state.schedules, operator ? extend : null));
  const paintRuns = () => replace(sections.runs, ...runsSection(state.runs, state.moreRuns, more));
  const paint = () => {
    const environment = state.environment;
    const newest = state.runs[0];
    replace(summary, ...summaryItems(environment, newest && !RUN_ENDED.has(newest.status) ? newest : null));
    replace(sections.variables, ...variablesSection(environment));
    replace(sections.outputs, ...outputsSection(environment));
    replace(sections.links, ...linksSection(environment));
    sections.links.hidden = !environment.dependsOn && !environment.dependents;
    replace(sections.drift, ...driftSection(environment.drift));
    sections.drift.hidden = !environment.drift;
    // Not while someone is typing in them: a refresh must not eat a half-written duration.
    if (!sections.schedules.contains(document.activeElement)) paintSchedules();
    if (!sections.actions.contains(document.activeElement)) {
      replace(sections.actions, ...actionsSection(state.actions, operator ? runAction : null));
    }
    paintRuns();
  };
  paint();

  // Live-ish: while the environment or its newest run is in progress, and when the tab regains focus.
  let timer = null;
  let refreshing = false; // one refresh at a time (the timer and a focus may coincide)
  const busy = () => BUSY.has(state.environment.status) || (state.runs[0] && !RUN_ENDED.has(state.runs[0].status));
  const refresh = async () => {
    if (refreshing) return;
    refreshing = true;
    clearTimeout(timer);
    try {
      const [environment, newest, schedules, actions] = await Promise.all([
        get(base), get(runsPath), orError(get(`${base}/schedules`)), orError(get(`${base}/actions`)),
      ]);
      const fresh = new Map(newest.runs.map((run) => [run.run_id, run]));
      const older = state.runs.filter((run) => !fresh.has(run.run_id));
      Object.assign(state, { environment, schedules, actions, runs: [...newest.runs, ...older] });
      paint();
    } catch (error) {
      fail("Could not refresh", error);
    } finally {
      refreshing = false;
    }
    if (!signal.aborted && busy()) timer = setTimeout(refresh, REFRESH_MS);
  };
  const onFocus = () => refresh();
  window.addEventListener("focus", onFocus);
  if (busy()) timer = setTimeout(refresh, REFRESH_MS);

  const el = h("article.env-detail", { "aria-labelledby": "env-name" },
    h("nav.breadcrumb", { "aria-label": "Breadcrumb" }, h("a", { href: "#/environments" }, "All environments")),
    h("h1", { id: "env-name" }, name),
    summary, controls, alert,
    Object.values(sections), dialog);
  return {
    el,
    dispose: () => {
      aborter.abort();
      clearTimeout(timer);
      window.removeEventListener("focus", onFocus);
      if (dialog.open) dialog.close();
    },
  };
}

function destroyDialog(name, confirm) {
  const dialog = h("dialog.confirm", { "aria-labelledby": "destroy-title", "aria-describedby": "destroy-text" });
  const yes = h("button.danger", {
    type: "button",
    on: { click: async () => { dialog.close(); await confirm(yes); } },
  }, `Yes, destroy ${name}`);
  return replace(dialog,
    h("h2", { id: "destroy-title" }, `Destroy ${name}?`),
    h("p", { id: "destroy-text" }, "This starts a destroy run: every resource of the environment is torn down."),
    h("div.actions", {}, yes, h("button", { type: "button", autofocus: true, on: { click: () => dialog.close() } }, "Cancel")));
}

// `running`: the newest run while it is in progress (a day-2 action or drift check leaves the
// status as it is); the last run is shown apart only when it is another one.
function summaryItems(environment, running) {
  const { status, template, created_at: created, updated_at: updated } = environment;
  const run = environment.last_run?.run_id === running?.run_id ? null : environment.last_run;
  const item = (term, ...value) => [h("dt", {}, term), h("dd", {}, ...value)];
  return [
    item("Status", badge(status)),
    running ? item("In progress", badge(running.status), " ", runLink(running), " ", running.purpose || running.action) : null,
    item("Template", `${template.name}@${template.version}`),
    run ? item("Last run", badge(run.status), " ", runLink(run), " ", run.purpose || run.action, " ", time(run.requested_at)) : null,
    environment.agents?.length ? item("Agents", environment.agents.join(", ")) : null,
    created ? item("Created", time(created)) : null,
    updated ? item("Updated", time(updated)) : null,
  ];
}

function variablesSection(environment) {
  const sensitive = new Set(environment.sensitive || []);
  const names = Object.keys(environment.variables || {}).sort();
  return [
    h("h2", { id: "env-variables" }, "Variables"),
    names.length
      ? table(["Name", "Value"], names.map((name) => [
        h("code", {}, name),
        sensitive.has(name) ? masked() : h("code", {}, environment.variables[name]),
      ]))
      : h("p.muted", {}, "No variables."),
  ];
}

function outputsSection(environment) {
  const rows = [];
  for (const [resource, named] of Object.entries(environment.outputs || {})) {
    for (const [output, entry] of Object.entries(named)) {
      rows.push([resource, h("code", {}, output), outputValue(entry)]);
    }
  }
  return [
    h("h2", { id: "env-outputs" }, "Outputs"),
    rows.length
      ? table(["Resource", "Output", "Value"], rows)
      : h("p.muted", {}, "No outputs yet: a successful deploy records them."),
  ];
}

// A sensitive output is masked by the API already; it is shown as the mask whatever came.
function outputValue(entry) {
  if (entry === null || typeof entry !== "object" || !("value" in entry)) return h("code", {}, JSON.stringify(entry));
  if (entry.sensitive === true) return masked();
  const value = entry.value;
  return h("code", {}, typeof value === "string" ? value : JSON.stringify(value));
}

function masked() {
  return h("span.masked", {}, h("code", {}, MASK), " ", h("span.muted", {}, "(sensitive)"));
}

function linksSection(environment) {
  const list = (links) => h("ul", {}, links.map(({ environment: other, resource }) => h("li", {},
    h("a", { href: `#/environments/${encodeURIComponent(other)}` }, other), ` through resource ${resource}`)));
  return [
    h("h2", { id: "env-links" }, "Dependencies"),
    environment.dependsOn ? [h("h3", {}, "Reads the outputs of"), list(environment.dependsOn)] : null,
    environment.dependents ? [h("h3", {}, "Read by"), list(environment.dependents)] : null,
  ];
}

function driftSection(drift) {
  if (!drift) return [h("h2", { id: "env-drift" }, "Drift")];
  return [
    h("h2", { id: "env-drift" }, "Drift"),
    h("p", {}, badge(drift.status), " checked ", time(drift.checkedAt), " by run ",
      h("a", { href: `#/runs/${encodeURIComponent(drift.runId)}` }, h("code", {}, drift.runId))),
    drift.resources?.length
      ? table(["Resource", "Status", "Summary", "Impacted"], drift.resources.map((r) => [
        r.name, badge(r.status), r.summary || "", (r.impacted || []).join(", "),
      ]))
      : null,
  ];
}

function schedulesSection(answer, extend) {
  const heading = h("h2", { id: "env-schedules" }, "Schedules");
  if (answer.error) return [heading, h("p.error", {}, `Could not read the schedules: ${answer.error.message}`)];
  const notes = [
    answer.synced ? null : h("p.muted", {}, "The schedule loop has not read this version of the environment yet."),
    ...(answer.problems || []).map((problem) => h("p.error", {}, problem.message)),
  ];
  if (!answer.schedules.length) return [heading, ...notes, h("p.muted", {}, "No schedules.")];
  const columns = ["Schedule", "Runs", "Cadence", "Next", "Opt-outs", extend ? "Extend" : null].filter(Boolean);
  return [heading, ...notes, table(columns, answer.schedules.map((schedule) => [
    schedule.name,
    schedule.type,
    schedule.kind === "ttl" ? `time to live ${schedule.time_to_live}` : `${schedule.cron} (${schedule.timezone || "UTC"})`,
    nextFiring(schedule),
    optOuts(schedule),
    extend ? (schedule.allow_opt_out ? extendForm(schedule, extend) : h("span.muted", {}, "not allowed")) : null,
  ].filter((cell) => cell !== null)))];
}

function nextFiring(schedule) {
  if (schedule.kind === "ttl") {
    if (!schedule.expires_at) return h("span.muted", {}, "starts at the next successful deploy");
    const seconds = Math.round((new Date(schedule.expires_at).getTime() - Date.now()) / 1000);
    return h("span", {}, "expires ", time(schedule.expires_at, seconds > 0 ? `in ${span(seconds)}` : "now"));
  }
  return h("span", {},
    schedule.next_due_at ? time(schedule.next_due_at, when(schedule.next_due_at)) : "",
    schedule.opted_out_until ? [" (opted out until ", time(schedule.opted_out_until, when(schedule.opted_out_until)), ")"] : null);
}

function optOuts(schedule) {
  if (!schedule.allow_opt_out) return h("span.muted", {}, "not allowed");
  const allowed = schedule.max_allowed_times ? `${schedule.max_allowed_times}` : "unlimited";
  const longest = schedule.max_allowed_duration ? `, at most ${schedule.max_allowed_duration} each` : "";
  return `${schedule.optouts || 0} used of ${allowed}${longest}`;
}

function extendForm(schedule, extend) {
  const id = `extend-${schedule.name}`;
  const form = h("form.extend", { on: { submit: (event) => { event.preventDefault(); extend(form, schedule); } } },
    h("label", { for: id }, `Extend ${schedule.name} by`),
    h("input", { id, name: "duration", required: true, size: 6, placeholder: "2h", autocomplete: "off" }),
    h("button", { type: "submit" }, "Extend"));
  return form;
}

function actionsSection(answer, runAction) {
  const heading = h("h2", { id: "env-actions" }, "Day-2 actions");
  if (answer.error) return [heading, h("p.error", {}, `Could not read the actions: ${answer.error.message}`)];
  if (!answer.actions.length) return [heading, h("p.muted", {}, "The template declares no day-2 actions.")];
  const columns = ["Action", "Description", "Last run", runAction ? "Run" : null].filter(Boolean);
  return [heading, table(columns, answer.actions.map((action) => [
    h("code", {}, action.name),
    [action.description || "", action.resource ? h("span.muted", {}, ` (resource ${action.resource})`) : null],
    action.last_run ? [badge(action.last_run.status), " ", runLink(action.last_run), " ", time(action.last_run.requested_at)] : h("span.muted", {}, "never"),
    runAction
      ? h("button", { type: "button", on: { click: (event) => runAction(event.currentTarget, action.name) } }, `Run ${action.name}`)
      : null,
  ].filter((cell) => cell !== null)))];
}

function runsSection(runs, moreRuns, more) {
  const heading = h("h2", { id: "env-runs" }, "Run history");
  if (!runs.length) return [heading, h("p.muted", {}, "No runs yet.")];
  return [
    heading,
    table(["Run", "What", "Status", "Requested by", "Requested", "Took"], runs.map((run) => [
      runLink(run),
      run.purpose || run.action,
      badge(run.status),
      run.requested_by || "",
      time(run.requested_at),
      run.started_at ? duration(run.started_at, run.finished_at) : "",
    ])),
    moreRuns ? h("button.more", { type: "button", on: { click: (event) => more(event.currentTarget) } }, "More runs") : null,
  ];
}

function runLink(run) {
  return h("a", { href: `#/runs/${encodeURIComponent(run.run_id)}` }, h("code", {}, run.run_id));
}

function time(iso, text = ago(iso)) {
  return iso ? h("time", { datetime: iso, title: when(iso) }, text) : "";
}

function table(columns, rows) {
  return h("table", {},
    h("thead", {}, h("tr", {}, columns.map((column) => h("th", { scope: "col" }, column)))),
    h("tbody", {}, rows.map((cells) => h("tr", {}, cells.map((cell) => h("td", {}, cell))))));
}
