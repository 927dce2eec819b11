// Unit tests of the client module (echo/static/echo/connection.js) under Node's own test runner, with
// a scripted WebSocket class: positions, dedupe, resets, since, subscribe, tokens, refusals. Run by
// tests/test_client_js.py (`node --test tests/js/`); the module in a real browser: test_browser.py.
import assert from "node:assert/strict";
import { afterEach, test } from "node:test";

import {
  backoffDelay,
  endpoint,
  LiveConnection,
  parseFrames,
  socketUrl,
  tokenFetcher,
} from "../../echo/static/echo/connection.js";

/** A WebSocket stand-in: records what the connection asks for; the test plays the server. */
class FakeSocket {
  static all = [];

  constructor(url, protocols) {
    this.url = url;
    this.protocols = protocols;
    this.readyState = 0;
    this.sent = [];
    this.listeners = {};
    FakeSocket.all.push(this);
  }

  addEventListener(name, listener) {
    (this.listeners[name] ??= []).push(listener);
  }

  fire(name, event = {}) {
    for (const listener of this.listeners[name] ?? []) listener(event);
  }

  accept() {
    this.readyState = 1;
    this.fire("open");
  }

  receive(...frames) {
    this.fire("message", { data: frames.map((f) => JSON.stringify(f)).join("\n") });
  }

  send(text) {
    this.sent.push(text);
  }

  close(code = 1000, reason = "") {
    this.readyState = 3;
    this.fire("close", { code, reason });
  }
}

const location = { href: "http://example.test/page" };
const connections = [];
const settle = () => new Promise((resolve) => setTimeout(resolve, 0));
const data = (seq, epoch = "e1", topic = "t") => ({ type: "data", topic, epoch, seq, values: { v: seq } });

function connection(options = {}) {
  const live = new LiveConnection({ topics: ["t"], location, WebSocket: FakeSocket, ...options });
  connections.push(live);
  return live;
}

afterEach(() => {
  for (const live of connections.splice(0)) live.close();
  FakeSocket.all = [];
});

test("the URL follows the page's scheme, and since names only known positions", () => {
  assert.equal(endpoint(null, { href: "https://example.test/x" }), "wss://example.test/ws/echo/");
  assert.equal(endpoint("http://other.test:8000/ws/echo/", undefined), "ws://other.test:8000/ws/echo/");
  assert.throws(() => endpoint(null, undefined), TypeError);
  const positions = new Map([
    ["a", { epoch: "e1", seq: 4 }],
    ["b", { epoch: "e2", seq: undefined }], // reset, nothing seen yet
    ["c", { epoch: "NOT AN EPOCH", seq: 1 }],
  ]);
  const url = socketUrl("ws://h/ws/echo/", { topics: ["a", "b", "c"], positions, history: 5, maxRate: 2 });
  assert.equal(url, "ws://h/ws/echo/?topics=a,b,c&history=5&since=a:4:e1&max_rate=2");
});

test("batched frames are split; an echo is not JSON", () => {
  const batched = '{"type":"data"}\n{"type":"presence"}';
  assert.deepEqual(parseFrames(batched), [{ type: "data" }, { type: "presence" }]);
  assert.equal(parseFrames("*"), null);
  assert.equal(parseFrames("{not json"), null);
});

test("the backoff doubles to its ceiling and keeps at least half of it", () => {
  assert.equal(backoffDelay(0, () => 0), 250);
  assert.equal(backoffDelay(1, () => 1), 1000);
  assert.equal(backoffDelay(20, () => 0), 5000);
});

test("duplicates are dropped and a reconnect resumes with since", async () => {
  const seen = [];
  const live = connection({ history: 10 });
  live.on("data", (frame) => seen.push(frame.seq));
  live.open();
  const [first] = FakeSocket.all;
  assert.equal(first.url, "ws://example.test/ws/echo/?topics=t&history=10");
  first.accept();
  first.receive(data(1), data(2));
  first.receive(data(2));
  first.close(1001, "going away");
  assert.equal(live.state, "reconnecting");
  live.retryNow();
  const second = FakeSocket.all[1];
  assert.equal(second.url, "ws://example.test/ws/echo/?topics=t&history=10&since=t:2:e1");
  second.accept();
  second.receive(data(2), data(3));
  assert.deepEqual(seen, [1, 2, 3]);
  assert.deepEqual(live.positions(), { t: { epoch: "e1", seq: 3 } });
});

test("data of an unannounced epoch is a reset, and a reset forgets the seq", () => {
  const events = [];
  const live = connection();
  live.on("data", (frame) => events.push(`data ${frame.epoch}#${frame.seq}`));
  live.on("reset", (frame) => events.push(`reset ${frame.epoch}`));
  live.open();
  const [socket] = FakeSocket.all;
  socket.accept();
  socket.receive(data(1), data(2), data(1, "e2"));
  socket.receive({ type: "reset", topic: "t", epoch: "e3", reason: "history gone" });
  assert.deepEqual(live.lastSeq(), {});
  socket.receive(data(1, "e3"));
  assert.deepEqual(events, ["data e1#1", "data e1#2", "reset e2", "data e2#1", "reset e3", "data e3#1"]);
});

test("subscribes in one tick open one socket; an unsubscribed topic is forgotten", async () => {
  const live = connection({ positions: { t: { epoch: "e1", seq: 7 } } });
  live.open();
  FakeSocket.all[0].accept();
  live.subscribe("a");
  live.subscribe("b", "a");
  live.unsubscribe("t");
  await settle();
  assert.equal(FakeSocket.all.length, 2);
  assert.equal(FakeSocket.all[0].readyState, 3);
  assert.equal(FakeSocket.all[1].url, "ws://example.test/ws/echo/?topics=a,b&history=600");
  assert.deepEqual(live.positions(), {});
  assert.throws(() => live.subscribe("Bad Topic"), TypeError);
  assert.throws(() => live.on("nonsense", () => {}), TypeError);
});

test("a saved position is resumed from on the first socket", () => {
  connection({ positions: { t: { epoch: "e9", seq: 41 } } }).open();
  assert.match(FakeSocket.all[0].url, /&since=t:41:e9$/);
});

test("a refusal closes for good with the server's reason", () => {
  const states = [];
  const live = connection();
  live.on("state", (state, detail) => states.push([state, detail.error ?? null]));
  live.open();
  const [socket] = FakeSocket.all;
  socket.receive({ type: "error", code: "forbidden", detail: "t needs login" });
  socket.close(3003, "forbidden");
  assert.deepEqual(states.at(-1), ["closed", "forbidden: t needs login"]);
  assert.equal(live.active, false);
  live.retryNow();
  assert.equal(FakeSocket.all.length, 1);
});

test("an expired token is renewed (fresh) and the topic resumed", async () => {
  const asked = [];
  const live = connection({
    token: async ({ fresh }) => {
      asked.push(fresh);
      return `tok${asked.length}`;
    },
  });
  live.open();
  await settle();
  const [first] = FakeSocket.all;
  assert.deepEqual(first.protocols, ["echo.v1", "echo.token.tok1"]);
  first.accept();
  first.receive(data(5));
  first.close(3000, "token expired");
  live.retryNow();
  await settle();
  const second = FakeSocket.all[1];
  assert.deepEqual(asked, [false, true]);
  assert.deepEqual(second.protocols, ["echo.v1", "echo.token.tok2"]);
  assert.match(second.url, /since=t:5:e1$/);
});

test("tokenFetcher posts with the CSRF token and reuses a token until it nears expiry", async () => {
  const requests = [];
  const fetch = async (url, init) => {
    requests.push([url, init.headers["X-CSRFToken"]]);
    const body = { token: `k${requests.length}`, expires: Date.now() / 1000 + 60 };
    return { ok: true, json: async () => body };
  };
  const token = tokenFetcher({ url: "/api/token", csrfToken: () => "c1", fetch });
  assert.equal(await token({ fresh: false }), "k1");
  assert.equal(await token({ fresh: false }), "k1");
  assert.equal(await token({ fresh: true }), "k2");
  assert.deepEqual(requests, [["/api/token", "c1"], ["/api/token", "c1"]]);
  const refused = tokenFetcher({ fetch: async () => ({ ok: false, status: 401 }) });
  await assert.rejects(refused({ fresh: false }), /401 from \/api\/token/);
});
