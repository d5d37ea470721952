// trainerd dashboard: the controls that edit the queue and the model line, and uploads.
//
// - upload(file): POST /api/queue (validated like an inbox file; 201 queued, 422 rejected).
// - wish(action, args): POST /api/control/{move,requeue,remove,rollback}; the daemon carries
//   it out with the queue's / line's own functions (trainerd.wishes), and the page polls
//   /api/control/actions/{id} for the outcome. The page never moves a job itself.
import { api, authed, jsonBody, refresh } from "./api.js";
import { $, fmtNum, h, toast } from "./format.js";

// Queue and model-line edits are wishes (control/actions/): the daemon carries them out
// with the queue's own functions; the page waits for the outcome and says it.
const WISH_TIMEOUT_MS = 30000;
export async function wish(action, args, label) {
  const r = await authed(`/api/control/${action}`, jsonBody(args), label);
  if (!r) return;
  toast(`${label}: asked the daemon…`);
  const until = Date.now() + WISH_TIMEOUT_MS;
  while (Date.now() < until) {
    await new Promise((ok) => setTimeout(ok, 400));
    const o = await api(r.outcome).catch(() => null);
    if (o && o.state === "done") { toast(`${label}: done.`); refresh(); return; }
    if (o && o.state === "failed") { toast(`${label} refused: ${o.error}`, true); refresh(); return; }
  }
  toast(`${label}: still waiting for the daemon (is it running?). It happens when it is back.`, true);
}

export async function upload(file, priority = "normal") {
  const r = await authed(`/api/queue?name=${encodeURIComponent(file.name)}&priority=${priority}`,
    { body: file, headers: { "Content-Type": "application/octet-stream" } }, `upload of ${file.name}`);
  if (!r) return;
  toast(`${file.name}: queued as ${r.id} (${fmtNum(r.examples)} examples).`);
  refresh();
}

// Why nothing trains: a paused daemon with files waiting must not read as "drop a file".
export function idleNote(s) {
  const waiting = (s.queue || {}).queued || 0;
  const d = s.daemon || {};
  const paused = d.state === "paused" || (s.desired || {}).state === "paused";
  if (waiting && !d.running) return `The daemon is not running; ${waiting} file(s) wait in the queue. Start it with \`trainerd run\`.`;
  if (waiting && paused) return `Paused: ${waiting} file(s) wait in the queue. Resume to train them.`;
  if (waiting && d.state === "paused_disk") return `Paused, disk low: ${waiting} file(s) wait until space returns.`;
  return null;
}

export function prioritySelect(j) {
  const sel = h("select", { class: "prio-select", "aria-label": `priority of ${j.name || j.id}`,
    onchange: (e) => wish("move", { job_id: j.id, priority: e.target.value }, `${j.name || j.id} → ${e.target.value}`) },
    ...["high", "normal", "low"].map((p) => h("option", { value: p, selected: p === j.priority ? "" : null }, p)));
  sel.value = j.priority;
  return sel;
}
export function removeButton(j) {
  return h("button", { type: "button", class: "ghost small act-remove", title: "Delete this job and its data file",
    onclick: () => window.confirm(`Remove ${j.name || j.id}? Its data file is deleted.`) &&
      wish("remove", { job_id: j.id }, `remove ${j.name || j.id}`) }, "Remove");
}
export function requeueButton(j) {
  return h("button", { type: "button", class: "ghost small act-requeue", title: "Queue it again (attempts reset)",
    onclick: () => wish("requeue", { job_id: j.id }, `requeue ${j.name || j.id}`) }, "Requeue");
}

export function wireControls() {
  $("upload-input").addEventListener("change", async (e) => {
    for (const f of [...e.target.files]) await upload(f);
    e.target.value = "";
  });
  // Drop a file anywhere on the page: uploaded like `trainerd queue add` (validated the same way).
  document.addEventListener("dragover", (e) => { e.preventDefault(); document.body.classList.add("dropping"); });
  document.addEventListener("dragleave", (e) => { if (!e.relatedTarget) document.body.classList.remove("dropping"); });
  document.addEventListener("drop", async (e) => {
    e.preventDefault();
    document.body.classList.remove("dropping");
    for (const f of [...(e.dataTransfer ? e.dataTransfer.files : [])]) await upload(f);
  });
}
