// trainerd dashboard: the tables (queue, failed jobs, history, model versions, the
// forgetting matrix, per-tag eval scores). Rows carry their job id or version as data-*;
// the buttons in them are controls.js's (wishes the daemon carries out).

import { prioritySelect, removeButton, requeueButton, wish } from "./controls.js";
import { $, dash, fmtAgo, fmtDur, fmtLoss, fmtNum, fmtPct, fmtWhen, h, setText } from "./format.js";

// What train.overlength did to a job's sequences: never silent (shown wherever the job is).
export function overlength(j) {
  const parts = [];
  if (j.dropped) parts.push(`${fmtNum(j.dropped)} dropped`);
  if (j.truncated) parts.push(`${fmtNum(j.truncated)} truncated`);
  return parts.length ? h("span", { class: "badge warn", title: "train.overlength: sequences longer than max_seq_len" },
    parts.join(", ")) : null;
}

export function renderQueue(s) {
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

export function renderFailed(s) {
  const failed = (s.failed || []).slice().reverse();
  const n = (s.queue || {}).failed || 0;
  setText("failed-count", n ? `${n} in jobs/failed/${n > failed.length ? `, newest ${failed.length} shown` : ""}` : "");
  $("failed-list").replaceChildren(...failed.map((j) => h("li", { "data-id": j.id },
    h("div", { class: "what" }, h("b", {}, j.name || j.id), h("span", { class: "mono muted" }, j.id),
      h("span", { class: "acts" }, requeueButton(j), removeButton(j))),
    h("div", { class: "why", title: j.reason || "" }, j.reason || "no reason recorded"))));
  $("failed-empty").hidden = !!failed.length;
}

export function renderHistory(jobs, now, pinned, onPick) {
  jobs = jobs.slice().sort((a, b) => (b.finished_at || 0) - (a.finished_at || 0));
  const rows = jobs.map((j) => {
    let delta = null;
    if (j.first_loss && j.last_loss) {
      const pct = (j.last_loss - j.first_loss) / j.first_loss * 100;
      delta = h("span", { class: pct <= 0 ? "down" : "up" }, `${pct <= 0 ? "↓" : "↑"}${Math.abs(pct).toFixed(0)}%`);
    }
    return h("tr", { class: j.id === pinned ? "pinned" : null, "data-id": j.id, onclick: () => onPick(j.id) },
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

export function renderModels(m, now) {
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
export function renderMatrix(m) {
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

// Per-tag scores of the latest eval (eval.group_by).
export function renderGroups(e) {
  const groups = ((e && e.latest) || {}).groups || {};
  const rows = Object.entries(groups).flatMap(([tag, vals]) => Object.entries(vals).map(([v, sc]) => h("tr", {},
    h("td", {}, `${tag} = ${v}`), h("td", { class: "num" }, fmtNum(sc.examples)), h("td", { class: "num" }, fmtLoss(sc.loss)),
    h("td", { class: "num" }, fmtPct(sc.exact_match)))));
  $("evals-groups").hidden = !rows.length;
  $("evals-groups").tBodies[0].replaceChildren(...rows);
}
