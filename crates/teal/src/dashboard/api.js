// Talking to the daemon: reads, the verbs with the token, and the live event stream.
// The page is served by the daemon itself, so every URL is same-origin and relative.

const TOKEN_KEY = "teal.token";

/**
 * Takes `token=...` out of the URL fragment (`#token=X`, or `#/rollouts/shop&token=X`)
 * and keeps it for this tab. The fragment never reaches the server, and removing it
 * from the address bar keeps it out of the browser history, screenshots and links
 * people copy.
 */
export function takeTokenFromUrl() {
  const hash = location.hash.replace(/^#/, "");
  const match = hash.match(/(^|[&?])token=([^&]*)/);
  if (!match) return;
  const token = decodeURIComponent(match[2]).trim();
  if (token) storeToken(token);
  const rest = hash.replace(match[0], "").replace(/^[&?]/, "");
  // replaceState changes the address without a navigation or a history entry.
  history.replaceState(null, "", `${location.pathname}${location.search}#${rest || "/"}`);
}

export function storedToken() {
  try {
    return sessionStorage.getItem(TOKEN_KEY) || null;
  } catch {
    // Storage can be disabled; then the token lives only as long as the page.
    return memoryToken;
  }
}

let memoryToken = null;

export function storeToken(token) {
  memoryToken = token;
  try {
    sessionStorage.setItem(TOKEN_KEY, token);
  } catch {
    /* see storedToken */
  }
}

export function clearToken() {
  memoryToken = null;
  try {
    sessionStorage.removeItem(TOKEN_KEY);
  } catch {
    /* see storedToken */
  }
}

/** A failed call: the daemon's one sentence, its details and the HTTP status. */
export class ApiError extends Error {
  constructor(status, message, details = []) {
    super(message);
    this.status = status;
    this.details = details;
  }
}

/** Reads the daemon's answer; errors become ApiError with the daemon's own sentence. */
async function answer(response) {
  const text = await response.text();
  let body = null;
  try {
    body = text ? JSON.parse(text) : null;
  } catch {
    body = null;
  }
  if (!response.ok) {
    const message =
      body && typeof body.error === "string"
        ? body.error
        : `the daemon answered ${response.status} ${response.statusText}`.trim();
    throw new ApiError(response.status, message, (body && body.details) || []);
  }
  return body;
}

/** Fetch that turns "cannot connect" into an ApiError people can read. */
async function call(url, init) {
  let response;
  try {
    response = await fetch(url, { cache: "no-store", ...init });
  } catch {
    throw new ApiError(0, "cannot reach the teal daemon");
  }
  return answer(response);
}

const rolloutUrl = (name) => `/api/v1/rollouts/${encodeURIComponent(name)}`;

export const listRollouts = () => call("/api/v1/rollouts");
export const getHistory = (name) => call(`${rolloutUrl(name)}/history`);
export const getTraffic = (name) => call(`${rolloutUrl(name)}/traffic`);
/** `{runs: [...]}`: every analysis run of the rollout, oldest first. */
export const getAnalysis = (name) => call(`${rolloutUrl(name)}/analysis`);

/**
 * One of the verbs (`promote`, `abort`, `retry`, `undo`) with the token.
 * Resolves to the daemon's CommandResponse; rejects with ApiError (status 401 when
 * the token was refused).
 */
export function command(name, verb, body, token) {
  return call(`${rolloutUrl(name)}/${verb}`, {
    method: "POST",
    headers: {
      "content-type": "application/json",
      authorization: `Bearer ${token}`,
    },
    body: JSON.stringify(body ?? null),
  });
}

/**
 * The daemon's event stream, kept alive.
 *
 * EventSource reconnects by itself only in some cases (not after an HTTP error, and
 * not on a connection that silently stopped delivering), so this wraps it: any error
 * closes it and reopens after a short backoff, and a watchdog treats a stream that
 * was quiet for longer than the daemon's 2-second refresh (with slack) as lost.
 */
export class LiveStream {
  /**
   * @param {object} options
   * @param {(rollouts: object[]) => void} options.onRollouts every `rollouts` event
   * @param {(state: "connecting"|"live"|"lost") => void} options.onState connection changes
   */
  constructor({ onRollouts, onState, url = "/api/v1/events", quietMs = 6000 }) {
    this.onRollouts = onRollouts;
    this.onState = onState;
    this.url = url;
    this.quietMs = quietMs;
    this.source = null;
    this.state = null;
    this.lastEventAt = 0;
    this.retryMs = 1000;
    this.reopenTimer = null;
  }

  start() {
    this.setState("connecting");
    this.open();
    // The watchdog: checks often enough that a lost daemon shows within seconds. It
    // also covers a reconnect that hangs (a stopped daemon still accepts TCP).
    setInterval(() => {
      if (this.source && Date.now() - this.lastEventAt > this.quietMs) {
        this.lost();
      }
    }, 1000);
  }

  open() {
    this.reopenTimer = null;
    const source = new EventSource(this.url);
    this.source = source;
    // Counts as the start of the quiet period: the daemon answers at once.
    this.lastEventAt = Date.now();
    source.addEventListener("rollouts", (event) => {
      if (source !== this.source) return; // a stream we already gave up on
      let rollouts;
      try {
        rollouts = JSON.parse(event.data);
      } catch {
        return; // a torn event; the next one comes within 2 s
      }
      this.lastEventAt = Date.now();
      this.retryMs = 1000;
      this.setState("live");
      this.onRollouts(rollouts);
    });
    source.addEventListener("error", () => {
      if (source === this.source) this.lost();
    });
  }

  /** Gives up on the current stream and schedules a new one, backing off to 5 s. */
  lost() {
    if (this.source) this.source.close();
    this.source = null;
    this.setState("lost");
    if (this.reopenTimer === null) {
      this.reopenTimer = setTimeout(() => this.open(), this.retryMs);
      this.retryMs = Math.min(this.retryMs * 2, 5000);
    }
  }

  setState(state) {
    if (state === this.state) return;
    const previous = this.state;
    this.state = state;
    this.onState(state, previous);
  }
}
