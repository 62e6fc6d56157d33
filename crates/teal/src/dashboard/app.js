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

function phaseBadge(rollout) {
  return html`<span class="phase phase-${rollout.phase.toLowerCase()}"><span aria-hidden="true">${
    PHASE_ICONS[rollout.phase] ?? "•"
  }</span> ${rollout.phase}${rollout.reason ? html` <span class="reason">(${rollout.reason})</span>` : ""}</span>`;
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
      <td data-label="Phase">${phaseBadge(rollout)}</td>
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
  const history = state.history.get(name);
  fill("events", eventsPanel(history?.view));
  fill("revisions", revisionsPanel(rollout, history?.view));
  updateActions(rollout);
  // History follows the rollout: fetch again whenever its status changed.
  refreshHistory(name, false);
}

function statusPanel(rollout) {
  const problems = rollout.colors
    .flatMap((c) => c.instances.map((i) => ({ color: c.color, ...i })))
    .filter((i) => i.problem);
  const kind = rollout.phase === "Degraded" ? "warning" : rollout.phase.toLowerCase();
  return html`<div class="status status-${kind}">
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
    html`<li><span class="who">Users</span> <code>http://${rollout.active_listen}</code> <span class="arrow" aria-label="goes to">→</span> ${target(active)}</li>`,
  ];
  if (rollout.preview_listen) {
    rows.push(
      html`<li><span class="who">Testers</span> <code>http://${rollout.preview_listen}</code> <span class="arrow" aria-label="goes to">→</span> ${target(previewTarget, fallback)}</li>`,
    );
  }
  for (const match of rollout.preview_match ?? []) {
    rows.push(
      html`<li><span class="who">Testers</span> <code>http://${rollout.active_listen}</code> with <code>${match}</code> <span class="arrow" aria-label="goes to">→</span> ${target(previewTarget, fallback)}</li>`,
    );
  }
  return html`<ul class="routes">${rows}</ul>`;
}

const ROLE_TEXT = {
  active: "serves users",
  preview: "in preview for testers",
  warm: "previous version, kept warm for an instant undo",
  aborted: "aborted: users never reached it",
  stopping: "being stopped",
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

  // Promote: only a candidate that is starting or paused in preview.
  if (!candidate) out.promote = { why: "nothing is in preview" };
  else if (stage === "Aborted") out.promote = { why: `revision ${candidate.slot.revision} was aborted; retry it first` };
  else if (stage === "ScalingUp") out.promote = { why: `revision ${candidate.slot.revision} is already being promoted` };
  else if (candidate.promote_requested) out.promote = { why: "promote already requested; it happens when ready" };
  else {
    const to = slot(candidate.slot.color, candidate.slot.revision);
    const whenReady =
      stage !== "Starting"
        ? ""
        : candidate.deadline_exceeded
          ? ` ${candidate.slot.color} missed its progress deadline: the switch happens only if it ever becomes ready.`
          : ` ${candidate.slot.color} is not ready yet: the switch happens as soon as it is.`;
    out.promote = {
      title: `Promote revision ${candidate.slot.revision}`,
      text: stable
        ? `Promote revision ${candidate.slot.revision}: users move from ${from} to ${to}.${whenReady}`
        : `Promote revision ${candidate.slot.revision}: users are sent to ${to}.${whenReady}`,
      extra: stable ? `${stable.color} stays warm for a while, so an undo is instant.` : "",
      body: { revision: candidate.slot.revision },
    };
  }

  // Abort: a candidate that is not aborted already.
  if (!candidate) out.abort = { why: "nothing is being released" };
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
        refreshTraffic();
      }
    },
  });
  stream.start();

  // The traffic history is not in the stream: poll it while a rollout is shown.
  setInterval(refreshTraffic, 2000);
  if (state.route.page === "rollout") {
    refreshHistory(state.route.name, true);
    refreshTraffic();
  }

  // Charts are drawn at their container's width.
  let resizeTimer = null;
  window.addEventListener("resize", () => {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(render, 150);
  });
}

start();
