// The WebSocket connection that heals itself: reconnects with backoff, detects dead sockets, resumes
// each topic from its last position (epoch and seq), measures echo round trips. Knows nothing of the DOM.

export const TICK_MS = 1000; // a "*" is sent this often while open; the server echoes every one
export const DEAD_AFTER_MS = 6000; // a "*" unanswered, and no frame at all, this long: replace the socket
export const BACKOFF_FIRST_MS = 500;
export const BACKOFF_MAX_MS = 10000;
export const STABLE_AFTER_MS = 10000; // open this long: the next drop starts the backoff afresh
export const HISTORY_POINTS = 600; // points per topic the server replays on connect (60 s at 10 Hz)
const RTT_SAMPLES = 50;

// Close codes that mean "do not try again by yourself": the request itself is wrong (RFC 6455), or
// asks for topics this user may not read (3003, forbidden). 1013 ("try again later": too many
// connections from this address, history unavailable, fell behind) is not one of them: it is retried
// with the backoff like a drop.
const NO_RETRY_CODES = new Set([1008, 3003]);
// The server's "unauthorized": the connection token expired (or was refused). Reconnect with a new one.
export const CLOSE_UNAUTHORIZED = 3000;
const TOKEN_RETRY_AFTER_MS = 1000;
// The alphabet of a stream's epoch (the server's EPOCH_PATTERN): only such an epoch goes into `since`.
const EPOCH_PATTERN = /^[0-9a-z]{1,32}$/;

/** Delay before reconnect attempt `attempt` (0, 1, 2...): doubling from 0.5 s to 10 s, then halved at
 * random ("equal jitter"), so that a thousand pages dropped at once do not come back at once. */
export function backoffDelay(attempt, random = Math.random) {
  const ceiling = Math.min(BACKOFF_MAX_MS, BACKOFF_FIRST_MS * 2 ** attempt);
  return ceiling / 2 + random() * (ceiling / 2);
}

/** Whether `position` ({epoch, seq}) can be resumed from: both known, the epoch in the protocol's
 * alphabet. */
function resumable(position) {
  if (position === undefined || typeof position.seq !== "number") return false;
  return typeof position.epoch === "string" && EPOCH_PATTERN.test(position.epoch);
}

/** The socket URL on this page's own host (wss: under https:), asking for `topics`, with `history`
 * points replayed for topics not yet seen and `since` (topic:seq:epoch) for topics whose position is
 * known (`positions`: topic -> {epoch, seq}); `maxRate`, if set, asks for at most that many frames per
 * second per topic (the latest values, for slow links). */
export function socketUrl(location, topics, positions, maxRate = null) {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const params = new URLSearchParams();
  params.set("topics", topics.join(","));
  params.set("history", String(HISTORY_POINTS));
  const since = topics
    .filter((t) => resumable(positions.get(t)))
    .map((t) => `${t}:${positions.get(t).seq}:${positions.get(t).epoch}`);
  if (since.length) params.set("since", since.join(","));
  if (maxRate) params.set("max_rate", String(maxRate));
  // URLSearchParams would escape "," and ":"; topic names are [a-z0-9_-] and epochs [0-9a-z], so the
  // plain form is safe.
  return `${scheme}//${location.host}/ws/echo/?${decodeURIComponent(params.toString())}`;
}

/** Split one text frame into the JSON objects it carries (several, separated by "\n", when the server
 * batches) or, if it is not JSON, return null: it is an echo of something we sent. */
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

function median(values) {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}

/**
 * One logical connection that survives its sockets. Events (all optional callbacks in `handlers`):
 *   status(state, detail)  state: "connecting" | "open" | "reconnecting" | "closed";
 *                          detail: {retryAt, error?} for reconnecting (error: why the server asked us
 *                          to come back later, if it said), {error} for a refusal
 *   data(frame)            a new data frame (duplicates already dropped), live or replayed
 *   reset(frame)           forget everything of frame.topic: frames of frame.epoch follow (also emitted,
 *                          with a reason of its own, for a data frame of an epoch no reset announced)
 *   presence(frame)        frame.count pages watch frame.topic (frame.users: who, on topics that
 *                          need login)
 *   error(frame)           the server refused something; a close follows
 *   echo(text, rttMs)      an echo came back; rttMs for "*" heartbeats, else null
 *   log(text)              something worth a line in the log
 *   sent(text)             a frame went out
 */
export class LiveConnection {
  /** `protocols({fresh})`, if given, is awaited before each socket opens: the WebSocket subprotocols to
   * offer (a connection token's), or null for none; `fresh` asks for a new token (the last expired). */
  constructor({ topics, handlers = {}, location = window.location, protocols = null }) {
    this.topics = [...topics];
    this.handlers = handlers;
    this.location = location;
    this.protocols = protocols;
    this.maxRate = null; // frames per second per topic, at most (null: every frame)
    this.tokenExpired = false; // the server closed with CLOSE_UNAUTHORIZED: the next open needs a new token
    this.opening = false; // waiting for protocols() before a socket exists
    // topic -> {epoch, seq}: the stream's epoch (null: none yet) and the last seq seen in it (undefined:
    // none yet); sent as `since` on reconnect when both are known.
    this.positions = new Map();
    this.lastError = null; // the current socket's error frame, shown while the page waits to retry
    this.rtts = [];
    this.socket = null;
    this.wanted = false; // true from connect() until disconnect() or a refusal
    this.attempt = 0;
    this.retryTimer = null;
    this.retryAt = null;
    this.tickTimer = null;
    this.lastFrameAt = 0;
    this.openedAt = 0;
    this.pendingPings = []; // send times of "*" frames not yet echoed, oldest first
    this.state = "closed";
    this.opened = 0; // sockets opened so far
  }

  emit(name, ...args) {
    const handler = this.handlers[name];
    if (handler) handler(...args);
  }

  setState(state, detail = {}) {
    this.state = state;
    this.emit("status", state, detail);
  }

  /** Called by the Connect button: open now, and keep the connection up until disconnect(). */
  connect() {
    this.wanted = true;
    this.attempt = 0;
    this.cancelRetry();
    if (!this.socket && !this.opening) this.open();
  }

  /** Called by the Disconnect button: close, and stay closed (no reconnect) until connect(). */
  disconnect() {
    this.wanted = false;
    this.cancelRetry();
    this.dropSocket(1000, "user disconnected");
    this.setState("closed");
  }

  /** Ask for other topics: reconnects at once if connected (topics are fixed per socket). */
  setTopics(topics) {
    this.topics = [...topics];
    for (const topic of [...this.positions.keys()]) {
      if (!this.topics.includes(topic)) this.positions.delete(topic);
    }
    if (this.wanted) {
      this.dropSocket(1000, "topics changed");
      this.cancelRetry();
      this.open();
    }
  }

  /** Ask for at most `rate` frames per second per topic (null: all); reconnects at once if connected. */
  setMaxRate(rate) {
    this.maxRate = rate;
    if (this.wanted) {
      this.dropSocket(1000, "rate changed");
      this.cancelRetry();
      this.open();
    }
  }

  /** The last seq seen per topic, {topic: seq}, for topics that have one. */
  lastSeq() {
    const seqs = [...this.positions].filter(([, p]) => p.seq !== undefined).map(([t, p]) => [t, p.seq]);
    return Object.fromEntries(seqs);
  }

  /** The epoch of each topic's stream, {topic: epoch}, null after a reset that announced no stream. */
  epochs() {
    return Object.fromEntries([...this.positions].map(([topic, p]) => [topic, p.epoch]));
  }

  /** The round-trip times of "*" echoes: the last one and the median of recent ones, in ms. */
  rtt() {
    if (!this.rtts.length) return { last: null, median: null };
    return { last: this.rtts[this.rtts.length - 1], median: median(this.rtts) };
  }

  /** Open a socket (after getting its protocols, if the page authenticates with connection tokens). */
  async open() {
    let protocols = null;
    if (this.protocols) {
      this.opening = true;
      this.setState("connecting");
      try {
        protocols = await this.protocols({ fresh: this.tokenExpired });
        this.tokenExpired = false;
      } catch (error) {
        this.opening = false;
        this.emit("log", `no connection token: ${error.message}`);
        this.scheduleRetry(`no connection token: ${error.message}`);
        return;
      }
      this.opening = false;
      if (!this.wanted || this.socket) return; // disconnected (or opened) meanwhile
    }
    const url = socketUrl(this.location, this.topics, this.positions, this.maxRate);
    this.emit("log", `opening ${url}`);
    this.openedAt = 0;
    const socket = protocols ? new WebSocket(url, protocols) : new WebSocket(url);
    this.opened += 1;
    this.socket = socket;
    this.pendingPings = [];
    this.lastError = null;
    this.lastFrameAt = performance.now();
    this.setState("connecting");
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
    const waitingSince = socket.readyState === WebSocket.OPEN ? this.pendingPings[0] : this.lastFrameAt;
    const silent = now - this.lastFrameAt > DEAD_AFTER_MS;
    if (silent && waitingSince !== undefined && now - waitingSince > DEAD_AFTER_MS) {
      const seconds = Math.round((now - this.lastFrameAt) / 1000);
      this.emit("log", `no frame for ${seconds} s: replacing the connection`);
      this.dropSocket(4000, "no frames");
      this.scheduleRetry();
      return;
    }
    if (socket.readyState === WebSocket.OPEN) {
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
      default:
        break; // newer server, newer frame types: ignore what we do not know
    }
  }

  /** Called for a reset frame: forget the topic's position and take the epoch of the frames that follow. */
  reset(frame) {
    if (typeof frame.topic !== "string") return;
    const epoch = typeof frame.epoch === "string" ? frame.epoch : null;
    this.positions.set(frame.topic, { epoch, seq: undefined });
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
    const known = this.positions.get(frame.topic);
    const had = known !== undefined && (known.epoch !== null || known.seq !== undefined);
    if (had && known.epoch !== epoch) {
      const change = `epoch ${known.epoch} -> ${epoch}`;
      this.emit("log", `${frame.topic}: data of another epoch without a reset (${change}): starting afresh`);
      this.reset({ type: "reset", topic: frame.topic, epoch, reason: "new epoch without a reset" });
    }
    const last = this.positions.get(frame.topic)?.seq;
    if (last !== undefined && frame.seq <= last) return false;
    if (last !== undefined && frame.seq > last + 1 && !this.maxRate) {
      // (With maxRate the server leaves frames out on purpose: not a gap.)
      this.emit("log", `gap in ${frame.topic}: ${frame.seq - last - 1} frame(s) missed before #${frame.seq}`);
    }
    this.positions.set(frame.topic, { epoch, seq: frame.seq });
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
    } else if (event.code === CLOSE_UNAUTHORIZED && this.protocols) {
      // The token expired: reconnect with a new one, resuming every topic with `since` (no hole); at
      // once if this socket lived a while, else after the backoff (a token refused again and again).
      this.tokenExpired = true;
      if (this.openedAt && performance.now() - this.openedAt > TOKEN_RETRY_AFTER_MS) {
        this.emit("log", "connection token expired: reconnecting with a new one");
        this.open();
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
    if (socket && socket.readyState !== WebSocket.CLOSED) socket.close(code, reason);
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
      if (this.wanted && !this.socket && !this.opening) this.open();
    }, delay);
  }

  cancelRetry() {
    clearTimeout(this.retryTimer);
    this.retryTimer = null;
    this.retryAt = null;
  }

  /** Called when the browser says the network is back: retry now instead of at the backoff's time. */
  retryNow() {
    if (this.wanted && this.retryTimer) {
      this.cancelRetry();
      this.open();
    }
  }
}
