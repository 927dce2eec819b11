// The example page (/example/?topics=a,b): the client module alone, no chart and no framework. It
// lists each frame of the topics named in the URL as it comes, once, across reconnects. What
// docs/client.md starts from; server data reaches the page only through textContent.
import { LiveConnection, tokenFetcher } from "./connection.js";

const MAX_ITEMS = 200; // the list keeps the newest this many

const $ = (id) => document.getElementById(id);
const topics = (new URLSearchParams(window.location.search).get("topics") || "prices").split(",");
const tokenUrl = document.body.dataset.tokenUrl;
const watching = new Map(); // topic -> connections watching it
const csrfToken = () => document.querySelector("input[name=csrfmiddlewaretoken]")?.value;

/** Add one line to the list: `data-topic` and `data-seq` say which frame it shows. */
function show(text, frame) {
  const item = document.createElement("li");
  item.textContent = text;
  item.dataset.type = frame.type;
  item.dataset.topic = frame.topic ?? "";
  if (typeof frame.seq === "number") item.dataset.seq = String(frame.seq);
  $("frames").append(item);
  while ($("frames").children.length > MAX_ITEMS) $("frames").firstElementChild.remove();
}

function setStatus(state, error = "") {
  $("status").dataset.state = state;
  $("status").textContent = error ? `${state}: ${error}` : state;
}

$("topics").textContent = topics.join(", ");
try {
  const live = new LiveConnection({
    topics,
    history: 20,
    token: tokenUrl ? tokenFetcher({ url: tokenUrl, csrfToken }) : null,
  });
  live.on("state", (state, detail) => setStatus(state, detail.error));
  live.on("data", (frame) => {
    const body = "data" in frame ? frame.data : frame.values; // a JSON event's data, or numbers
    const event = frame.event ? ` ${frame.event}` : "";
    show(`${frame.topic} #${frame.seq}${event}: ${JSON.stringify(body)}`, frame);
  });
  live.on("reset", (frame) => show(`${frame.topic}: reset (${frame.reason ?? "a new stream"})`, frame));
  live.on("presence", (frame) => {
    watching.set(frame.topic, frame.count);
    $("presence").textContent = [...watching].map(([topic, count]) => `${topic}: ${count}`).join("; ");
  });
  live.on("error", (frame) => show(`error ${frame.code}: ${frame.detail ?? ""}`, frame));
  live.open();
  window.addEventListener("online", () => live.retryNow());
} catch (error) {
  setStatus("closed", error.message); // a topic name the server would refuse
}
