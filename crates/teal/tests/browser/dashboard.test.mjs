// The dashboard in headless Chromium against the daemon run.sh started.
//
// The tests run in order and share one page, as a person would use it: list → shop →
// a new revision arrives → promote → undo, then the broken rollout, tokens, narrow
// screens and a lost daemon. The page is never reloaded after the first load: a
// marker on `window` must survive every step, so anything that only shows after a
// reload (a broken event stream, say) fails the test.

import assert from "node:assert/strict";
import { after, before, beforeEach, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";

import {
  BASE,
  SCREENSHOTS,
  TOKEN,
  Traffic,
  apiGet,
  apiPost,
  applyDemo,
  eventually,
  killDaemon,
  launchBrowser,
  restartDaemon,
  rollout,
  screenshot,
  waitForRollout,
  waitForText,
} from "./support.mjs";

let browser;
let context;
let page;
let loads = 0;
const consoleLines = [];
const traffic = new Traffic("shop");

const MARKER = "set-before-any-update";

/** Fails unless this is still the document the suite opened. */
async function assertNoReload() {
  assert.equal(await page.evaluate(() => window.__tealMarker), MARKER, "the page was reloaded");
  assert.equal(loads, 1, "the page loaded more than once");
}

const card = (color) => page.locator(`.color-card[data-color="${color}"]`);
const statusPanel = () => page.locator('[data-slot="status"]');
const confirmDialog = () => page.locator("dialog#confirm");
const tokenDialog = () => page.locator("dialog#token-dialog");
const button = (name) => page.locator(`#actions button[data-verb="${name}"]`);
const analysisPanel = () => page.locator('[data-slot="analysis"]');

/** Watches a page's console and errors; the token must never show up there. */
function watch(target) {
  target.on("console", (message) => consoleLines.push(message.text()));
  target.on("pageerror", (error) => consoleLines.push(`pageerror: ${error.message}`));
}

before(async () => {
  browser = await launchBrowser();
  context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  page = await context.newPage();
  watch(page);
  page.on("load", () => loads++);
  await waitForRollout("shop", "shop revision 1 live", (r) => r.phase === "Healthy" && r.active_revision === 1);
  await waitForRollout("broken", "broken revision 1 live", (r) => r.phase === "Healthy" && r.active_revision === 1);
  traffic.start();
  // Enough samples for the charts and the 10-second summaries.
  await eventually("traffic through shop", () => traffic.answers > 40);
});

beforeEach((t) => {
  traffic.phase = t.name;
});

after(async () => {
  traffic.stop();
  // For whoever reads a failure: what the steady traffic got that was not a 200.
  // (Testers' 503s while a preview starts are expected: it has no ready instance.)
  const odd = Object.entries(traffic.statuses).filter(([key]) => !key.startsWith("200 "));
  if (odd.length) console.log("non-200 answers through shop:", Object.fromEntries(odd));
  await browser?.close();
});

test("the list shows every rollout with its phase, active color and live traffic", async () => {
  await page.goto(`${BASE}/#token=${TOKEN}`);
  await page.evaluate((marker) => {
    window.__tealMarker = marker;
  }, MARKER);

  // The token moved from the address bar into this tab's storage.
  assert.ok(!page.url().includes("token"), `token left in the URL: ${page.url()}`);
  assert.equal(await page.evaluate(() => sessionStorage.getItem("teal.token")), TOKEN);

  const shop = page.locator('tr[data-rollout="shop"]');
  await waitForText(shop, /shop ✓ Healthy blue revision 1 none/);
  await waitForText(page.locator('tr[data-rollout="broken"]'), /broken ✓ Healthy blue revision 1/);
  // Traffic summary from RolloutView.traffic: requests/s, success rate and p99.
  await waitForText(shop.locator(".cell-traffic"), /blue [1-9][\d.]* req\/s · 100% ok · p99 [\d.]+ (ms|s)/);
  await page.locator(".live-live").waitFor();
  await screenshot(page, "list");
});

test("a new revision appears as Paused without a reload, and Promote moves users to green", async () => {
  await page.locator('tr[data-rollout="shop"] a').click();
  await waitForText(page.locator("h1"), /^shop$/);
  await waitForText(statusPanel(), /users are on blue \(revision 1\)/);
  assert.ok(await button("promote").isDisabled(), "promote with nothing in preview");
  await waitForText(page.locator("#hint-promote"), /nothing is in preview/);

  // A new revision, applied behind the page's back: only the event stream can tell it.
  await applyDemo({ name: "shop", version: "v2" });
  await waitForText(page.locator('[data-slot="phase"]'), /Paused \(BlueGreenPause\)/);
  await waitForText(statusPanel(), /green \(revision 2\) is ready in preview; waiting for promote/);
  await waitForText(card("green"), /green revision 2 preview .*2\/2 ready/i);
  await waitForText(card("blue"), /blue revision 1 active/i);
  await waitForText(page.locator(".routes"), /Users http:\/\/\S+ → blue revision 1/);
  await waitForText(page.locator(".routes"), /Testers http:\/\/\S+ → green revision 2/);
  await waitForText(page.locator(".routes"), /with cookie test=true → green revision 2/);
  await waitForText(page.locator('[data-slot="revisions"]'), /2 preview .* 1 users/i);
  assert.ok(await button("promote").isEnabled());
  assert.ok(await button("abort").isEnabled());
  assert.ok(await button("retry").isDisabled(), "retry with nothing aborted");
  assert.ok(await button("undo").isDisabled(), "undo with nothing before revision 1");
  await waitForText(page.locator("#hint-undo"), /no earlier revision to go back to/);
  // Both colors draw a line in every chart once the preview serves testers.
  await eventually("both colors charted", async () => (await page.locator(".chart .line-green").count()) === 3);
  assert.equal(await page.locator(".chart .line-blue").count(), 3);
  await assertNoReload();
  await screenshot(page, "rollout-paused");

  await button("promote").click();
  await confirmDialog().waitFor();
  assert.equal(
    await confirmDialog().locator("#confirm-text").innerText(),
    "Promote revision 2: users move from blue (revision 1) to green (revision 2).",
  );
  await confirmDialog().getByRole("button", { name: "Promote revision 2" }).click();
  await confirmDialog().waitFor({ state: "hidden" });

  await waitForText(page.locator('[data-slot="result"]'), /Promote revision 2: done\. revision 2 promoted/);
  await waitForText(card("green"), /green revision 2 active/i);
  await waitForText(card("blue"), /blue revision 1 warm/i);
  await waitForText(statusPanel(), /users are on green \(revision 2\)/);
  await waitForText(page.locator('[data-slot="phase"]'), /Healthy/);
  await waitForText(page.locator(".routes"), /Users http:\/\/\S+ → green revision 2/);
  await assertNoReload();

  // And the page told the truth: users really reach green now.
  const view = await rollout("shop");
  const answer = await fetch(`http://${view.active_listen}/`);
  assert.equal(answer.headers.get("x-teal-color"), "green");
  await screenshot(page, "rollout-promoted");
});

test("Undo to revision 1 takes users back to blue at once, without a reload", async () => {
  const chooser = page.locator("#undo-target");
  // The chooser lists every revision; the live one cannot be chosen.
  await waitForText(chooser, /revision 2 \(users are on it\).*revision 1/);
  assert.equal(await chooser.inputValue(), "1");
  await chooser.selectOption("1");
  await button("undo").click();
  await confirmDialog().waitFor();
  assert.equal(
    await confirmDialog().locator("#confirm-text").innerText(),
    "Undo to revision 1: users move from green (revision 2) back to blue (revision 1) at once, " +
      "because blue still runs it warm. It is recorded as revision 3.",
  );
  await confirmDialog().getByRole("button", { name: "Undo to revision 1" }).click();

  await waitForText(page.locator('[data-slot="result"]'), /Undo to revision 1: done\./);
  await waitForText(card("blue"), /blue revision \d+ active/i);
  await waitForText(statusPanel(), /users are on blue/);
  await waitForText(page.locator('[data-slot="events"]'), /undo/);
  const view = await rollout("shop");
  assert.equal(view.active_color, "blue");
  await assertNoReload();
});

test("the dialogs work from the keyboard and Escape sends nothing", async () => {
  const before = await apiGet("/api/v1/rollouts/shop/history");
  await button("undo").focus();
  await page.keyboard.press("Enter");
  await confirmDialog().waitFor();
  // The dialog is modal and takes focus; Cancel is the default.
  assert.equal(await page.evaluate(() => document.activeElement?.closest("dialog")?.id), "confirm");
  assert.equal(await page.evaluate(() => document.activeElement?.textContent), "Cancel");
  await page.keyboard.press("Escape");
  await confirmDialog().waitFor({ state: "hidden" });
  // Focus goes back to the button that opened it.
  assert.equal(await page.evaluate(() => document.activeElement?.dataset.verb), "undo");
  const afterEscape = await apiGet("/api/v1/rollouts/shop/history");
  assert.equal(afterEscape.revisions.length, before.revisions.length, "Escape sent an undo");
  assert.equal(afterEscape.events.length, before.events.length, "Escape changed something");
});

test("a preview that never becomes ready shows why, and an abort says so", async () => {
  await applyDemo({ name: "broken", version: "v2", progressDeadline: 5, env: { DEMO_NEVER_READY: "true" } });
  await page.evaluate(() => {
    location.hash = "#/rollouts/broken";
  });
  await waitForText(page.locator("h1"), /^broken$/);
  // The message names the probe's answer, and every instance its problem.
  await waitForText(statusPanel(), /waiting for green \(revision 2\) to become ready: 0\/2 ready: .*503/);
  await waitForText(statusPanel().locator(".problems"), /green broken-green-r2-\d+: .*503/);
  await waitForText(card("green"), /✗ not ready .*Problem: .*503/i);
  // After the 5-second progress deadline: Degraded, in the warning style.
  await waitForText(page.locator('[data-slot="phase"]'), /Degraded \(ProgressDeadlineExceeded\)/, 20_000);
  await page.locator('[data-slot="status"] .status-warning').waitFor();
  await waitForText(statusPanel(), /progress deadline of 5s exceeded/);
  await waitForText(page.locator(".routes"), /Testers http:\/\/\S+ → green revision 2 — no ready instance, answers 503/);
  await assertNoReload();
  await screenshot(page, "failing-preview");

  await button("abort").click();
  await confirmDialog().waitFor();
  assert.equal(
    await confirmDialog().locator("#confirm-text").innerText(),
    "Abort revision 2: users stay on blue (revision 1), testers are sent there too, and green (revision 2) is stopped.",
  );
  await confirmDialog().getByRole("button", { name: "Abort revision 2" }).click();
  await waitForText(page.locator('[data-slot="phase"]'), /Degraded \(RolloutAborted\)/);
  await waitForText(statusPanel(), /revision 2 aborted: /);
  await waitForText(card("green"), /green revision 2 aborted/i);
  assert.ok(await button("promote").isDisabled());
  await waitForText(page.locator("#hint-promote"), /revision 2 was aborted; retry it first/);
  assert.ok(await button("retry").isEnabled());
  await waitForText(page.locator(".routes"), /Testers http:\/\/\S+ → blue revision 1 \(nothing in preview/);
  await assertNoReload();
  await screenshot(page, "aborted");
});

test("a command the daemon refuses shows its sentence", async () => {
  // Someone else retries while this page's dialog is open; then this retry is refused.
  await button("retry").click();
  await confirmDialog().waitFor();
  await apiPost("/api/v1/rollouts/broken/retry", null);
  await confirmDialog().getByRole("button", { name: "Retry revision 2" }).click();
  const result = page.locator('[data-slot="result"] .notice-error');
  await waitForText(result, /nothing to retry: no aborted revision$/);
  // The page caught up with the other person's retry by itself.
  await waitForText(card("green"), /green revision 2 preview/i);
  assert.ok(await button("retry").isDisabled());
  await assertNoReload();
});

test("without a token the page asks for it, and a wrong token asks again", async () => {
  // A second tab with no token at all.
  const other = await context.newPage();
  watch(other);
  await other.goto(`${BASE}/#/rollouts/broken`);
  assert.equal(await other.evaluate(() => sessionStorage.getItem("teal.token")), null);
  await other.locator('#actions button[data-verb="abort"]:not([disabled])').click();
  await other.locator("dialog#confirm").getByRole("button", { name: "Abort revision 2" }).click();

  // Asked before anything is sent.
  const dialog = other.locator("dialog#token-dialog");
  await dialog.waitFor();
  assert.ok(await dialog.locator("#token-error").isHidden());
  await dialog.locator("#token-input").fill("not-the-token");
  await dialog.getByRole("button", { name: "Use token" }).click();

  // The daemon refuses it (401): the page forgets it and asks again, saying why.
  await waitForText(dialog.locator("#token-error"), /The daemon refused the token: this call needs the API token/);
  assert.equal(await other.evaluate(() => sessionStorage.getItem("teal.token")), null);
  await dialog.locator("#token-input").fill(TOKEN);
  await dialog.getByRole("button", { name: "Use token" }).click();

  // With the right one, the same abort goes through.
  await waitForText(other.locator('[data-slot="result"]'), /Abort revision 2: done\. revision 2 aborted/);
  assert.equal(await other.evaluate(() => sessionStorage.getItem("teal.token")), TOKEN);
  await other.close();
  await waitForText(page.locator('[data-slot="phase"]'), /Degraded \(RolloutAborted\)/);

  // A stored token the daemon no longer accepts is cleared too, and cancelling sends nothing.
  await page.evaluate(() => sessionStorage.setItem("teal.token", "stale"));
  await button("retry").click();
  await confirmDialog().getByRole("button", { name: "Retry revision 2" }).click();
  await waitForText(tokenDialog().locator("#token-error"), /refused the token/);
  assert.equal(await page.evaluate(() => sessionStorage.getItem("teal.token")), null);
  await page.keyboard.press("Escape");
  await waitForText(page.locator('[data-slot="result"]'), /Retry was not sent: the daemon needs its API token/);
  assert.equal((await rollout("broken")).reason, "RolloutAborted", "a retry went out without a token");
  await page.evaluate((token) => sessionStorage.setItem("teal.token", token), TOKEN);
  await assertNoReload();
});

test("a preview that fails pre-promotion analysis is aborted, and the page shows the run and why", async () => {
  const template = `apiVersion: teal.dev/v1alpha1
kind: AnalysisTemplate
metadata: {name: success}
spec:
  metrics:
    - name: success-rate
      interval: 1s
      count: 3
      successCondition: "result >= 0.95"
      provider: {builtin: {measure: success-rate}}
---
`;
  const strategyExtra = `      prePromotionAnalysis:
        templates: [{templateName: success}]
      loadTest: {requestsPerSecond: 40, concurrency: 2}
`;
  const gate = (version, env) =>
    applyDemo({ name: "gate", version, replicas: 1, env, documents: template, strategyExtra });
  await gate("v1");
  await waitForRollout("gate", "gate revision 1 live", (r) => r.phase === "Healthy" && r.active_revision === 1);
  await page.evaluate(() => {
    location.hash = "#/rollouts/gate";
  });
  await waitForText(page.locator("h1"), /^gate$/);
  // The first release is not analysed: nobody to protect yet.
  await waitForText(analysisPanel(), /No analysis runs .*prePromotionAnalysis.*postPromotionAnalysis/);

  // A second tab on the list, recording whether the row ever said it was analysing
  // (the run may last only a second or two, so a poll could miss it).
  const list = await context.newPage();
  watch(list);
  await list.goto(`${BASE}/#/`);
  await list.locator('tr[data-rollout="gate"]').waitFor();
  await list.evaluate(() => {
    window.__analysing = null;
    new MutationObserver(() => {
      const marker = document.querySelector('tr[data-rollout="gate"] .analysing');
      if (marker) window.__analysing = marker.textContent;
    }).observe(document.body, { subtree: true, childList: true, characterData: true });
  });

  // Revision 2 answers half its requests with 500s: the load test's traffic makes the
  // success rate fall short of 0.95 and the run fails, before any user sees it.
  await gate("v2", { DEMO_FAIL_RATE: "0.5" });
  const run = analysisPanel().locator("details.run").first();
  await waitForText(run.locator("summary"), /Pre-promotion analysis of revision 2 ✗ Failed templates success/, 60_000);
  assert.equal(await run.getAttribute("open"), "", "the newest run is open");
  await waitForText(run.locator(".run-message"), /metric "success-rate": .*failed/);
  const metric = run.locator('tr[data-metric="success-rate"]');
  await waitForText(metric, /success-rate builtin success-rate pass if result >= 0\.95 ✗ Failed/i);
  await waitForText(metric.locator(".counts"), /✗ ?failed [1-9]/);
  // A measured value with its verdict, and the reason in its title.
  const measurement = metric.locator(".measurement-failed").first();
  await waitForText(measurement, /^0(\.\d+)? ✗/);
  assert.match(
    await measurement.getAttribute("title"),
    /^Failed \(0(\.\d+)?\): successCondition "result >= 0\.95" is false for 0(\.\d+)?/,
  );
  // The rollout, live: aborted with the reason, users never left blue.
  await waitForText(page.locator('[data-slot="phase"]'), /Degraded \(RolloutAborted\)/);
  await page.locator('[data-slot="status"] .status-warning').waitFor();
  await waitForText(statusPanel(), /revision 2 aborted: pre-promotion analysis Failed: metric "success-rate"/);
  await waitForText(statusPanel(), /users on blue revision 1/);
  await waitForText(page.locator('[data-slot="events"]'), /pre-promotion analysis/);
  const view = await rollout("gate");
  assert.equal(view.active_color, "blue");
  assert.equal(view.analysis?.phase, "Failed");

  await eventually("the list to have marked gate as analysing", () => list.evaluate(() => window.__analysing));
  assert.match(await list.evaluate(() => window.__analysing), /analysing/);
  await list.close();
  await assertNoReload();
  await screenshot(page, "analysis-failed");

  // The run folds from the keyboard, and a live update leaves it as the person chose.
  await run.locator("summary").focus();
  await page.keyboard.press("Enter");
  await eventually("the run to close", async () => (await run.getAttribute("open")) === null);
  await page.setViewportSize({ width: 1279, height: 900 }); // redraws the page
  await sleep(2500); // and at least one event from the stream
  assert.equal(await run.getAttribute("open"), null, "a live update opened the run again");
  assert.equal(await page.evaluate(() => document.activeElement?.dataset.key), await run.locator("summary").getAttribute("data-key"));
  await page.keyboard.press("Enter");
  await eventually("the run to open", async () => (await run.getAttribute("open")) === "");

  // On a phone the metrics table becomes cards; nothing sticks out to the right.
  await page.setViewportSize({ width: 390, height: 844 });
  await eventually("the metrics table to become cards", () => page.locator(".metrics thead").isHidden());
  const tooWide = await page.evaluate(() =>
    [...document.querySelectorAll("body *")]
      .filter((e) => e.getBoundingClientRect().right > window.innerWidth + 1)
      .map((e) => `${e.tagName.toLowerCase()}.${e.className?.baseVal ?? e.className}`)
      .slice(0, 5),
  );
  assert.deepEqual(tooWide, [], "elements wider than a phone's screen");
  await analysisPanel().screenshot({ path: `${SCREENSHOTS}/analysis-phone.png` });
  await page.setViewportSize({ width: 1280, height: 900 });
  await assertNoReload();
});

test("colors sit side by side on a laptop and stack on a phone, always named", async () => {
  await page.evaluate(() => {
    location.hash = "#/rollouts/shop";
  });
  await waitForText(page.locator("h1"), /^shop$/);
  await waitForText(card("blue"), /blue revision \d+ active/i);
  await card("green").waitFor();
  const wide = [await card("blue").boundingBox(), await card("green").boundingBox()];
  assert.ok(
    Math.abs(wide[0].y - wide[1].y) < 2 && wide[1].x > wide[0].x + wide[0].width - 1,
    `not side by side: ${JSON.stringify(wide)}`,
  );

  await page.setViewportSize({ width: 390, height: 844 });
  await eventually("the colors to stack", async () => {
    const [blue, green] = [await card("blue").boundingBox(), await card("green").boundingBox()];
    return green.y >= blue.y + blue.height;
  });
  // The charts are drawn again for the narrow screen, one under another.
  await page.locator(".charts-1").waitFor();
  await screenshot(page, "rollout-phone");
  await page.emulateMedia({ colorScheme: "dark" });
  await screenshot(page, "rollout-phone-dark");
  await page.emulateMedia({ colorScheme: "light" });
  // No horizontal scrolling on a phone: nothing sticks out to the right.
  const tooWide = await page.evaluate(() =>
    [...document.querySelectorAll("body *")]
      .filter((e) => e.getBoundingClientRect().right > window.innerWidth + 1)
      .map((e) => `${e.tagName.toLowerCase()}.${e.className?.baseVal ?? e.className}`)
      .slice(0, 5),
  );
  assert.deepEqual(tooWide, [], "elements wider than a phone's screen");
  await page.setViewportSize({ width: 1280, height: 900 });

  // The names are in the text, and the shapes differ, not only the hue.
  assert.match(await card("blue").locator("h3").innerText(), /blue/);
  assert.match(await card("green").locator("h3").innerText(), /green/);
  const radius = (color) =>
    page.locator(`.color-card[data-color="${color}"] .shape`).first().evaluate((e) => getComputedStyle(e).borderRadius);
  assert.notEqual(await radius("blue"), await radius("green"));
  assert.equal(await page.locator(".chart .line-green[stroke-dasharray]").count(), 3);
  assert.equal(await page.locator(".chart .line-blue[stroke-dasharray]").count(), 0);
  await assertNoReload();
});

test("a lost daemon shows a banner, and the page recovers by itself", async () => {
  await page.locator("#banner").waitFor({ state: "hidden" });
  killDaemon();
  await waitForText(page.locator("#banner"), /Lost connection to the teal daemon — retrying/, 15_000);
  await waitForText(page.locator("#live"), /reconnecting/);

  await restartDaemon();
  await page.locator("#banner").waitFor({ state: "hidden", timeout: 20_000 });
  await page.locator(".live-live").waitFor();
  // Fresh state from the new daemon, which adopted the running instances.
  await waitForText(card("blue"), /blue revision \d+ active .*2\/2 ready/i);
  await assertNoReload();
});

test("the token never reaches the console", () => {
  for (const line of consoleLines) assert.ok(!line.includes(TOKEN), `console line has the token: ${line}`);
  const errors = consoleLines.filter((line) => line.startsWith("pageerror"));
  assert.deepEqual(errors, [], "the page threw");
});
