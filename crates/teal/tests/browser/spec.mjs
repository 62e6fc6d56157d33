// Demo-app rollout specs, the same shape as DemoSpec in crates/teal/tests/it/support.rs.
// run.sh writes the first revisions with it (`node spec.mjs NAME VERSION [DEADLINE]`),
// and the tests use it for the revisions they apply through the API.

import { pathToFileURL } from "node:url";

/**
 * @param {object} o
 * @param {string} o.teal        the teal binary (it is also the demo app)
 * @param {string} o.name
 * @param {string} o.version     DEMO_VERSION
 * @param {number} [o.replicas]
 * @param {number} [o.progressDeadline] seconds
 * @param {Record<string, string>} [o.env] extra environment, e.g. DEMO_NEVER_READY
 * @param {string} [o.documents] YAML documents before the rollout (each ending in `---`),
 *   e.g. its AnalysisTemplates
 * @param {string} [o.strategyExtra] lines added under `strategy.blueGreen` (indented by 6)
 */
export function demoSpec({
  teal,
  name,
  version,
  replicas = 2,
  progressDeadline = 600,
  env = {},
  documents = "",
  strategyExtra = "",
}) {
  const extra = Object.entries({ DEMO_VERSION: version, ...env })
    .map(([key, value]) => `        - {name: ${key}, value: ${JSON.stringify(value)}}\n`)
    .join("");
  return `${documents}apiVersion: teal.dev/v1alpha1
kind: Rollout
metadata:
  name: ${name}
spec:
  replicas: ${replicas}
  progressDeadlineSeconds: ${progressDeadline}
  template:
    process:
      command: [${JSON.stringify(teal)}, "demo-app", "--port", "$(PORT)"]
      env:
${extra}    readinessProbe:
      httpGet: {path: /ready}
      periodSeconds: 1
      failureThreshold: 2
    terminationGracePeriodSeconds: 5
  strategy:
    blueGreen:
      activeService: {listen: "127.0.0.1:0"}
      previewService: {listen: "127.0.0.1:0"}
      previewMatch: {cookie: {name: test, value: "true"}}
      autoPromotionEnabled: false
      scaleDownDelaySeconds: 30
${strategyExtra}`;
}

if (import.meta.url === pathToFileURL(process.argv[1]).href) {
  const [name, version, deadline] = process.argv.slice(2);
  if (!name || !version || !process.env.TEAL_BIN) {
    console.error("usage: TEAL_BIN=... node spec.mjs NAME VERSION [PROGRESS_DEADLINE_SECONDS]");
    process.exit(64);
  }
  process.stdout.write(
    demoSpec({
      teal: process.env.TEAL_BIN,
      name,
      version,
      progressDeadline: deadline ? Number(deadline) : undefined,
    }),
  );
}
