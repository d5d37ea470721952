// trainerd dashboard: "Try it" (ask a version) and "Compare versions". Kept apart from
// app.js: it only talks to POST /api/generate and /api/compare (with the token; the
// daemon answers from a child process, never loading torch itself) and reads
// /api/models for the version pickers. Text from the model goes in through textContent.
import { token } from "./api.js";
import { $ } from "./format.js";

const fmt = (x) => (x === null || x === undefined || !isFinite(x) ? "–" : Number(x).toFixed(4));

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}

async function post(path, body) {
  if (!token()) throw new Error("Enter the API token first (the Token button; BASE/run/token).");
  const r = await fetch(path, {
    method: "POST", cache: "no-store",
    headers: { "Authorization": `Bearer ${token()}`, "Content-Type": "application/json" },
    body: JSON.stringify(body),
  });
  let out = null;
  try { out = await r.json(); } catch (_) { /* not JSON */ }
  if (!r.ok) {
    const why = (out && out.error) || `${r.status} ${r.statusText}`;
    // 409: training holds the GPU (the daemon never shares it); the reason says what to do.
    throw new Error(r.status === 409 ? `Not now: ${why}` : why);
  }
  return out;
}

async function fillPickers() {
  let names = [];
  try {
    const r = await fetch("/api/models", { cache: "no-store" });
    names = ((await r.json()).versions || []).map((v) => v.version).reverse();
  } catch (_) { /* the pickers keep current/base */ }
  for (const [id, first] of [["try-version", "current"], ["cmp-a", "base"], ["cmp-b", "current"]]) {
    const sel = $(id);
    const keep = sel.value || first;
    sel.replaceChildren(...[...new Set([first, "current", "base", ...names])].map((n) => {
      const o = el("option", n);
      o.value = n;
      return o;
    }));
    sel.value = keep;
  }
}

async function ask(e) {
  e.preventDefault();
  const prompt = $("try-prompt").value.trim();
  if (!prompt) return;
  const btn = $("try-go");
  btn.disabled = true;
  $("try-answer").textContent = "…";
  $("try-meta").textContent = "";
  try {
    const r = await post("/api/generate", { prompt, version: $("try-version").value });
    $("try-answer").textContent = r.answer || "(empty answer)";
    $("try-meta").textContent = `${r.version}: ${r.tokens} tokens in ${Number(r.seconds).toFixed(1)} s`;
  } catch (err) {
    $("try-answer").textContent = "";
    $("try-meta").textContent = err.message;
  } finally {
    btn.disabled = false;
  }
}

function renderCompare(r) {
  const out = $("cmp-out");
  out.replaceChildren();
  const p = r.probe;
  if (p) {
    out.append(el("p", `Probe loss (token-weighted): ${r.a} ${fmt(p.total.a)} → ${r.b} ${fmt(p.total.b)}; `
      + `${p.better.length} better, ${p.worse.length} worse, `
      + `${p.examples - p.better.length - p.worse.length} within ${(r.rtol * 100).toFixed(1)}%.`));
    const t = el("table", null, "list");
    const head = el("tr");
    for (const c of ["Line", r.a, r.b, "Change"]) head.append(el("th", c));
    t.append(el("thead"));
    t.tHead.append(head);
    const body = el("tbody");
    for (const row of p.rows) {
      const tr = el("tr", null, row.change);
      tr.append(el("td", row.line, "num"), el("td", fmt(row.a), "num"), el("td", fmt(row.b), "num"),
        el("td", row.delta === null ? row.change : `${row.change} (${row.delta >= 0 ? "+" : ""}${row.delta.toFixed(4)})`));
      body.append(tr);
    }
    t.append(body);
    out.append(t);
  } else {
    out.append(el("p", "No probe set: put a probe.jsonl in the base dir to compare losses.", "muted"));
  }
  if (r.answers.length) {
    const t = el("table", null, "list answers");
    const head = el("tr");
    for (const c of ["Prompt", "Expected", r.a, r.b]) head.append(el("th", c));
    t.append(el("thead"));
    t.tHead.append(head);
    const body = el("tbody");
    for (const x of r.answers) {
      const tr = el("tr");
      tr.append(el("td", x.prompt), el("td", x.expected || "–"), el("td", x.a), el("td", x.b));
      body.append(tr);
    }
    t.append(body);
    out.append(t);
  }
}

async function compare(e) {
  e.preventDefault();
  const btn = $("cmp-go");
  btn.disabled = true;
  $("cmp-meta").textContent = "Loading both versions and scoring the probe set…";
  try {
    const r = await post("/api/compare", { a: $("cmp-a").value, b: $("cmp-b").value });
    $("cmp-meta").textContent = "";
    renderCompare(r);
  } catch (err) {
    $("cmp-meta").textContent = err.message;
  } finally {
    btn.disabled = false;
  }
}

$("try-form").addEventListener("submit", ask);
$("cmp-form").addEventListener("submit", compare);
for (const id of ["try-version", "cmp-a", "cmp-b"]) $(id).addEventListener("focus", fillPickers);
fillPickers();
