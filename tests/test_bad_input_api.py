"""Bad request bodies against the real studio server (uvicorn, over real HTTP): whatever a client sends, the
answer is a success or a 4xx with a ``detail`` that says what is wrong, never a 5xx, a traceback in the server's
log or a session knocked off air. Hypothesis draws the bodies."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.studio_server import TOKEN, StudioServer

pytestmark = pytest.mark.slow

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
field_values = json_values | st.sampled_from(["", "small", "espeak", "espeak:zz", "piper:", "nope", "\x00",
                                              "今天", "👋🏽", "x" * 5000, "../../etc/passwd"])


def bodies(fields: list[str]) -> st.SearchStrategy[Any]:
    """Mostly objects with the endpoint's own field names (so validation is passed more often and the deeper
    checks are reached), and anything else JSON can be."""
    known = st.dictionaries(st.sampled_from([*fields, "extra"]), field_values, max_size=len(fields) + 1)
    return st.one_of(known, known, json_values)


raw_bytes = st.one_of(st.binary(max_size=300), st.sampled_from([b"", b"{", b"\xff\xfe", b'{"text": "\xff"}',
                                                                 b"null", b"[]", b'"text"', b"{}" * 1000]))


@pytest.fixture(scope="module")
def studio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[StudioServer, str]]:
    server = StudioServer(tmp_path_factory.mktemp("studio"), "--no-session").start()
    try:
        session = server.client().create_session("small", session_id="news")
        yield server, session
    finally:
        server.stop()


def check(response: httpx.Response) -> None:
    assert response.status_code < 500, (response.status_code, response.text)
    if response.status_code >= 400:
        detail = response.json()["detail"]
        assert isinstance(detail, str) and detail, response.text


ENDPOINTS = {
    "/v1/sessions": ["profile", "set", "id"],
    "/v1/sessions/news/say": ["text", "voice", "interrupt"],
    "/v1/sessions/news/cue": ["scene", "lower_third", "data"],
    "/v1/sessions/news/interrupt": ["reason"],
}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_json_body_gets_a_success_or_a_4xx_with_a_reason(studio: tuple[StudioServer, str],
                                                              data: st.DataObject) -> None:
    server, _ = studio
    path = data.draw(st.sampled_from(sorted(ENDPOINTS)))
    body = data.draw(bodies(ENDPOINTS[path]))
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30) as http:
        response = http.post(path, json=body)
        check(response)
        if path == "/v1/sessions" and response.status_code == 201:  # a valid session: not left running
            check(http.delete(f"/v1/sessions/{response.json()['id']}"))


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=st.sampled_from([*sorted(ENDPOINTS), "/v1/sessions/news/audio"]), content=raw_bytes,
       content_type=st.sampled_from(["application/json", "audio/wav", "text/plain", "", "multipart/form-data"]))
def test_any_bytes_as_a_body_get_a_4xx_or_a_success(studio: tuple[StudioServer, str], path: str, content: bytes,
                                                     content_type: str) -> None:
    server, _ = studio
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": content_type}
    with httpx.Client(base_url=server.url, timeout=30) as http:
        check(http.post(path, content=content, headers=headers))


def test_after_the_campaign_the_session_is_on_air_and_the_log_is_clean(studio: tuple[StudioServer, str],
                                                                       tmp_path: Path) -> None:
    server, session = studio
    client = server.client()
    client.interrupt(session)
    detail = client.session(session)
    assert detail["state"] in ("idle", "speaking"), detail
    assert client.say(session, "Still on air.")
    log = "\n".join(server.lines)
    assert "Traceback" not in log, log[-4000:]
    assert " 500 " not in log
