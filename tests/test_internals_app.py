"""Contract tests: what the app (echo/) relies on in Channels, redis-py and prometheus_client beyond
their documented API, one test per internal, and the startup check of their versions.

The modules that rely on them say so and declare ``TESTED``: ``echo/ws/runtime.py`` (Channels'
consumer), ``echo/layer/redis_target.py`` (redis-py's pools), ``echo/ops/metrics.py``
(prometheus_client's multi-process files). Upgrading one: change its pin, run this file, update
``TESTED``.
"""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import prometheus_client
import pytest
from channels.consumer import AsyncConsumer, get_handler_name
from channels.generic.http import AsyncHttpConsumer
from channels.generic.websocket import AsyncWebsocketConsumer
from channels.routing import ProtocolTypeRouter, URLRouter
from django.urls import Resolver404, path, re_path
from packaging.utils import canonicalize_name
from prometheus_client import multiprocess
from redis.asyncio.connection import BlockingConnectionPool
from redis.asyncio.sentinel import SentinelConnectionPool

from echo.layer import redis_target
from echo.layer.redis_target import BlockingSentinelConnectionPool
from echo.ops import metrics
from echo.ws import runtime
from tests.helpers.source import body_statements
from wsproject import versions

ROOT = Path(__file__).resolve().parent.parent


def pinned(package: str) -> str | None:
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        name, _, version = line.partition("==")
        if version and canonicalize_name(name) == canonicalize_name(package):
            return version.strip()
    return None


@pytest.mark.parametrize("module", [runtime, redis_target, metrics], ids=lambda m: m.__name__)
def test_each_module_was_tested_with_the_pinned_and_installed_version(module: object) -> None:
    for package, version in module.TESTED.items():  # type: ignore[attr-defined]
        assert pinned(package) == version, f"{package} in requirements.txt"
        assert metadata.version(package) == version, f"{package} installed here"


def test_a_server_refuses_an_untested_version_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(versions.ALLOW_UNTESTED, raising=False)
    assert versions.app_refusal() is None
    monkeypatch.setitem(runtime.TESTED, "channels", "0.0.1")
    problem = versions.app_refusal()
    assert problem is not None and "echo/ws/runtime.py" in problem and "channels" in problem
    env = {k: v for k, v in os.environ.items() if k != versions.ALLOW_UNTESTED}
    started = subprocess.run(
        [
            sys.executable,
            "-c",
            "from echo.ws import runtime; runtime.TESTED['channels'] = '0'; "
            "from wsproject import server; server.main()",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert started.returncode != 0 and "echo/ws/runtime.py" in started.stderr, started.stderr[-2000:]
    assert "Traceback" not in started.stderr


# ---------------------------------------------------------------- Channels (echo/ws/runtime.py)


def test_channels_as_asgi_app_carries_consumer_class_and_initkwargs() -> None:
    """Our ``as_asgi`` copies these two attributes onto its own app (routing and tests read them)."""
    app = AsyncWebsocketConsumer.as_asgi(x=1)
    assert app.consumer_class is AsyncWebsocketConsumer and app.consumer_initkwargs == {"x": 1}


def test_channels_call_sets_what_serve_sets_and_ends_on_stop_consumer() -> None:
    """``serve`` replaces Channels' ``__call__``: it must set the same attributes (scope, channel
    layer, channel_name from new_channel, base_send) and end on StopConsumer, as Channels' does."""
    source = inspect.getsource(AsyncConsumer.__call__)
    for line in (
        "self.scope = scope",
        "self.channel_layer = get_channel_layer(self.channel_layer_alias)",
        "self.channel_name = await self.channel_layer.new_channel()",
        "self.base_send = send",
        "except StopConsumer",
    ):
        assert line in source, f"Channels' __call__ no longer does: {line}"


def test_channels_dispatch_is_handler_lookup_plus_closing_old_connections() -> None:
    """Our ``dispatch`` is Channels' without ``aclose_old_connections()``: nothing else may be missing."""
    assert body_statements(AsyncConsumer.dispatch) == [
        "handler = getattr(self, get_handler_name(message), None)",
        "if handler:",
        "await aclose_old_connections()",
        "await handler(message)",
        "else:",
        'raise ValueError("No handler for message type %s" % message["type"])',
    ]
    assert get_handler_name({"type": "identity.revoked"}) == "identity_revoked"


def test_channels_protocol_type_router_awaits_the_application_its_mapping_names() -> None:
    """``FlatProtocolTypeRouter`` returns what Channels' awaits: nothing else may be missing."""
    assert body_statements(ProtocolTypeRouter.__call__) == [
        'if scope["type"] in self.application_mapping:',
        'application = self.application_mapping[scope["type"]]',
        "return await application(scope, receive, send)",
        "else:",
        "raise ValueError(",
        '"No application configured for scope type %r" % scope["type"]',
        ")",
    ]
    assert ProtocolTypeRouter({}).application_mapping == {}


def test_channels_url_router_matches_its_routes_and_awaits_the_match_with_a_copied_scope() -> None:
    """``FlatURLRouter`` returns what Channels' awaits: nothing else may be missing."""
    assert [line for line in body_statements(URLRouter.__call__) if not line.startswith("#")] == [
        'path = scope.get("path_remaining", scope.get("path", None))',
        "if path is None:",
        "raise ValueError(\"No 'path' key in connection scope, cannot route URLs\")",
        'if "path_remaining" not in scope:',
        'root_path = scope.get("root_path", "")',
        "if root_path and not path.startswith(root_path):",
        'raise ValueError("No route found for path %r." % path)',
        "path = path[len(root_path) :]",
        'path = path.lstrip("/")',
        "for route in self.routes:",
        "try:",
        "match = route.pattern.match(path)",
        "if match:",
        "new_path, args, kwargs = match",
        "kwargs.update(route.default_args)",
        'outer = scope.get("url_route", {})',
        "application = route.callback",
        "return await application(",
        "dict(",
        "scope,",
        "path_remaining=new_path,",
        "url_route={",
        '"args": outer.get("args", ()) + args,',
        '"kwargs": {**outer.get("kwargs", {}), **kwargs},',
        "},",
        "),",
        "receive,",
        "send,",
        ")",
        "except Resolver404:",
        "pass",
        "else:",
        'if "path_remaining" in scope:',
        'raise Resolver404("No route found for path %r." % path)',
        'raise ValueError("No route found for path %r." % path)',
    ]


@pytest.mark.parametrize(
    "scope",
    [
        {"type": "websocket", "path": "/ws/echo/"},
        {"type": "websocket", "path": "/ws/echo/", "root_path": "/ws"},
        {"type": "websocket", "path": "/app/ws/echo/", "root_path": "/app"},
        {"type": "websocket", "path": "/room/42/"},
        {"type": "websocket", "path": "/nested/inner/7/"},
        {"type": "websocket", "path": "/nowhere/"},
        {"type": "websocket", "path": "/app/ws/echo/", "root_path": "/elsewhere"},
        {"type": "websocket"},
    ],
)
async def test_flat_url_router_routes_as_channels_does_and_returns_the_applications_coroutine(
    scope: dict[str, Any],
) -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> dict[str, Any]:
        return scope

    def routes(router: type[URLRouter]) -> URLRouter:
        inner = router([re_path(r"^inner/(?P<n>[0-9]+)/$", app)])
        return router(
            [
                path("ws/echo/", app),
                re_path(r"^room/(?P<room>[0-9]+)/$", app, {"default": "yes"}),
                path("nested/", inner),
            ]
        )

    async def seen(router: URLRouter) -> Any:
        try:
            return await router(dict(scope), None, None)
        except (ValueError, Resolver404) as exc:
            return f"{type(exc).__name__}: {exc}"

    flat = routes(runtime.FlatURLRouter)
    outcome = await seen(flat)
    assert outcome == await seen(routes(URLRouter))
    if isinstance(outcome, dict):  # routed: the router's own frame is gone
        routed = flat(dict(scope), None, None)
        assert routed.cr_code is app.__code__
        routed.close()


def test_channels_websocket_disconnect_leaves_self_groups_then_calls_disconnect() -> None:
    """Ours is Channels' without ``aclose_old_connections()``: nothing else may be missing. The consumer
    puts its identity group in ``self.groups`` so that it is left on close."""
    assert body_statements(AsyncWebsocketConsumer.websocket_disconnect) == [
        "try:",
        "for group in self.groups:",
        "await self.channel_layer.group_discard(group, self.channel_name)",
        "except AttributeError:",
        "raise InvalidChannelLayerError(",
        '"BACKEND is unconfigured or doesn\'t support groups"',
        ")",
        'await self.disconnect(message["code"])',
        "await aclose_old_connections()",
        "raise StopConsumer()",
    ]


# ---------------------------------------------------------------- redis-py (echo/layer/redis_target.py)


def test_the_combined_pool_finds_the_master_through_sentinel_and_waits_for_a_free_connection() -> None:
    """Sentinel's pool supplies the connection class that asks the Sentinels for the master; the
    blocking pool supplies the waiting: neither may override the other's part."""
    mro = BlockingSentinelConnectionPool.__mro__
    assert mro.index(SentinelConnectionPool) < mro.index(BlockingConnectionPool)
    for name in ("get_connection", "release"):
        assert getattr(BlockingSentinelConnectionPool, name) is getattr(BlockingConnectionPool, name), name
    assert "timeout" in inspect.signature(BlockingConnectionPool.__init__).parameters
    sentinel_init = inspect.getsource(SentinelConnectionPool.__init__)
    assert "SentinelManagedConnection" in sentinel_init  # the connection class that asks the Sentinels
    assert "super().__init__(**kwargs)" in sentinel_init  # cooperative: Blocking's __init__ runs too
    for name in ("get_master_address", "owns_connection"):
        assert getattr(BlockingSentinelConnectionPool, name) is getattr(SentinelConnectionPool, name), name
    for name, method in vars(SentinelConnectionPool).items():
        if callable(method) and name in vars(BlockingConnectionPool) and name != "__init__":
            assert "super()." in inspect.getsource(method), f"SentinelConnectionPool.{name} hides Blocking's"


# ---------------------------------------------------------------- prometheus_client (echo/ops/metrics.py)


def test_multiprocess_files_are_named_by_kind_mode_and_pid(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``_worker_pids`` reads a worker's pid from its live-gauge file's name."""
    from prometheus_client import values

    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    value_class = values.get_value_class()
    value_class("gauge", "g", "g", (), (), help_text="", multiprocess_mode="livesum")
    assert (tmp_path / f"gauge_livesum_{os.getpid()}.db").exists(), sorted(p.name for p in tmp_path.iterdir())
    assert metrics._worker_pids(str(tmp_path)) == {os.getpid()}
    assert callable(multiprocess.mark_process_dead)
    assert callable(multiprocess.MultiProcessCollector.merge)
    assert prometheus_client.Gauge is not None


def test_channels_http_consumer_stops_after_handle_which_a_stream_must_not() -> None:
    """``DeliveredHttpConsumer`` (the event stream's base) replaces ``http_request``, which stops the
    consumer once ``handle`` returns, and ``http_disconnect``, which it runs without
    ``aclose_old_connections()``; it relies on ``__init__`` making ``body`` and on ``send_headers`` /
    ``send_body`` sending the two ASGI messages through ``send``."""
    request = inspect.getsource(AsyncHttpConsumer.http_request)
    for line in (
        'self.body.append(message["body"])',
        'await self.handle(b"".join(self.body))',
        "raise StopConsumer()",
    ):
        assert line in request, f"Channels' http_request no longer does: {line}"
    disconnect = inspect.getsource(AsyncHttpConsumer.http_disconnect)
    assert "await self.disconnect()" in disconnect and "raise StopConsumer()" in disconnect
    assert "self.body = []" in inspect.getsource(AsyncHttpConsumer.__init__)
    assert '"type": "http.response.start"' in inspect.getsource(AsyncHttpConsumer.send_headers)
    assert '"more_body": more_body' in inspect.getsource(AsyncHttpConsumer.send_body)
