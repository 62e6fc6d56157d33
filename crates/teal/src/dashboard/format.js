// Small pure helpers: safe HTML templating and number/time formatting.
// Nothing here touches the DOM or the network, so the rest can stay readable.

/** Text that is already HTML and must not be escaped again. */
class Html {
  constructor(text) {
    this.text = text;
  }
  toString() {
    return this.text;
  }
}

const ESCAPES = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };

/** Escapes text for element content and quoted attribute values. */
export function escape(value) {
  return String(value).replace(/[&<>"']/g, (c) => ESCAPES[c]);
}

function interpolate(value) {
  if (value instanceof Html) return value.text;
  if (Array.isArray(value)) return value.map(interpolate).join("");
  if (value === null || value === undefined || value === false) return "";
  return escape(value);
}

/**
 * Tagged template for markup: every interpolated value is escaped unless it is
 * itself the result of `html`. Everything on the page comes from the daemon (rollout
 * names, messages, instance problems, commands) and so is treated as untrusted.
 */
export function html(strings, ...values) {
  let out = strings[0];
  for (let i = 0; i < values.length; i++) {
    out += interpolate(values[i]) + strings[i + 1];
  }
  return new Html(out);
}

/** Marks a string built elsewhere (e.g. an SVG from charts.js) as markup. */
export function raw(text) {
  return new Html(text);
}

/** "3 s ago", "5 min ago", "2 h ago", "4 d ago". */
export function ago(ms, now = Date.now()) {
  const seconds = Math.max(0, Math.round((now - ms) / 1000));
  if (seconds < 60) return `${seconds} s ago`;
  const minutes = Math.floor(seconds / 60);
  if (minutes < 60) return `${minutes} min ago`;
  const hours = Math.floor(minutes / 60);
  if (hours < 48) return `${hours} h ago`;
  return `${Math.floor(hours / 24)} d ago`;
}

/** Local date and time, for the audit trail. */
export function timestamp(ms) {
  const date = new Date(ms);
  const pad = (n) => String(n).padStart(2, "0");
  return (
    `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())} ` +
    `${pad(date.getHours())}:${pad(date.getMinutes())}:${pad(date.getSeconds())}`
  );
}

/** Requests per second with sensible precision. */
export function rate(value) {
  if (value === null || value === undefined) return "–";
  if (value === 0) return "0";
  if (value < 10) return value.toFixed(1);
  return Math.round(value).toString();
}

/** A success share (0..1) as a percentage; "–" without responses. */
export function percent(share) {
  if (share === null || share === undefined) return "–";
  const value = share * 100;
  // 99.95% must not read as 100%: only a perfect record is shown as 100.
  if (value === 100) return "100%";
  return `${Math.min(value, 99.9).toFixed(1)}%`;
}

/** Milliseconds, e.g. "3 ms", "1.2 s"; "–" without responses. */
export function millis(value) {
  if (value === null || value === undefined) return "–";
  if (value < 10) return `${value.toFixed(1)} ms`;
  if (value < 1000) return `${Math.round(value)} ms`;
  return `${(value / 1000).toFixed(2)} s`;
}

/** The candidate's stage as a plain name: serde writes unit variants as strings and
 *  `Aborted { .. }` as `{"Aborted": {...}}`. */
export function stageName(stage) {
  if (!stage) return null;
  if (typeof stage === "string") return stage;
  return Object.keys(stage)[0] ?? null;
}

/** "green (revision 2)", as the daemon words it. */
export function slot(color, revision) {
  return revision === null || revision === undefined
    ? color
    : `${color} (revision ${revision})`;
}
