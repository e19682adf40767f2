// One activity's log: streamed live while the run goes on (GET /v1/runs/ID/logs?activity= as
// server-sent events, ending with an `end` event), read as text once it has ended. ANSI colours
// become classes (ansi.js); a search highlights or filters lines; follow keeps the newest line in
// view; download saves the whole log. Only the last `maxLines` lines stay in the page.

import { parseLine, plain } from "./ansi.js";
import { h, replace } from "./dom.js";

export const MAX_LINES = 5000;
let viewers = 0; // unique ids for the controls' labels

export function logViewer({ api, runId, activityId, live, maxLines = MAX_LINES }) {
  const id = `log-${(viewers += 1)}`;
  const path = `/v1/runs/${encodeURIComponent(runId)}/logs?activity=${encodeURIComponent(activityId)}`;
  const controller = new AbortController();
  const state = {
    lines: [], // {n, text, stream, el}: the ones in the page, oldest first
    pending: [], // lines not drawn yet (drawn once a frame)
    total: 0, // lines received
    query: "",
    only: false,
    follow: true,
    partial: new Map(), // attempt -> the end of its last chunk, a line not finished yet
    colours: new Map(), // attempt -> ANSI state at the end of its last line
    attempt: 0,
    timer: 0,
  };

  const search = h("input", { id: `${id}-search`, type: "search", placeholder: "text in the log",
    on: { input: () => { state.query = search.value; debounce(redraw); } } });
  const only = h("input", { id: `${id}-only`, type: "checkbox",
    on: { change: () => { state.only = only.checked; redraw(); } } });
  const follow = h("input", { id: `${id}-follow`, type: "checkbox", checked: true,
    on: { change: () => { state.follow = follow.checked; if (state.follow) toBottom(); } } });
  const count = h("span.log-count", { role: "status" });
  const note = h("p.log-note", { hidden: true });
  const status = h("p.log-status", { role: "status" }, live ? "Streaming the log…" : "Loading the log…");
  const body = h("div.log-body", { tabindex: 0, role: "region", "aria-label": `Log lines of ${activityId}`,
    on: { scroll: () => {
      const atBottom = body.scrollHeight - body.scrollTop - body.clientHeight < 24;
      if (!atBottom && state.follow && body.scrollHeight > body.clientHeight) setFollow(false);
      else if (atBottom && !state.follow) setFollow(true);
    } } });
  const download = h("button", { type: "button", on: { click: () => saveLog(api, path, runId, activityId, status) } },
    "Download");

  const el = h("section.logs", { "aria-label": `Log of ${activityId}` },
    h("h3", {}, "Log"),
    h("div.log-tools", {},
      h("label", { for: `${id}-search` }, "Search"), search,
      h("label.check", { for: `${id}-only` }, only, " Only matching lines"),
      h("label.check", { for: `${id}-follow` }, follow, " Follow"),
      download, count),
    note, body, status);

  function setFollow(on) {
    state.follow = on;
    follow.checked = on;
  }

  function toBottom() {
    body.scrollTop = body.scrollHeight;
  }

  function matches(text) {
    return !state.query || text.toLowerCase().includes(state.query.toLowerCase());
  }

  // The line's element: its number, then its ANSI segments, the search's matches marked.
  function lineElement(line) {
    const row = h("div.log-line", { class: line.stream === "stdout" ? "" : `log-${line.stream}` },
      h("span.ln", { "aria-hidden": "true" }, String(line.n)));
    for (const segment of line.segments) {
      const span = h("span", { class: segment.classes.join(" ") || undefined });
      append(span, segment.text, state.query);
      row.append(span);
    }
    const hit = Boolean(state.query) && matches(line.text);
    row.classList.toggle("match", hit);
    row.hidden = state.only && Boolean(state.query) && !hit;
    return row;
  }

  function redraw() {
    for (const line of state.lines) {
      const fresh = lineElement(line);
      line.el.replaceWith(fresh);
      line.el = fresh;
    }
    counts();
    if (state.follow) toBottom();
  }

  function counts() {
    const matching = state.query ? state.lines.filter((l) => matches(l.text)).length : 0;
    count.textContent = `${state.total.toLocaleString()} lines` +
      (state.query ? ` · ${matching.toLocaleString()} matching` : "");
    const dropped = state.total - state.lines.length;
    note.hidden = dropped <= 0;
    note.textContent = dropped > 0
      ? `Showing the last ${state.lines.length.toLocaleString()} of ${state.total.toLocaleString()} lines; ` +
        "download the log for all of it."
      : "";
  }

  function addLine(text, stream, attempt) {
    if (attempt !== state.attempt) {
      if (state.attempt) queue(`— attempt ${attempt} —`, "system", attempt);
      state.attempt = attempt;
    }
    queue(text, stream, attempt);
  }

  function queue(text, stream, attempt) {
    const parsed = parseLine(text, state.colours.get(attempt));
    state.colours.set(attempt, parsed.state);
    state.total += 1;
    state.pending.push({ n: state.total, text: plain(text), stream, segments: parsed.segments, el: null });
    if (state.pending.length > maxLines) state.pending.splice(0, state.pending.length - maxLines);
    if (!state.timer) state.timer = setTimeout(flush, 30);
  }

  // Draw what came since the last frame at once; drop the oldest lines beyond the cap.
  function flush() {
    state.timer = 0;
    const fragment = document.createDocumentFragment();
    for (const line of state.pending) {
      line.el = lineElement(line);
      fragment.append(line.el);
      state.lines.push(line);
    }
    state.pending = [];
    body.append(fragment);
    const extra = state.lines.length - maxLines;
    if (extra > 0) for (const line of state.lines.splice(0, extra)) line.el.remove();
    counts();
    if (state.follow) toBottom();
  }

  function chunk(attempt, stream, data) {
    const text = (state.partial.get(attempt) || "") + data;
    const parts = text.split("\n");
    state.partial.set(attempt, parts.pop());
    for (const line of parts) addLine(line, stream, attempt);
  }

  function finish(message) {
    for (const [attempt, rest] of state.partial) if (rest) addLine(rest, "stdout", attempt);
    state.partial.clear();
    flush();
    status.textContent = message;
  }

  async function load() {
    try {
      if (!live) {
        const text = await api.text(path, { signal: controller.signal });
        chunk(1, "stdout", text);
        finish(state.total ? "End of the log." : "This activity wrote nothing.");
        return;
      }
      let ended = "";
      await api.stream(path, (message) => {
        if (message.event === "log") {
          const data = JSON.parse(message.data);
          chunk(data.attempt || 1, data.stream || "stdout", data.data || "");
        } else if (message.event === "end") {
          ended = JSON.parse(message.data).status || "ended";
        }
      }, { signal: controller.signal });
      if (!controller.signal.aborted) {
        finish(ended ? `End of the log: the run ${ended}.` : "End of the log.");
      }
    } catch (error) {
      if (!controller.signal.aborted) status.textContent = `Could not read the log: ${error.message}`;
    }
  }

  load();
  return {
    el,
    dispose: () => { controller.abort(); clearTimeout(state.timer); },
    lineCount: () => state.total,
  };
}

// Text into `el`, with every case-insensitive occurrence of `query` in a <mark>.
function append(el, text, query) {
  if (!query) { el.append(text); return; }
  const lower = text.toLowerCase();
  const needle = query.toLowerCase();
  let at = 0;
  for (let found = lower.indexOf(needle); found >= 0; found = lower.indexOf(needle, at)) {
    if (found > at) el.append(text.slice(at, found));
    el.append(h("mark", {}, text.slice(found, found + needle.length)));
    at = found + needle.length;
  }
  if (at < text.length) el.append(text.slice(at));
}

function debounce(fn) {
  clearTimeout(debounce.timer);
  debounce.timer = setTimeout(fn, 150);
}

async function saveLog(api, path, runId, activityId, status) {
  try {
    const text = await api.text(path);
    const url = URL.createObjectURL(new Blob([text], { type: "text/plain" }));
    const link = h("a", { href: url, download: `${runId}-${activityId.replaceAll("/", "_")}.log`, hidden: true });
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 1000);
  } catch (error) {
    replace(status, `Could not download the log: ${error.message}`);
  }
}
