// ANSI colour codes in log lines, turned into text segments with CSS classes (never HTML):
// SGR 30-37 and 90-97 (foreground), 1 (bold), 22 (not bold), 39 (default colour), 0 (reset).
// Every other escape sequence (cursor moves, erase line, other SGR codes) is dropped.

const NAMES = ["black", "red", "green", "yellow", "blue", "magenta", "cyan", "white"];
// CSI sequences (ESC [ params final) and two-byte escapes; OSC (ESC ] ... BEL/ST) too.
const ESCAPE = /\x1b\[([0-9;?]*)([@-~])|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-Z\\-_]/g;

export function initialState() {
  return { fg: "", bold: false };
}

// The classes a segment written in `state` carries.
export function classesOf(state) {
  const classes = [];
  if (state.fg) classes.push(`ansi-${state.fg}`);
  if (state.bold) classes.push("ansi-bold");
  return classes;
}

// `state` after the SGR parameters `params` ("1;31"): a new object, the old one unchanged.
export function applySgr(state, params) {
  const next = { ...state };
  const codes = params === "" ? [0] : params.split(";").map((p) => (p === "" ? 0 : Number(p)));
  for (const code of codes) {
    if (code === 0) { next.fg = ""; next.bold = false; }
    else if (code === 1) next.bold = true;
    else if (code === 22) next.bold = false;
    else if (code === 39) next.fg = "";
    else if (code >= 30 && code <= 37) next.fg = NAMES[code - 30];
    else if (code >= 90 && code <= 97) next.fg = `bright-${NAMES[code - 90]}`;
  }
  return next;
}

// One line of text into [{text, classes}] and the state it leaves (colours run on to the next
// line, as in a terminal). A carriage return keeps what follows the last one (a progress bar's
// final state), as a terminal shows it.
export function parseLine(line, state = initialState()) {
  const cr = line.lastIndexOf("\r", line.length - 2);
  let text = cr >= 0 ? line.slice(cr + 1) : line;
  text = text.replace(/\r$/, "");
  const segments = [];
  let at = 0;
  let current = state;
  for (const match of text.matchAll(ESCAPE)) {
    if (match.index > at) segments.push({ text: text.slice(at, match.index), classes: classesOf(current) });
    if (match[2] === "m") current = applySgr(current, match[1]);
    at = match.index + match[0].length;
  }
  if (at < text.length) segments.push({ text: text.slice(at), classes: classesOf(current) });
  return { segments: merge(segments), state: current };
}

// The line without any escape sequence (for search and copy).
export function plain(line) {
  return parseLine(line).segments.map((s) => s.text).join("");
}

function merge(segments) {
  const out = [];
  for (const segment of segments) {
    const last = out[out.length - 1];
    if (last && last.classes.join(" ") === segment.classes.join(" ")) last.text += segment.text;
    else out.push(segment);
  }
  return out;
}
