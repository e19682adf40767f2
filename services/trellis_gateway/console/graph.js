// The run graph's layout, as pure functions (no DOM): activities in, boxes and edge paths out.
// Left to right: each resource's activities are one unit (an expanded resource is a frame laid out
// inside, a collapsed one a single node); an environment hook is a unit of its own. Units are put
// in layers by the longest path over depends_on and ordered in each layer by a few barycenter
// sweeps, a cheap way to cut edge crossings.

export const NODE_W = 176;
export const NODE_H = 44;
export const LAYER_GAP = 56; // between layers of units
export const INNER_GAP = 28; // between columns inside a resource's frame
export const ROW_GAP = 12;
export const PAD = 10; // inside a frame
export const HEADER = 28; // a frame's title bar
export const MARGIN = 16;

const ACTIVE = new Set(["running", "dispatched"]);
const BAD = new Set(["failed", "timed_out", "lost"]);
const FINISHED = new Set(["succeeded", "failed", "timed_out", "lost", "cancelled", "skipped"]);

// The unit an activity belongs to: its resource's, or its own for an environment hook.
export function unitOf(activity) {
  return activity.resource ? `res:${activity.resource}` : `act:${activity.id}`;
}

// The activity's name within its resource: `plan/after/policy-check` for
// `resource/network/plan/after/policy-check`; `on-init/gate` for `environment/on-init/gate`.
export function shortLabel(activity) {
  const prefix = activity.resource ? `resource/${activity.resource}/` : "environment/";
  return activity.id.startsWith(prefix) ? activity.id.slice(prefix.length) : activity.id;
}

// One status for a group of activities, the one that matters most to a reader.
export function aggregateStatus(statuses) {
  const list = [...statuses];
  if (!list.length) return "pending";
  if (list.some((s) => BAD.has(s))) return "failed";
  if (list.some((s) => ACTIVE.has(s))) return "running";
  if (list.includes("waiting")) return "waiting";
  if (list.includes("pending")) return list.every((s) => s === "pending") ? "pending" : "running";
  if (list.includes("cancelled")) return "cancelled";
  if (list.includes("succeeded")) return "succeeded";
  return "skipped";
}

// How many of the statuses are finished: "3/6 done" on a collapsed resource.
export function finishedCount(statuses) {
  let done = 0;
  for (const status of statuses) if (FINISHED.has(status)) done += 1;
  return done;
}

// Longest-path layers: a node with no predecessor is in layer 0, every other one a layer after
// its latest predecessor. `preds`: Map node -> [node]. Nodes on a cycle (which a compiled run
// never has) go after the rest rather than being lost.
export function longestPathLayers(nodes, preds) {
  const succs = new Map(nodes.map((n) => [n, []]));
  const waiting = new Map();
  for (const node of nodes) {
    const before = (preds.get(node) || []).filter((p) => succs.has(p));
    waiting.set(node, before.length);
    for (const p of before) succs.get(p).push(node);
  }
  const layer = new Map();
  const queue = nodes.filter((n) => waiting.get(n) === 0);
  for (const n of queue) layer.set(n, 0);
  for (let i = 0; i < queue.length; i += 1) {
    const node = queue[i];
    for (const next of succs.get(node)) {
      layer.set(next, Math.max(layer.get(next) ?? 0, layer.get(node) + 1));
      waiting.set(next, waiting.get(next) - 1);
      if (waiting.get(next) === 0) queue.push(next);
    }
  }
  let last = Math.max(-1, ...layer.values());
  for (const node of nodes) if (!layer.has(node)) layer.set(node, (last += 1));
  return layer;
}

// Nodes per layer ([[node]]), in the given order, then reordered by barycenter sweeps: each node
// moves towards the mean position of its neighbours in the layers before (forward) or after
// (backward). A node without such neighbours keeps its place. Sorting is stable.
export function orderLayers(nodes, layerOf, preds, succs, sweeps = 2) {
  const layers = [];
  for (const node of nodes) (layers[layerOf.get(node)] ??= []).push(node);
  for (let i = 0; i < layers.length; i += 1) layers[i] ??= [];
  const position = new Map();
  const place = (layer) => layer.forEach((n, i) => position.set(n, (i + 0.5) / layer.length));
  layers.forEach(place);
  const reorder = (layer, neighbours) => {
    const key = new Map(layer.map((n) => {
      const near = (neighbours.get(n) || []).filter((m) => position.has(m));
      const mean = near.length ? near.reduce((sum, m) => sum + position.get(m), 0) / near.length : position.get(n);
      return [n, mean];
    }));
    layer.sort((a, b) => key.get(a) - key.get(b));
    place(layer);
  };
  for (let sweep = 0; sweep < sweeps; sweep += 1) {
    for (let i = 1; i < layers.length; i += 1) reorder(layers[i], preds);
    for (let i = layers.length - 2; i >= 0; i -= 1) reorder(layers[i], succs);
  }
  return layers;
}

// How many pairs of edges between two adjacent layers cross (for tests and the bench).
export function crossings(upper, lower, edges) {
  const up = new Map(upper.map((n, i) => [n, i]));
  const low = new Map(lower.map((n, i) => [n, i]));
  const pairs = edges.filter(([a, b]) => up.has(a) && low.has(b)).map(([a, b]) => [up.get(a), low.get(b)]);
  let count = 0;
  for (let i = 0; i < pairs.length; i += 1) {
    for (let j = i + 1; j < pairs.length; j += 1) {
      if ((pairs[i][0] - pairs[j][0]) * (pairs[i][1] - pairs[j][1]) < 0) count += 1;
    }
  }
  return count;
}

function adjacency(keys, edges) {
  const preds = new Map(keys.map((k) => [k, []]));
  const succs = new Map(keys.map((k) => [k, []]));
  for (const [from, to] of edges) {
    preds.get(to).push(from);
    succs.get(from).push(to);
  }
  return { preds, succs };
}

// An expanded resource's activities in local columns; its frame's size. Positions are relative.
function frame(members, byId) {
  const ids = members.map((a) => a.id);
  const inside = new Set(ids);
  const edges = [];
  for (const a of members) for (const d of a.depends_on || []) if (inside.has(d) && d !== a.id) edges.push([d, a.id]);
  const { preds, succs } = adjacency(ids, edges);
  const columns = orderLayers(ids, longestPathLayers(ids, preds), preds, succs, 1);
  const rows = Math.max(...columns.map((c) => c.length));
  const places = new Map();
  columns.forEach((column, c) => column.forEach((id, r) => places.set(id, {
    x: PAD + c * (NODE_W + INNER_GAP),
    y: HEADER + PAD + r * (NODE_H + ROW_GAP),
  })));
  return {
    places,
    edges,
    w: 2 * PAD + columns.length * NODE_W + (columns.length - 1) * INNER_GAP,
    h: HEADER + 2 * PAD + rows * NODE_H + (rows - 1) * ROW_GAP,
    byId,
  };
}

// The whole layout. `activities`: [{id, resource, depends_on, ...}] in compiled order;
// `collapsed`: resource names drawn as one node. Answers {nodes, frames, edges, width, height}:
// nodes are activity nodes ({kind: "activity", id}) and collapsed resources ({kind: "resource",
// resource, members}); frames are expanded resources; each edge has an SVG path `d`.
export function layout(activities, { collapsed = new Set() } = {}) {
  const byId = new Map(activities.map((a) => [a.id, a]));
  const members = new Map(); // unit -> [activity]
  for (const a of activities) {
    const unit = unitOf(a);
    if (!members.has(unit)) members.set(unit, []);
    members.get(unit).push(a);
  }
  const units = [...members.keys()];
  const unitEdges = new Map();
  for (const a of activities) {
    for (const d of a.depends_on || []) {
      const dep = byId.get(d);
      if (!dep) continue;
      const [from, to] = [unitOf(dep), unitOf(a)];
      if (from !== to) unitEdges.set(`${from}\n${to}`, [from, to]);
    }
  }
  const { preds, succs } = adjacency(units, unitEdges.values());
  const layers = orderLayers(units, longestPathLayers(units, preds), preds, succs);

  const box = new Map(); // unit -> {x, y, w, h, frame?}
  for (const unit of units) {
    const resource = unit.startsWith("res:") ? unit.slice(4) : "";
    const inner = resource && !collapsed.has(resource) ? frame(members.get(unit), byId) : null;
    box.set(unit, { w: inner ? inner.w : NODE_W, h: inner ? inner.h : NODE_H, frame: inner, resource });
  }
  let x = MARGIN;
  let height = 0;
  for (const layer of layers) {
    let y = MARGIN;
    let widest = 0;
    for (const unit of layer) {
      const b = box.get(unit);
      Object.assign(b, { x, y });
      y += b.h + 2 * ROW_GAP;
      widest = Math.max(widest, b.w);
    }
    height = Math.max(height, y);
    x += widest + LAYER_GAP;
  }

  const nodes = [];
  const frames = [];
  const edges = [];
  const anchor = new Map(); // activity id -> the box its edges attach to
  for (const unit of units) {
    const b = box.get(unit);
    const acts = members.get(unit);
    if (b.frame) {
      frames.push({ resource: b.resource, x: b.x, y: b.y, w: b.w, h: b.h, members: acts.map((a) => a.id) });
      for (const a of acts) {
        const p = b.frame.places.get(a.id);
        const node = { kind: "activity", id: a.id, resource: a.resource, label: shortLabel(a),
          x: b.x + p.x, y: b.y + p.y, w: NODE_W, h: NODE_H };
        nodes.push(node);
        anchor.set(a.id, node);
      }
      for (const [from, to] of b.frame.edges) edges.push(edge(anchor.get(from), anchor.get(to), from, to));
    } else if (b.resource) {
      const node = { kind: "resource", id: `resource:${b.resource}`, resource: b.resource, label: b.resource,
        members: acts.map((a) => a.id), x: b.x, y: b.y, w: NODE_W, h: NODE_H };
      nodes.push(node);
      for (const a of acts) anchor.set(a.id, node);
    } else {
      const [a] = acts;
      const node = { kind: "activity", id: a.id, resource: "", label: shortLabel(a),
        x: b.x, y: b.y, w: NODE_W, h: NODE_H };
      nodes.push(node);
      anchor.set(a.id, node);
    }
  }
  for (const [from, to] of unitEdges.values()) edges.push(edge(box.get(from), box.get(to), from, to));
  return { nodes, frames, edges, width: x - LAYER_GAP + MARGIN, height: height + MARGIN, layers };
}

// A left-to-right curve from the right middle of box `a` to the left middle of box `b`.
function edge(a, b, from, to) {
  const [x1, y1, x2, y2] = [a.x + a.w, a.y + a.h / 2, b.x, b.y + b.h / 2];
  const bend = Math.max(16, Math.abs(x2 - x1) / 2);
  return { from, to, d: `M${x1},${y1} C${x1 + bend},${y1} ${x2 - bend},${y2} ${x2},${y2}` };
}
