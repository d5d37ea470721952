// trainerd dashboard: the JSON API and the token.
// Reads need no token; every write sends `Authorization: Bearer <BASE/run/token>`, kept in
// this browser's localStorage only. refresh() asks app.js for a poll now (an event, so the
// modules that write need not import the one that polls).

import { $, toast } from "./format.js";

export const TOKEN_KEY = "trainerd.token";
export const token = () => localStorage.getItem(TOKEN_KEY) || "";
export const refresh = () => window.dispatchEvent(new Event("trainerd:refresh"));

export async function api(path, opts = {}) {
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

export function showTokenBar(show) {
  $("token-bar").hidden = !show;
  $("token-forget").hidden = !token();
  if (show) $("token-input").focus();
}
export function renderTokenState() {
  $("btn-token").classList.toggle("has-token", !!token());
  $("btn-token").title = token() ? "API token saved in this browser" : "Enter the API token to use the buttons";
}

// A write with the token: null (and the token bar shown) when there is no usable token.
export async function authed(path, opts, what) {
  if (!token()) {
    showTokenBar(true);
    toast("Enter the API token first (BASE/run/token).", true);
    return null;
  }
  try {
    return await api(path, { method: "POST", ...opts,
      headers: { "Authorization": `Bearer ${token()}`, ...(opts.headers || {}) } });
  } catch (e) {
    if (e.status === 401) {
      localStorage.removeItem(TOKEN_KEY);
      renderTokenState();
      showTokenBar(true);
      toast("The token was rejected; paste the current one from BASE/run/token.", true);
    } else {
      toast(`${what} failed: ${e.message}`, true);
    }
    return null;
  }
}

export function jsonBody(obj) {
  return { headers: { "Content-Type": "application/json" }, body: JSON.stringify(obj) };
}

export function wireToken() {
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
  renderTokenState();
  if (!token()) showTokenBar(true);
}
