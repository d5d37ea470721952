// trainerd dashboard. Vanilla JS, no dependencies: it polls the JSON API and draws.
//
// - /api/status every 2 s (every 10 s while the tab is hidden): daemon, active job, queue.
// - /api/metrics/{id} every 2 s for the chart's job: the active one, else the last
//   finished one, or the one picked in the history table.
// - /api/jobs?state=done, /api/models and /api/evals (probe evals of every job) when the
//   done count changes (and every 30 s).
// User-supplied text (file names, reasons) only ever goes in through textContent.
// The queue / model-line controls and uploads are in controls.js (loaded first).
"use strict";

const POLL_MS = 2000;
const HIDDEN_POLL_MS = 10000;
const SLOW_REFRESH_MS = 30000;
const TOKEN_KEY = "trainerd.token";

const $ = (id) => document.getElementById(id);
const ui = {
  status: null,        // last /api/status
  pinned: null,        // job id picked in the history table (null = follow live)
  chartJob: null,      // job id the charts show
  series: null,        // last /api/metrics answer for chartJob
  doneSeen: -1,        // done count when history was last fetched
  names: new Map(),    // job id -> file name, for the probe-eval chart's hover
  slowAt: 0,
  timer: null,
};

// ------------------------------------------------------------------ formatting
const dash = "–";
function fmtNum(x, digits = 0) {
  if (x === null || x === undefined || !isFinite(x)) return dash;
  return Number(x).toLocaleString(undefined, { maximumFractionDigits: digits, minimumFractionDigits: digits });
}
function fmtLoss(x) { return x === null || x === undefined || !isFinite(x) ? dash : Number(x).toFixed(4); }
function fmtLR(x) {
  if (x === null || x === undefined || !isFinite(x)) return dash;
  return x === 0 ? "0" : Number(x).toExponential(2).replace("e-", "e−");
}
function fmtBytes(b) {
  if (b === null || b === undefined || !isFinite(b)) return dash;
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (b >= 1024 && i < units.length - 1) { b /= 1024; i++; }
  return `${b.toFixed(b >= 100 || i === 0 ? 0 : 1)} ${units[i]}`;
}
function fmtDur(s) {
  if (s === null || s === undefined || !isFinite(s)) return dash;
  s = Math.max(0, Math.round(s));
  const d = Math.floor(s / 86400), h = Math.floor(s % 86400 / 3600), m = Math.floor(s % 3600 / 60), sec = s % 60;
  if (d) return `${d}d ${h}h`;
  if (h) return `${h}h ${String(m).padStart(2, "0")}m`;
  if (m) return `${m}m ${String(sec).padStart(2, "0")}s`;
  return `${sec}s`;
}
function fmtAgo(t, now) {
  if (!t) return dash;
  return `${fmtDur((now || Date.now() / 1000) - t)} ago`;
}
function fmtClock(t) {
  return new Date(t * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
}
function fmtWhen(t) {
  return new Date(t * 1000).toLocaleString([], { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" });
}
function fmtPct(x) { return x === null || x === undefined || !isFinite(x) ? dash : `${(x * 100).toFixed(0)}%`; }

// Build elements without innerHTML: h("td", {class: "num"}, "text", childNode, ...)
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") el.className = v;
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}
function setText(id, text) { const el = $(id); if (el.textContent !== text) el.textContent = text; }

let toastTimer = null;
function toast(msg, bad = false) {
  const t = $("toast");
  t.textContent = msg;
  t.className = "show" + (bad ? " bad" : "");
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { t.className = ""; }, bad ? 6000 : 3500);
}

// ------------------------------------------------------------------ API
async function api(path, opts = {}) {
  const r = await fetch(path, { cache: "no-store", ...opts });
  let body = null;
  try { body = await r.json(); } catch (_) { /* not JSON */ }
  if (!r.ok) {
    const e = new Error((body && body.error) || `${r.status} ${r.statusText}`);
    e.status = r.status;
    throw e;
  }
  return body;
}

// ------------------------------------------------------------------ token and controls
function token() { return localStorage.getItem(TOKEN_KEY) || ""; }
function showTokenBar(show) {
  $("token-bar").hidden = !show;
  $("token-forget").hidden = !token();
  if (show) $("token-input").focus();
}
function renderTokenState() {
  $("btn-token").classList.toggle("has-token", !!token());
  $("btn-token").title = token() ? "API token saved in this browser" : "Enter the API token to use the buttons";
}

const ACTIONS = {
  pause: { done: "Pause requested: the worker checkpoints at the next step, then the daemon idles." },
  resume: { done: "Resume requested: training continues from the last checkpoint." },
  stop: {
    confirm: "Stop the daemon? The active job checkpoints first; start it again with `trainerd run`.",
    done: "Stop requested: the daemon checkpoints and exits (this page will lose its connection).",
  },
  skip: {
    confirm: "Skip the active job? It goes to failed/ as 'skipped by user' and can be requeued.",
    done: "Skip requested.",
  },
};

async function control(action) {
  const a = ACTIONS[action];
  if (token() && a.confirm && !window.confirm(a.confirm)) return;
  if (await authed(`/api/control/${action}`, jsonBody({ reason: "dashboard" }), action)) {
    toast(a.done);
    poll(true);
  }
}

// ------------------------------------------------------------------ header + cards
function daemonLook(s) {
  const d = s.daemon || {};
  const desired = (s.desired || {}).state;
  if (!d.running) return ["not running", "bad"];
  if (d.responding === false) return ["not responding", "bad"];
  const st = d.state || "starting";
  if (st === "training" && desired === "paused") return ["pausing…", "warn"];
  if (st === "training" && desired === "stopped") return ["stopping…", "warn"];
  if (st === "training") return ["training", "ok"];
  if (st === "paused") return ["paused", "warn"];
  if (st === "paused_disk") return ["paused: disk low", "bad"];
  if (st === "paused_model") return ["paused: model unavailable", "bad"];
  return [st, ""];
}

function renderHeader(s) {
  const [label, cls] = daemonLook(s);
  setText("daemon-state", label);
  $("daemon-pill").className = `pill ${cls}`;
  setText("base-dir", s.base_dir || "");
  const w = s.desired || {};
  const note = (s.daemon || {}).paused_reason ||
    (w.state && w.state !== "running" ? `wish: ${w.state}${w.reason ? ` (${w.reason})` : ""}` : "");
  setText("wish-note", note);
  $("wish-note").title = note;
  const running = !!(s.daemon && s.daemon.running);
  $("btn-pause").disabled = w.state === "paused";
  $("btn-resume").disabled = w.state === "running";
  $("btn-skip").disabled = !(s.active && s.active.length);
  $("btn-stop").disabled = !running || w.state === "stopped";
}

function renderJob(s) {
  const j = s.job;
  const note = idleNote(s);
  $("job-empty-default").hidden = !!note;
  $("job-empty-note").hidden = !note;
  setText("job-empty-note", note || "");
  $("job-empty").hidden = !!j;
  $("job-body").hidden = !j;
  const badges = $("job-badges");
  badges.replaceChildren();
  if (!j) return;
  const training = s.daemon && s.daemon.state === "training";
  badges.append(h("span", { class: `badge ${j.priority || ""}` }, j.priority || ""),
    h("span", { class: "badge" }, `attempt ${j.attempt || 1}`));
  if (!training) badges.append(h("span", { class: "badge warn" }, "not training"));
  setText("job-name", j.name || j.id);
  setText("job-id", j.id);
  const frac = j.max_steps ? Math.min(1, (j.step || 0) / j.max_steps) : 0;
  $("job-bar").style.width = `${(frac * 100).toFixed(1)}%`;
  $("job-bar").parentElement.classList.toggle("paused", !training);
  const steps = j.step ? `step ${fmtNum(j.step)} / ${fmtNum(j.max_steps)}` : "loading the model…";
  setText("job-progress", `${steps} · ${fmtNum(j.examples_done)} / ${fmtNum(j.examples_total)} examples · ${(frac * 100).toFixed(0)}%`);
  let eta = "";
  if (!training) eta = s.daemon && s.daemon.state === "paused" ? "paused" : "";
  else if (j.eta_seconds !== null && j.eta_seconds !== undefined) {
    eta = `ETA ${fmtDur(j.eta_seconds)} · around ${fmtClock(s.now + j.eta_seconds)}`;
  } else eta = "ETA after a few steps";
  setText("job-eta", eta);
  setText("kpi-loss", fmtLoss(j.loss));
  setText("kpi-lr", fmtLR(j.lr));
  setText("kpi-tps", fmtNum(j.tokens_per_s));
  setText("kpi-rss", fmtBytes(j.rss_bytes) + (j.gpu_bytes ? ` · GPU ${fmtBytes(j.gpu_bytes)}` : ""));
  setText("kpi-ckpt", j.last_checkpoint_age === null || j.last_checkpoint_age === undefined
    ? "none yet" : `${fmtDur(j.last_checkpoint_age)} ago`);
  $("kpi-ckpt").title = j.last_checkpoint ? `${j.last_checkpoint}: ${fmtBytes(j.last_checkpoint_bytes)}, ` +
    `saved in ${fmtNum(j.last_checkpoint_seconds, 2)} s` : "";
}

function renderSystem(s) {
  const d = s.daemon || {};
  setText("sys-daemon", d.running ? `pid ${d.pid} · up ${fmtDur(s.now - (d.since || s.now))}` : "not running");
  const hb = s.health || {};
  setText("sys-heartbeat", hb.heartbeat_age === null || hb.heartbeat_age === undefined
    ? "none" : `${fmtDur(hb.heartbeat_age)} ago${hb.ok ? "" : " (stale)"}`);
  const m = s.model || {};
  setText("sys-model", m.version === "base" || !m.version ? "base (nothing published yet)"
    : `${m.version} · ${m.kind || "?"}${m.parent ? ` · from ${m.parent}` : ""}`);
  const q = s.queue || {};
  setText("sys-queue", `${q.queued || 0} queued · ${q.active || 0} active · ${q.done || 0} done · ${q.failed || 0} failed`);
  const disk = s.disk || {};
  setText("sys-disk", `${fmtBytes(disk.free_bytes)} of ${fmtBytes(disk.total_bytes)}` +
    (disk.low ? " · low: training paused" : disk.warn ? " · getting low" : ""));
  $("sys-disk").title = disk.pause_below_bytes ? `the daemon pauses itself below ${fmtBytes(disk.pause_below_bytes)} free` : "";
  const used = disk.total_bytes ? disk.used_bytes / disk.total_bytes : 0;
  const bar = $("sys-disk-bar");
  bar.style.width = `${(used * 100).toFixed(1)}%`;
  bar.className = disk.low || used > 0.95 ? "bad" : disk.warn || used > 0.85 ? "warn" : "";
}

// What train.overlength did to a job's sequences: never silent (shown wherever the job is).
function overlength(j) {
  const parts = [];
  if (j.dropped) parts.push(`${fmtNum(j.dropped)} dropped`);
  if (j.truncated) parts.push(`${fmtNum(j.truncated)} truncated`);
  return parts.length ? h("span", { class: "badge warn", title: "train.overlength: sequences longer than max_seq_len" },
    parts.join(", ")) : null;
}

function renderQueue(s) {
  const q = s.queue || {};
  setText("queue-counts", `high ${q.queued_high || 0} · normal ${q.queued_normal || 0} · low ${q.queued_low || 0}`);
  const rows = (s.queued || []).map((j) => h("tr", { "data-id": j.id },
    h("td", {}, prioritySelect(j)),
    h("td", { class: "file" }, j.name || j.id, h("span", { class: "mono" }, j.id),
      j.waiting ? h("span", { class: "badge warn" }, j.waiting)
        : j.attempts ? h("span", { class: "badge warn" }, `retry after ${j.attempts} attempt(s)`) : null, overlength(j)),
    h("td", { class: "num" }, fmtNum(j.examples)),
    h("td", {}, fmtAgo(j.submitted_at, s.now)),
    h("td", { class: "acts" }, removeButton(j))));
  const more = (q.queued || 0) - rows.length;
  if (more > 0) rows.push(h("tr", {}, h("td", { colspan: 5, class: "muted" }, `… and ${more} more`)));
  $("queue-table").tBodies[0].replaceChildren(...rows);
  $("queue-table").hidden = !rows.length;
  $("queue-empty").hidden = !!rows.length;
}

function renderFailed(s) {
  const failed = (s.failed || []).slice().reverse();
  const n = (s.queue || {}).failed || 0;
  setText("failed-count", n ? `${n} in jobs/failed/${n > failed.length ? `, newest ${failed.length} shown` : ""}` : "");
  $("failed-list").replaceChildren(...failed.map((j) => h("li", { "data-id": j.id },
    h("div", { class: "what" }, h("b", {}, j.name || j.id), h("span", { class: "mono muted" }, j.id),
      h("span", { class: "acts" }, requeueButton(j), removeButton(j))),
    h("div", { class: "why", title: j.reason || "" }, j.reason || "no reason recorded"))));
  $("failed-empty").hidden = !!failed.length;
}

function renderHistory(jobs, now) {
  jobs = jobs.slice().sort((a, b) => (b.finished_at || 0) - (a.finished_at || 0));
  const rows = jobs.map((j) => {
    let delta = null;
    if (j.first_loss && j.last_loss) {
      const pct = (j.last_loss - j.first_loss) / j.first_loss * 100;
      delta = h("span", { class: pct <= 0 ? "down" : "up" }, `${pct <= 0 ? "↓" : "↑"}${Math.abs(pct).toFixed(0)}%`);
    }
    return h("tr", { class: j.id === ui.pinned ? "pinned" : null, "data-id": j.id, onclick: () => pin(j.id) },
      h("td", { class: "file" }, j.name || j.id, h("span", { class: "mono" }, j.id), overlength(j)),
      h("td", { class: "num", title: j.sequences ? `${fmtNum(j.sequences)} sequences trained` : "" }, fmtNum(j.examples)),
      h("td", { class: "num" }, fmtNum(j.steps_done)),
      h("td", { class: "num" }, `${fmtLoss(j.first_loss)} → ${fmtLoss(j.last_loss)}`, delta),
      h("td", { class: "num" }, fmtDur(j.train_seconds)),
      h("td", { class: "mono" }, j.version || dash),
      h("td", { title: j.finished_at ? fmtAgo(j.finished_at, now) : "" }, j.finished_at ? fmtWhen(j.finished_at) : dash));
  });
  $("history-table").tBodies[0].replaceChildren(...rows);
  $("history-table").hidden = !rows.length;
  $("history-empty").hidden = !!rows.length;
}

function renderModels(m, now) {
  const versions = (m.versions || []).slice().reverse();
  const cur = (m.current || {}).version;
  $("models-table").tBodies[0].replaceChildren(...versions.map((v) => h("tr", {},
    h("td", { class: v.version === cur ? "current" : null }, v.version,
      v.version === cur ? h("span", { class: "badge ok" }, "current") : null, gateBadge(v, m)),
    h("td", {}, v.broken ? "manifest missing" : (v.kind || dash)),
    h("td", { class: "file" }, (v.jobs || []).map((j) => j.name || j.id).join(", ") || dash,
      v.final_loss !== undefined && v.final_loss !== null ? h("span", { class: "mono" }, `final loss ${fmtLoss(v.final_loss)}`) : null),
    h("td", {}, fmtAgo(v.created_at, now)),
    h("td", { class: "acts" }, v.version === cur || v.broken ? null : h("button", {
      type: "button", class: "ghost small act-rollback", "data-version": v.version,
      title: `Make ${v.version} current; nothing is deleted, the next job trains from it`,
      onclick: () => window.confirm(`Roll back to ${v.version}? The next job trains from it.`) &&
        wish("rollback", { version: v.version }, `roll back to ${v.version}`) }, "Roll back")))));
  $("models-table").hidden = !versions.length;
  $("models-empty").hidden = !!versions.length;
}

// The eval gate's mark on a version: held (outside the line), override (held, made current
// by hand), flagged (published under warn); the verdict as its tooltip.
function gateBadge(v, m) {
  const g = v.gate;
  if (!g || g.action === "current") return null;
  const overridden = g.action === "held" && (m.gate_overrides || {})[v.version];
  const label = overridden ? "override" : g.action;
  return h("span", { class: `badge ${label === "flagged" ? "warn" : "bad"}`, title: g.verdict }, label);
}

// The forgetting matrix as a heatmap: loss of each version (row) on each job's recall
// sample (column), coloured from the lowest (green) to the highest (red) loss shown.
function renderMatrix(m) {
  const mx = (m && m.matrix) || { jobs: [], versions: [] };
  const rows = mx.versions || [];
  $("matrix-card").hidden = !rows.length && !(m.versions || []).length;
  $("matrix-table").hidden = !rows.length;
  if (!rows.length) return;
  const vals = rows.flatMap((r) => Object.values(r.recall || {})).filter((x) => x !== null && isFinite(x));
  const lo = Math.min(...vals), hi = Math.max(...vals);
  const cell = (x) => {
    if (x === null || x === undefined) return h("td", { class: "num muted" }, dash);
    const t = hi > lo ? (x - lo) / (hi - lo) : 0;
    const td = h("td", { class: "num heat" }, x.toFixed(3));
    td.style.backgroundColor = `hsla(${(1 - t) * 120}, 70%, 45%, 0.35)`;  // CSSOM: allowed by the CSP, a style attribute is not
    return td;
  };
  $("matrix-table").tHead.replaceChildren(h("tr", {}, h("th", {}, "Version"),
    ...mx.jobs.map((j) => h("th", { class: "num", title: j }, (mx.names || {})[j] || j)), h("th", { class: "num" }, "Backward transfer")));
  $("matrix-table").tBodies[0].replaceChildren(...rows.map((r) => h("tr", {},
    h("td", {}, r.version, r.gate ? h("span", { class: `badge ${r.gate === "flagged" ? "warn" : "bad"}` }, r.gate) : null),
    ...mx.jobs.map((j) => cell((r.recall || {})[j])),
    h("td", { class: "num" }, r.backward_transfer === null ? dash : r.backward_transfer.toFixed(3)))));
}

// The whole line as one curve: each version at its line step (steps since the base model),
// its final training loss (solid) and probe loss (faint, dotted where measured).
function renderLine(m) {
  const vs = (m.versions || []).filter((v) => v.line_step !== undefined && v.line_step !== null)
    .sort((a, b) => a.line_step - b.line_step);
  $("line-chart-wrap").hidden = !vs.length;
  if (!vs.length) return;
  const probe = vs.map((v) => ((v.scores || {}).probe || {}).loss ?? null);
  drawChart($("line-chart"), { xs: vs.map((v) => v.line_step), color: "--accent-4", empty: "",
    fmt: (v) => v.toFixed(Math.abs(v) < 10 ? 3 : 1),
    xlabel: (i) => `${vs[i].version} · step ${fmtNum(vs[i].line_step)}`,
    lines: [{ ys: vs.map((v) => v.final_loss ?? null), width: 1.5 },
      { ys: probe, width: 1.5, alpha: 0.45, dots: probe.map((x) => x !== null) }] });
}

// Per-tag scores of the latest eval (eval.group_by).
function renderGroups(e) {
  const groups = ((e && e.latest) || {}).groups || {};
  const rows = Object.entries(groups).flatMap(([tag, vals]) => Object.entries(vals).map(([v, sc]) => h("tr", {},
    h("td", {}, `${tag} = ${v}`), h("td", { class: "num" }, fmtNum(sc.examples)), h("td", { class: "num" }, fmtLoss(sc.loss)),
    h("td", { class: "num" }, fmtPct(sc.exact_match)))));
  $("evals-groups").hidden = !rows.length;
  $("evals-groups").tBodies[0].replaceChildren(...rows);
}

// ------------------------------------------------------------------ charts
function css(name) { return getComputedStyle(document.documentElement).getPropertyValue(name).trim(); }

function niceTicks(lo, hi, n) {
  const span = hi - lo || Math.abs(hi) || 1;
  const raw = span / Math.max(1, n);
  const mag = Math.pow(10, Math.floor(Math.log10(raw)));
  const step = [1, 2, 2.5, 5, 10].map((f) => f * mag).find((s) => s >= raw) || 10 * mag;
  const out = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(+v.toPrecision(12));
  return out;
}

// Keep one point per step: after a crash the resumed attempt repeats a few steps, and
// the newer attempt is what the model actually kept. Returns rows sorted by step.
function dedupe(series) {
  const by = new Map();
  const n = series.step.length;
  for (let i = 0; i < n; i++) by.set(series.step[i], i);  // later attempts overwrite
  return [...by.values()].sort((a, b) => series.step[a] - series.step[b]);
}

// TensorBoard-style smoothing: debiased exponential moving average.
function smooth(ys, weight) {
  let last = 0, num = 0;
  return ys.map((y) => {
    if (y === null || !isFinite(y)) return null;
    num++;
    last = last * weight + (1 - weight) * y;
    return last / (1 - Math.pow(weight, num));
  });
}

const charts = new Map();  // canvas id -> {spec, hoverX}

function drawChart(canvas, spec) {
  const state = charts.get(canvas.id) || { hoverX: null };
  state.spec = spec;
  charts.set(canvas.id, state);
  const dpr = window.devicePixelRatio || 1;
  const W = canvas.clientWidth, H = canvas.clientHeight;
  if (!W || !H) return;
  if (canvas.width !== Math.round(W * dpr) || canvas.height !== Math.round(H * dpr)) {
    canvas.width = Math.round(W * dpr);
    canvas.height = Math.round(H * dpr);
  }
  const ctx = canvas.getContext("2d");
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, W, H);
  const muted = css("--muted"), grid = css("--grid"), color = css(spec.color);
  ctx.font = "11px system-ui, sans-serif";

  const xs = spec.xs, lines = spec.lines;
  const pts = xs.length;
  canvas.dataset.points = String(pts);
  if (!pts) {
    ctx.fillStyle = muted;
    ctx.textAlign = "center";
    ctx.fillText(spec.empty || "no data yet", W / 2, H / 2);
    return;
  }
  let ylo = Infinity, yhi = -Infinity;
  for (const l of lines) for (const y of l.ys) if (y !== null && isFinite(y)) { ylo = Math.min(ylo, y); yhi = Math.max(yhi, y); }
  if (!isFinite(ylo)) { ylo = 0; yhi = 1; }
  if (spec.zero) ylo = Math.min(0, ylo);
  const pad = (yhi - ylo) * 0.08 || Math.abs(yhi) * 0.1 || 1;
  ylo = spec.zero ? ylo : ylo - pad;
  yhi += pad;
  const xlo = xs[0], xhi = xs[pts - 1] === xs[0] ? xs[0] + 1 : xs[pts - 1];
  const yt = niceTicks(ylo, yhi, H > 200 ? 5 : 3);
  const labels = yt.map(spec.fmt);
  const L = Math.max(...labels.map((t) => ctx.measureText(t).width)) + 14, R = 12, T = 10, B = 22;
  const X = (x) => L + (x - xlo) / (xhi - xlo) * (W - L - R);
  const Y = (y) => T + (1 - (y - ylo) / (yhi - ylo)) * (H - T - B);

  // grid and axes
  ctx.strokeStyle = grid;
  ctx.lineWidth = 1;
  ctx.fillStyle = muted;
  ctx.textAlign = "right";
  ctx.textBaseline = "middle";
  yt.forEach((v, i) => {
    const y = Math.round(Y(v)) + 0.5;
    if (y < T - 1 || y > H - B + 1) return;
    ctx.beginPath(); ctx.moveTo(L, y); ctx.lineTo(W - R, y); ctx.stroke();
    ctx.fillText(labels[i], L - 6, y);
  });
  ctx.textAlign = "center";
  ctx.textBaseline = "top";
  for (const v of niceTicks(xlo, xhi, Math.max(2, Math.floor((W - L) / 90)))) {
    if (v < xlo || v > xhi || v !== Math.round(v)) continue;
    const label = (spec.xfmt || fmtNum)(v), half = ctx.measureText(label).width / 2;
    ctx.fillText(label, Math.min(Math.max(X(v), L + half), W - half), H - B + 6);  // never clipped
  }

  // resume markers: where a later attempt took over
  ctx.save();
  ctx.setLineDash([3, 4]);
  ctx.strokeStyle = muted;
  for (const m of spec.markers || []) {
    const x = Math.round(X(m)) + 0.5;
    ctx.beginPath(); ctx.moveTo(x, T); ctx.lineTo(x, H - B); ctx.stroke();
  }
  ctx.restore();

  // lines
  for (const l of lines) {
    ctx.save();
    ctx.strokeStyle = color;
    ctx.globalAlpha = l.alpha ?? 1;
    ctx.lineWidth = l.width ?? 1.5;
    ctx.lineJoin = "round";
    ctx.beginPath();
    let pen = false;
    l.ys.forEach((y, i) => {
      if (y === null || !isFinite(y)) { pen = false; return; }
      if (pen) ctx.lineTo(X(xs[i]), Y(y)); else ctx.moveTo(X(xs[i]), Y(y));
      pen = true;
    });
    if (pts === 1) { ctx.arc(X(xs[0]), Y(l.ys[0]), 2.5, 0, 7); ctx.fillStyle = color; ctx.fill(); }
    ctx.stroke();
    ctx.fillStyle = color;
    (l.dots || []).forEach((on, i) => {  // emphasised points (a job's final eval)
      if (!on || l.ys[i] === null || !isFinite(l.ys[i])) return;
      ctx.beginPath(); ctx.arc(X(xs[i]), Y(l.ys[i]), 3, 0, 7); ctx.fill();
    });
    ctx.restore();
  }

  // hover: nearest step, its values
  const main = lines[lines.length - 1];
  let idx = pts - 1;
  if (state.hoverX !== null) {
    const target = xlo + (state.hoverX - L) / (W - L - R) * (xhi - xlo);
    let best = Infinity;
    xs.forEach((x, i) => { const d = Math.abs(x - target); if (d < best) { best = d; idx = i; } });
    const x = Math.round(X(xs[idx])) + 0.5;
    ctx.strokeStyle = muted;
    ctx.globalAlpha = 0.5;
    ctx.beginPath(); ctx.moveTo(x, T); ctx.lineTo(x, H - B); ctx.stroke();
    ctx.globalAlpha = 1;
  }
  const y = main.ys[idx];
  if (y !== null && isFinite(y)) {
    ctx.fillStyle = color;
    ctx.beginPath(); ctx.arc(X(xs[idx]), Y(y), 3.5, 0, 7); ctx.fill();
    const text = `${spec.xlabel ? spec.xlabel(idx) : `step ${fmtNum(xs[idx])}`} · ${spec.fmt(y)}` +
      (lines.length > 1 && lines[0].ys[idx] !== null ? ` (raw ${spec.fmt(lines[0].ys[idx])})` : "");
    ctx.font = "600 12px system-ui, sans-serif";
    const tw = ctx.measureText(text).width + 14;
    const bx = Math.min(Math.max(X(xs[idx]) - tw / 2, L), W - R - tw);
    const by = Y(y) - 30 < T ? Y(y) + 10 : Y(y) - 30;
    ctx.fillStyle = css("--card");
    ctx.strokeStyle = grid;
    ctx.beginPath(); ctx.roundRect(bx, by, tw, 20, 5); ctx.fill(); ctx.stroke();
    ctx.fillStyle = css("--text");
    ctx.textAlign = "left";
    ctx.textBaseline = "middle";
    ctx.fillText(text, bx + 7, by + 10);
  }
}

function redraw(id) {
  const s = charts.get(id);
  if (s && s.spec) drawChart($(id), s.spec);
}

for (const id of ["loss-chart", "lr-chart", "tps-chart", "gn-chart", "evals-loss-chart", "evals-exact-chart"]) {
  const c = $(id);
  c.addEventListener("mousemove", (e) => {
    const r = c.getBoundingClientRect();
    (charts.get(id) || charts.set(id, { hoverX: null }).get(id)).hoverX = e.clientX - r.left;
    redraw(id);
  });
  c.addEventListener("mouseleave", () => { const s = charts.get(id); if (s) s.hoverX = null; redraw(id); });
  new ResizeObserver(() => redraw(id)).observe(c);
}

function renderCharts(m, label) {
  setText("chart-title", label);
  const s = (m && m.series) || { step: [], attempt: [], loss: [], lr: [], tokens_per_s: [] };
  const order = dedupe(s);
  const xs = order.map((i) => s.step[i]);
  const pick = (col) => order.map((i) => (s[col][i] === undefined ? null : s[col][i]));
  const loss = pick("loss");
  const markers = [];
  order.forEach((i, k) => { if (k && s.attempt[i] !== s.attempt[order[k - 1]]) markers.push(s.step[i]); });
  $("legend-resumed").hidden = !markers.length;
  const empty = ui.chartJob ? "waiting for the first logged step…" : "no job to show yet";
  drawChart($("loss-chart"), {
    xs, color: "--accent", fmt: (v) => v.toFixed(Math.abs(v) < 10 ? 3 : 1), markers, empty,
    lines: [{ ys: loss, alpha: 0.28, width: 1 }, { ys: smooth(loss, xs.length > 30 ? 0.85 : 0.6), width: 2 }],
  });
  drawChart($("lr-chart"), { xs, color: "--accent-2", fmt: fmtLR, zero: true, markers, empty: "",
    lines: [{ ys: pick("lr"), width: 1.5 }] });
  drawChart($("tps-chart"), { xs, color: "--accent-3", fmt: (v) => fmtNum(v), zero: true, markers, empty: "",
    lines: [{ ys: pick("tokens_per_s"), width: 1.5 }] });
  drawChart($("gn-chart"), { xs, color: "--accent-4", fmt: (v) => v.toFixed(Math.abs(v) < 10 ? 3 : 1), zero: true,
    markers, empty: "", lines: [{ ys: s.grad_norm ? pick("grad_norm") : xs.map(() => null), width: 1.5 }] });
}

// Probe evals across jobs, over time: loss and exact match, a dot for each job's final eval,
// a dashed line where the probe file changed (the points before it measured another set).
function renderEvals(e) {
  const s = (e && e.series) || { ts: [] };
  const n = s.ts.length;
  $("evals-empty").hidden = !!n;
  $("evals-body").hidden = !n;
  if (!n) { setText("evals-title", ""); return; }
  const idx = [...Array(n).keys()];
  const markers = idx.filter((i) => i && s.probe_sha[i] !== s.probe_sha[i - 1]).map((i) => s.ts[i]);
  $("legend-probe").hidden = !markers.length;
  const jobs = new Set(s.job_id).size;
  setText("evals-title", `${n} eval${n === 1 ? "" : "s"} of ${jobs} job${jobs === 1 ? "" : "s"}`);
  const xlabel = (i) => `${fmtWhen(s.ts[i])} · ${ui.names.get(s.job_id[i]) || s.job_id[i]}` +
    (s.final[i] ? " (end)" : ` step ${fmtNum(s.step[i])}`);
  const days = s.ts[n - 1] - s.ts[0] > 86400;  // tick labels: the day, or the time of day
  const xfmt = (t) => new Date(t * 1000).toLocaleString([], days ? { month: "short", day: "numeric" }
    : { hour: "2-digit", minute: "2-digit" });
  const base = { xs: s.ts, xfmt, xlabel, markers, empty: "" };
  drawChart($("evals-loss-chart"), { ...base, color: "--accent-4", fmt: (v) => v.toFixed(Math.abs(v) < 10 ? 3 : 1),
    lines: [{ ys: s.loss, width: 1.5, dots: s.final }] });
  drawChart($("evals-exact-chart"), { ...base, color: "--accent-4", fmt: fmtPct, zero: true,
    lines: [{ ys: s.exact_match, width: 1.5, dots: s.final }] });
  const last = e.latest || {};
  const samples = last.samples || [];
  setText("evals-latest-title", samples.length ? `Latest answers: ${ui.names.get(last.job_id) || last.job_id}, ` +
    `step ${fmtNum(last.step)}, ${fmtAgo(last.ts)}${last.complete === false ? " (stopped early)" : ""}` : "");
  $("evals-latest").hidden = !samples.length;
  $("evals-latest").tBodies[0].replaceChildren(...samples.map((x) => h("tr", {},
    h("td", { class: "num" }, fmtNum(x.line)),
    h("td", {}, x.expected),
    h("td", { class: x.exact ? "hit" : "miss" }, x.generated || "(nothing)"),
    h("td", { class: "num" }, x.exact ? "exact" : fmtPct(x.similarity)))));
}

function pin(id) {
  ui.pinned = ui.pinned === id ? null : id;
  $("chart-live").hidden = !ui.pinned;
  for (const tr of $("history-table").tBodies[0].rows) tr.classList.toggle("pinned", tr.dataset.id === ui.pinned);
  poll(true);
}

// ------------------------------------------------------------------ polling
function chartTarget(s) {
  if (ui.pinned) return [ui.pinned, "finished job (picked in history)"];
  const training = s.daemon && s.daemon.state === "training";
  if (s.job) return [s.job.id, `${s.job.name || s.job.id} · ${training ? "live" : "active, not training"}`];
  const done = s.done || [];
  const last = done[done.length - 1];
  if (last) return [last.id, `${last.name || last.id} · last finished`];
  return [null, ""];
}

async function refreshSlow(s, force) {
  const done = (s.queue || {}).done || 0;
  if (!force && done === ui.doneSeen && Date.now() - ui.slowAt < SLOW_REFRESH_MS) return;
  ui.doneSeen = done;
  ui.slowAt = Date.now();
  const [jobs, models, evals] = await Promise.all([api("/api/jobs?state=done&limit=25"), api("/api/models"),
    api("/api/evals")]);
  for (const j of [...(jobs.jobs || []), ...(s.active || [])]) ui.names.set(j.id, j.name || j.id);
  renderHistory(jobs.jobs || [], s.now);
  renderModels(models, s.now);
  renderMatrix(models);
  renderLine(models);
  renderEvals(evals);
  renderGroups(evals);
}

let inflight = false;
async function poll(force = false) {
  clearTimeout(ui.timer);
  if (inflight && !force) return;
  inflight = true;
  try {
    const s = await api("/api/status");
    ui.status = s;
    renderHeader(s);
    renderJob(s);
    renderSystem(s);
    renderQueue(s);
    renderFailed(s);
    const [id, label] = chartTarget(s);
    if (id !== ui.chartJob) { ui.chartJob = id; ui.series = null; }
    if (id) ui.series = await api(`/api/metrics/${encodeURIComponent(id)}`).catch(() => ui.series);
    renderCharts(id ? ui.series : null, label);
    await refreshSlow(s, force);
    setText("updated", `updated ${fmtClock(Date.now() / 1000)}`);
  } catch (e) {
    setText("daemon-state", "unreachable");
    $("daemon-pill").className = "pill bad";
    setText("wish-note", "the dashboard cannot reach the daemon's HTTP server");
    setText("updated", `last error ${fmtClock(Date.now() / 1000)}: ${e.message}`);
  } finally {
    inflight = false;
    clearTimeout(ui.timer);  // a forced poll may have overlapped this one: keep one timer
    ui.timer = setTimeout(poll, document.hidden ? HIDDEN_POLL_MS : POLL_MS);
  }
}

// ------------------------------------------------------------------ wiring
for (const action of Object.keys(ACTIONS)) $(`btn-${action}`).addEventListener("click", () => control(action));
$("btn-token").addEventListener("click", () => showTokenBar($("token-bar").hidden));
$("token-cancel").addEventListener("click", () => showTokenBar(false));
$("token-forget").addEventListener("click", () => {
  localStorage.removeItem(TOKEN_KEY);
  renderTokenState();
  showTokenBar(true);
  toast("Token forgotten.");
});
$("token-bar").addEventListener("submit", (e) => {
  e.preventDefault();
  const t = $("token-input").value.trim();
  if (!t) return;
  localStorage.setItem(TOKEN_KEY, t);
  $("token-input").value = "";
  renderTokenState();
  showTokenBar(false);
  toast("Token saved in this browser.");
});
$("chart-live").addEventListener("click", () => pin(ui.pinned));
wireControls();
document.addEventListener("visibilitychange", () => { if (!document.hidden) poll(true); });

renderTokenState();
if (!token()) showTokenBar(true);
poll();
