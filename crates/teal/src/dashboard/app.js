// The dashboard: two pages behind hash routes (`#/` and `#/rollouts/NAME`), fed by
// the daemon's event stream, with the verbs behind confirmation dialogs.
//
// Rendering is string templates (escaped by `html`) written into named slots; a slot
// is only rewritten when its markup changed, and the buttons are built once per page
// and updated in place, so live updates every 2 s do not steal keyboard focus or
// reset the revision chooser.

import * as api from "./api.js";
import { legendSwatch, lineChart } from "./charts.js";
import {
  ago,
  html,
  millis,
  percent,
  rate,
  raw,
  slot,
  stageName,
  timestamp,
} from "./format.js";

const COLORS = ["blue", "green"];

const state = {
  /** RolloutView[] from the daemon; null until the first answer. */
  rollouts: null,
  /** { page: "list" } or { page: "rollout", name }. */
  route: { page: "list" },
  /** name → HistoryView, and the rollout state it was fetched for. */
  history: new Map(),
  /** name → TrafficView. */
  traffic: new Map(),
  /** name → AnalysisView (runs oldest first), and the rollout state it was fetched for. */
  analysis: new Map(),
  /** "rollout:key" → open, for the <details> a person opened or closed. */
  open: new Map(),
  /** name → what the last command said: { ok, title, lines }. */
  results: new Map(),
  /** A command is on its way: the buttons wait. */
  busy: false,
  connection: "connecting",
};

const main = document.getElementById("main");

// ---------------------------------------------------------------------------------
// Routing

function parseRoute() {
  const hash = location.hash.replace(/^#\/?/, "");
  const match = hash.match(/^rollouts\/([^/?&]+)/);
  if (match) return { page: "rollout", name: decodeURIComponent(match[1]) };
  return { page: "list" };
}

function onRouteChange() {
  state.route = parseRoute();
  buildPage();
  render();
  // Move focus to the new page's heading so keyboard and screen-reader users start
  // at the top of what changed, as they would after a real page load.
  main.querySelector("h1")?.focus({ preventScroll: true });
  window.scrollTo(0, 0);
  if (state.route.page === "rollout") {
    refreshHistory(state.route.name, true);
    refreshAnalysis(state.route.name, true);
    refreshTraffic();
  }
}

// ---------------------------------------------------------------------------------
// Slots

/**
 * Writes markup into `[data-slot=name]` when it differs from what is there. When the
 * focused element was inside, the element with the same `data-key` gets focus back.
 */
function fill(name, markup) {
  const element = main.querySelector(`[data-slot="${name}"]`);
  if (!element) return;
  const text = String(markup);
  if (element.dataset.rendered === text) return;
  const focused = element.contains(document.activeElement)
    ? document.activeElement.dataset.key
    : undefined;
  element.innerHTML = text;
  element.dataset.rendered = text;
  if (focused) element.querySelector(`[data-key="${CSS.escape(focused)}"]`)?.focus();
}

/** The skeleton of the current page; slots are filled by render(). */
function buildPage() {
  if (state.route.page === "list") {
    document.title = "Rollouts — teal";
    main.innerHTML = String(html`
      <h1 tabindex="-1">Rollouts</h1>
      <div data-slot="list"></div>
    `);
    return;
  }
  const name = state.route.name;
  document.title = `${name} — teal`;
  main.innerHTML = String(html`
    <nav class="crumbs" aria-label="Breadcrumb"><a href="#/">← All rollouts</a></nav>
    <div class="title-row">
      <h1 tabindex="-1">${name}</h1>
      <span data-slot="phase"></span>
    </div>
    <div data-slot="missing"></div>
    <section class="status-panel" data-slot="status" aria-live="polite" aria-label="Status"></section>
    <section class="actions" aria-label="Actions" id="actions">
      <div class="action">
        <button type="button" data-verb="promote" class="primary">Promote</button>
        <span class="hint" id="hint-promote"></span>
      </div>
      <div class="action">
        <button type="button" data-verb="abort" class="danger">Abort</button>
        <span class="hint" id="hint-abort"></span>
      </div>
      <div class="action">
        <button type="button" data-verb="retry">Retry</button>
        <span class="hint" id="hint-retry"></span>
      </div>
      <div class="action undo">
        <div class="undo-row">
          <button type="button" data-verb="undo">Undo</button>
          <label>to <select id="undo-target" aria-label="Revision to undo to"></select></label>
        </div>
        <span class="hint" id="hint-undo"></span>
      </div>
    </section>
    <div class="result" data-slot="result" role="status" aria-live="polite" tabindex="-1"></div>
    <section aria-labelledby="analysis-title" class="analysis-section">
      <h2 id="analysis-title">Analysis</h2>
      <div data-slot="analysis"></div>
    </section>
    <section aria-labelledby="routes-title">
      <h2 id="routes-title">Routes</h2>
      <div data-slot="routes"></div>
    </section>
    <section aria-labelledby="colors-title">
      <h2 id="colors-title">Colors</h2>
      <div class="colors" data-slot="colors"></div>
    </section>
    <section aria-labelledby="traffic-title">
      <h2 id="traffic-title">Traffic</h2>
      <div data-slot="charts"></div>
    </section>
    <div class="two-columns">
      <section aria-labelledby="history-title">
        <h2 id="history-title">History</h2>
        <div data-slot="events"></div>
      </section>
      <section aria-labelledby="revisions-title">
        <h2 id="revisions-title">Revisions</h2>
        <div data-slot="revisions"></div>
      </section>
    </div>
  `);
  for (const button of main.querySelectorAll("button[data-verb]")) {
    button.setAttribute("aria-describedby", `hint-${button.dataset.verb}`);
    button.addEventListener("click", () => onVerb(button.dataset.verb, button));
  }
}

function render() {
  const banner = document.getElementById("banner");
  banner.hidden = state.connection !== "lost";
  const live = document.getElementById("live");
  live.textContent =
    state.connection === "live" ? "live" : state.connection === "lost" ? "reconnecting…" : "connecting…";
  live.className = `live live-${state.connection}`;

  if (state.route.page === "list") renderList();
  else renderRollout(state.route.name);
}

// ---------------------------------------------------------------------------------
// Shared pieces

/** The shape, pattern and name of a color; never the hue alone. */
function colorTag(color, revision) {
  if (!color) return html`<span class="muted">none</span>`;
  return html`<span class="color-tag color-${color}"><span class="shape shape-${color}" aria-hidden="true"></span>${color}${
    revision !== undefined && revision !== null ? html` <span class="rev">r${revision}</span>` : ""
  }</span>`;
}

const PHASE_ICONS = { Healthy: "✓", Progressing: "↻", Paused: "‖", Degraded: "⚠" };

/** Paused states in which nothing moves until a person (or a webhook) acts. */
const ATTENTION_REASONS = ["AnalysisInconclusive", "WaitingPromotion"];

function phaseBadge(rollout) {
  const attention = ATTENTION_REASONS.includes(rollout.reason) ? " phase-attention" : "";
  return html`<span class="phase phase-${rollout.phase.toLowerCase()}${attention}"><span aria-hidden="true">${
    PHASE_ICONS[rollout.phase] ?? "•"
  }</span> ${rollout.phase}${rollout.reason ? html` <span class="reason">(${rollout.reason})</span>` : ""}</span>`;
}

/**
 * The state in plain words when the phase and reason alone would not say what is
 * going on or who must act: analysis holds, webhook waits, analysis running.
 */
function plainState(rollout) {
  const status = rollout.status ?? {};
  const candidate = status.candidate ?? null;
  const post = status.post_analysis ?? null;
  if (rollout.reason === "AnalysisInconclusive") {
    const revision = candidate?.slot?.revision ?? post?.revision ?? rollout.revision;
    const choice = candidate
      ? `promote to release revision ${revision} anyway, or abort it`
      : `promote to keep revision ${revision}, or abort to switch users back${
          status.retiring ? ` to ${slot(status.retiring.slot.color, status.retiring.slot.revision)}` : ""
        }`;
    return { attention: true, short: "analysis inconclusive: a person decides", text: `Paused — analysis inconclusive: a person decides (${choice}).` };
  }
  if (rollout.reason === "WaitingPromotion") {
    return {
      attention: true,
      short: "waiting for the confirm-promotion webhook",
      text: `Paused — waiting for the confirm-promotion webhook: revision ${candidate?.slot?.revision ?? rollout.revision} reaches users only once it answers 2xx.`,
    };
  }
  if (stageName(candidate?.stage) === "Analyzing") {
    return { short: "pre-promotion analysis running", text: `Analysing — pre-promotion analysis of revision ${candidate.slot.revision} decides whether it may be promoted.` };
  }
  if (!candidate && post && !post.hold) {
    return { short: "post-promotion analysis running", text: `Analysing — post-promotion analysis of revision ${post.revision}; if it fails, users are switched back at once.` };
  }
  return null;
}

/** "12 req/s · 99.5% ok · p99 4.0 ms" for one color's traffic summary. */
function trafficLine(traffic) {
  if (!traffic) return html`<span class="muted">no traffic</span>`;
  if (traffic.success_rate === null || traffic.success_rate === undefined) {
    return html`<span class="traffic"><span>${rate(traffic.requests_per_second)} req/s</span> · <span class="muted">no responses</span></span>`;
  }
  return html`<span class="traffic"><span>${rate(traffic.requests_per_second)} req/s</span> · <span>${percent(
    traffic.success_rate,
  )} ok</span> · <span>p99 ${millis(traffic.p99_ms)}</span></span>`;
}

const capitalize = (text) => (text ? `${text[0].toUpperCase()}${text.slice(1)}` : text);

function findRollout(name) {
  return state.rollouts?.find((r) => r.name === name) ?? null;
}

/** The candidate that is not aborted (what the preview route serves), if any. */
function previewSlot(rollout) {
  const candidate = rollout.status?.candidate;
  if (!candidate || stageName(candidate.stage) === "Aborted") return null;
  return candidate.slot;
}

// ---------------------------------------------------------------------------------
// The list page

function renderList() {
  if (state.rollouts === null) {
    fill("list", html`<p class="muted">Loading…</p>`);
    return;
  }
  if (state.rollouts.length === 0) {
    fill(
      "list",
      html`<div class="empty"><p>No rollouts yet.</p><p>Create one with <code>teal apply -f shop.yaml</code>; it shows up here at once.</p></div>`,
    );
    return;
  }
  const rows = state.rollouts.map((rollout) => {
    const traffic = COLORS.map((color) => rollout.traffic?.find((t) => t.color === color)).filter(Boolean);
    return html`<tr data-rollout="${rollout.name}" class="${rollout.phase === "Degraded" ? "row-degraded" : ""}">
      <th scope="row" data-label="Rollout"><a href="#/rollouts/${encodeURIComponent(rollout.name)}" data-key="link-${rollout.name}">${rollout.name}</a></th>
      <td data-label="Phase">${phaseBadge(rollout)}${analysingMarker(rollout)}${
        plainState(rollout)?.attention ? html`<div class="phase-note">${plainState(rollout).short}</div>` : ""
      }</td>
      <td data-label="Active" class="cell-active">${
        rollout.active_color
          ? html`${colorTag(rollout.active_color)} <span class="rev-text">revision ${rollout.active_revision}</span>`
          : html`<span class="muted">nothing live</span>`
      }</td>
      <td data-label="Preview" class="cell-preview">${
        rollout.preview_revision !== null && rollout.preview_revision !== undefined
          ? html`revision ${rollout.preview_revision}`
          : html`<span class="muted">none</span>`
      }</td>
      <td data-label="Changed">${ago(rollout.updated_at_ms)}</td>
      <td data-label="Traffic (10 s)" class="cell-traffic">${
        traffic.length === 0
          ? html`<span class="muted">no traffic</span>`
          : traffic.map((t) => html`<div class="traffic-row">${colorTag(t.color)} ${trafficLine(t)}</div>`)
      }</td>
    </tr>`;
  });
  fill(
    "list",
    html`<table class="rollouts">
      <thead><tr><th scope="col">Rollout</th><th scope="col">Phase</th><th scope="col">Active</th><th scope="col">Preview</th><th scope="col">Changed</th><th scope="col">Traffic (last 10 s)</th></tr></thead>
      <tbody>${rows}</tbody>
    </table>`,
  );
}

/** A small marker while the rollout's latest analysis run is measuring. */
function analysingMarker(rollout) {
  const run = rollout.analysis;
  if (!run || run.phase !== "Running") return "";
  return html` <span class="analysing" title="${run.kind} analysis of revision ${run.revision} is running (${run.templates})"><span aria-hidden="true">↻</span> analysing</span>`;
}

// ---------------------------------------------------------------------------------
// The rollout page

function renderRollout(name) {
  const rollout = findRollout(name);
  if (state.rollouts !== null && !rollout) {
    fill(
      "missing",
      html`<div class="notice notice-warning" role="alert">There is no rollout named <strong>${name}</strong> (it may have been deleted). <a href="#/">See all rollouts</a>.</div>`,
    );
  } else {
    fill("missing", "");
  }
  if (!rollout) {
    updateActions(null);
    return;
  }
  fill("phase", phaseBadge(rollout));
  fill("status", statusPanel(rollout));
  fill("routes", routesPanel(rollout));
  fill("colors", html`${COLORS.map((color) => colorCard(rollout, color))}`);
  fill("charts", chartsPanel(name));
  fill("result", resultPanel(name));
  fill("analysis", analysisPanel(state.analysis.get(name)?.view, name));
  const history = state.history.get(name);
  fill("events", eventsPanel(history?.view));
  fill("revisions", revisionsPanel(rollout, history?.view));
  updateActions(rollout);
  // History and analysis follow the rollout: fetch again whenever it changed.
  refreshHistory(name, false);
  refreshAnalysis(name, false);
}

function statusPanel(rollout) {
  const problems = rollout.colors
    .flatMap((c) => c.instances.map((i) => ({ color: c.color, ...i })))
    .filter((i) => i.problem);
  const plain = plainState(rollout);
  const kind = rollout.phase === "Degraded" ? "warning" : plain?.attention ? "attention" : rollout.phase.toLowerCase();
  return html`<div class="status status-${kind}">
    ${plain ? html`<p class="plain">${plain.attention ? html`<span class="attention-icon" aria-hidden="true">‖</span> ` : ""}${plain.text}</p>` : ""}
    <p class="message">${rollout.phase === "Degraded" ? html`<span class="warn-icon" aria-hidden="true">⚠</span> ` : ""}${rollout.message}</p>
    <p class="facts">
      ${phaseBadge(rollout)}
      <span>newest revision ${rollout.revision}</span>
      <span>users on ${rollout.active_color ? html`${colorTag(rollout.active_color)} revision ${rollout.active_revision}` : "nothing yet"}</span>
      <span>changed ${ago(rollout.updated_at_ms)}</span>
    </p>
    ${
      problems.length
        ? html`<div class="problems"><h3>Instance problems</h3><ul>${problems.map(
            (p) => html`<li>${colorTag(p.color)} <code>${p.id}</code>: ${p.problem}</li>`,
          )}</ul></div>`
        : ""
    }
  </div>`;
}

/**
 * Where the proxy sends each route right now (`routes`, which follows the status
 * within a reconcile pass), or, from a daemon without it, what the status implies.
 */
function currentRoutes(rollout) {
  if (rollout.routes) return rollout.routes;
  return { active: rollout.active_color ?? null, preview: previewSlot(rollout)?.color ?? null };
}

/** Where a listener is reached: `https://` when it terminates TLS. */
function url(tls, address) {
  return `${tls ? "https" : "http"}://${address}`;
}

function routesPanel(rollout) {
  const routes = currentRoutes(rollout);
  const revisionOf = (color) => rollout.colors.find((c) => c.color === color)?.revision ?? null;
  const active = routes.active ? { color: routes.active, revision: revisionOf(routes.active) } : null;
  const preview = routes.preview ? { color: routes.preview, revision: revisionOf(routes.preview) } : null;
  // The preview address serves the active color when nothing is in preview, and
  // after an abort testers are sent back to the active color too.
  const previewTarget = preview ?? active;
  const readyIn = (color) => rollout.colors.find((c) => c.color === color)?.ready ?? 0;
  const target = (t, why) => {
    if (!t) return html`<span class="muted">nothing yet (answers 503)</span>`;
    return html`${colorTag(t.color)}${t.revision !== null ? ` revision ${t.revision}` : ""}${
      readyIn(t.color) === 0 ? html` <span class="bad">— no ready instance, answers 503</span>` : ""
    }${why ? html` <span class="muted">(${why})</span>` : ""}`;
  };
  const fallback = preview ? "" : "nothing in preview: same as users";
  const rows = [
    html`<li><span class="who">Users</span> <code>${url(rollout.active_tls, rollout.active_listen)}</code> <span class="arrow" aria-label="goes to">→</span> ${target(active)}</li>`,
  ];
  if (rollout.preview_listen) {
    rows.push(
      html`<li><span class="who">Testers</span> <code>${url(rollout.preview_tls, rollout.preview_listen)}</code> <span class="arrow" aria-label="goes to">→</span> ${target(previewTarget, fallback)}</li>`,
    );
  }
  for (const match of rollout.preview_match ?? []) {
    rows.push(
      html`<li><span class="who">Testers</span> <code>${url(rollout.active_tls, rollout.active_listen)}</code> with <code>${match}</code> <span class="arrow" aria-label="goes to">→</span> ${target(previewTarget, fallback)}</li>`,
    );
  }
  return html`<ul class="routes">${rows}</ul>`;
}

const ROLE_TEXT = {
  active: "serves users",
  preview: "in preview for testers",
  warm: "previous version, kept warm for an instant undo",
  aborted: "aborted: users never reached it",
  stopping: "being stopped: finishing its requests and connections",
};

function colorCard(rollout, color) {
  const view = rollout.colors.find((c) => c.color === color);
  const traffic = rollout.traffic?.find((t) => t.color === color);
  if (!view) {
    return html`<article class="color-card card-${color} card-idle" data-color="${color}" aria-label="${color}">
      <header class="card-head"><h3>${colorTag(color)}</h3><span class="role role-idle">idle</span></header>
      <p class="muted">Runs nothing.</p>
    </article>`;
  }
  const retiring = rollout.status?.retiring;
  const warmUntil =
    view.role === "warm" && retiring?.slot?.color === color
      ? html`<p class="muted">Stopped ${retiring.stop_at > Date.now() ? `in ${Math.ceil((retiring.stop_at - Date.now()) / 1000)} s` : "now"} (${timestamp(retiring.stop_at)}).</p>`
      : "";
  const instances = view.instances.length
    ? html`<table class="instances">
        <thead><tr><th scope="col">Instance</th><th scope="col">Ready</th><th scope="col">Pid</th><th scope="col">Restarts</th><th scope="col">Address</th></tr></thead>
        <tbody>${view.instances.map(
          (i) => html`<tr class="${i.ready ? "" : "not-ready"}">
            <td data-label="Instance"><code>${i.id}</code></td>
            <td data-label="Ready">${i.ready ? html`<span class="ok">✓ ready</span>` : html`<span class="bad">✗ not ready</span>`}</td>
            <td data-label="Pid">${i.pid ?? "–"}</td>
            <td data-label="Restarts">${i.restarts}</td>
            <td data-label="Address"><code>${i.addr}</code></td>
          </tr>${i.problem ? html`<tr class="problem-row"><td colspan="5"><span class="bad">Problem:</span> ${i.problem}</td></tr>` : ""}`,
        )}</tbody>
      </table>`
    : html`<p class="muted">No instance yet.</p>`;
  return html`<article class="color-card card-${color} role-card-${view.role}" data-color="${color}" data-role="${view.role}" aria-label="${color}, ${view.role}">
    <header class="card-head">
      <h3>${colorTag(color)} <span class="card-rev">revision ${view.revision}</span></h3>
      <span class="role role-${view.role}">${view.role}</span>
    </header>
    <p class="role-text">${ROLE_TEXT[view.role] ?? view.role} · ${view.ready}/${view.replicas} ready</p>
    ${warmUntil}
    <p class="card-traffic">${trafficLine(traffic)}</p>
    ${instances}
  </article>`;
}

/** Charts are drawn at the width of their container, measured here. */
function chartsPanel(name) {
  const traffic = state.traffic.get(name);
  if (!traffic) return html`<p class="muted">Loading traffic…</p>`;
  const samples = traffic.samples ?? [];
  if (samples.length === 0) {
    return html`<p class="muted">No traffic measured yet. Requests through the users' or testers' address show up here within a second.</p>`;
  }
  const to = samples[samples.length - 1].at_ms;
  // At least 30 s (so a fresh daemon's few samples do not fill the chart with a
  // misleading slope), at most the 5 minutes the daemon keeps.
  const from = Math.max(samples[0].at_ms, to - 5 * 60_000);
  const span = Math.max(30_000, to - from);
  const container = main.querySelector('[data-slot="charts"]');
  const columns = container && container.clientWidth >= 900 ? 3 : 1;
  const width = ((container?.clientWidth || 600) - (columns - 1) * 16) / columns;
  const metrics = [
    {
      key: "rps",
      title: "Requests per second",
      value: (c) => c.requests_per_second,
      format: (v) => rate(v),
      floorMax: 1,
    },
    {
      key: "errors",
      title: "Error rate (5xx)",
      value: (c) => (c.success_rate === null || c.success_rate === undefined ? null : (1 - c.success_rate) * 100),
      format: (v) => `${v >= 10 ? Math.round(v) : v.toFixed(1)}%`,
      floorMax: 1,
    },
    {
      key: "p99",
      title: "p99 latency",
      value: (c) => c.p99_ms ?? null,
      format: (v) => (v >= 1000 ? `${(v / 1000).toFixed(1)} s` : `${Math.round(v)} ms`),
      floorMax: 10,
    },
  ];
  const figures = metrics.map((metric) => {
    const series = COLORS.map((color) => ({
      color,
      points: samples.map((s) => {
        const c = s.colors.find((x) => x.color === color);
        return [s.at_ms, c ? metric.value(c) : null];
      }),
    })).filter((s) => s.points.some(([, v]) => v !== null));
    const latest = series.map((s) => {
      const last = [...s.points].reverse().find(([, v]) => v !== null);
      return `${s.color} ${last ? metric.format(last[1]) : "–"}`;
    });
    const label = `${metric.title} per color over the last ${span >= 60_000 ? `${Math.round(span / 60_000)} min` : `${Math.round(span / 1000)} s`}; latest: ${latest.join(", ") || "no data"}`;
    return html`<figure class="chart-figure" data-chart="${metric.key}">
      <figcaption><strong>${metric.title}</strong>
        <span class="legend">${COLORS.map(
          (color) => html`<span class="legend-item">${raw(legendSwatch(color))} ${color}${
            color === "blue" ? " (solid)" : " (dashed)"
          }</span>`,
        )}</span>
      </figcaption>
      ${raw(lineChart({ label, width, from: to - span, to, floorMax: metric.floorMax, format: metric.format, series }))}
      <p class="chart-latest">Latest: ${latest.join(" · ") || "no data"}</p>
    </figure>`;
  });
  return html`<div class="charts charts-${columns}">${figures}</div>`;
}

function resultPanel(name) {
  const result = state.results.get(name);
  if (!result) return "";
  return html`<div class="notice ${result.ok ? "notice-ok" : "notice-error"}">
    <strong>${result.title}</strong>
    ${result.lines.length ? html`<ul>${result.lines.map((line) => html`<li>${line}</li>`)}</ul>` : ""}
  </div>`;
}

function eventsPanel(history) {
  if (!history) return html`<p class="muted">Loading history…</p>`;
  if (!history.events.length) return html`<p class="muted">Nothing recorded yet.</p>`;
  const events = [...history.events].reverse();
  return html`<ol class="timeline">${events.map(
    (e) => html`<li class="${/abort|deadline|fail|crash/i.test(e.message) ? "event-bad" : ""}">
      <time datetime="${new Date(e.at_ms).toISOString()}">${timestamp(e.at_ms)}</time>
      <span class="cause cause-${e.cause}">${e.cause}</span>
      <span class="event-message">${e.message}</span>
    </li>`,
  )}</ol>`;
}

function revisionsPanel(rollout, history) {
  if (!history) return html`<p class="muted">Loading revisions…</p>`;
  const preview = previewSlot(rollout);
  const retiring = rollout.status?.retiring?.slot;
  const tags = (r) => {
    const out = [];
    if (r.revision === rollout.active_revision) out.push(html`<span class="tag">users</span>`);
    if (preview && r.revision === preview.revision) out.push(html`<span class="tag">preview</span>`);
    if (retiring && r.revision === retiring.revision) out.push(html`<span class="tag">warm</span>`);
    return out;
  };
  return html`<table class="revisions">
    <thead><tr><th scope="col">Revision</th><th scope="col">Recorded</th><th scope="col">Source</th><th scope="col">Command</th></tr></thead>
    <tbody>${[...history.revisions].reverse().map(
      (r) => html`<tr>
        <th scope="row" data-label="Revision">${r.revision} ${tags(r)}</th>
        <td data-label="Recorded"><time datetime="${new Date(r.created_at_ms).toISOString()}">${ago(r.created_at_ms)}</time></td>
        <td data-label="Source">${r.source}</td>
        <td data-label="Command"><code class="command">${r.command.join(" ")}</code></td>
      </tr>`,
    )}</tbody>
  </table>`;
}

// ---------------------------------------------------------------------------------
// Analysis

/** Each verdict has an icon and a word; the hue only repeats them. */
const VERDICTS = {
  Pending: { icon: "…", word: "pending" },
  Running: { icon: "↻", word: "running" },
  Successful: { icon: "✓", word: "successful" },
  Failed: { icon: "✗", word: "failed" },
  Error: { icon: "!", word: "error" },
  Inconclusive: { icon: "?", word: "inconclusive" },
};

const isFinal = (phase) => ["Successful", "Failed", "Error", "Inconclusive"].includes(phase);

/** A run's or a metric's phase: icon, word and a style per verdict. */
function verdictBadge(phase) {
  return html`<span class="verdict verdict-${String(phase).toLowerCase()}"><span aria-hidden="true">${
    VERDICTS[phase]?.icon ?? "•"
  }</span> ${phase}</span>`;
}

const KIND_TEXT = { "pre-promotion": "Pre-promotion", "post-promotion": "Post-promotion" };

/** "4 s", "2 min 5 s". */
function duration(ms) {
  const seconds = Math.max(0, Math.round(ms / 1000));
  if (seconds < 60) return `${seconds} s`;
  const minutes = Math.floor(seconds / 60);
  return seconds % 60 ? `${minutes} min ${seconds % 60} s` : `${minutes} min`;
}

/** Whether a <details> is open: what the person chose, else `fallback`. */
function isOpen(name, key, fallback) {
  return state.open.get(`${name}:${key}`) ?? fallback;
}

function analysisPanel(view, name) {
  if (!view) return html`<p class="muted">Loading analysis…</p>`;
  if (!view.runs?.length) {
    return html`<div class="analysis-empty"><p><strong>No analysis runs</strong></p><p class="muted">Add <code>prePromotionAnalysis</code> (checks the preview before users are switched) or <code>postPromotionAnalysis</code> (checks the new revision after the switch, with the old color kept warm) under <code>spec.strategy.blueGreen</code>, naming AnalysisTemplates.</p></div>`;
  }
  const runs = [...view.runs].reverse();
  return html`<div class="analysis-runs">${runs.map((run, index) => runPanel(run, name, index === 0))}</div>`;
}

function runPanel(run, name, newest) {
  const key = `run-${run.id}`;
  const open = isOpen(name, key, newest);
  const final = isFinal(run.phase);
  const took = final
    ? `took ${duration(run.updated_at_ms - run.started_at_ms)}`
    : `running for ${duration(Date.now() - run.started_at_ms)}`;
  const bad = run.phase === "Failed" || run.phase === "Error";
  return html`<details class="run run-${run.phase.toLowerCase()}" data-run="${run.id}" data-toggle="${key}"${
    open ? raw(" open") : ""
  }>
    <summary data-key="${key}">
      <span class="run-title">${KIND_TEXT[run.kind] ?? run.kind} analysis of revision ${run.revision}</span>
      ${verdictBadge(run.phase)}
      <span class="run-facts muted">templates <code>${run.templates}</code> · started <time datetime="${new Date(
        run.started_at_ms,
      ).toISOString()}">${timestamp(run.started_at_ms)}</time> · ${took}</span>
    </summary>
    <div class="run-body">
      ${
        run.message
          ? html`<p class="run-message ${bad ? "run-message-bad" : ""}">${bad ? html`<span aria-hidden="true">⚠ </span>` : ""}${run.message}</p>`
          : ""
      }
      ${metricsTable(run, name)}
    </div>
  </details>`;
}

function metricsTable(run, name) {
  if (!run.metrics?.length) return html`<p class="muted">No metrics.</p>`;
  return html`<table class="metrics">
    <thead><tr><th scope="col">Metric</th><th scope="col">Measures</th><th scope="col">Condition</th><th scope="col">Phase</th><th scope="col">Counts</th><th scope="col">Latest measurements</th></tr></thead>
    <tbody>${run.metrics.map((metric) => metricRow(run, metric, name))}</tbody>
  </table>
  <p class="counts-legend muted">Counts: ✓ successful · ✗ failed · ? inconclusive · ! error. A measurement's tooltip says why it got its verdict.</p>`;
}

function metricRow(run, metric, name) {
  const conditions = [];
  if (metric.success_condition) conditions.push(html`<div>pass if <code>${metric.success_condition}</code></div>`);
  if (metric.failure_condition) conditions.push(html`<div>fail if <code>${metric.failure_condition}</code></div>`);
  const count = (icon, n, word) =>
    html`<span class="count${n > 0 ? ` count-${word}` : ""}" title="${n} ${word}"><span aria-hidden="true">${icon}</span><span class="sr-only">${word}</span> ${n}</span>`;
  // The API keeps the latest measurements, oldest first; the last few are enough here.
  const latest = (metric.measurements ?? []).slice(-6);
  const withOutput = [...(metric.measurements ?? [])].reverse().find((m) => m.output);
  const outputKey = `out-${run.id}-${metric.name}`;
  return html`<tr data-metric="${metric.name}">
    <th scope="row" data-label="Metric">${metric.name}</th>
    <td data-label="Measures" class="cell-measures"><span class="provider">${metric.provider}</span> <code class="measures">${metric.measures}</code></td>
    <td data-label="Condition" class="cell-condition">${conditions.length ? conditions : html`<span class="muted">none</span>`}</td>
    <td data-label="Phase" class="cell-phase">${verdictBadge(metric.phase)}${
      // The run's message already is this one when this metric decided the run.
      metric.message && run.message !== `metric "${metric.name}": ${metric.message}`
        ? html`<div class="metric-message">${metric.message}</div>`
        : ""
    }</td>
    <td data-label="Counts" class="counts">${count("✓", metric.successful, "successful")} ${count("✗", metric.failed, "failed")} ${count(
      "?",
      metric.inconclusive,
      "inconclusive",
    )} ${count("!", metric.errors, "errors")}</td>
    <td data-label="Latest">${
      latest.length
        ? html`<ol class="measurements">${latest.map(measurementChip)}</ol>`
        : html`<span class="muted">none yet</span>`
    }${
      withOutput
        ? html`<details class="job-output" data-toggle="${outputKey}"${isOpen(name, outputKey, false) ? raw(" open") : ""}>
            <summary data-key="${outputKey}">Job output <span class="muted">(${timestamp(withOutput.finished_at_ms)})</span></summary>
            <pre>${withOutput.output}</pre>
          </details>`
        : ""
    }</td>
  </tr>`;
}

/** A measured value for a chip: long decimals shortened (the title has it whole). */
function shortValue(value) {
  if (value === null || value === undefined) return "–";
  if (/^-?\d+\.\d{5,}$/.test(value)) return String(Number(Number(value).toPrecision(4)));
  return value.length > 24 ? `${value.slice(0, 23)}…` : value;
}

function measurementChip(m) {
  const verdict = VERDICTS[m.phase] ?? { icon: "•", word: String(m.phase).toLowerCase() };
  const title = `${m.phase}${m.value !== null && m.value !== undefined ? ` (${m.value})` : ""}${
    m.message ? `: ${m.message}` : ""
  } — ${timestamp(m.finished_at_ms || m.started_at_ms)}`;
  return html`<li class="measurement measurement-${String(m.phase).toLowerCase()}" title="${title}"><span class="m-value">${shortValue(
    m.value,
  )}</span> <span aria-hidden="true">${verdict.icon}</span><span class="sr-only">${verdict.word}${m.message ? `: ${m.message}` : ""}</span></li>`;
}

// ---------------------------------------------------------------------------------
// Buttons: what makes sense now, and what each would change

/**
 * For each verb: whether it makes sense now and, if not, why (shown under the
 * button), plus the confirmation text and request body when it does.
 */
function plans(rollout) {
  const status = rollout?.status ?? {};
  const candidate = status.candidate ?? null;
  const stage = stageName(candidate?.stage);
  const stable = status.stable ?? null;
  const from = stable ? slot(stable.color, stable.revision) : "nothing";
  const out = {};

  if (!rollout) {
    for (const verb of ["promote", "abort", "retry", "undo"]) out[verb] = { why: "no such rollout" };
    return out;
  }

  // After a switch, post-promotion analysis decides unless a person does: promote
  // keeps the revision, abort switches users back to the warm color.
  const post = !candidate ? (status.post_analysis ?? null) : null;
  const warm = status.retiring?.slot ?? null;

  // Promote: only a candidate that is starting or paused in preview.
  if (post)
    out.promote = {
      title: `Promote revision ${post.revision}`,
      text: `Promote revision ${post.revision}: users stay on ${from}, and post-promotion analysis no longer decides.${
        warm ? ` ${warm.color} (revision ${warm.revision}) is stopped after its scale-down delay.` : ""
      }`,
      extra: post.hold ? `${capitalize(post.hold)}: you decide.` : "Post-promotion analysis is still running.",
      body: { revision: post.revision },
    };
  else if (!candidate) out.promote = { why: "nothing is in preview" };
  else if (stage === "Aborted") out.promote = { why: `revision ${candidate.slot.revision} was aborted; retry it first` };
  else if (stage === "ScalingUp") out.promote = { why: `revision ${candidate.slot.revision} is already being promoted` };
  else if (stage === "AwaitingConfirmation")
    out.promote = { why: `revision ${candidate.slot.revision} is promoted and waits for the confirm-promotion webhook` };
  else if (candidate.promote_requested)
    out.promote = {
      why:
        stage === "Analyzing"
          ? "promote already requested; it happens if pre-promotion analysis passes"
          : "promote already requested; it happens when ready",
    };
  else {
    const to = slot(candidate.slot.color, candidate.slot.revision);
    const whenReady =
      stage === "Analyzing"
        ? ` Pre-promotion analysis is running: the switch happens only if it passes.`
        : stage !== "Starting"
          ? ""
          : candidate.deadline_exceeded
            ? ` ${candidate.slot.color} missed its progress deadline: the switch happens only if it ever becomes ready.`
            : ` ${candidate.slot.color} is not ready yet: the switch happens as soon as it is.`;
    out.promote = {
      title: `Promote revision ${candidate.slot.revision}`,
      text: stable
        ? `Promote revision ${candidate.slot.revision}: users move from ${from} to ${to}.${whenReady}`
        : `Promote revision ${candidate.slot.revision}: users are sent to ${to}.${whenReady}`,
      extra: [
        candidate.hold ? `${capitalize(candidate.hold)}: you decide.` : "",
        stable ? `${stable.color} stays warm for a while, so an undo is instant.` : "",
      ]
        .filter(Boolean)
        .join(" "),
      body: { revision: candidate.slot.revision },
    };
  }

  // Abort: a candidate that is not aborted already, or a revision under
  // post-promotion analysis.
  if (post)
    out.abort = {
      title: `Abort revision ${post.revision}`,
      text: warm
        ? `Abort revision ${post.revision}: users are switched back to ${slot(warm.color, warm.revision)} at once, and ${from} is stopped.`
        : `Abort revision ${post.revision}: post-promotion analysis stops; no warm color is left to switch back to.`,
      danger: true,
      body: null,
    };
  else if (!candidate) out.abort = { why: "nothing is being released" };
  else if (stage === "Aborted") out.abort = { why: `revision ${candidate.slot.revision} is already aborted` };
  else
    out.abort = {
      title: `Abort revision ${candidate.slot.revision}`,
      text: `Abort revision ${candidate.slot.revision}: users stay on ${from}, testers are sent there too, and ${slot(
        candidate.slot.color,
        candidate.slot.revision,
      )} is stopped.`,
      danger: true,
      body: null,
    };

  // Retry: only an aborted candidate.
  if (stage !== "Aborted") out.retry = { why: "nothing was aborted" };
  else
    out.retry = {
      title: `Retry revision ${candidate.slot.revision}`,
      text: `Retry revision ${candidate.slot.revision}: it starts again in ${candidate.slot.color} and goes to preview; users stay on ${from}.`,
      body: null,
    };

  // Undo: needs something live and an earlier template to go back to.
  const history = state.history.get(rollout.name)?.view;
  const target = undoTarget(rollout, history);
  if (!stable) out.undo = { why: "nothing is live yet" };
  else if (!history) out.undo = { why: "loading revisions…" };
  else if (!target) out.undo = { why: "no earlier revision to go back to" };
  else {
    const retiring = status.retiring;
    const warm =
      retiring && retiring.slot.template_hash === target.template_hash && retiring.ready > 0
        ? retiring.slot
        : null;
    const next = status.revision + 1;
    out.undo = {
      title: `Undo to revision ${target.revision}`,
      text: warm
        ? `Undo to revision ${target.revision}: users move from ${from} back to ${warm.color} (revision ${warm.revision}) at once, because ${warm.color} still runs it warm. It is recorded as revision ${next}.`
        : `Undo to revision ${target.revision}: its template is released again as revision ${next} in ${
            stable.color === "blue" ? "green" : "blue"
          }${candidate ? `, replacing revision ${candidate.slot.revision}` : ""}; users stay on ${from} until it is promoted.`,
      danger: true,
      body: { to_revision: target.revision },
    };
  }
  return out;
}

/**
 * Whether a revision can be undone to: undo releases an *earlier* template again, so
 * it must be older than the live revision and run something else.
 */
function undoable(revision, stable) {
  return Boolean(stable) && revision.revision < stable.revision && revision.template_hash !== stable.template_hash;
}

/** The revision chosen in the chooser, if it is a valid undo target. */
function undoTarget(rollout, history) {
  if (!history) return null;
  const select = document.getElementById("undo-target");
  const chosen = Number(select?.value);
  const stable = rollout.status?.stable;
  return history.revisions.find((r) => r.revision === chosen && undoable(r, stable)) ?? null;
}

/** Keeps the revision chooser in step with the history, keeping the person's choice. */
function updateUndoChooser(rollout) {
  const select = document.getElementById("undo-target");
  if (!select) return;
  const history = state.history.get(rollout?.name)?.view;
  const stable = rollout?.status?.stable;
  // Newer revisions than the live one (a candidate) are not listed: promote or
  // abort is what applies to them.
  const revisions = history && stable ? [...history.revisions].reverse().filter((r) => r.revision <= stable.revision) : [];
  const options = revisions.map((r) => {
    const note =
      r.revision === stable.revision
        ? " (users are on it)"
        : r.template_hash === stable.template_hash
          ? " (same as live)"
          : "";
    return { value: String(r.revision), label: `revision ${r.revision}${note} — ${r.source}`, disabled: !undoable(r, stable) };
  });
  const signature = JSON.stringify(options);
  if (select.dataset.signature !== signature) {
    const previous = select.value;
    select.replaceChildren(
      ...options.map((o) => {
        const option = document.createElement("option");
        option.value = o.value;
        option.textContent = o.label;
        option.disabled = o.disabled;
        return option;
      }),
    );
    select.dataset.signature = signature;
    // Keep the person's choice; otherwise pick what the daemon would: the newest
    // revision before the live one with another template.
    const keep = options.find((o) => o.value === previous && !o.disabled);
    const fallback = options.find((o) => !o.disabled);
    select.value = keep ? keep.value : (fallback?.value ?? "");
  }
  select.disabled = state.busy || !options.some((o) => !o.disabled);
}

function updateActions(rollout) {
  updateUndoChooser(rollout);
  const current = plans(rollout);
  for (const button of main.querySelectorAll("button[data-verb]")) {
    const plan = current[button.dataset.verb];
    button.disabled = state.busy || Boolean(plan.why);
    const hint = document.getElementById(`hint-${button.dataset.verb}`);
    const text = state.busy ? "" : (plan.why ?? "");
    if (hint && hint.textContent !== text) hint.textContent = text;
  }
}

// ---------------------------------------------------------------------------------
// Dialogs

/**
 * Shows a modal <dialog> and resolves with its returnValue when it closes. showModal
 * makes the rest of the page inert (focus stays inside) and Escape closes it.
 */
function showDialog(dialog) {
  return new Promise((resolve) => {
    dialog.returnValue = "";
    dialog.addEventListener("close", () => resolve(dialog.returnValue), { once: true });
    dialog.showModal();
  });
}

async function confirmDialog(plan) {
  const dialog = document.getElementById("confirm");
  dialog.querySelector("#confirm-title").textContent = `${plan.title}?`;
  dialog.querySelector("#confirm-text").textContent = plan.text;
  const extra = dialog.querySelector("#confirm-extra");
  extra.textContent = plan.extra ?? "";
  extra.hidden = !plan.extra;
  const ok = dialog.querySelector("#confirm-ok");
  ok.textContent = plan.title;
  ok.className = plan.danger ? "danger" : "primary";
  return (await showDialog(dialog)) === "confirm";
}

/** Asks for the API token; resolves with it, or null when the person cancels. */
async function askToken(problem) {
  const dialog = document.getElementById("token-dialog");
  const input = dialog.querySelector("#token-input");
  const error = dialog.querySelector("#token-error");
  input.value = "";
  error.textContent = problem ?? "";
  error.hidden = !problem;
  const answer = await showDialog(dialog);
  const token = input.value.trim();
  input.value = ""; // do not leave the token in the DOM
  if (answer !== "use" || !token) return null;
  api.storeToken(token);
  return token;
}

// ---------------------------------------------------------------------------------
// Running a verb

const PAST = { promote: "Promote", abort: "Abort", retry: "Retry", undo: "Undo" };

async function onVerb(verb, button) {
  const name = state.route.name;
  const rollout = findRollout(name);
  const plan = plans(rollout)[verb];
  if (!plan || plan.why) return;
  if (!(await confirmDialog(plan))) {
    button.focus();
    return;
  }

  let token = api.storedToken() ?? (await askToken());
  state.busy = true;
  state.results.set(name, { ok: true, title: `${PAST[verb]}: sending…`, lines: [] });
  render();
  try {
    for (;;) {
      if (!token) {
        state.results.set(name, {
          ok: false,
          title: `${PAST[verb]} was not sent: the daemon needs its API token.`,
          lines: [],
        });
        return;
      }
      try {
        const response = await api.command(name, verb, plan.body, token);
        // The answer carries the rollout as it is now: show it without waiting for
        // the next event.
        mergeRollout(response.rollout);
        state.results.set(name, {
          ok: true,
          title: `${plan.title}: done.`,
          lines: response.notes ?? [],
        });
        return;
      } catch (error) {
        if (error instanceof api.ApiError && error.status === 401) {
          // A wrong or outdated token: forget it and ask again; the same command is
          // sent once the person gives another.
          api.clearToken();
          token = await askToken(`The daemon refused the token: ${error.message}`);
          continue;
        }
        state.results.set(name, {
          ok: false,
          title: error.message,
          lines: error.details ?? [],
        });
        return;
      }
    }
  } finally {
    state.busy = false;
    render();
    refreshHistory(name, true);
    refreshAnalysis(name, true);
    // Keep keyboard users where they were, unless that button is disabled now.
    if (!button.disabled) button.focus();
    else main.querySelector('[data-slot="result"]')?.focus?.();
  }
}

function mergeRollout(rollout) {
  if (!rollout || !state.rollouts) return;
  const index = state.rollouts.findIndex((r) => r.name === rollout.name);
  if (index >= 0) state.rollouts[index] = rollout;
  else state.rollouts.push(rollout);
}

// ---------------------------------------------------------------------------------
// Fetching what the event stream does not carry

const historyInFlight = new Set();

/** Fetches the history when the rollout changed since the last fetch (or `force`). */
async function refreshHistory(name, force) {
  const rollout = findRollout(name);
  const key = rollout ? `${rollout.revision}:${rollout.updated_at_ms}` : "";
  const known = state.history.get(name);
  if (!force && known && known.key === key) return;
  if (historyInFlight.has(name)) return;
  historyInFlight.add(name);
  let view;
  try {
    view = await api.getHistory(name);
  } catch {
    // Tried again on the next change; the banner covers a lost daemon. No render
    // here: render() asks for the history, so that would loop while it fails.
    return;
  } finally {
    historyInFlight.delete(name);
  }
  state.history.set(name, { key, view });
  if (state.route.page === "rollout" && state.route.name === name) render();
}

const analysisInFlight = new Set();

/** What the analysis view depends on: the rollout's status and its latest run. */
function analysisKey(rollout) {
  if (!rollout) return "";
  const run = rollout.analysis;
  return `${rollout.revision}:${rollout.updated_at_ms}:${run ? `${run.id}:${run.phase}:${run.updated_at_ms}` : "-"}`;
}

/**
 * Fetches the analysis runs when the rollout or its latest run changed since the last
 * fetch, on every event while a run shown is still measuring, or when `force`d.
 */
async function refreshAnalysis(name, force) {
  const rollout = findRollout(name);
  const key = analysisKey(rollout);
  const known = state.analysis.get(name);
  // A run that is measuring changes without the rollout changing: poll it, gently.
  const measuring = known?.view?.runs?.some((run) => !isFinal(run.phase)) && Date.now() - known.at >= 1000;
  if (!force && known && known.key === key && !measuring) return;
  if (analysisInFlight.has(name)) return;
  analysisInFlight.add(name);
  let view;
  try {
    view = await api.getAnalysis(name);
  } catch {
    // As with the history: tried again on the next change, no render loop.
    return;
  } finally {
    analysisInFlight.delete(name);
  }
  state.analysis.set(name, { key, view, at: Date.now() });
  if (state.route.page === "rollout" && state.route.name === name) render();
}

let trafficInFlight = false;

async function refreshTraffic() {
  if (state.route.page !== "rollout" || trafficInFlight || document.hidden) return;
  const name = state.route.name;
  trafficInFlight = true;
  try {
    state.traffic.set(name, await api.getTraffic(name));
  } catch {
    /* the next tick tries again */
  } finally {
    trafficInFlight = false;
  }
  if (state.route.page === "rollout" && state.route.name === name) render();
}

// ---------------------------------------------------------------------------------
// Start

function start() {
  api.takeTokenFromUrl();
  state.route = parseRoute();
  buildPage();
  render();

  window.addEventListener("hashchange", () => {
    // A fragment with a token (pasted into a running page) is taken, not routed.
    if (/token=/.test(location.hash)) api.takeTokenFromUrl();
    onRouteChange();
  });

  // The first paint does not wait for the stream; from then on the stream is the
  // only source of rollout state (apart from the answers to our own commands).
  api
    .listRollouts()
    .then((rollouts) => {
      if (state.rollouts === null) {
        state.rollouts = rollouts;
        render();
      }
    })
    .catch(() => {});

  const stream = new api.LiveStream({
    onRollouts: (rollouts) => {
      state.rollouts = rollouts;
      render();
    },
    onState: (connection, previous) => {
      state.connection = connection;
      render();
      // Back after a loss: what the stream does not carry may be stale too.
      if (connection === "live" && previous === "lost" && state.route.page === "rollout") {
        refreshHistory(state.route.name, true);
        refreshAnalysis(state.route.name, true);
        refreshTraffic();
      }
    },
  });
  stream.start();

  // The traffic history is not in the stream: poll it while a rollout is shown.
  setInterval(refreshTraffic, 2000);
  if (state.route.page === "rollout") {
    refreshHistory(state.route.name, true);
    refreshAnalysis(state.route.name, true);
    refreshTraffic();
  }

  // Remembers which <details> (analysis runs, job output) a person opened or closed,
  // so the next live update draws them the same way. `toggle` does not bubble.
  main.addEventListener(
    "toggle",
    (event) => {
      const details = event.target;
      if (!(details instanceof HTMLDetailsElement) || !details.isConnected || !details.dataset.toggle) return;
      if (state.route.page !== "rollout") return;
      state.open.set(`${state.route.name}:${details.dataset.toggle}`, details.open);
    },
    true,
  );

  // Charts are drawn at their container's width.
  let resizeTimer = null;
  window.addEventListener("resize", () => {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(render, 150);
  });
}

start();
