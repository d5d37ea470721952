// trainerd dashboard: formatting and DOM helpers shared by every module.
// User-supplied text (file names, reasons, model answers) only ever goes in through
// textContent (h() and setText() never parse HTML).

export const dash = "–";
export const $ = (id) => document.getElementById(id);

const bad = (x) => x === null || x === undefined || !isFinite(x);
export function fmtNum(x, digits = 0) {
  if (bad(x)) return dash;
  return Number(x).toLocaleString(undefined, { maximumFractionDigits: digits, minimumFractionDigits: digits });
}
export function fmtLoss(x) { return bad(x) ? dash : Number(x).toFixed(4); }
export function fmtLR(x) {
  if (bad(x)) return dash;
  return x === 0 ? "0" : Number(x).toExponential(2).replace("e-", "e−");
}
export function fmtBytes(b) {
  if (bad(b)) return dash;
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (b >= 1024 && i < units.length - 1) { b /= 1024; i++; }
  return `${b.toFixed(b >= 100 || i === 0 ? 0 : 1)} ${units[i]}`;
}
export function fmtDur(s) {
  if (bad(s)) return dash;
  s = Math.max(0, Math.round(s));
  const d = Math.floor(s / 86400), h = Math.floor(s % 86400 / 3600), m = Math.floor(s % 3600 / 60), sec = s % 60;
  if (d) return `${d}d ${h}h`;
  if (h) return `${h}h ${String(m).padStart(2, "0")}m`;
  if (m) return `${m}m ${String(sec).padStart(2, "0")}s`;
  return `${sec}s`;
}
export function fmtAgo(t, now) {
  if (!t) return dash;
  return `${fmtDur((now || Date.now() / 1000) - t)} ago`;
}
export function fmtClock(t) {
  return new Date(t * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
}
export function fmtWhen(t) {
  return new Date(t * 1000).toLocaleString([], { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" });
}
export function fmtPct(x) { return bad(x) ? dash : `${(x * 100).toFixed(0)}%`; }
export function fmtAxis(v) { return v.toFixed(Math.abs(v) < 10 ? 3 : 1); }

// Build elements without innerHTML: h("td", {class: "num"}, "text", childNode, ...)
export function h(tag, attrs, ...children) {
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
export function setText(id, text) { const el = $(id); if (el.textContent !== text) el.textContent = text; }

let toastTimer = null;
export function toast(msg, isBad = false) {
  const t = $("toast");
  t.textContent = msg;
  t.className = "show" + (isBad ? " bad" : "");
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { t.className = ""; }, isBad ? 6000 : 3500);
}
