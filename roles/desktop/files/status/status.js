// The status page: polls the agent's JSON routes through nginx (/status/api/v1/...), which adds the agent's
// token on the server side. Every route may be missing (404) or lack fields: show what there is.
"use strict";

const API = "api/v1/";
const HISTORY_S = 600;
const POLL_MS = 5000;
const history = {}; // GPU index -> [{t, util, mem}]

const $ = (id) => document.getElementById(id);
const esc = (s) => String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
const num = (v) => typeof v === "number" && Number.isFinite(v);
const gib = (b) => (num(b) ? (b / 2 ** 30).toFixed(1) : "?");
const pct = (v) => (num(v) ? `${Math.round(v)} %` : "n/a");

async function get(path, options) {
  // Relative to the page's origin: a page opened with credentials in its URL must not fetch with them.
  const url = new URL(API + path, new URL(".", location.href.replace(/\/\/[^/@]*@/, "//")));
  try {
    // The header tells nginx this call comes from the page itself (a page elsewhere cannot send it).
    const response = await fetch(url, {
      credentials: "same-origin", cache: "no-store", headers: { "X-ScipionCloud-Page": "status" }, ...options,
    });
    const body = await response.json().catch(() => ({}));
    return { ok: response.ok, status: response.status, body };
  } catch (error) {
    return { ok: false, status: 0, body: { error: String(error) } };
  }
}

function unavailable(el, result, what) {
  const why = result.status === 404 ? "not available on this agent" : result.body.error || `HTTP ${result.status}`;
  el.innerHTML = `<span class="muted" data-state="unavailable">${esc(what)}: ${esc(why)}</span>`;
}

function bar(value) {
  const width = num(value) ? Math.max(0, Math.min(100, value)) : 0;
  return `<div class="bar"><i style="width:${width}%"></i></div>`;
}

function spark(canvas, points) {
  const ctx = canvas.getContext("2d");
  const w = (canvas.width = 160), h = (canvas.height = 36);
  ctx.clearRect(0, 0, w, h);
  const now = Date.now() / 1000;
  [["util", "#2f7d4a"], ["mem", "#3867b5"]].forEach(([key, colour]) => {
    ctx.strokeStyle = colour;
    ctx.beginPath();
    points.forEach((p, i) => {
      if (!num(p[key])) return;
      const x = w - ((now - p.t) / HISTORY_S) * w, y = h - (p[key] / 100) * (h - 2) - 1;
      i ? ctx.lineTo(x, y) : ctx.moveTo(x, y);
    });
    ctx.stroke();
  });
}

function renderGpus(result) {
  const el = $("gpus");
  if (!result.ok) return unavailable(el, result, "GPUs");
  const gpus = Array.isArray(result.body.gpus) ? result.body.gpus : [];
  const state = (result.body.nvml || {}).state;
  if (!gpus.length) {
    el.innerHTML = `<span class="muted" data-state="${esc(state || "none")}">No GPU reported${state ? ` (NVML: ${esc(state)})` : ""}</span>`;
    return;
  }
  const now = Date.now() / 1000;
  const rows = gpus.map((g, i) => {
    const index = num(g.index) ? g.index : i;
    const memPct = num(g.memory_used_bytes) && num(g.memory_total_bytes) && g.memory_total_bytes
      ? (100 * g.memory_used_bytes) / g.memory_total_bytes : null;
    const points = (history[index] = (history[index] || []).filter((p) => now - p.t <= HISTORY_S));
    points.push({ t: now, util: g.utilization_gpu_pct, mem: memPct });
    return `<tr data-gpu-index="${esc(index)}"><td class="gpu-name">${esc(g.name || `GPU ${index}`)}</td>
      <td class="gpu-util">${pct(g.utilization_gpu_pct)}</td><td>${bar(g.utilization_gpu_pct)}</td>
      <td class="gpu-mem">${gib(g.memory_used_bytes)} / ${gib(g.memory_total_bytes)} GiB</td>
      <td><canvas data-index="${esc(index)}"></canvas></td></tr>`;
  });
  el.innerHTML = `<table><tr><th>GPU</th><th>use</th><th></th><th>memory</th><th>history</th></tr>${rows.join("")}</table>`;
  el.querySelectorAll("canvas").forEach((c) => spark(c, history[c.dataset.index] || []));
}

function renderVolumes(result) {
  const el = $("volumes");
  if (!result.ok) return unavailable(el, result, "Volumes");
  const volumes = Array.isArray(result.body.volumes) ? result.body.volumes : [];
  if (!volumes.length) return void (el.innerHTML = '<span class="muted">No data volume attached</span>');
  el.innerHTML = `<table>${volumes.map((v) => {
    const mounts = (v.mountpoints || []).filter(Boolean).join(", ") || "not mounted";
    const warm = v.prewarm ? `${esc(v.prewarm.state || "")}` : "";
    return `<tr class="volume"><td>${esc(v.volume_id || v.path || v.name || "?")}</td><td>${gib(v.size_bytes ?? v.size)} GiB</td>
      <td>${esc(mounts)}</td><td>${warm}</td></tr>`;
  }).join("")}</table>`;
}

function renderPrewarm(result) {
  const el = $("prewarm");
  if (!result.ok) return unavailable(el, result, "Pre-warming");
  const jobs = Array.isArray(result.body.jobs) ? result.body.jobs : [];
  if (!jobs.length) return void (el.innerHTML = '<span class="muted">No pre-warm job</span>');
  el.innerHTML = `<table>${jobs.map((j) => {
    const percent = num(j.percent) ? j.percent : num(j.bytes_done) && j.bytes_total ? (100 * j.bytes_done) / j.bytes_total : null;
    const eta = num(j.eta_s) ? `ETA ${Math.round(j.eta_s)} s` : "";
    return `<tr class="prewarm-job"><td>${esc(j.volume || j.device || j.id || "?")}</td><td>${esc(j.state || "")}</td>
      <td class="prewarm-percent">${num(percent) ? percent.toFixed(1) + " %" : "n/a"}</td><td>${bar(percent)}</td>
      <td>${num(j.mb_s) ? j.mb_s + " MB/s" : ""} ${eta}</td></tr>`;
  }).join("")}</table>`;
}

function renderIdle(result) {
  const el = $("idle");
  const banner = $("idle-banner");
  if (!result.ok) {
    banner.hidden = true;
    return unavailable(el, result, "Idle detection");
  }
  const b = result.body;
  const decision = b.decision || {};
  const reasons = Array.isArray(decision.reasons) ? decision.reasons : Array.isArray(b.reasons) ? b.reasons : [];
  el.innerHTML = `<strong data-idle="${esc(b.idle)}">${b.idle ? "Idle" : "In use"}</strong>` +
    (b.since ? ` since ${esc(b.since)}` : "") +
    (decision.decision ? ` · decision: <span id="idle-decision">${esc(decision.decision)}</span>` : "") +
    (b.postponed_until ? ` · kept running until ${esc(b.postponed_until)}` : "") +
    (reasons.length ? `<br><span class="muted">${reasons.map(esc).join("<br>")}</span>` : "");
  // The warning before the idle action: time left and the button that postpones it
  const warning = b.warning || {};
  banner.hidden = !warning.active;
  if (warning.active) {
    const minutes = num(warning.seconds_left) ? Math.max(1, Math.round(warning.seconds_left / 60)) : "?";
    const action = (b.action || {}).kind || "stop";
    $("idle-banner-text").textContent =
      `Nothing has used this instance for a while: ${action} in about ${minutes} min.`;
  }
}

const money = (v) => (num(v) ? `$${v.toFixed(2)}` : "unknown");
const hours = (s) => (num(s) ? `${(s / 3600).toFixed(2)} h` : "?");

function renderUsage(result) {
  const el = $("usage");
  if (!result.ok) return unavailable(el, result, "Usage");
  const u = result.body;
  const days = Array.isArray(u.days) ? u.days.slice(-7).reverse() : [];
  const price = u.price || {};
  const rows = [];
  days.forEach((d) => {
    rows.push(`<tr class="usage-day"><th>${esc(d.date)}</th><th>${hours(d.wall_s)}</th><th class="usage-cost">${money(d.cost_usd)}</th></tr>`);
    (d.projects || []).forEach((p) => (p.protocols || []).forEach((r) => rows.push(
      `<tr class="usage-protocol"><td>${esc(p.project)} / ${esc(r.protocol)}</td>` +
      `<td>GPU ${hours(r.gpu_s)} · wall ${hours(r.wall_s)}</td><td>${money(r.cost_usd)}</td></tr>`)));
    rows.push(`<tr class="usage-other"><td>other work</td><td>${hours(d.other_s)}</td><td>${money(d.other_cost_usd)}</td></tr>`);
    rows.push(`<tr class="usage-idle"><td>idle, nobody used it</td><td>${hours(d.idle_s)}</td><td>${money(d.idle_cost_usd)}</td></tr>`);
  });
  const saved = u.saved_by_stops || {};
  el.innerHTML =
    `<p class="muted">${money(price.instance_per_hour)}/h instance + ${money(price.volumes_per_hour)}/h volumes (${esc(price.source || "?")})</p>` +
    (rows.length ? `<table>${rows.join("")}</table>` : '<span class="muted">No usage measured yet</span>') +
    `<p id="usage-saved">Idle stops: ${esc(saved.stops ?? 0)}, saved ${money(saved.saved_usd)} ` +
    `(would have cost ${money(saved.would_have_cost_usd)}, cost ${money(saved.cost_usd)})</p>`;
}

function renderData(result) {
  const el = $("data");
  if (!result.ok) return unavailable(el, result, "Movies");
  const d = result.body;
  const projects = Object.entries(d.projects || {});
  const follows = Array.isArray(d.follow) ? d.follow : [];
  if (!projects.length && !follows.length) {
    el.innerHTML = '<span class="muted">No project policy and no followed S3 prefix</span>';
    return;
  }
  const rows = projects.map(([name, p]) => `<tr class="data-project" data-project="${esc(name)}">` +
    `<td>${esc(name)}</td><td class="data-archived">${esc(p.archived ?? "?")} archived</td>` +
    `<td class="data-freed">${gib(p.bytes_freed)} GiB freed</td><td class="data-pending">${esc(p.pending ?? "?")} pending</td>` +
    `<td>${esc(p.restored ?? 0)} restored</td><td class="error">${esc(p.problem || "")}</td></tr>`);
  follows.forEach((f) => rows.push(`<tr class="data-follow"><td>${esc(f.source)} → ${esc(f.dest)}</td>` +
    `<td>${esc(f.placed ?? 0)} placed</td><td>${gib(f.bytes_placed)} GiB</td>` +
    `<td class="error">${Object.keys(f.failed || {}).length ? `${Object.keys(f.failed).length} failed` : ""}</td></tr>`));
  el.innerHTML = (d.problem ? `<p class="error">${esc(d.problem)}</p>` : "") + `<table>${rows.join("")}</table>`;
}

function renderDesktop(result) {
  const el = $("desktop");
  if (!result.ok) return unavailable(el, result, "Desktop");
  const d = result.body;
  const uptime = num(d.session_uptime_s) ? `${Math.round(d.session_uptime_s)} s` : "n/a";
  el.innerHTML = `<span data-running="${esc(d.running)}">${d.running ? "Running" : "Not running"}</span>` +
    ` on display :${esc(d.display)} · viewers: <span id="viewers">${esc(d.connected_clients ?? "?")}</span>` +
    ` · session up <span id="uptime">${uptime}</span>` +
    (d.novnc && d.novnc.reachable === false ? ' · <span class="error">websockify does not answer</span>' : "");
}

async function refresh() {
  const [gpus, volumes, prewarm, idle, desktop, usage, data] = await Promise.all(
    ["gpus", "volumes", "prewarm", "idle", "desktop", "usage", "data"].map((p) => get(p)));
  renderGpus(gpus);
  renderVolumes(volumes);
  renderPrewarm(prewarm);
  renderIdle(idle);
  renderDesktop(desktop);
  renderUsage(usage);
  renderData(data);
  $("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
  document.body.dataset.loaded = "1";
}

$("logout").addEventListener("click", async () => {
  if (!confirm("Log out of the desktop and start a fresh session? Unsaved work in open programs is lost.")) return;
  const button = $("logout");
  button.disabled = true;
  $("logout-result").textContent = "Restarting the desktop…";
  const result = await get("desktop/logout", { method: "POST" });
  $("logout-result").textContent = result.ok
    ? `A fresh desktop is ready (${result.body.seconds} s).`
    : `The desktop did not come back: ${result.body.error || "HTTP " + result.status}`;
  $("logout-result").className = result.ok ? "" : "error";
  button.disabled = false;
  refresh();
});

$("keep-running").addEventListener("click", async () => {
  const result = await get("idle/postpone", { method: "POST" });
  $("idle-banner-text").textContent = result.ok
    ? `Kept running until ${result.body.postponed_until}.`
    : `Could not postpone: ${result.body.error || "HTTP " + result.status}`;
  refresh();
});

refresh();
setInterval(refresh, POLL_MS);
