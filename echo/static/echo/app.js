// The live page: connects to the echo WebSocket, sends "*" every second, shows echoes and pushed data.
"use strict";

const LOG_MAX_LINES = 500;
const TICK_MS = 1000;

const $ = (id) => document.getElementById(id);

/** The WebSocket URL for this page's own host: wss: under https:, ws: otherwise. */
function socketUrl() {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${location.host}/ws/echo/`;
}

/** Append a line to the log, keeping at most LOG_MAX_LINES and the newest in view. */
function log(text) {
  const box = $("log");
  const line = document.createElement("div");
  line.textContent = text;
  box.appendChild(line);
  while (box.childNodes.length > LOG_MAX_LINES) box.removeChild(box.firstChild);
  box.scrollTop = box.scrollHeight;
}

/** Show the latest value of each series of a data frame as text. */
function showLatest(frame) {
  const list = $("latest");
  for (const [series, value] of Object.entries(frame.values)) {
    const key = `${frame.topic}/${series}`;
    let dd = list.querySelector(`dd[data-key="${CSS.escape(key)}"]`);
    if (!dd) {
      const dt = document.createElement("dt");
      dt.textContent = key;
      dd = document.createElement("dd");
      dd.dataset.key = key;
      list.append(dt, dd);
    }
    dd.textContent = String(value);
  }
}

let socket = null;
let timer = null;

function setStatus(text) {
  $("status").textContent = text;
  $("connect").disabled = socket !== null;
  $("disconnect").disabled = socket === null;
}

/** Handle one text frame: a pushed data frame (JSON, possibly several per frame) or an echo. */
function onText(text) {
  if (text.startsWith("{")) {
    for (const line of text.split("\n")) {
      let frame;
      try {
        frame = JSON.parse(line);
      } catch {
        log(`received: ${line}`);
        continue;
      }
      if (frame.type === "data") {
        showLatest(frame);
        log(`data ${frame.topic} #${frame.seq}: ${JSON.stringify(frame.values)}`);
      } else {
        log(`received: ${line}`);
      }
    }
  } else {
    log(`echo: ${text}`);
  }
}

function connect() {
  if (socket) return;
  const url = socketUrl();
  log(`opening ${url}`);
  socket = new WebSocket(url);
  socket.binaryType = "arraybuffer";
  setStatus("connecting");
  socket.addEventListener("open", () => {
    setStatus("open");
    timer = setInterval(() => {
      if (socket && socket.readyState === WebSocket.OPEN) {
        socket.send("*");
        log("sent: *");
      }
    }, TICK_MS);
  });
  socket.addEventListener("message", (event) => {
    if (typeof event.data === "string") onText(event.data);
    else log(`echo: ${event.data.byteLength} bytes`);
  });
  socket.addEventListener("close", (event) => {
    log(`closed (code ${event.code}${event.reason ? `: ${event.reason}` : ""})`);
    clearInterval(timer);
    timer = null;
    socket = null;
    setStatus("closed");
  });
}

function disconnect() {
  if (!socket) return;
  clearInterval(timer);
  timer = null;
  socket.close(1000, "user disconnected");
}

$("connect").addEventListener("click", connect);
$("disconnect").addEventListener("click", disconnect);
