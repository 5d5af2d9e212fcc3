// The timeflow of a dSource as an SVG timeline: each timeflow a lane,
// point-in-time ranges as bands on it, snapshots as points (click one to
// provision from it), and the VDBs provisioned from it branching off at
// their snapshot.
"use strict";

const SVG = "http://www.w3.org/2000/svg";

function el(name, attrs, text) {
  const e = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

function seconds(t) {
  if (typeof t === "number") return t;
  const ms = Date.parse(t);
  return Number.isNaN(ms) ? null : ms / 1000;
}

function clock(s) {
  return new Date(s * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
}

// opts: { name, snapshots: [{id, created_at, timeflow}], flows: {timeflows, ranges},
//         vdbs: [{name, origin_snapshot}], chosen, onSnapshot(snap), onVdb(name) }
function drawTimeline(opts) {
  const snaps = opts.snapshots || [];
  const flows = (opts.flows && opts.flows.timeflows) || [];
  const ranges = ((opts.flows && opts.flows.ranges) || []).map(r => ({
    timeflow: r.timeflow, from: seconds(r.from_time), to: seconds(r.to_time || r.from_time),
  })).filter(r => r.from !== null);
  const lanes = [...new Set([...flows.map(f => f.id), ...snaps.map(s => s.timeflow)])];
  if (lanes.length === 0) lanes.push(0);
  const vdbs = (opts.vdbs || []).filter(v => snaps.some(s => s.id === v.origin_snapshot));
  const times = [...snaps.map(s => s.created_at), ...flows.map(f => f.created_at),
    ...ranges.flatMap(r => [r.from, r.to])].filter(t => typeof t === "number");
  let t0 = times.length ? Math.min(...times) : Date.now() / 1000;
  let t1 = times.length ? Math.max(...times) : t0;
  if (t1 - t0 < 60) { const mid = (t0 + t1) / 2; t0 = mid - 30; t1 = mid + 30; }
  const pad = (t1 - t0) * 0.08; t0 -= pad; t1 += pad;
  const W = 1000, left = 70, right = 200;
  const top = 24, vdbRow = 30, laneGap = 34;
  const lanesTop = top + vdbs.length * vdbRow + 24;
  const H = lanesTop + lanes.length * laneGap + 30;
  const x = t => left + ((t - t0) / (t1 - t0)) * (W - left - right);
  const laneY = id => lanesTop + Math.max(0, lanes.indexOf(id)) * laneGap;
  const svg = el("svg", { class: "timeline", viewBox: `0 0 ${W} ${H}`, role: "img",
    "aria-label": `timeflow of ${opts.name}`, "data-dsource": opts.name });
  // Axis with its two ends.
  const axisY = H - 22;
  svg.append(el("line", { class: "axis", x1: left, x2: W - right, y1: axisY, y2: axisY }));
  svg.append(el("text", { x: left, y: H - 6, "text-anchor": "start" }, clock(t0)));
  svg.append(el("text", { x: W - right, y: H - 6, "text-anchor": "end" }, clock(t1)));
  for (const id of lanes) {
    const y = laneY(id);
    const own = snaps.filter(s => s.timeflow === id).map(s => s.created_at);
    const flow = flows.find(f => f.id === id);
    const start = flow ? flow.created_at : (own.length ? Math.min(...own) : t0);
    const end = Math.max(start, ...own, ...ranges.filter(r => r.timeflow === id).map(r => r.to));
    svg.append(el("text", { x: 8, y: y + 4 }, `timeflow ${id}`));
    for (const r of ranges.filter(r => r.timeflow === id)) {
      const band = el("rect", { class: "band", x: x(r.from), y: y - 9,
        width: Math.max(4, x(r.to) - x(r.from)), height: 18, rx: 4 });
      band.append(el("title", {}, `point in time: ${clock(r.from)} – ${clock(r.to)}`));
      svg.append(band);
    }
    svg.append(el("line", { class: "flow", x1: x(start), x2: Math.max(x(end), x(start) + 2), y1: y, y2: y }));
  }
  vdbs.forEach((v, k) => {
    const s = snaps.find(s => s.id === v.origin_snapshot);
    const sx = x(s.created_at), sy = laneY(s.timeflow);
    const vy = top + k * vdbRow + 8, vx = sx + 46;
    svg.append(el("path", { class: "branch", d: `M ${sx} ${sy} C ${sx} ${vy}, ${sx} ${vy}, ${vx} ${vy} L ${vx + 60} ${vy}` }));
    const node = el("circle", { class: "vdb-node", cx: vx + 60, cy: vy, r: 6, "data-vdb": v.name });
    const label = el("text", { class: "vdb-label", x: vx + 72, y: vy + 4, "data-vdb": v.name }, v.name);
    for (const e of [node, label]) e.addEventListener("click", () => opts.onVdb && opts.onVdb(v.name));
    svg.append(node, label);
  });
  for (const s of snaps) {
    const c = el("circle", { class: "snapshot" + (opts.chosen === s.id ? " chosen" : ""),
      cx: x(s.created_at), cy: laneY(s.timeflow), r: 7, "data-snapshot": s.id });
    c.append(el("title", {}, `snapshot ${s.id} at ${clock(s.created_at)}: click to provision a VDB from it`));
    c.addEventListener("click", () => opts.onSnapshot && opts.onSnapshot(s));
    svg.append(c);
  }
  return svg;
}

window.drawTimeline = drawTimeline;
