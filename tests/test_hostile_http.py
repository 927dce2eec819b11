"""Hostile input to the HTTP publish API of a real server process: whatever the method, path, headers and
body, the answer is 2xx or 4xx JSON, never a 5xx, and the server keeps serving everyone else."""

from __future__ import annotations

import json
from collections.abc import Iterator
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.helpers.processes import Server, http_get
from tests.helpers.publishing import Answer, create_key, publish, request

# Header values http.client can send: printable Latin-1, no line breaks; without the bytes daphne refuses
# itself (an HTML 400 from runserver before Django sees the request: daphne.utils.INVALID_HEADER_VALUE_BYTES).
HEADER_TEXT = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f\x85"), max_size=80
)
JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**400), max_value=10**400)
    | st.floats()
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=70), children, max_size=5)
    ),
    max_leaves=20,
)
VALUES = st.dictionaries(
    st.one_of(st.from_regex(r"[a-z]{1,8}", fullmatch=True), st.text(max_size=70)),
    st.one_of(st.integers(min_value=-(10**30), max_value=10**30), st.floats(), JSON_VALUES),
    max_size=40,
)
TOPICS = st.one_of(
    st.from_regex(r"[a-z0-9][a-z0-9_-]{0,47}", fullmatch=True), st.text(min_size=1, max_size=80)
)


def batch_bodies(topic: st.SearchStrategy[str]) -> st.SearchStrategy[object]:
    message = st.fixed_dictionaries({"topic": topic, "values": VALUES}) | JSON_VALUES
    return st.one_of(st.fixed_dictionaries({"messages": st.lists(message, max_size=30)}), JSON_VALUES)


def json_text(value: object) -> bytes:
    return json.dumps(value).encode()  # NaN and Infinity too: Python writes them, some clients do


BODIES = st.one_of(
    st.binary(max_size=300),
    st.text(max_size=300).map(str.encode),
    VALUES.map(json_text),
    JSON_VALUES.map(json_text),
    batch_bodies(TOPICS).map(json_text),
    st.integers(min_value=1, max_value=50_000).map(lambda depth: b"[" * depth),
)


@pytest.fixture(scope="module")
def key() -> str:
    return create_key("*", read="*")


@pytest.fixture
def server(any_server: Server, key: str) -> Iterator[Server]:
    """Each server (the production server and runserver) for all of a test's examples."""
    yield any_server
    # After all the examples: still serving a good request, healthy, and no traceback in its log.
    assert publish(any_server, "prices", {"price": 1}, key).status == 200
    assert http_get(any_server.http_url("/healthz"))[0] == 200
    assert any_server.process.poll() is None
    assert "Traceback" not in any_server.output.text()


def check(answer: Answer) -> None:
    assert 200 <= answer.status < 500, (answer.status, answer.raw[:300])
    body = answer.json
    if answer.status >= 400:
        assert set(body) == {"error", "detail"}, body
        event(f"{answer.status} {body['error']}")  # --hypothesis-show-statistics: what was tried
    else:
        event(str(answer.status))
    if answer.status < 400:
        assert "published" in body or {"topic", "epoch", "seq"} <= set(body), body


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    batch=st.booleans(),
    topic=TOPICS,
    method=st.sampled_from(["POST"] * 6 + ["GET", "PUT", "PATCH", "DELETE", "OPTIONS"]),
    authorization=st.one_of(
        st.just("good"), st.none(), HEADER_TEXT, HEADER_TEXT.map(lambda text: "Bearer " + text)
    ),
    content_type=st.one_of(
        st.none(), st.sampled_from(["application/json", "text/plain", "multipart/form-data"]), HEADER_TEXT
    ),
    body=BODIES,
)
def test_random_requests_get_a_json_answer_never_a_server_error(
    server: Server,
    key: str,
    batch: bool,
    topic: str,
    method: str,
    authorization: str | None,
    content_type: str | None,
    body: bytes,
) -> None:
    headers = {}
    if authorization is not None:
        headers["Authorization"] = f"Bearer {key}" if authorization == "good" else authorization
    if content_type is not None:
        headers["Content-Type"] = content_type
    path = "/api/publish" if batch else "/api/publish/" + quote(topic, safe="")
    answer = request(server, path, body, method=method, headers=headers)
    if answer.status == 400 and not answer.raw and "runserver" in server.process.args:
        # runserver's daphne (Twisted) parses a multipart/form-data POST itself and answers a malformed
        # one with a bare 400 before Django sees it; the production server leaves bodies to the app.
        assert method == "POST" and body and (content_type or "").lower().startswith("multipart/form-data")
        return
    check(answer)


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(body=batch_bodies(st.from_regex(r"t-[a-z]{1,3}", fullmatch=True)), values=VALUES)
def test_random_batches_and_values_with_a_good_key_are_published_or_refused_whole(
    server: Server, key: str, body: object, values: dict
) -> None:
    check(request(server, "/api/publish", body, key=key))
    check(request(server, "/api/publish/t-single", values, key=key))


@settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    body=BODIES
    | st.fixed_dictionaries({"topics": JSON_VALUES | st.lists(TOPICS, max_size=70)}).map(json_text),
    authorization=st.one_of(st.just("good"), HEADER_TEXT.map(lambda text: "Bearer " + text)),
    method=st.sampled_from(["POST"] * 4 + ["GET", "PUT"]),
)
def test_random_token_requests_get_a_token_or_a_json_refusal(
    server: Server, key: str, body: bytes, authorization: str, method: str
) -> None:
    """POST /api/token with an API key: a token (200) or a JSON refusal, never a server error."""
    headers = {"Authorization": f"Bearer {key}" if authorization == "good" else authorization}
    answer = request(server, "/api/token", body, method=method, headers=headers)
    if method != "POST":
        assert answer.status == 405
        return
    assert answer.status in (200, 400, 401), (answer.status, answer.raw[:300])
    body_json = answer.json
    if answer.status == 200:
        assert body_json["protocols"] == ["echo.v1", "echo.token." + body_json["token"]]
    else:
        assert set(body_json) == {"error", "detail"}, body_json
