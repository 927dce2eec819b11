// A fan-out client process: N connections to one server, every data frame counted and timed.
//
// The Node.js counterpart of bench/client.py's fan-out job, so that the same server is measured by two
// independent client implementations (bench/peers.py starts two of these processes and splits the
// clients between them). Two kinds of connection:
//
//   --kind ws        the `ws` package, no compression, to the project's /ws/echo/?topics=T or the plain
//                    websockets baseline; a text frame may hold several JSON frames joined by "\n";
//   --kind socketio  socket.io-client over its WebSocket transport, to bench/node/socketio-server.mjs;
//                    each "data" event is one frame object.
//
// A data frame is {"type":"data","topic":T,"seq":N,"ts":EPOCH_SECONDS,...}: latency is this process's
// clock at receive minus ts (same machine, same clock), loss is what never arrived (seq gaps, or fewer
// than --count frames per connection when the run ends).
//
// Output, one JSON line each on stdout:
//   {"event":"ready","connected":n,"failures":{"ECONNREFUSED":k,...},"cpu_seconds":s}  every handshake
//                           has ended;
//   {"event":"result",...}  when every connection has --count frames, on SIGTERM / SIGINT, or after
//                           --duration seconds counted from ready.
//
// Usage: node fanout-client.mjs --url URL --clients N --topic T [--kind ws|socketio] [--count C]
//                               [--duration S] [--samples]
// --samples adds "latencies": every latency in seconds as base64 float32 (as bench/client.py packs
// them), so that percentiles over several processes can be computed exactly.

import { parseArgs } from "node:util";
import { performance } from "node:perf_hooks";
import WebSocket from "ws";
import { io } from "socket.io-client";

const CONNECT_CONCURRENCY = 200;
const OPEN_TIMEOUT_MS = 60_000;

const { values: args } = parseArgs({
  options: {
    url: { type: "string" },
    clients: { type: "string", default: "1" },
    topic: { type: "string", default: "prices" },
    kind: { type: "string", default: "ws" },
    count: { type: "string", default: "0" },
    duration: { type: "string", default: "0" },
    samples: { type: "boolean", default: false },
  },
});
if (!args.url || !["ws", "socketio"].includes(args.kind)) {
  process.stderr.write("usage: fanout-client.mjs --url URL --clients N --topic T [--kind ws|socketio]\n");
  process.exit(2);
}
const clients = Number(args.clients);
const count = Number(args.count);
const topic = args.topic;

// Epoch time in seconds with sub-millisecond resolution (Date.now() has whole milliseconds only).
const now = () => (performance.timeOrigin + performance.now()) / 1000;

const received = new Array(clients).fill(0);
const lastSeq = new Array(clients).fill(0);
let gaps = 0;
let latencies = new Float32Array(1 << 16);
let samples = 0;
let firstTs = Infinity;
let lastReceive = 0;
let complete = 0; // connections that have --count frames
const failures = {};
const closed = {};
const sockets = [];
let finished = false;

function record(index, frame, at) {
  if (frame === null || typeof frame !== "object" || frame.type !== "data" || frame.topic !== topic) return;
  if (frame.replay) return;
  const seq = Number(frame.seq);
  const ts = Number(frame.ts);
  received[index] += 1;
  if (seq > lastSeq[index] + 1) gaps += seq - lastSeq[index] - 1;
  if (seq > lastSeq[index]) {
    if (count && lastSeq[index] < count && seq >= count) complete += 1;
    lastSeq[index] = seq;
  }
  if (samples === latencies.length) {
    const bigger = new Float32Array(latencies.length * 2);
    bigger.set(latencies);
    latencies = bigger;
  }
  latencies[samples++] = at - ts;
  if (ts < firstTs) firstTs = ts;
  lastReceive = at;
}

function checkComplete() {
  if (count && complete === sockets.length && sockets.length > 0) finish();
}

function onText(index, text) {
  const at = now();
  for (const line of text.split("\n")) {
    if (!line) continue;
    let frame;
    try {
      frame = JSON.parse(line);
    } catch {
      continue;
    }
    record(index, frame, at);
  }
  checkComplete();
}

function countFailure(what) {
  failures[what] = (failures[what] || 0) + 1;
}

function countClose(what) {
  if (finished) return;
  closed[what] = (closed[what] || 0) + 1;
}

function openWs(index) {
  return new Promise((resolve) => {
    const socket = new WebSocket(args.url, {
      perMessageDeflate: false,
      handshakeTimeout: OPEN_TIMEOUT_MS,
      maxPayload: 0,
    });
    let open = false;
    socket.on("open", () => {
      open = true;
      resolve(socket);
    });
    socket.on("message", (data, isBinary) => {
      if (!isBinary) onText(index, data.toString());
    });
    socket.on("unexpected-response", (request, response) => {
      countFailure(`HTTP ${response.statusCode}`);
      socket.terminate();
    });
    socket.on("error", (error) => {
      if (!open) countFailure(error.code || error.name || "Error");
      else countClose(error.code || error.name || "Error");
    });
    socket.on("close", (code) => {
      if (!open) resolve(null);
      else if (code !== 1000 && code !== 1005) countClose(`close ${code}`);
    });
  });
}

function openSocketIo(index) {
  const url = new URL(args.url);
  return new Promise((resolve) => {
    const socket = io(url.origin, {
      path: url.pathname === "/" ? "/socket.io" : url.pathname,
      query: Object.fromEntries(url.searchParams),
      transports: ["websocket"],
      forceNew: true, // one WebSocket per client, never one multiplexed Manager for all
      reconnection: false,
      timeout: OPEN_TIMEOUT_MS,
    });
    let open = false;
    socket.on("connect", () => {
      open = true;
      resolve(socket);
    });
    socket.on("connect_error", (error) => {
      countFailure(error.message || "connect_error");
      resolve(null);
    });
    socket.on("data", (frame) => {
      record(index, frame, now());
      checkComplete();
    });
    socket.on("disconnect", (reason) => {
      if (open && reason !== "io client disconnect") countClose(reason);
    });
  });
}

async function openAll() {
  const open = args.kind === "ws" ? openWs : openSocketIo;
  let next = 0;
  async function lane() {
    while (next < clients) {
      const index = next++;
      const socket = await open(index);
      if (socket !== null) sockets.push(socket);
    }
  }
  await Promise.all(Array.from({ length: Math.min(CONNECT_CONCURRENCY, clients) }, lane));
}

function percentile(sorted, fraction) {
  if (sorted.length === 0) return null;
  const rank = Math.max(1, Math.ceil(fraction * sorted.length));
  return sorted[Math.min(rank, sorted.length) - 1] * 1000;
}

// This process's user + system CPU seconds so far, reported in both lines (it may exit before a
// controller could read it from /proc).
function cpuSeconds() {
  const { user, system } = process.cpuUsage();
  return (user + system) / 1e6;
}

function finish() {
  if (finished) return;
  finished = true;
  const taken = latencies.subarray(0, samples);
  const sorted = Float32Array.from(taken).sort();
  const total = received.reduce((a, b) => a + b, 0);
  // Frames each open connection should have had and did not get (only known with --count).
  const lost = count ? sockets.length * count - total : gaps;
  const result = {
    event: "result",
    kind: args.kind,
    clients: sockets.length,
    received: total,
    lost,
    gaps,
    p50_ms: percentile(sorted, 0.5),
    p99_ms: percentile(sorted, 0.99),
    max_ms: sorted.length ? sorted[sorted.length - 1] * 1000 : null,
    first_ts: samples ? firstTs : null,
    last_receive: samples ? lastReceive : null,
    failures,
    closed,
    cpu_seconds: cpuSeconds(),
  };
  if (args.samples) result.latencies = Buffer.from(taken.buffer, taken.byteOffset, taken.byteLength).toString("base64");
  process.stdout.write(JSON.stringify(result) + "\n", () => {
    for (const socket of sockets) {
      if (args.kind === "ws") socket.terminate();
      else socket.disconnect();
    }
    process.exit(0);
  });
}

process.on("SIGTERM", finish);
process.on("SIGINT", finish);

await openAll();
process.stdout.write(JSON.stringify({ event: "ready", connected: sockets.length, failures, cpu_seconds: cpuSeconds() }) + "\n");
if (Number(args.duration) > 0) setTimeout(finish, Number(args.duration) * 1000);
checkComplete();
