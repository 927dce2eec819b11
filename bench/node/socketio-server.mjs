// The Socket.IO peer: a Socket.IO server with its Redis adapter, for bench/peers.py.
//
// What a Node.js team would deploy for live data pushed from another process: socket.io 4 on one
// process, @socket.io/redis-adapter on the bench's Redis, and publishers using
// @socket.io/redis-emitter (socketio-emitter.mjs). Each client joins the room named in its handshake
// query (?room=R, default "bench"); the adapter relays every emitter broadcast to the room's sockets
// (Socket.IO encodes a broadcast packet once, then writes it to each socket). WebSocket transport
// only, no compression, as the bench's other servers and clients.
//
// Usage: node socketio-server.mjs [--host 127.0.0.1] [--port 0] [--redis URL] [--key PREFIX]
// (--redis defaults to $REDIS_URL; --key is the adapter's channel prefix, which the emitter must share.)
// It prints "Listening on TCP address HOST:PORT" once Redis is subscribed and the port bound, and
// stops on SIGINT / SIGTERM.

import { createServer } from "node:http";
import { parseArgs } from "node:util";
import { Server } from "socket.io";
import { createAdapter } from "@socket.io/redis-adapter";
import { createClient } from "redis";

const { values: args } = parseArgs({
  options: {
    host: { type: "string", default: "127.0.0.1" },
    port: { type: "string", default: "0" },
    redis: { type: "string", default: process.env.REDIS_URL || "redis://127.0.0.1:6379/0" },
    key: { type: "string", default: "socket.io" },
  },
});

const pubClient = createClient({ url: args.redis });
const subClient = pubClient.duplicate();
for (const client of [pubClient, subClient]) client.on("error", (error) => console.error("redis:", error.message));
await Promise.all([pubClient.connect(), subClient.connect()]);

const http = createServer();
const io = new Server(http, {
  transports: ["websocket"],
  serveClient: false,
  perMessageDeflate: false,
  adapter: createAdapter(pubClient, subClient, { key: args.key }),
});
io.on("connection", (socket) => {
  const room = socket.handshake.query.room;
  socket.join(typeof room === "string" && room ? room : "bench");
});

http.listen(Number(args.port), args.host, () => {
  const { address, port } = http.address();
  console.log(`Listening on TCP address ${address}:${port}`);
});

function stop() {
  io.close();
  Promise.allSettled([pubClient.quit(), subClient.quit()]).finally(() => process.exit(0));
  setTimeout(() => process.exit(0), 2000).unref();
}
process.on("SIGINT", stop);
process.on("SIGTERM", stop);
