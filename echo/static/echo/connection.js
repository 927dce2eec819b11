// The client for any frontend: one live connection to the server's topics that heals itself. It
// reconnects with backoff, detects dead sockets, resumes each topic from its last position (epoch and
// seq) so nothing is missed or repeated, renews connection tokens, and measures echo round trips. An
// ES module with no dependencies and no DOM: the page (app.js), the example page (example.js), a React
// app or a bundler can import it as it is. How to use it: docs/client.md; the wire protocol it speaks:
// docs/protocol.md.

/** Milliseconds between the `"*"` heartbeats sent while open (the server echoes every one). */
export const TICK_MS = 1000;
/** A heartbeat (or the handshake) unanswered this long, with no frame at all meanwhile: the socket is
 * dead (a half-open TCP connection, a stuck proxy) and is replaced. */
export const DEAD_AFTER_MS = 6000;
/** The first reconnect delay's ceiling; it doubles per attempt up to BACKOFF_MAX_MS. */
export const BACKOFF_FIRST_MS = 500;
/** The longest reconnect delay's ceiling. */
export const BACKOFF_MAX_MS = 10000;
/** A socket open this long starts the next drop's backoff afresh. */
export const STABLE_AFTER_MS = 10000;
/** Frames per topic the server replays on a first connect, unless `history` says otherwise (60 s at
 * 10 Hz). */
export const HISTORY_POINTS = 600;
/** The server's "unauthorized" close code: the connection token expired or was refused. The
 * connection then asks `token({fresh: true})` for a new one and reconnects with `since`. */
export const CLOSE_UNAUTHORIZED = 3000;
/** Every event a connection emits, for `on()` and the `handlers` option. */
export const EVENTS = Object.freeze([
  "state", "data", "reset", "presence", "error", "warning", "echo", "sent", "log",
]);
/** A valid topic name (the server's TOPIC_PATTERN): subscribe() refuses any other. */
export const TOPIC_PATTERN = /^[a-z0-9][a-z0-9_-]{0,47}$/;

const RTT_SAMPLES = 50;
// Close codes that mean "do not try again by yourself": the request itself is wrong (RFC 6455), or
// asks for topics this user may not read (3003, forbidden). 1013 ("try again later": too many
// connections from this address, history unavailable, fell behind) is not one of them: it is retried
// with the backoff like a drop.
const NO_RETRY_CODES = new Set([1008, 3003]);
const TOKEN_RETRY_AFTER_MS = 1000;
// The alphabet of a stream's epoch (the server's EPOCH_PATTERN): only such an epoch goes into `since`.
const EPOCH_PATTERN = /^[0-9a-z]{1,32}$/;
// WebSocket.readyState values (named here so that a WebSocket implementation without the statics works).
const OPEN = 1;
const CLOSED = 3;
const TOKEN_RENEW_MARGIN_S = 5; // tokenFetcher: a token this close to expiring is not reused

/**
 * A topic's position in its stream: the last frame the client has.
 * @typedef {object} Position
 * @property {string|null} epoch  the stream's epoch (null: the server announced no stream)
 * @property {number} [seq]  the last seq seen in that epoch (absent: none yet since a reset)
 */

/**
 * Delay before reconnect attempt `attempt` (0, 1, 2...): doubling from 0.5 s to 10 s, then halved at
 * random ("equal jitter"), so that a thousand pages dropped at once do not come back at once.
 * @param {number} attempt  reconnect attempts since the last stable socket
 * @param {() => number} [random]  a source of numbers in [0, 1)
 * @returns {number} milliseconds
 */
export function backoffDelay(attempt, random = Math.random) {
  const ceiling = Math.min(BACKOFF_MAX_MS, BACKOFF_FIRST_MS * 2 ** attempt);
  return ceiling / 2 + random() * (ceiling / 2);
}

/** Whether `position` can be resumed from: both known, the epoch in the protocol's alphabet. */
function resumable(position) {
  if (position === undefined || typeof position.seq !== "number") return false;
  return typeof position.epoch === "string" && EPOCH_PATTERN.test(position.epoch);
}

/**
 * The socket's endpoint: `url` (absolute, or a path on `location`'s host; default `/ws/echo/`), with
 * ws: or wss: following the page's http: or https:.
 * @param {string|null} url
 * @param {{href: string}|undefined} location  the page's location (needed for a relative `url`)
 * @returns {string} `ws(s)://host/path`, without a query
 */
export function endpoint(url, location) {
  if (!url && !location) throw new TypeError("LiveConnection: give `url` (there is no page location)");
  const resolved = new URL(url || "/ws/echo/", location?.href);
  const scheme = { "https:": "wss:", "http:": "ws:" }[resolved.protocol] ?? resolved.protocol;
  if (scheme !== "ws:" && scheme !== "wss:") throw new TypeError(`not a WebSocket URL: ${url}`);
  return `${scheme}//${resolved.host}${resolved.pathname}`;
}

/**
 * The socket URL asking for `topics`, with `history` frames replayed for topics not yet seen and
 * `since` (topic:seq:epoch) for topics whose position is known; `maxRate`, if set, asks for at most
 * that many frames per second per topic (the latest values, for slow links).
 * @param {string} base  the endpoint, from endpoint()
 * @param {{topics: string[], positions: Map<string, Position>, history?: number|null,
 *          maxRate?: number|null}} request
 * @returns {string}
 */
export function socketUrl(base, { topics, positions, history = HISTORY_POINTS, maxRate = null }) {
  const params = new URLSearchParams();
  params.set("topics", topics.join(","));
  if (history !== null && history !== undefined) params.set("history", String(history));
  const since = topics
    .filter((t) => resumable(positions.get(t)))
    .map((t) => `${t}:${positions.get(t).seq}:${positions.get(t).epoch}`);
  if (since.length) params.set("since", since.join(","));
  if (maxRate) params.set("max_rate", String(maxRate));
  // URLSearchParams would escape "," and ":"; topic names are [a-z0-9_-] and epochs [0-9a-z], so the
  // plain form is safe.
  return `${base}?${decodeURIComponent(params.toString())}`;
}

/**
 * Split one text frame into the JSON objects it carries (several, separated by "\n", when the server
 * batches) or, if it is not JSON, return null: it is an echo of something the client sent.
 * @param {string} text
 * @returns {object[]|null}
 */
export function parseFrames(text) {
  if (!text.startsWith("{")) return null;
  const frames = [];
  for (const line of text.split("\n")) {
    if (!line) continue;
    try {
      const frame = JSON.parse(line);
      if (frame && typeof frame === "object") frames.push(frame);
    } catch {
      return null; // a "{..." echo that is not JSON
    }
  }
  return frames;
}

/**
 * A `token` callback for LiveConnection that POSTs to the token endpoint (`/api/token`) and reuses
 * the answer until it nears its expiry, or until the server said it expired (`fresh`).
 *
 * A logged-in page passes its CSRF token (the session authenticates it); another program (a mobile
 * app, a server-side renderer) passes `Authorization: Bearer <API key>` in `headers` instead.
 * @param {object} [options]
 * @param {string} [options.url]  the token endpoint, `/api/token` by default
 * @param {string|(() => string)} [options.csrfToken]  sent as X-CSRFToken (a function: read per call)
 * @param {Record<string, string>} [options.headers]  more request headers
 * @param {string[]} [options.topics]  narrow the token to these topic patterns (the endpoint's body)
 * @param {typeof fetch} [options.fetch]  the fetch to use (a test's, or React Native's)
 * @returns {(request: {fresh: boolean}) => Promise<string>} the callback; it rejects on an HTTP error
 */
export function tokenFetcher({ url = "/api/token", csrfToken, headers = {}, topics, fetch: fetchFn } = {}) {
  let cached = null; // {token, expires}
  return async ({ fresh } = { fresh: false }) => {
    if (!fresh && cached && cached.expires - Date.now() / 1000 > TOKEN_RENEW_MARGIN_S) return cached.token;
    const csrf = typeof csrfToken === "function" ? csrfToken() : csrfToken;
    const response = await (fetchFn ?? globalThis.fetch)(url, {
      method: "POST",
      credentials: "same-origin",
      headers: {
        Accept: "application/json",
        ...(topics ? { "Content-Type": "application/json" } : {}),
        ...(csrf ? { "X-CSRFToken": csrf } : {}),
        ...headers,
      },
      ...(topics ? { body: JSON.stringify({ topics }) } : {}),
    });
    if (!response.ok) throw new Error(`${response.status} from ${url}`);
    const body = await response.json();
    cached = { token: body.token, expires: body.expires };
    return body.token;
  };
}

function median(values) {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}

/**
 * One logical connection to a set of topics that survives its sockets: open() it once and it stays
 * up, resuming exactly where it was after every drop, until close() or a refusal.
 *
 * Events (listen with on(), or give them all at once as `handlers`):
 * - `state(state, detail)`: state is "connecting" | "open" | "reconnecting" | "closed"; detail is
 *   `{retryAt, error?}` for reconnecting (retryAt: epoch ms; error: why the server asked to come back
 *   later, if it said), `{error}` for a refusal (closed, not retried)
 * - `data(frame)`: a new data frame, live or replayed (`frame.replay`), each once and in order per
 *   topic; duplicates are dropped before this
 * - `reset(frame)`: forget what you have of `frame.topic`: the frames that follow belong to
 *   `frame.epoch`. Also emitted (with a reason of its own) for a data frame of an epoch that no reset
 *   announced
 * - `presence(frame)`: `frame.count` connections watch `frame.topic` (`frame.users`: who, on topics
 *   that need login)
 * - `error(frame)`: the server refused something (`frame.code`, `frame.detail`); a close follows
 * - `warning(frame)`: something asked for is not available here (`no_history`, `no_max_rate`)
 * - `echo(text, rttMs)`: an echo came back; rttMs for `"*"` heartbeats, else null
 * - `sent(text)`: a frame went out (the heartbeats)
 * - `log(text)`: something worth a line in a log
 *
 * Limits: topics are fixed per socket, so subscribe(), unsubscribe() and setMaxRate() open a new
 * socket (calls in the same tick make one); what a topic had is forgotten when it is unsubscribed.
 */
export class LiveConnection {
  /**
   * @param {object} [options]
   * @param {string[]} [options.topics]  the topics to receive, `["prices"]` by default
   * @param {string} [options.url]  the socket's URL or path (default `/ws/echo/` on the page's host;
   *   http(s): becomes ws(s):)
   * @param {number|null} [options.history]  frames per topic replayed on a first connect (null: the
   *   server's default)
   * @param {number|null} [options.maxRate]  at most this many live frames per second per topic
   * @param {Record<string, Position>} [options.positions]  where to resume from, per topic (what
   *   positions() returned before, kept in storage by an app that reloads)
   * @param {((request: {fresh: boolean}) => Promise<string|null>)|null} [options.token]  called
   *   before each socket opens: a connection token to offer (see tokenFetcher()), or null for none;
   *   `fresh` is true when the server said the last one expired or was refused
   * @param {Partial<Record<string, Function>>} [options.handlers]  listeners by event name
   * @param {{href: string}} [options.location]  the page's location (default `globalThis.location`)
   * @param {typeof WebSocket} [options.WebSocket]  the WebSocket class (default the global one)
   */
  constructor({
    topics = ["prices"],
    url = null,
    history = HISTORY_POINTS,
    maxRate = null,
    positions = {},
    token = null,
    handlers = {},
    location = globalThis.location,
    WebSocket: WebSocketClass = globalThis.WebSocket,
  } = {}) {
    this.base = endpoint(url, location);
    this.topics = checkTopics(topics);
    this.history = history;
    this.maxRate = maxRate; // frames per second per topic, at most (null: every frame)
    this.token = token;
    this.WebSocket = WebSocketClass;
    this.listeners = new Map(EVENTS.map((name) => [name, new Set()]));
    for (const [name, handler] of Object.entries(handlers)) if (handler) this.on(name, handler);
    this.tokenExpired = false; // the server closed with CLOSE_UNAUTHORIZED: the next open needs a new token
    this.lastToken = null;
    this.opening = false; // waiting for token() before a socket exists
    this.resubscribing = false; // a new socket for new topics or rate is due at the end of this tick
    // topic -> {epoch, seq}: the stream's epoch (null: none yet) and the last seq seen in it (undefined:
    // none yet); sent as `since` on reconnect when both are known.
    this.positionMap = new Map(
      Object.entries(positions).map(([topic, p]) => [topic, { epoch: p.epoch ?? null, seq: p.seq }]),
    );
    this.lastError = null; // the current socket's error frame, shown while the page waits to retry
    this.rtts = [];
    this.socket = null;
    this.wanted = false; // true from open() until close() or a refusal
    this.attempt = 0;
    this.retryTimer = null;
    this.retryAt = null;
    this.tickTimer = null;
    this.lastFrameAt = 0;
    this.openedAt = 0;
    this.pendingPings = []; // send times of "*" frames not yet echoed, oldest first
    /** The connection's state: "connecting" | "open" | "reconnecting" | "closed". */
    this.state = "closed";
    /** How many sockets have been opened so far (1 + reconnects). */
    this.opened = 0;
  }

  // ---------------------------------------------------------------- the API

  /**
   * Listen to an event (see the class's list).
   * @param {string} name  one of EVENTS
   * @param {Function} listener
   * @returns {() => void} a function that stops listening
   */
  on(name, listener) {
    const listeners = this.listeners.get(name);
    if (!listeners) throw new TypeError(`no such event: ${name} (one of ${EVENTS.join(", ")})`);
    listeners.add(listener);
    return () => listeners.delete(listener);
  }

  /**
   * Open now, and keep the connection up (reconnecting and resuming) until close().
   * @returns {this}
   */
  open() {
    this.wanted = true;
    this.attempt = 0;
    this.cancelRetry();
    if (!this.socket && !this.opening) this.openSocket();
    return this;
  }

  /** Close, and stay closed (no reconnect) until open(). Positions are kept: open() resumes. */
  close() {
    this.wanted = false;
    this.cancelRetry();
    this.dropSocket(1000, "client closed");
    this.setState("closed");
  }

  /** True from open() until close() or a refusal: the connection is up or on its way back up. */
  get active() {
    return this.wanted;
  }

  /**
   * Receive these topics too; each resumes from its position, if one is known.
   * @param {...string} topics  topic names (`TOPIC_PATTERN`; a TypeError for any other)
   */
  subscribe(...topics) {
    const added = checkTopics(topics).filter((t) => !this.topics.includes(t));
    if (added.length) this.setTopics([...this.topics, ...added]);
  }

  /**
   * Stop receiving these topics, and forget their positions.
   * @param {...string} topics
   */
  unsubscribe(...topics) {
    const kept = this.topics.filter((t) => !topics.includes(t));
    if (kept.length !== this.topics.length) this.setTopics(kept);
  }

  /**
   * Receive exactly these topics (positions of the others are forgotten).
   * @param {string[]} topics
   */
  setTopics(topics) {
    this.topics = checkTopics(topics);
    for (const topic of [...this.positionMap.keys()]) {
      if (!this.topics.includes(topic)) this.positionMap.delete(topic);
    }
    this.resubscribe("topics changed");
  }

  /**
   * Ask for at most `rate` live frames per second per topic (null: every frame). The server then
   * sends the newest when one is due, never a backlog: seqs skip forward on purpose.
   * @param {number|null} rate
   */
  setMaxRate(rate) {
    this.maxRate = rate;
    this.resubscribe("rate changed");
  }

  /**
   * Where each topic stands, `{topic: {epoch, seq}}`: what a reconnect resumes from. Keep it (say in
   * localStorage) and pass it back as the `positions` option to resume after a reload.
   * @returns {Record<string, Position>}
   */
  positions() {
    return Object.fromEntries([...this.positionMap].map(([topic, p]) => [topic, { ...p }]));
  }

  /**
   * The last seq seen per topic, for topics that have one.
   * @returns {Record<string, number>}
   */
  lastSeq() {
    const seqs = [...this.positionMap].filter(([, p]) => p.seq !== undefined).map(([t, p]) => [t, p.seq]);
    return Object.fromEntries(seqs);
  }

  /**
   * The epoch of each topic's stream, null after a reset that announced no stream.
   * @returns {Record<string, string|null>}
   */
  epochs() {
    return Object.fromEntries([...this.positionMap].map(([topic, p]) => [topic, p.epoch]));
  }

  /**
   * The round-trip times of `"*"` heartbeat echoes: the last one and the median of recent ones.
   * @returns {{last: number|null, median: number|null}} milliseconds
   */
  rtt() {
    if (!this.rtts.length) return { last: null, median: null };
    return { last: this.rtts[this.rtts.length - 1], median: median(this.rtts) };
  }

  /** Reconnect now if waiting for the backoff: call it when the network is back (`online`). */
  retryNow() {
    if (this.wanted && this.retryTimer) {
      this.cancelRetry();
      this.openSocket();
    }
  }

  // ---------------------------------------------------------------- sockets

  emit(name, ...args) {
    for (const listener of this.listeners.get(name)) listener(...args);
  }

  setState(state, detail = {}) {
    this.state = state;
    this.emit("state", state, detail);
  }

  /** A new socket for new topics or a new rate, once per tick however many calls asked for one. */
  resubscribe(why) {
    if (!this.wanted || this.resubscribing) return;
    this.resubscribing = true;
    queueMicrotask(() => {
      this.resubscribing = false;
      if (!this.wanted) return;
      this.dropSocket(1000, why);
      this.cancelRetry();
      if (!this.opening) this.openSocket(); // an open awaiting its token uses the new topics anyway
    });
  }

  /** The subprotocols for the next socket: a connection token's, or none. */
  async nextProtocols() {
    const token = await this.token({ fresh: this.tokenExpired });
    if (!token) return null;
    if (token !== this.lastToken && this.lastToken !== null) this.emit("log", "using a new connection token");
    this.lastToken = token;
    return ["echo.v1", `echo.token.${token}`];
  }

  /** Open a socket (after getting its token, if the connection authenticates with tokens). */
  async openSocket() {
    let protocols = null;
    if (this.token) {
      this.opening = true;
      this.setState("connecting");
      try {
        protocols = await this.nextProtocols();
        this.tokenExpired = false;
      } catch (error) {
        this.opening = false;
        this.emit("log", `no connection token: ${error.message}`);
        this.scheduleRetry(`no connection token: ${error.message}`);
        return;
      }
      this.opening = false;
      if (!this.wanted || this.socket) return; // closed (or opened) meanwhile
    }
    const url = socketUrl(this.base, {
      topics: this.topics,
      positions: this.positionMap,
      history: this.history,
      maxRate: this.maxRate,
    });
    this.emit("log", `opening ${url}`);
    this.openedAt = 0;
    const socket = protocols ? new this.WebSocket(url, protocols) : new this.WebSocket(url);
    this.opened += 1;
    this.socket = socket;
    this.pendingPings = [];
    this.lastError = null;
    this.lastFrameAt = performance.now();
    this.setState("connecting");
    // Listeners go on before the socket can open, so no frame that comes with the handshake is missed.
    socket.addEventListener("open", () => this.onOpen(socket));
    socket.addEventListener("message", (event) => this.onMessage(socket, event));
    socket.addEventListener("close", (event) => this.onClose(socket, event));
    // A socket that never opens (a black-holed SYN) is caught by the same watchdog.
    this.startTicks();
  }

  onOpen(socket) {
    if (socket !== this.socket) return;
    this.openedAt = performance.now();
    this.lastFrameAt = this.openedAt;
    this.setState("open");
  }

  startTicks() {
    clearInterval(this.tickTimer);
    this.tickTimer = setInterval(() => this.tick(), TICK_MS);
  }

  /** Every second: send the heartbeat, and replace the socket if nothing came back for too long. */
  tick() {
    const socket = this.socket;
    if (!socket) return;
    const now = performance.now();
    // Dead: a heartbeat (or the handshake) has waited DEAD_AFTER_MS with no frame at all since.
    // Measured from what we wait for, not from the last frame, so that a hidden tab whose timers the
    // browser slows to once a minute is not taken for dead.
    const waitingSince = socket.readyState === OPEN ? this.pendingPings[0] : this.lastFrameAt;
    const silent = now - this.lastFrameAt > DEAD_AFTER_MS;
    if (silent && waitingSince !== undefined && now - waitingSince > DEAD_AFTER_MS) {
      const seconds = Math.round((now - this.lastFrameAt) / 1000);
      this.emit("log", `no frame for ${seconds} s: replacing the connection`);
      this.dropSocket(4000, "no frames");
      this.scheduleRetry();
      return;
    }
    if (socket.readyState === OPEN) {
      if (this.openedAt && now - this.openedAt > STABLE_AFTER_MS) this.attempt = 0;
      this.pendingPings.push(now);
      if (this.pendingPings.length > 100) this.pendingPings.shift();
      socket.send("*");
      this.emit("sent", "*");
    }
  }

  onMessage(socket, event) {
    if (socket !== this.socket) return;
    this.lastFrameAt = performance.now();
    if (typeof event.data !== "string") {
      this.emit("echo", `${event.data.byteLength ?? event.data.size} bytes`, null);
      return;
    }
    const frames = parseFrames(event.data);
    if (frames === null) {
      this.onEcho(event.data);
      return;
    }
    for (const frame of frames) this.onFrame(frame);
  }

  onEcho(text) {
    let rtt = null;
    if (text === "*" && this.pendingPings.length) {
      rtt = performance.now() - this.pendingPings.shift();
      this.rtts.push(rtt);
      if (this.rtts.length > RTT_SAMPLES) this.rtts.shift();
    }
    this.emit("echo", text, rtt);
  }

  onFrame(frame) {
    switch (frame.type) {
      case "data":
        if (this.isNew(frame)) this.emit("data", frame);
        break;
      case "reset":
        this.reset(frame);
        break;
      case "presence":
        this.emit("presence", frame);
        break;
      case "error":
        this.lastError = `${frame.code}${frame.detail ? `: ${frame.detail}` : ""}`;
        this.emit("log", `error ${this.lastError}`);
        this.emit("error", frame);
        break;
      case "warning":
        this.emit("log", `warning ${frame.code}${frame.detail ? `: ${frame.detail}` : ""}`);
        this.emit("warning", frame);
        break;
      default:
        break; // newer server, newer frame types: ignore what we do not know
    }
  }

  /** Called for a reset frame: forget the topic's position and take the epoch of the frames that follow. */
  reset(frame) {
    if (typeof frame.topic !== "string") return;
    const epoch = typeof frame.epoch === "string" ? frame.epoch : null;
    this.positionMap.set(frame.topic, { epoch, seq: undefined });
    const reason = frame.reason ? `: ${frame.reason}` : "";
    this.emit("log", `reset ${frame.topic} to epoch ${epoch ?? "(none yet)"}${reason}`);
    this.emit("reset", frame);
  }

  /** Track the topic's position; false for a frame we already have. A position is (epoch, seq): within
   * an epoch seq never repeats, so a seq at or below the last one seen is a duplicate (replayed history
   * overlapping what we have). A frame of another epoch, with no reset announcing it, means the stream
   * started afresh without our hearing of it: treated as that reset, and kept. */
  isNew(frame) {
    if (typeof frame.topic !== "string" || typeof frame.seq !== "number") return true;
    const epoch = typeof frame.epoch === "string" ? frame.epoch : null;
    const known = this.positionMap.get(frame.topic);
    const had = known !== undefined && (known.epoch !== null || known.seq !== undefined);
    if (had && known.epoch !== epoch) {
      const change = `epoch ${known.epoch} -> ${epoch}`;
      this.emit("log", `${frame.topic}: data of another epoch without a reset (${change}): starting afresh`);
      this.reset({ type: "reset", topic: frame.topic, epoch, reason: "new epoch without a reset" });
    }
    const last = this.positionMap.get(frame.topic)?.seq;
    if (last !== undefined && frame.seq <= last) return false;
    if (last !== undefined && frame.seq > last + 1 && !this.maxRate) {
      // (With maxRate the server leaves frames out on purpose: not a gap.)
      this.emit("log", `gap in ${frame.topic}: ${frame.seq - last - 1} frame(s) missed before #${frame.seq}`);
    }
    this.positionMap.set(frame.topic, { epoch, seq: frame.seq });
    return true;
  }

  onClose(socket, event) {
    if (socket !== this.socket) return; // a socket we already gave up on
    this.socket = null;
    clearInterval(this.tickTimer);
    this.tickTimer = null;
    this.emit("log", `closed (code ${event.code}${event.reason ? `: ${event.reason}` : ""})`);
    if (!this.wanted) {
      this.setState("closed");
    } else if (NO_RETRY_CODES.has(event.code)) {
      // The server refused the request itself (bad topics, say): retrying would be refused again.
      this.wanted = false;
      this.setState("closed", { error: this.lastError || event.reason || `refused (code ${event.code})` });
    } else if (event.code === CLOSE_UNAUTHORIZED && this.token) {
      // The token expired: reconnect with a new one, resuming every topic with `since` (no hole); at
      // once if this socket lived a while, else after the backoff (a token refused again and again).
      this.tokenExpired = true;
      if (this.openedAt && performance.now() - this.openedAt > TOKEN_RETRY_AFTER_MS) {
        this.emit("log", "connection token expired: reconnecting with a new one");
        this.openSocket();
      } else {
        this.scheduleRetry(this.lastError);
      }
    } else {
      // 1013 "try again later" comes with the reason (too_many_connections, history_unavailable, ...).
      const reason = event.code === 1013 ? this.lastError || event.reason || null : this.lastError;
      this.scheduleRetry(reason);
    }
  }

  /** Forget the current socket without waiting for its close handshake (a dead one may never finish). */
  dropSocket(code, reason) {
    const socket = this.socket;
    this.socket = null;
    clearInterval(this.tickTimer);
    this.tickTimer = null;
    if (socket && socket.readyState !== CLOSED) socket.close(code, reason);
  }

  /** Reconnect after the backoff's next delay; `error`, if any, is why the server asked us to wait. */
  scheduleRetry(error = null) {
    if (!this.wanted || this.retryTimer) return;
    const delay = backoffDelay(this.attempt);
    this.attempt += 1;
    this.retryAt = Date.now() + delay;
    this.setState("reconnecting", error ? { retryAt: this.retryAt, error } : { retryAt: this.retryAt });
    this.retryTimer = setTimeout(() => {
      this.retryTimer = null;
      this.retryAt = null;
      if (this.wanted && !this.socket && !this.opening) this.openSocket();
    }, delay);
  }

  cancelRetry() {
    clearTimeout(this.retryTimer);
    this.retryTimer = null;
    this.retryAt = null;
  }
}

/**
 * Make a LiveConnection and open it: the one-line start.
 * @param {ConstructorParameters<typeof LiveConnection>[0]} options  as for LiveConnection
 * @returns {LiveConnection}
 */
export function connect(options) {
  return new LiveConnection(options).open();
}

/** The topics, checked: a copy, or a TypeError naming the first invalid one. */
function checkTopics(topics) {
  const list = [...topics];
  const bad = list.find((t) => typeof t !== "string" || !TOPIC_PATTERN.test(t));
  if (bad !== undefined) {
    throw new TypeError(`invalid topic ${JSON.stringify(bad)}: 1-48 of a-z, 0-9, "_" and "-"`);
  }
  return list;
}
