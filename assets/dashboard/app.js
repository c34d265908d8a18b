// funkrec dashboard: reads the API with the key kept in sessionStorage; draws nothing
// itself (plots are SVG from the server), fills tables as their text alternatives.
"use strict";

const KEY = "funkrec-api-key";
const $ = (id) => document.getElementById(id);
let role = null;
let shownVersion = undefined;
let ratingsUser = null;
let ratingsOffset = 0;
const PAGE = 20;

function headers() {
  const key = sessionStorage.getItem(KEY);
  return key ? { Authorization: "Bearer " + key } : {};
}

async function api(path, init) {
  const opts = Object.assign({}, init || {});
  opts.headers = Object.assign({}, opts.headers || {}, headers());
  const r = await fetch(path, opts);
  if (!r.ok) {
    let msg = r.status + " " + r.statusText;
    try { const b = await r.json(); msg = b.error.code + ": " + b.error.message; } catch (_) { /* not JSON */ }
    throw new Error(msg);
  }
  return r;
}

function cell(row, text, cls) {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  row.appendChild(td);
  return td;
}

function fill(tableId, rows, render) {
  const body = $(tableId).tBodies[0];
  body.replaceChildren();
  for (const r of rows) {
    const tr = document.createElement("tr");
    render(tr, r);
    body.appendChild(tr);
  }
}

const fmt = (x, d) => (x === null || x === undefined ? "–" : Number(x).toFixed(d === undefined ? 4 : d));

async function plot(containerId, path, label) {
  const text = await (await api(path)).text();
  const svg = new DOMParser().parseFromString(text, "image/svg+xml").documentElement;
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", label);
  $(containerId).replaceChildren(document.importNode(svg, true));
}

function itemButton(tr, item) {
  const td = document.createElement("td");
  const b = document.createElement("button");
  b.type = "button";
  b.className = "link item";
  b.textContent = item;
  b.addEventListener("click", () => showSimilar(item));
  td.appendChild(b);
  tr.appendChild(td);
}

// ---- key handling ----
function showLogin(message) {
  $("app").hidden = true;
  $("login").hidden = false;
  $("signout").hidden = true;
  $("login-error").textContent = message || "";
  $("key").focus();
}

async function start() {
  const r = await fetch("/dashboard/session", { headers: headers() });
  const s = await r.json();
  if (s.keys_required && !s.role) {
    const had = sessionStorage.getItem(KEY);
    sessionStorage.removeItem(KEY);
    showLogin(had ? "That key was not accepted: it is not one of this server's API keys." : "");
    return;
  }
  role = s.role;
  $("login").hidden = true;
  $("app").hidden = false;
  $("signout").hidden = !s.keys_required;
  $("who").textContent = s.keys_required ? "key role: " + role : "open server (no API keys configured)";
  const admin = role === "admin";
  for (const el of document.querySelectorAll(".admin")) el.hidden = !admin;
  $("admin-only").hidden = admin;
  $("role-name").textContent = role;
  $("train-now").hidden = !admin;
  if (admin) {
    await refreshModel();
    setInterval(() => refreshModel().catch(showJobError), 1500);
  }
  await refreshIngestion().catch(showIngestionError);
  setInterval(() => refreshIngestion().catch(showIngestionError), 30000);
}

function showIngestionError(e) { $("ingestion-error").textContent = "Could not read the ingestion figures: " + e.message; }

// ---- ingestion (any key) ----
async function refreshIngestion() {
  const g = await (await api("/v1/stats/ingestion")).json();
  const per = g.written_per_minute;
  const total = per.reduce((a, b) => a + b, 0);
  fill("minutes-table", per.map((n, i) => [per.length - 1 - i, n]).reverse(), (tr, [ago, n]) => {
    cell(tr, ago === 0 ? "0 (this minute so far)" : ago); cell(tr, n, "num");
  });
  const all = g.distribution.reduce((a, b) => a + b.count, 0);
  fill("distribution-table", g.distribution, (tr, b) => {
    cell(tr, fmt(b.rating, 1)); cell(tr, b.count, "num"); cell(tr, all ? fmt(100 * b.count / all, 1) + " %" : "–", "num");
  });
  $("ingestion-summary").textContent = total + " ratings written in the last hour (peak " + Math.max(...per) +
    " in a minute). Distribution: " + (all ? all + " ratings of model version " + g.model_version : "no model yet") + ".";
  $("ingestion-error").textContent = "";
  await plot("ingestion-plot", "/v1/stats/ingestion.svg",
    "Ratings written per minute over the last hour (" + total + " in all), and the rating distribution as a histogram (" +
    g.distribution.length + " bars); numbers in the tables below");
}

function showJobError(e) { $("job-message").textContent = "Could not read the model: " + e.message; }

// ---- model sections (admin) ----
async function refreshModel() {
  const m = await (await api("/v1/model")).json();
  const t = m.training;
  let state = t.running ? "running" : t.queued ? "queued" : "idle";
  if (t.running && t.epoch !== null && t.epoch !== undefined) state += ", epoch " + t.epoch + " of " + t.epochs;
  $("job-state").textContent = "State: " + state + ". Runs: " + t.runs + ", failures: " + t.failures +
    (t.last_duration_secs !== null && t.last_duration_secs !== undefined ? ", last run " + fmt(t.last_duration_secs, 2) + " s" : "") +
    (t.last_error ? ". Last error: " + t.last_error : ".");
  const bar = $("job-progress");
  bar.hidden = !t.running;
  bar.max = Math.max(1, t.epochs);
  bar.value = t.epoch || 0;
  if (m.version !== shownVersion) {
    shownVersion = m.version;
    showOverview(m);
    await showCurve(m);
    await showHistory();
  }
}

function showOverview(m) {
  const dl = $("overview-list");
  dl.replaceChildren();
  const add = (k, v) => {
    const dt = document.createElement("dt"); dt.textContent = k;
    const dd = document.createElement("dd"); dd.textContent = v;
    dl.append(dt, dd);
  };
  if (m.state !== "ready") { add("model", "none yet (recommendations use the popularity fallback)"); return; }
  const c = m.counts, h = m.hyperparameters;
  add("users", c.users); add("items", c.items); add("ratings", c.ratings);
  add("model version", m.version); add("trainer", m.trainer);
  add("hyperparameters", Object.entries(h).map(([k, v]) => k + "=" + (typeof v === "object" ? JSON.stringify(v) : v)).join(", "));
  add("train RMSE", fmt(m.train_rmse)); add("holdout RMSE", fmt(m.holdout_rmse));
  add("trained at", m.trained_at); add("training time", fmt(m.train_seconds, 2) + " s");
}

async function showCurve(m) {
  const epochs = m.epochs || [];
  fill("curve-table", epochs, (tr, e) => {
    cell(tr, e.epoch); cell(tr, fmt(e.train_rmse), "num"); cell(tr, fmt(e.validation_rmse), "num"); cell(tr, fmt(e.loss, 2), "num");
  });
  const last = epochs[epochs.length - 1];
  await plot("curve-plot", "/v1/model/curve.svg", last
    ? "Learning curve: " + epochs.length + " epochs, train RMSE from " + fmt(epochs[0].train_rmse) + " to " + fmt(last.train_rmse) +
      (last.validation_rmse !== null && last.validation_rmse !== undefined ? ", validation RMSE ends at " + fmt(last.validation_rmse) : "")
    : "Learning curve: no model yet");
}

async function showHistory() {
  const rows = await (await api("/v1/model/history")).json();
  fill("history-table", rows.versions, (tr, v) => {
    cell(tr, v.version); cell(tr, v.state, "state-" + v.state); cell(tr, v.trained_at); cell(tr, v.trainer);
    cell(tr, fmt(v.holdout_rmse), "num"); cell(tr, fmt(v.train_rmse), "num"); cell(tr, fmt(v.train_seconds, 2), "num");
    cell(tr, v.reason || "");
  });
  const rejected = rows.versions.filter((v) => v.state === "rejected").length;
  await plot("history-plot", "/v1/model/history.svg",
    "Model history: holdout RMSE and training time for " + rows.versions.length + " versions" +
    (rejected ? ", " + rejected + " rejected by the publish gate (red crosses)" : "") + " (numbers in the table below)");
}

// ---- explorer ----
async function showUser(user, offset) {
  $("explorer-error").textContent = "";
  ratingsUser = user;
  ratingsOffset = offset;
  const u = encodeURIComponent(user);
  try {
    const page = await (await api("/v1/users/" + u + "/ratings?limit=" + PAGE + "&offset=" + offset)).json();
    fill("ratings-table", page.ratings, (tr, r) => {
      itemButton(tr, r.item); cell(tr, r.rating, "num"); cell(tr, new Date(r.timestamp * 1000).toISOString().slice(0, 16).replace("T", " "));
    });
    $("ratings-range").textContent = page.total === 0 ? "(none)"
      : "(" + (offset + 1) + "–" + (offset + page.ratings.length) + " of " + page.total + ")";
    $("ratings-prev").disabled = offset === 0;
    $("ratings-next").disabled = page.next_offset === null || page.next_offset === undefined;
    const recs = await (await api("/v1/users/" + u + "/recommendations?n=10")).json();
    fill("recs-table", recs.items.map((r, i) => [i + 1, r]), (tr, [i, r]) => {
      cell(tr, i); itemButton(tr, r.item); cell(tr, fmt(r.score, 3), "num");
    });
    $("recs-fallback").textContent = recs.fallback ? "(fallback: popular items, the model does not know this user)" : "(model version " + recs.model_version + ")";
  } catch (e) {
    $("explorer-error").textContent = e.message;
  }
}

async function showSimilar(item) {
  $("similar-item").textContent = item;
  try {
    const s = await (await api("/v1/items/" + encodeURIComponent(item) + "/similar?n=10")).json();
    fill("similar-table", s.items, (tr, r) => { itemButton(tr, r.item); cell(tr, fmt(r.score, 3), "num"); });
    if (s.fallback) $("similar-item").textContent = item + " (fallback: popular items)";
  } catch (e) {
    $("explorer-error").textContent = e.message;
  }
}

// ---- wiring ----
document.addEventListener("DOMContentLoaded", () => {
  $("login-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    sessionStorage.setItem(KEY, $("key").value.trim());
    $("key").value = "";
    start();
  });
  $("signout").addEventListener("click", () => { sessionStorage.removeItem(KEY); location.reload(); });
  $("user-form").addEventListener("submit", (ev) => { ev.preventDefault(); showUser($("user").value.trim(), 0); });
  $("ratings-prev").addEventListener("click", () => showUser(ratingsUser, Math.max(0, ratingsOffset - PAGE)));
  $("ratings-next").addEventListener("click", () => showUser(ratingsUser, ratingsOffset + PAGE));
  $("train-now").addEventListener("click", async () => {
    try {
      const j = await (await api("/v1/model/train", { method: "POST" })).json();
      $("job-message").textContent = "Training requested (" + (j.job.running ? "running" : "queued") + ").";
    } catch (e) { $("job-message").textContent = "Training request refused: " + e.message; }
  });
  start().catch((e) => showLogin("The server did not answer: " + e.message));
});
