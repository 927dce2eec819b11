// The Socket.IO peer's publisher: @socket.io/redis-emitter broadcasting to a room through Redis.
//
// Emits --count "data" events at --rate per second on a fixed schedule (as manage.py push_data and
// the baseline do), each a frame in the project's wire format: {"type":"data","topic":ROOM,"seq":N,
// "ts":EPOCH_SECONDS,"values":{"v":...}}, ts stamped just before the emit. The emitter encodes each
// event once (msgpack) and publishes it on the adapter's channel; socketio-server.mjs relays it.
//
// Usage: node socketio-emitter.mjs --rate R --count N [--room bench] [--redis URL] [--key PREFIX]
// It prints "published N" when done and exits.

import { parseArgs } from "node:util";
import { performance } from "node:perf_hooks";
import { setTimeout as sleep } from "node:timers/promises";
import { Emitter } from "@socket.io/redis-emitter";
import { createClient } from "redis";

const { values: args } = parseArgs({
  options: {
    rate: { type: "string", default: "10" },
    count: { type: "string", default: "10" },
    room: { type: "string", default: "bench" },
    redis: { type: "string", default: process.env.REDIS_URL || "redis://127.0.0.1:6379/0" },
    key: { type: "string", default: "socket.io" },
  },
});

const client = createClient({ url: args.redis });
client.on("error", (error) => console.error("redis:", error.message));
await client.connect();
const emitter = new Emitter(client, { key: args.key });

const rate = Number(args.rate);
const count = Number(args.count);
const interval = 1000 / rate;
let nextTick = performance.now();
for (let seq = 1; seq <= count; seq++) {
  const delay = nextTick - performance.now();
  if (delay > 0) await sleep(delay);
  const ts = (performance.timeOrigin + performance.now()) / 1000;
  emitter
    .to(args.room)
    .emit("data", { type: "data", topic: args.room, seq, ts, values: { v: Math.sin((seq * interval) / 1000) } });
  nextTick = Math.max(nextTick + interval, performance.now());
}
// node-redis pipelines commands: quit() sends QUIT after every PUBLISH already queued.
await client.quit();
console.log(`published ${count}`);
