// The live page: wires the connection (connection.js) and the chart (chart.js) to the DOM.
// Server data only ever reaches the page through textContent. DOM writes are batched per animation
// frame, so a 100 Hz feed costs one layout per frame, not one per message.
import { LiveConnection, tokenFetcher } from "./connection.js";
import { DEFAULT_WINDOW, LiveChart } from "./chart.js";

const LOG_MAX_LINES = 500;
// The events table: the latest data of at most this many (topic, event name) pairs, the least recently
// updated dropped first; an event's data is shown as JSON text cut to EVENT_TEXT_MAX characters.
const EVENT_ROWS_MAX = 50;
const EVENT_TEXT_MAX = 200;
const DEFAULT_TOPIC = "prices";
// Where the project mounted the topics API (the template renders it), "/api/topics" by default.
const TOPICS_URL = document.body.dataset.topicsUrl || "/api/topics";
// A logged-in page connects with connection tokens from here (none: anonymous, public topics only).
const TOKEN_URL = document.body.dataset.tokenUrl || "";

const $ = (id) => document.getElementById(id);

// ------------------------------------------------------------ the log

const pendingLines = [];
let logFrameRequested = false;

/** Queue a line for the log; the log keeps at most LOG_MAX_LINES, the newest in view. */
function log(text) {
  pendingLines.push(text);
  if (pendingLines.length > LOG_MAX_LINES) pendingLines.shift();
  if (logFrameRequested) return;
  logFrameRequested = true;
  requestAnimationFrame(flushLog);
}

function flushLog() {
  logFrameRequested = false;
  const box = $("log");
  const lines = pendingLines.splice(0);
  for (const text of lines) {
    const line = document.createElement("div");
    line.textContent = text;
    box.appendChild(line);
  }
  while (box.childNodes.length > LOG_MAX_LINES) box.removeChild(box.firstChild);
  box.scrollTop = box.scrollHeight;
}

// ------------------------------------------------------------ formatting

function formatMs(ms) {
  if (ms === null || ms === undefined) return "–";
  return ms < 10 ? ms.toFixed(1) : String(Math.round(ms));
}

function formatAge(seconds) {
  if (seconds < 1) return `${Math.max(0, Math.round(seconds * 1000))} ms`;
  if (seconds < 120) return `${seconds.toFixed(1)} s`;
  return `${Math.round(seconds / 60)} min`;
}

function shorten(text, limit) {
  return text.length <= limit ? text : `${text.slice(0, limit - 1)}\u2026`;
}

function formatValue(value) {
  return typeof value === "number" && !Number.isInteger(value) ? value.toFixed(2) : String(value);
}

// ------------------------------------------------------------ the pieces

const chart = new LiveChart($("chart"), { windowSeconds: DEFAULT_WINDOW });
const presence = new Map(); // topic -> its latest presence frame
const latestEvents = new Map(); // "topic event" -> {topic, event, text, seq}, least recently updated first
let eventsDirty = false;
let statusDetail = {};
let legendDirty = false;

const pageCsrfToken = () => document.querySelector("input[name=csrfmiddlewaretoken]")?.value;

const connection = new LiveConnection({
  topics: [DEFAULT_TOPIC],
  // A logged-in page renews its connection tokens with the page's CSRF token; an anonymous one has none.
  token: TOKEN_URL ? tokenFetcher({ url: TOKEN_URL, csrfToken: pageCsrfToken }) : null,
  handlers: {
    state: (state, detail) => {
      statusDetail = detail;
      showStatus();
      if (state === "connecting") showError("");
      if (detail.error) showError(detail.error);
    },
    data: (frame) => {
      chart.add(frame);
      legendDirty = true;
      const kind = frame.replay ? "replayed" : "data";
      if (typeof frame.event === "string") {
        const text = shorten(JSON.stringify(frame.data) ?? "null", EVENT_TEXT_MAX);
        log(`${kind} ${frame.topic} #${frame.seq} ${frame.event}: ${text}`);
        noteEvent(frame, text);
      } else {
        log(`${kind} ${frame.topic} #${frame.seq}: ${JSON.stringify(frame.values)}`);
      }
    },
    reset: (frame) => {
      chart.resetTopic(frame.topic);
      forgetEvents((topic) => topic !== frame.topic);
      legendDirty = true;
    },
    presence: (frame) => {
      presence.set(frame.topic, frame);
      showPresence();
    },
    error: (frame) => showError(`${frame.code}${frame.detail ? `: ${frame.detail}` : ""}`),
    echo: (text) => log(`echo: ${text}`),
    sent: (text) => log(`sent: ${text}`),
    log,
  },
});

function showStatus() {
  const state = connection.state;
  let text = state;
  if (state === "reconnecting" && statusDetail.retryAt) {
    text = `reconnecting in ${Math.max(0, Math.ceil((statusDetail.retryAt - Date.now()) / 1000))} s`;
  }
  if ($("status").textContent !== text) $("status").textContent = text;
  $("status").dataset.state = state;
  $("connect").disabled = connection.active;
  $("disconnect").disabled = !connection.active;
}

function showError(text) {
  const box = $("error");
  box.textContent = text;
  box.hidden = !text;
}

function showPresence() {
  const parts = [...presence].filter(([topic]) => connection.topics.includes(topic));
  const text = parts.map(([topic, frame]) => watching(topic, frame)).join("; ");
  $("presence").textContent = text || "–";
}

/** "prices: 3 watching", and on topics that need login who: "user-4: 2 watching (alice, bob)". */
function watching(topic, frame) {
  let text = `${topic}: ${frame.count} watching`;
  if (Array.isArray(frame.users) && frame.users.length) {
    const more = frame.more_users > 0 ? ` and ${frame.more_users} more` : "";
    text += ` (${frame.users.join(", ")}${more})`;
  }
  return text;
}

/** The legend: a swatch in the series' colour, its name and its latest value, one row per series. */
function showLegend() {
  legendDirty = false;
  const list = $("latest");
  const keys = new Set(chart.latest.keys());
  for (const row of [...list.children]) if (!keys.has(row.dataset.key)) row.remove();
  for (const [key, { value }] of chart.latest) {
    let row = list.querySelector(`[data-key="${CSS.escape(key)}"]`);
    if (!row) {
      row = document.createElement("div");
      row.dataset.key = key;
      const dt = document.createElement("dt");
      const swatch = document.createElement("span");
      swatch.className = "swatch";
      swatch.style.backgroundColor = chart.colour(key);
      dt.append(swatch, document.createTextNode(key));
      row.append(dt, document.createElement("dd"));
      list.append(row);
    }
    row.querySelector("dd").textContent = formatValue(value);
  }
}

/** Keep a JSON event as its (topic, event name)'s latest, for the events table. */
function noteEvent(frame, text) {
  const key = `${frame.topic} ${frame.event}`;
  latestEvents.delete(key); // re-inserted last: the map's order is the order of updates
  latestEvents.set(key, { topic: frame.topic, event: frame.event, text, seq: frame.seq });
  if (latestEvents.size > EVENT_ROWS_MAX) latestEvents.delete(latestEvents.keys().next().value);
  eventsDirty = true;
}

/** Forget the events of every topic for which `keep(topic)` is false. */
function forgetEvents(keep) {
  for (const [key, { topic }] of latestEvents) if (!keep(topic)) latestEvents.delete(key);
  eventsDirty = true;
}

/** The events table, the most recently updated first; hidden until a topic sends an event. */
function showEvents() {
  eventsDirty = false;
  const rows = [...latestEvents.values()].reverse().map(({ topic, event, text, seq }) => {
    const row = document.createElement("tr");
    for (const cell of [topic, event, text, `#${seq}`]) {
      const td = document.createElement("td");
      td.textContent = cell;
      row.append(td);
    }
    return row;
  });
  $("events").tBodies[0].replaceChildren(...rows);
  $("events-box").hidden = rows.length === 0;
}

/** About four times a second: the figures that change with time alone (age, countdown, RTT). */
function refresh() {
  showStatus();
  const { last, median } = connection.rtt();
  $("rtt").textContent = formatMs(last);
  $("rtt-median").textContent = formatMs(median);
  $("age").textContent = chart.newestTs === null ? "–" : formatAge(Date.now() / 1000 - chart.newestTs);
  if (legendDirty) showLegend();
  if (eventsDirty) showEvents();
}

// ------------------------------------------------------------ topics

function selectedTopics() {
  return [...document.querySelectorAll("#topics input:checked")].map((box) => box.value);
}

function showTopics(names) {
  const box = $("topic-list");
  box.replaceChildren();
  for (const name of names) {
    const label = document.createElement("label");
    const input = document.createElement("input");
    input.type = "checkbox";
    input.value = name;
    input.checked = connection.topics.includes(name);
    input.addEventListener("change", () => {
      const topics = selectedTopics();
      if (!topics.length) {
        input.checked = true; // at least one topic: the server would pick the default anyway
        return;
      }
      chart.keepTopics(topics);
      forgetEvents((topic) => topics.includes(topic));
      legendDirty = true;
      connection.setTopics(topics);
      showPresence();
    });
    label.append(input, document.createTextNode(` ${name}`));
    box.append(label);
  }
}

/** List the topics the server knows; without that endpoint, offer the default topic alone. */
async function loadTopics() {
  let names = [DEFAULT_TOPIC];
  try {
    const response = await fetch(TOPICS_URL, { headers: { Accept: "application/json" } });
    if (response.ok) {
      const body = await response.json();
      const listed = (body.topics ?? []).map((t) => t.name).filter((n) => typeof n === "string");
      if (listed.length) names = [...new Set([...connection.topics, ...listed])].sort();
    }
  } catch {
    // No list: the default topic still works.
  }
  showTopics(names);
}

// ------------------------------------------------------------ wiring

$("connect").addEventListener("click", () => connection.open());
$("disconnect").addEventListener("click", () => connection.close());
$("window").value = String(DEFAULT_WINDOW);
$("window").addEventListener("change", (event) => chart.setWindow(Number(event.target.value)));
$("max-rate").addEventListener("change", (event) => connection.setMaxRate(Number(event.target.value) || null));
window.addEventListener("online", () => connection.retryNow());
setInterval(refresh, 250);
setInterval(() => chart.tick(), 1000);
showTopics([DEFAULT_TOPIC]);
loadTopics();
showStatus();

/**
 * window.liveChart: a small read-only hook for tests and for curious people at the console.
 *   count(topic?)  points the chart holds, for one topic or all
 *   series()       the series keys ("topic/series") being drawn
 *   latest()       {key: latest value} as the legend shows them
 *   events()       {"topic event": its latest data, as JSON text} as the events table shows them
 *   data()         a copy of the chart's data: [xs, ...one array per series]; in a series, null
 *                  where its line breaks (a time gap), undefined where it goes on (another topic's row)
 *   draws()        how many times the chart has been drawn (at most once per animation frame)
 *   windowSeconds() the width of the time window
 *   lastSeq()      {topic: last seq seen}, what a reconnect asks to resume from (with the epoch)
 *   epochs()       {topic: epoch of its stream}, null after a reset that announced none
 *   state()        the connection's state, as #status shows it
 *   connections()  how many sockets the page has opened (1 + reconnects)
 */
window.liveChart = Object.freeze({
  count: (topic) => chart.count(topic),
  series: () => [...chart.columns.keys()],
  latest: () => Object.fromEntries([...chart.latest].map(([key, { value }]) => [key, value])),
  events: () => Object.fromEntries([...latestEvents].map(([key, { text }]) => [key, text])),
  data: () => [chart.xs.slice(), ...[...chart.columns.values()].map((column) => column.slice())],
  draws: () => chart.draws,
  windowSeconds: () => chart.windowSeconds,
  lastSeq: () => connection.lastSeq(),
  epochs: () => connection.epochs(),
  state: () => connection.state,
  connections: () => connection.opened,
});
