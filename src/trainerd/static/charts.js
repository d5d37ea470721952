// trainerd dashboard: charts, drawn by uPlot (vendored under /static/vendor/, MIT; loaded as
// a classic script before the modules, so it is globalThis.uPlot here).
//
// drawChart(id, spec) draws into the element with that id and keeps one uPlot per element,
// giving it new data on each poll. spec:
//   xs        x values (steps, or unix seconds)
//   lines     [{ys, width, alpha, dots}]: one series each, same colour, the last is "main";
//             dots: booleans, the points to emphasise (a job's final eval)
//   color     a CSS custom property (--accent...), so the page's theme decides
//   fmt/xfmt  y / x tick and readout formatters; xlabel(i): the readout's x text
//   markers   x values of dashed vertical lines (a resumed attempt, a changed probe set)
//   zero      the y axis starts at 0
//   empty     what to say while there is no point
// The element's data-points attribute is the number of points shown (the browser test reads it).

import { $, fmtNum, h } from "./format.js";

const charts = new Map();  // element id -> {u, key, spec, tip, empty}

const css = (name) => getComputedStyle(document.documentElement).getPropertyValue(name).trim();
const finite = (y) => y !== null && y !== undefined && isFinite(y);

// Keep one point per step: after a crash the resumed attempt repeats a few steps, and
// the newer attempt is what the model actually kept. Returns row indices sorted by step.
export function dedupe(series) {
  const by = new Map();
  for (let i = 0; i < series.step.length; i++) by.set(series.step[i], i);  // later attempts overwrite
  return [...by.values()].sort((a, b) => series.step[a] - series.step[b]);
}

// TensorBoard-style smoothing: debiased exponential moving average.
export function smooth(ys, weight) {
  let last = 0, num = 0;
  return ys.map((y) => {
    if (!finite(y)) return null;
    num++;
    last = last * weight + (1 - weight) * y;
    return last / (1 - Math.pow(weight, num));
  });
}

function yRange(lo, hi, zero) {
  if (!finite(lo) || !finite(hi)) return [0, 1];
  if (zero) lo = Math.min(0, lo);
  const pad = (hi - lo) * 0.08 || Math.abs(hi) * 0.1 || 1;
  return [zero ? lo : lo - pad, hi + pad];
}

function drawMarkers(u, markers) {
  if (!markers || !markers.length) return;
  const ctx = u.ctx, { top, height } = u.bbox;
  ctx.save();
  ctx.setLineDash([3 * devicePixelRatio, 4 * devicePixelRatio]);
  ctx.strokeStyle = css("--muted");
  ctx.lineWidth = devicePixelRatio;
  for (const m of markers) {
    const x = Math.round(u.valToPos(m, "x", true)) + 0.5;
    ctx.beginPath(); ctx.moveTo(x, top); ctx.lineTo(x, top + height); ctx.stroke();
  }
  ctx.restore();
}

// The readout: the hovered point, else the newest one (what a glance wants).
function readout(c) {
  const { u, spec, tip } = c;
  const n = spec.xs.length;
  let idx = u.cursor.idx;
  if (idx === null || idx === undefined) idx = n - 1;
  const main = spec.lines[spec.lines.length - 1].ys;
  if (idx < 0 || !finite(main[idx])) { tip.textContent = ""; return; }
  const raw = spec.lines.length > 1 ? spec.lines[0].ys[idx] : null;
  tip.textContent = `${spec.xlabel ? spec.xlabel(idx) : `step ${fmtNum(spec.xs[idx])}`} · ${spec.fmt(main[idx])}` +
    (finite(raw) ? ` (raw ${spec.fmt(raw)})` : "");
}

function options(id, spec, width, height) {
  const color = css(spec.color), muted = css("--muted"), grid = css("--grid");
  const font = "11px system-ui, sans-serif";
  const axis = { stroke: muted, font, grid: { stroke: grid, width: 1 }, ticks: { stroke: grid, width: 1, size: 4 } };
  const now = () => charts.get(id).spec;  // hooks read the spec of the latest draw
  return {
    width, height,
    legend: { show: false },
    cursor: { y: false, drag: { x: false, y: false }, points: { size: 7 } },
    scales: {
      x: { time: false, range: (u, lo, hi) => (lo === hi ? [lo - 1, hi + 1] : [lo, hi]) },
      y: { range: (u, lo, hi) => yRange(lo, hi, now().zero) },
    },
    axes: [
      { ...axis, space: 90, values: (u, splits) => splits.map((v) => (now().xfmt || fmtNum)(v)) },
      { ...axis, size: (u, values) => 14 + 7 * Math.max(3, ...(values || []).map((v) => String(v).length)),
        values: (u, splits) => splits.map((v) => now().fmt(v)) },
    ],
    series: [{}, ...spec.lines.map((l, k) => ({
      stroke: color, width: l.width ?? 1.5, alpha: l.alpha ?? 1, spanGaps: false,
      points: {
        size: 6, fill: color, stroke: color,
        // A lone point has no line to show it; dots mark the points asked for.
        show: (u) => u.data[0].length === 1 || !!now().lines[k]?.dots,
        filter: (u) => {
          const dots = now().lines[k]?.dots;
          if (!dots || u.data[0].length === 1) return null;
          return dots.flatMap((on, i) => (on && finite(u.data[k + 1][i]) ? [i] : []));
        },
      },
    }))],
    hooks: {
      draw: [(u) => drawMarkers(u, now().markers)],
      setCursor: [() => readout(charts.get(id))],
    },
  };
}

export function drawChart(id, spec) {
  const box = $(id);
  const n = spec.xs.length;
  box.dataset.points = String(n);
  const key = `${spec.lines.length}|${spec.color}`;
  let c = charts.get(id);
  if (!c || c.key !== key) {
    if (c) c.u.destroy();
    box.replaceChildren();
    const tip = h("div", { class: "chart-tip" }), empty = h("div", { class: "chart-empty" });
    c = { key, spec, tip, empty, u: null };
    charts.set(id, c);
    c.u = new globalThis.uPlot(options(id, spec, Math.max(box.clientWidth, 50), Math.max(box.clientHeight, 50)),
      [[], ...spec.lines.map(() => [])], box);
    box.append(tip, empty);
    new ResizeObserver(() => {
      if (box.clientWidth && box.clientHeight) c.u.setSize({ width: box.clientWidth, height: box.clientHeight });
    }).observe(box);
  }
  c.spec = spec;
  c.empty.textContent = n ? "" : (spec.empty ?? "no data yet");
  c.empty.hidden = !!n || !c.empty.textContent;
  const clean = (ys) => ys.map((y) => (finite(y) ? y : null));
  c.u.setData([spec.xs, ...spec.lines.map((l) => clean(l.ys))]);
  readout(c);
}
