// The admin's live view (templates/admin/live.html): asks /admin/live/data every second and fills the
// tables. Server data goes into the page with textContent only. window.liveView counts the updates
// (for tests and the curious) and keeps the last answer.

const root = document.getElementById("live");
const status = document.getElementById("live-status");
const url = root.dataset.url;
const pollMs = Number(root.dataset.pollMs) || 1000;

window.liveView = { updates: 0, last: null, error: null };

function cell(row, text, numeric = false) {
  const td = row.insertCell();
  td.textContent = text;
  if (numeric) td.className = "num";
  return td;
}

function fill(id, items, columns) {
  const body = document.querySelector(`#${id} tbody`);
  const rows = items.map((item) => {
    const row = document.createElement("tr");
    for (const [value, numeric] of columns(item)) cell(row, value, numeric);
    return row;
  });
  if (rows.length === 0) {
    const row = document.createElement("tr");
    const td = cell(row, "none");
    td.colSpan = document.querySelectorAll(`#${id} thead th`).length;
    td.className = "live-empty";
    rows.push(row);
  }
  body.replaceChildren(...rows);
}

const count = (n) => Number(n).toLocaleString("en");

function ago(seconds) {
  if (seconds < 60) return `${Math.round(seconds)} s`;
  if (seconds < 3600) return `${Math.round(seconds / 60)} min`;
  if (seconds < 86400) return `${(seconds / 3600).toFixed(1)} h`;
  return `${(seconds / 86400).toFixed(1)} d`;
}

function render(data) {
  const now = data.time;
  fill("topics", data.topics, (t) => [
    [t.topic],
    [t.rate === null ? "…" : t.rate.toFixed(1), true],
    [count(t.seq), true],
    [t.epoch ?? "none"],
    [count(t.history), true],
    [count(t.watchers), true],
  ]);
  const shown = data.topics.length;
  document.getElementById("topics-count").textContent =
    shown < data.topics_total ? `(${shown} of ${data.topics_total})` : `(${shown})`;
  fill("processes", data.processes, (p) => [
    [p.host],
    [String(p.pid), true],
    [count(p.connections), true],
    [ago(now - p.started)],
  ]);
  const connections = data.processes.reduce((sum, p) => sum + p.connections, 0);
  document.getElementById("connections-total").textContent =
    `(${data.processes.length}, ${count(connections)} connections)`;
  const reasons = (r) => [[r.reason], [count(r.recent), true], [count(r.total), true]];
  fill("refused", data.refused, reasons);
  fill("dropped", data.dropped, reasons);
  fill("keys", data.keys, (k) => [
    [k.name],
    [count(k.publishes), true],
    [k.last_used ? `${ago(Math.max(0, now - k.last_used))} ago` : "never"],
  ]);
}

async function poll() {
  let again = true;
  try {
    const response = await fetch(url, { headers: { Accept: "application/json" }, cache: "no-store" });
    const body = await response.json().catch(() => ({}));
    if (response.ok) {
      render(body);
      window.liveView.updates += 1;
      window.liveView.last = body;
      window.liveView.error = null;
      status.textContent = `Updated ${new Date(body.time * 1000).toLocaleTimeString("en-GB")}`;
      status.className = "live-status";
    } else {
      again = response.status !== 403; // logged out, or not staff: asking again will not help
      window.liveView.error = body.detail || `HTTP ${response.status}`;
      status.textContent = again ? `Not updated: ${window.liveView.error}` : "Not allowed: log in as staff";
      status.className = "live-status errornote";
    }
  } catch (error) {
    window.liveView.error = String(error);
    status.textContent = "Not updated: the server does not answer";
    status.className = "live-status errornote";
  }
  if (again) setTimeout(poll, pollMs);
}

poll();
