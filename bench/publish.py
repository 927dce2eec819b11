"""Publishing throughput: the HTTP publish API against ``push_data``, on the same Redis, in the same run.

Three figures, each over one freshly started project server and a key of its own:

* ``push_data``: ``manage.py push_data --source stdin -v 2`` fed lines as fast as it takes them; its
  rate is messages between its first and last ``published`` line over that time (start-up excluded).
  This is the baseline: Python publishing straight into Redis, one message at a time.
* HTTP single: ``POST /api/publish/<topic>``, one message per request, from a few keep-alive
  clients (raw asyncio streams on uvloop, in this process: no HTTP library between us and the figure).
* HTTP batch: ``POST /api/publish`` with ``batch`` messages per request, from a couple of clients.

Nothing subscribes to the topics, so every path does the same work in Redis (the numbering script) and
none delivers. ``API_RATE_LIMIT`` is set far above what is reached, so the limit's script still runs
per request as in production but never refuses. The last ``seq`` each HTTP run got back is checked
against the messages it counted: a lost or doubled message shows up as ``numbered_ok: false``.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import json
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from bench.servers import ROOT, ProjectEnvironment, RunningServer, ServerSpec, running
from bench.stats import latency_summary

Result = dict[str, Any]
# Far above what one server process reaches: the limit is checked, never hit.
RATE_LIMIT = "100000000"


@dataclasses.dataclass(frozen=True)
class Sizes:
    """How much each measurement does, per profile."""

    push_messages: int
    seconds: float
    single_clients: int
    batch_clients: int
    batch: int


SIZES = {
    "quick": Sizes(push_messages=20_000, seconds=5, single_clients=4, batch_clients=2, batch=100),
    "full": Sizes(push_messages=50_000, seconds=10, single_clients=4, batch_clients=2, batch=100),
    "smoke": Sizes(push_messages=200, seconds=0.5, single_clients=2, batch_clients=1, batch=10),
}

METHOD = """\
Baseline: `manage.py push_data --source stdin -v 2 --topic T` fed {push_messages:,} lines as fast as
it reads them, rate = messages between its first and last `published` line over that time. HTTP:
`POST /api/publish/<topic>` (one message per request) from {single_clients} keep-alive clients, and
`POST /api/publish` with {batch} messages per request from {batch_clients} clients, {seconds:g} s each,
after one warm-up request per client; the clients are raw asyncio streams on uvloop in the bench
process. Same Redis, same server start-up as the other scenarios, `API_RATE_LIMIT` far above the
rate reached (its Redis script runs on every request). No subscribers: every path numbers and stores
each message in Redis and publishes it to no one."""


def measure(project: ProjectEnvironment, spec: ServerSpec, profile: str) -> Result:
    """Run the three measurements on one server (``spec``, never the baseline) and return them."""
    sizes = SIZES[profile]
    with tempfile.TemporaryDirectory(prefix="bench-publish-") as directory:
        env = {
            **project.env,
            "DATABASE_URL": f"sqlite:///{Path(directory) / 'bench.sqlite3'}",
            "API_RATE_LIMIT": RATE_LIMIT,
        }
        manage(env, "migrate", "--noinput", "-v", "0")
        key = manage(
            env, "api_key", "create", "bench-" + uuid.uuid4().hex[:8], "--publish", "*"
        ).splitlines()[-1]
        with running(spec, dataclasses.replace(project, env=env)) as server:
            baseline = push_data_rate(server, sizes.push_messages)
            single = http_rate(server, key, sizes.single_clients, sizes.seconds, batch=0)
            batched = http_rate(server, key, sizes.batch_clients, sizes.seconds, batch=sizes.batch)
    return {
        "sizes": dataclasses.asdict(sizes),
        "push_data": baseline,
        "http_single": single,
        "http_batch": batched,
        "single_vs_push_data": single["msgs_per_s"] / baseline["msgs_per_s"],
        "batch_vs_push_data": batched["msgs_per_s"] / baseline["msgs_per_s"],
    }


def manage(env: dict[str, str], *args: str) -> str:
    """Run ``manage.py ARGS`` with the server's settings; its stdout."""
    done = subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"manage.py {' '.join(args[:2])} failed ({done.returncode}):\n{done.stderr}")
    return done.stdout


def push_data_rate(server: RunningServer, count: int) -> Result:
    """``push_data --source stdin`` fed ``count`` lines as fast as it takes them: its messages/s."""
    topic = "bench-push-" + uuid.uuid4().hex[:8]
    command = [
        sys.executable, "manage.py", "push_data", "--source", "stdin", "--topic", topic, "-v", "2",
    ]  # fmt: skip
    process = subprocess.Popen(
        command, cwd=ROOT, env=server.env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )

    def feed() -> None:
        assert process.stdin is not None
        with process.stdin:
            process.stdin.writelines(f'{{"value": {n}}}\n' for n in range(count))

    threading.Thread(target=feed, daemon=True).start()
    assert process.stdout is not None
    first = last = 0.0
    published = last_seq = 0
    for line in process.stdout:
        if line.startswith("published "):
            last = time.monotonic()
            first = first or last
            published += 1
            last_seq = int(line.split()[3])
    if process.wait() != 0 or published != count:
        raise RuntimeError(f"push_data exited with {process.returncode} after {published} of {count}")
    return {
        "messages": published,
        "seconds": last - first,
        "msgs_per_s": (published - 1) / (last - first) if last > first else float("nan"),
        "numbered_ok": last_seq == count,
    }


def http_rate(server: RunningServer, key: str, clients: int, seconds: float, batch: int) -> Result:
    """Requests and messages per second from ``clients`` keep-alive clients for ``seconds``.

    ``batch`` 0: one message per request to ``/api/publish/<topic>``; else ``batch`` messages per
    request to ``/api/publish``. Server CPU is % of one core over the window, as in ``bench.scenarios``.
    """
    topic = f"bench-http-{'batch' if batch else 'single'}-" + uuid.uuid4().hex[:8]
    if batch:
        body = json.dumps({"messages": [{"topic": topic, "values": {"v": n}} for n in range(batch)]})
        path = "/api/publish"
    else:
        body, path = '{"v": 1.5}', f"/api/publish/{topic}"
    payload = body.encode()
    request = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
    ).encode() + payload
    outcome = _run(_load(server, request, clients, seconds))
    per_request = batch or 1
    ok, elapsed = outcome["ok"], outcome["seconds"]
    return {
        "clients": clients,
        "batch": per_request,
        "requests": ok,
        "requests_per_s": ok / elapsed,
        "msgs_per_s": ok * per_request / elapsed,
        "errors": outcome["errors"],
        # Each client's warm-up request counts too: the topic's last seq is every message published.
        "numbered_ok": outcome["last_seq"] == (ok + clients) * per_request,
        **latency_summary(outcome["latencies"]),
        "seconds": elapsed,
        "server_cpu_pct": 100 * outcome["server_cpu"] / elapsed,
        "loadgen_cpu_pct": 100 * outcome["loadgen_cpu"] / elapsed,
    }


def _run(coroutine: Any) -> Any:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coroutine)
    return uvloop.run(coroutine)


async def _load(server: RunningServer, request: bytes, clients: int, seconds: float) -> dict[str, Any]:
    """Every client sends one warm-up request, then all of them send for ``seconds``, measured."""
    connections = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(clients)]
    for reader, writer in connections:
        await _exchange(reader, writer, request)
    latencies: list[float] = []
    errors: collections.Counter[str] = collections.Counter()
    last_seq = 0
    started, cpu, server_cpu = time.monotonic(), time.process_time(), server.cpu_seconds()

    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> int:
        nonlocal last_seq
        ok = 0
        while time.monotonic() - started < seconds:
            sent = time.perf_counter()
            status, body = await _exchange(reader, writer, request)
            latencies.append(time.perf_counter() - sent)
            if status != 200:
                errors[str(status)] += 1
                continue
            ok += 1
            last_seq = max(last_seq, _last_seq(body))
        return ok

    counts = await asyncio.gather(*(client(reader, writer) for reader, writer in connections))
    elapsed = time.monotonic() - started
    loadgen_cpu = time.process_time() - cpu
    for _, writer in connections:
        writer.close()
    return {
        "ok": sum(counts),
        "seconds": elapsed,
        "errors": dict(errors),
        "latencies": latencies,
        "last_seq": last_seq,
        "server_cpu": server.cpu_seconds() - server_cpu,
        "loadgen_cpu": loadgen_cpu,
    }


async def _exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
) -> tuple[int, bytes]:
    """Send one request on a keep-alive connection and read its answer (Content-Length or chunked)."""
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines[1:])}
    if "content-length" in headers:
        return status, await reader.readexactly(int(headers["content-length"]))
    body = b""
    while size := int((await reader.readuntil(b"\r\n")).strip(), 16):
        body += await reader.readexactly(size + 2)
    await reader.readuntil(b"\r\n")
    return status, body


def _last_seq(body: bytes) -> int:
    answer = json.loads(body)
    return int(answer["published"][-1]["seq"] if "published" in answer else answer["seq"])


def table(result: Result) -> list[str]:
    """The report's rows: each path's rate beside push_data's, measured in the same run."""
    base = result["push_data"]["msgs_per_s"]
    lines = [
        "| publisher | clients | messages / request | requests/s | messages/s | vs push_data "
        "| p50 / p99 ms | server CPU % | numbering ok |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| `push_data --source stdin` (baseline) | 1 | 1 | - | {base:,.0f} | 1.00x | - | - "
        f"| {result['push_data']['numbered_ok']} |",
    ]
    for name, key in (
        ("HTTP `POST /api/publish/<topic>`", "http_single"),
        ("HTTP `POST /api/publish`", "http_batch"),
    ):
        r = result[key]
        errors = f" ({sum(r['errors'].values())} errors)" if r["errors"] else ""
        lines.append(
            f"| {name} | {r['clients']} | {r['batch']} | {r['requests_per_s']:,.0f}{errors} "
            f"| {r['msgs_per_s']:,.0f} | {r['msgs_per_s'] / base:.2f}x "
            f"| {r['p50_ms']:.1f} / {r['p99_ms']:.1f} | {r['server_cpu_pct']:.0f} | {r['numbered_ok']} |"
        )
    return lines


def summary(result: Result) -> str:
    """One progress line."""
    return (
        f"push_data {result['push_data']['msgs_per_s']:,.0f} msgs/s; HTTP single "
        f"{result['http_single']['requests_per_s']:,.0f} req/s ({result['single_vs_push_data']:.2f}x), "
        f"batch {result['http_batch']['msgs_per_s']:,.0f} msgs/s ({result['batch_vs_push_data']:.2f}x)"
    )
