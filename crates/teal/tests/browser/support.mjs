// What the browser tests share: the daemon run.sh started, its API, a browser, a
// traffic generator, and waiting helpers that say what they waited for.

import { spawn } from "node:child_process";
import { openSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";

import { chromium } from "playwright-core";

import { demoSpec } from "./spec.mjs";

function required(name) {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set: run the tests through run.sh`);
  return value;
}

export const TEAL_BIN = required("TEAL_BIN");
export const DATA_DIR = required("TEAL_DATA_DIR");
export const TMP = required("TEAL_TMP");
export const BASE = required("TEAL_URL");
export const TOKEN = readFileSync(required("TEAL_TOKEN_FILE"), "utf8").trim();
export const SCREENSHOTS = required("SCREENSHOT_DIR");
const PID_FILE = required("TEAL_PID_FILE");

/** Polls `check` until it returns a truthy value; fails with `what` and the last error. */
export async function eventually(what, check, timeoutMs = 30_000) {
  const deadline = Date.now() + timeoutMs;
  let last;
  for (;;) {
    try {
      const value = await check();
      if (value) return value;
    } catch (error) {
      last = error;
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${last ? `: ${last.message}` : ""}`);
    }
    await sleep(100);
  }
}

/** Waits until the locator's text matches; the failure shows the text it had. */
export async function waitForText(locator, pattern, timeoutMs = 15_000) {
  let text = "";
  try {
    return await eventually(
      `${locator} to match ${pattern}`,
      async () => {
        text = (await locator.innerText({ timeout: 1000 })).replace(/\s+/g, " ");
        return pattern.test(text) ? text : null;
      },
      timeoutMs,
    );
  } catch (error) {
    error.message += `\nlast text: ${JSON.stringify(text)}`;
    throw error;
  }
}

export async function apiGet(path) {
  const response = await fetch(`${BASE}${path}`);
  if (!response.ok) throw new Error(`GET ${path}: ${response.status} ${await response.text()}`);
  return response.json();
}

export async function apiPost(path, body, token = TOKEN) {
  const response = await fetch(`${BASE}${path}`, {
    method: "POST",
    headers: { "content-type": "application/json", authorization: `Bearer ${token}` },
    body: JSON.stringify(body),
  });
  const text = await response.text();
  if (!response.ok) throw new Error(`POST ${path}: ${response.status} ${text}`);
  return JSON.parse(text);
}

export const rollout = (name) => apiGet(`/api/v1/rollouts/${name}`);

/** Applies a demo-app revision through the API, as `teal apply` would. */
export function applyDemo(options) {
  const text = demoSpec({ teal: TEAL_BIN, ...options });
  return apiPost("/api/v1/apply", { file: `${options.name}.yaml`, text, base_dir: TMP });
}

/** Waits until the daemon reports the rollout in a state `done` accepts. */
export async function waitForRollout(name, what, done, timeoutMs = 30_000) {
  let last = null;
  try {
    return await eventually(
      what,
      async () => {
        last = await rollout(name);
        return done(last) ? last : null;
      },
      timeoutMs,
    );
  } catch (error) {
    error.message += `\nlast state: ${last && JSON.stringify({ phase: last.phase, reason: last.reason, message: last.message })}`;
    throw error;
  }
}

export const CHROMIUM_ARGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];

/** The system's Chromium; playwright-core never downloads a browser. */
export function launchBrowser() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: CHROMIUM_ARGS,
    timeout: 30_000,
  });
}

export function screenshot(page, name) {
  return page.screenshot({ path: join(SCREENSHOTS, `${name}.png`), fullPage: true });
}

/**
 * Steady requests to a rollout's users' and testers' addresses, so the dashboard
 * has real traffic figures to show. The addresses are looked up again now and then
 * because a restarted daemon binds its port-0 listeners anew.
 */
export class Traffic {
  constructor(name, perSecond = 20) {
    this.name = name;
    this.intervalMs = 1000 / perSecond;
    this.addresses = [];
    this.running = false;
    this.answers = 0;
    /** "status color" → count, for diagnostics. */
    this.statuses = {};
  }

  start() {
    this.running = true;
    this.loop();
    this.refresh();
  }

  async refresh() {
    while (this.running) {
      try {
        const view = await rollout(this.name);
        this.addresses = [view.active_listen, view.preview_listen].filter(Boolean);
      } catch {
        /* the daemon may be restarting */
      }
      await sleep(2000);
    }
  }

  async loop() {
    while (this.running) {
      await Promise.all(
        this.addresses.map((address) =>
          fetch(`http://${address}/`, { signal: AbortSignal.timeout(2000) })
            .then(async (r) => {
              await r.arrayBuffer();
              this.answers++;
              const key = `${r.status} ${r.headers.get("x-teal-color")} during ${this.phase}`;
              this.statuses[key] = (this.statuses[key] ?? 0) + 1;
            })
            .catch(() => {}),
        ),
      );
      await sleep(this.intervalMs);
    }
  }

  stop() {
    this.running = false;
  }
}

/** kill -9: the daemon gets no chance to clean up; its instances keep running. */
export function killDaemon() {
  const pid = Number(readFileSync(PID_FILE, "utf8").trim());
  process.kill(pid, "SIGKILL");
}

/** Starts the daemon again on the same API address and data directory. */
export async function restartDaemon() {
  const address = new URL(BASE).host;
  const log = openSync(join(TMP, `daemon-restart-${Date.now()}.log`), "a");
  const child = spawn(TEAL_BIN, ["server", "--data-dir", DATA_DIR, "--api", address], {
    stdio: ["ignore", log, log],
    detached: true,
  });
  child.unref();
  // run.sh's cleanup stops whatever pid this file names.
  writeFileSync(PID_FILE, String(child.pid));
  await eventually("the restarted daemon to answer", async () => (await fetch(`${BASE}/healthz`)).ok, 20_000);
}
