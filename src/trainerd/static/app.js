// trainerd dashboard: the page's main module. It polls the JSON API and renders.
//
// - /api/status every 2 s (every 10 s while the tab is hidden): daemon, active job, queue.
// - /api/metrics/{id} every 2 s for the chart's job: the active one, else the last
//   finished one, or the one picked in the history table.
// - /api/jobs?state=done, /api/models and /api/evals (probe evals of every job) when the
//   done count changes (and every 30 s).
// Modules: format.js (formatting, DOM), api.js (fetch, token), charts.js (uPlot),
// tables.js (lists), controls.js (queue / line edits, uploads), tryit.js (generate/compare).

import { api, authed, jsonBody, token, wireToken } from "./api.js";
import { dedupe, drawChart, smooth } from "./charts.js";
import { idleNote, wireControls } from "./controls.js";
import { $, fmtAxis, fmtBytes, fmtClock, fmtDur, fmtLoss, fmtLR, fmtNum, fmtPct, fmtAgo, fmtWhen, h, setText, toast } from "./format.js";
import { renderFailed, renderGroups, renderHistory, renderMatrix, renderModels, renderQueue } from "./tables.js";

const POLL_MS = 2000;
const HIDDEN_POLL_MS = 10000;
const SLOW_REFRESH_MS = 30000;

const ui = {
  status: null,        // last /api/status
  pinned: null,        // job id picked in the history table (null = follow live)
  chartJob: null,      // job id the charts show
  series: null,        // last /api/metrics answer for chartJob
  doneSeen: -1,        // done count when history was last fetched
  names: new Map(),    // job id -> file name, for the probe-eval chart's readout
  slowAt: 0,
  timer: null,
};

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
  if (st === "consolidating") return ["consolidating", "ok"];  // housework: folding adapters into a new base
  if (st === "error") return ["error: retrying", "bad"];  // the main loop raised; see the daemon log
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

// ------------------------------------------------------------------ charts
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
  drawChart("loss-chart", {
    xs, color: "--accent", fmt: fmtAxis, markers, empty,
    lines: [{ ys: loss, alpha: 0.28, width: 1 }, { ys: smooth(loss, xs.length > 30 ? 0.85 : 0.6), width: 2 }],
  });
  drawChart("lr-chart", { xs, color: "--accent-2", fmt: fmtLR, zero: true, markers, empty: "",
    lines: [{ ys: pick("lr"), width: 1.5 }] });
  drawChart("tps-chart", { xs, color: "--accent-3", fmt: (v) => fmtNum(v), zero: true, markers, empty: "",
    lines: [{ ys: pick("tokens_per_s"), width: 1.5 }] });
  drawChart("gn-chart", { xs, color: "--accent-4", fmt: fmtAxis, zero: true,
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
  drawChart("evals-loss-chart", { ...base, color: "--accent-4", fmt: fmtAxis,
    lines: [{ ys: s.loss, width: 1.5, dots: s.final }] });
  drawChart("evals-exact-chart", { ...base, color: "--accent-4", fmt: fmtPct, zero: true,
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

// The whole line as one curve: each version at its line step (steps since the base model),
// its final training loss (solid) and probe loss (faint, dotted where measured).
function renderLine(m) {
  const vs = (m.versions || []).filter((v) => v.line_step !== undefined && v.line_step !== null)
    .sort((a, b) => a.line_step - b.line_step);
  $("line-chart-wrap").hidden = !vs.length;
  if (!vs.length) return;
  const probe = vs.map((v) => ((v.scores || {}).probe || {}).loss ?? null);
  drawChart("line-chart", { xs: vs.map((v) => v.line_step), color: "--accent-4", empty: "",
    fmt: fmtAxis,
    xlabel: (i) => `${vs[i].version} · step ${fmtNum(vs[i].line_step)}`,
    lines: [{ ys: vs.map((v) => v.final_loss ?? null), width: 1.5 },
      { ys: probe, width: 1.5, alpha: 0.45, dots: probe.map((x) => x !== null) }] });
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
  renderHistory(jobs.jobs || [], s.now, ui.pinned, pin);
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
$("chart-live").addEventListener("click", () => pin(ui.pinned));
window.addEventListener("trainerd:refresh", () => poll(true));
document.addEventListener("visibilitychange", () => { if (!document.hidden) poll(true); });
wireToken();
wireControls();
poll();
