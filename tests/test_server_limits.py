"""Every bad request gets its status code and a message that says what is wrong; the token guards every route
but /v1/health; the server survives clients that vanish; the command-line side (serve, say, sessions)."""

from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from tests.mp4 import decode
from tests.studio_server import TOKEN, StudioServer, syllables, wav_bytes

pytestmark = pytest.mark.slow

AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StudioServer]:
    folder = tmp_path_factory.mktemp("limits")
    running = StudioServer(folder, "--no-session", "--max-sessions", "2").start()
    yield running
    assert running.stop() == 0  # Ctrl-C: a clean exit


@pytest.fixture
def api(server: StudioServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=60) as client:
        yield client
        for session in client.get("/v1/sessions").json()["sessions"]:
            client.delete(f"/v1/sessions/{session['id']}")


@pytest.fixture
def session(api: httpx.Client) -> str:
    response = api.post("/v1/sessions", json={"profile": "small"})
    assert response.status_code == 201, response.text
    return response.json()["id"]


def problem(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, (response.status_code, response.text)
    detail = response.json()["detail"]
    assert isinstance(detail, str) and detail
    return detail


def test_the_token_is_needed_everywhere_but_health(server: StudioServer, session: str) -> None:
    assert httpx.get(f"{server.url}/v1/health").json()["status"] == "ok"
    for method, path in [("GET", "/v1/sessions"), ("POST", "/v1/sessions"), ("GET", f"/v1/sessions/{session}"),
                         ("POST", f"/v1/sessions/{session}/say"), ("DELETE", f"/v1/sessions/{session}"),
                         ("GET", f"/v1/sessions/{session}/preview.mjpeg"), ("GET", "/openapi.json")]:
        for headers in ({}, {"Authorization": "Bearer wrong-token-wrong-token"}, {"Authorization": TOKEN}):
            response = httpx.request(method, server.url + path, headers=headers, json={"text": "x"})
            assert "token" in problem(response, 401), (method, path)
            assert response.headers["www-authenticate"] == "Bearer"
    # a request that changes something takes the header only: not a query token, not a cookie
    say = f"{server.url}/v1/sessions/{session}/say?token={TOKEN}"
    assert httpx.post(say, json={"text": "x"}).status_code == 401
    for path in ("events", "audio"):
        with pytest.raises(InvalidStatus) as refused:
            connect(server.url.replace("http", "ws") + f"/v1/sessions/{session}/{path}")
        assert refused.value.response.status_code == 401
    with connect(server.url.replace("http", "ws") + f"/v1/sessions/{session}/events?token={TOKEN}"):
        pass
    time.sleep(0.2)
    log = "\n".join(server.lines)
    assert "token=***" in log and TOKEN not in log  # the access log shows requests, never the token


def test_malformed_and_unknown_fields_are_400_naming_the_field(api: httpx.Client, session: str) -> None:
    say = f"/v1/sessions/{session}/say"
    assert "malformed JSON" in problem(api.post(say, content=b'{"text": ', headers={"Content-Type":
                                                                                   "application/json"}), 400)
    response = api.post(say, json={"text": "hello", "volume": 11})
    assert "unknown field 'volume'" in problem(response, 400) and response.json()["field"] == "volume"
    assert problem(api.post(say, json={}), 400) == "text: required"
    assert "text" in problem(api.post(say, json={"text": ""}), 400)
    assert "interrupt" in problem(api.post(say, json={"text": "x", "interrupt": "soon"}), 400)
    assert "voice" in problem(api.post(say, json={"text": "x", "voice": "nobody"}), 400)
    assert "set" in problem(api.post("/v1/sessions", json={"profile": "small", "set": {"stream.fps": {}}}), 400)
    assert "engine.use" in problem(api.post("/v1/sessions", json={"profile": "small",
                                                                    "set": {"engine.use": "nope"}}), 400)
    assert "scene" in problem(api.post(f"/v1/sessions/{session}/cue", json={}), 400)


def test_a_session_id_in_use_is_409(api: httpx.Client, session: str) -> None:
    assert "already exists" in problem(api.post("/v1/sessions", json={"profile": "small", "id": session}), 409)
    assert "id" in problem(api.post("/v1/sessions", json={"profile": "small", "id": "../x"}), 400)


def test_unknown_things_are_404(api: httpx.Client) -> None:
    assert "no session 'nope'" in problem(api.get("/v1/sessions/nope"), 404)
    assert "no session" in problem(api.post("/v1/sessions/nope/say", json={"text": "x"}), 404)
    assert "no session" in problem(api.delete("/v1/sessions/nope"), 404)
    detail = problem(api.post("/v1/sessions", json={"profile": "nightly"}), 404)
    assert "nightly" in detail and "small" in detail and "default" in detail  # and what there is


def test_paths_outside_the_servers_folders_are_refused(api: httpx.Client, server: StudioServer) -> None:
    for name in ("../small", "/etc/passwd", "..", "small/../../x"):
        assert "not a path" in problem(api.post("/v1/sessions", json={"profile": name}), 400)
    for value in ("../../escaped.mp4", "/tmp/escaped.mp4", "sub/../../../escaped.mp4"):
        response = api.post("/v1/sessions", json={"profile": "small", "set": {"outputs.file.path": value}})
        assert "outputs.file.path" in problem(response, 403)
    elsewhere = server.folder / "secret.png"
    elsewhere.write_bytes(b"not for clients")
    response = api.post("/v1/sessions", json={"profile": "small", "set": {"engine.avatar": str(elsewhere)}})
    assert "engine.avatar" in problem(response, 403)
    assert not list(server.folder.glob("**/escaped.mp4"))


def test_too_much_is_413(api: httpx.Client, session: str) -> None:
    assert "at most 5000" in problem(api.post(f"/v1/sessions/{session}/say", json={"text": "x" * 5001}), 413)
    long_audio = wav_bytes(syllables(301, 8000), 8000)
    assert "300 s" in problem(api.post(f"/v1/sessions/{session}/audio", content=long_audio), 413)
    huge = b"\0" * (32 * 1024 * 1024 + 1)
    assert "bytes" in problem(api.post(f"/v1/sessions/{session}/audio", content=huge), 413)
    assert "bytes" in problem(api.post(f"/v1/sessions/{session}/audio", content=iter([huge])), 413)  # chunked


def test_audio_that_is_not_audio_is_400(api: httpx.Client, session: str) -> None:
    assert "empty" in problem(api.post(f"/v1/sessions/{session}/audio", content=b""), 400)
    detail = problem(api.post(f"/v1/sessions/{session}/audio", content=b"RIFF....WAVEfmt nonsense"), 400)
    assert "posted audio" in detail and "/tmp" not in detail


def test_a_full_queue_is_429_and_the_session_limit_503(api: httpx.Client, session: str) -> None:
    say = f"/v1/sessions/{session}/say"
    statuses = [api.post(say, json={"text": f"Item number {k} of a long rundown."}).status_code for k in range(40)]
    assert statuses[:32] == [202] * 32 and set(statuses[32:]) == {429}
    assert "at most 32" in problem(api.post(say, json={"text": "One more."}), 429)
    assert api.post(f"/v1/sessions/{session}/interrupt").json()["dropped"][:2] == ["u1", "u2"]
    assert api.post(say, json={"text": "Room again."}).status_code == 202
    assert api.post("/v1/sessions", json={"profile": "small"}).status_code == 201
    detail = problem(api.post("/v1/sessions", json={"profile": "small"}), 503)
    assert "at most 2" in detail


def test_the_server_survives_a_client_that_disconnects_mid_upload(server: StudioServer, api: httpx.Client,
                                                                  session: str) -> None:
    port = int(server.url.rsplit(":", 1)[1])
    wav = wav_bytes(syllables(3.0, 16000), 16000)
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", port)) as raw:
            raw.sendall((f"POST /v1/sessions/{session}/audio HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                         f"{TOKEN}\r\nContent-Type: audio/wav\r\nContent-Length: {len(wav)}\r\n\r\n").encode())
            raw.sendall(wav[: len(wav) // 2])
    url = server.url.replace("http", "ws") + f"/v1/sessions/{session}/audio"
    with connect(url, additional_headers=AUTH) as stream:
        stream.recv(5)
        stream.send(wav[44:8044])
    time.sleep(0.5)
    assert api.get("/v1/health").status_code == 200
    detail = api.get(f"/v1/sessions/{session}").json()
    assert detail["state"] in ("idle", "speaking") and detail["metrics"]["frames"] > 0
    response = api.post(f"/v1/sessions/{session}/audio", content=wav)
    assert response.status_code == 202 and response.json()["seconds"] == pytest.approx(3.0, abs=0.01)


def test_say_and_sessions_commands(server: StudioServer, session: str) -> None:
    env = {**os.environ, "ANCHORCAST_URL": server.url, "ANCHORCAST_TOKEN": TOKEN, "COLUMNS": "200"}
    said = subprocess.run([sys.executable, "-m", "anchorcast", "say", "Hello from the command line."],
                          capture_output=True, text=True, env=env, timeout=60)
    assert said.returncode == 0, said.stderr
    assert re.search(rf"{session}: queued u\d+", said.stdout)
    listed = subprocess.run([sys.executable, "-m", "anchorcast", "sessions"], capture_output=True, text=True,
                            env=env, timeout=60)
    assert listed.returncode == 0 and session in listed.stdout and "small" in listed.stdout
    refused = subprocess.run([sys.executable, "-m", "anchorcast", "say", "x", "--session", "nope"],
                             capture_output=True, text=True, env=env, timeout=60)
    assert refused.returncode != 0 and "no session 'nope'" in refused.stderr and "Traceback" not in refused.stderr
    nobody = subprocess.run([sys.executable, "-m", "anchorcast", "sessions", "--url", "http://127.0.0.1:9"],
                            capture_output=True, text=True, env=env, timeout=60)
    assert nobody.returncode != 0 and "no anchorcast server" in nobody.stderr and "Traceback" not in nobody.stderr


def test_serve_with_no_argument_works_on_a_fresh_install(tmp_path: Path) -> None:
    """README: `anchorcast serve` prints the URL, the token and a curl line; the curl line works; Ctrl-C
    finalises the session's file."""
    env = {key: value for key, value in os.environ.items() if key != "ANCHORCAST_TOKEN"}
    env.update(ANCHORCAST_HOME=str(tmp_path / "home"), COLUMNS="200")
    process = subprocess.Popen([sys.executable, "-m", "anchorcast", "serve", "--port", "0"], cwd=tmp_path,
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    try:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line)
            if "Ctrl-C" in line:
                break
        text = "".join(lines)
        url = re.search(r"on (http://127\.0\.0\.1:\d+)", text).group(1)  # type: ignore[union-attr]
        token = re.search(r"token: (\S+)", text).group(1)  # type: ignore[union-attr]
        token_file = tmp_path / "home" / "server-token"
        assert token_file.read_text().strip() == token
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        curl = next(line.strip() for line in lines if line.strip().startswith("curl "))
        assert url in curl
        answer = subprocess.run([*shlex.split(curl), "-s", "-w", "\n%{http_code}"], capture_output=True,
                                text=True, timeout=30)
        assert answer.stdout.rstrip().endswith("202"), answer.stdout
        time.sleep(3)
    finally:
        process.send_signal(signal.SIGTERM)  # as a service manager stops it (Ctrl-C in the fixture servers)
        rest, _ = process.communicate(timeout=60)
    assert process.returncode == 0 and "Traceback" not in "".join(lines) + rest
    video = decode(tmp_path / "anchorcast-sessions" / "main" / "anchorcast.mp4", keep_frames=False)
    assert video.video_seconds > 2 and video.frame_audio_rms().max() > 0.02


def test_serve_refuses_what_it_cannot_do_safely(tmp_path: Path) -> None:
    env = {key: value for key, value in os.environ.items() if key != "ANCHORCAST_TOKEN"}
    env.update(ANCHORCAST_HOME=str(tmp_path), COLUMNS="200")

    def serve(*args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "anchorcast", "serve", "--no-session", *args],
                              capture_output=True, text=True, env={**env, **extra}, timeout=60, cwd=tmp_path)

    wide = serve("--host", "0.0.0.0")
    assert wide.returncode != 0 and "ANCHORCAST_TOKEN" in wide.stderr and "Traceback" not in wide.stderr
    short = serve("--host", "0.0.0.0", ANCHORCAST_TOKEN="short")
    assert short.returncode != 0 and "at least 16" in short.stderr
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        busy = serve("--port", str(taken.getsockname()[1]))
    assert busy.returncode != 0 and "cannot listen" in busy.stderr and "Traceback" not in busy.stderr
    missing = serve("nightly.toml")
    assert missing.returncode != 0 and "nightly.toml" in missing.stderr


def test_cors_is_off_unless_origins_are_configured(server: StudioServer, tmp_path: Path) -> None:
    preflight = {"Origin": "https://studio.example", "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization,content-type"}
    refused = httpx.options(f"{server.url}/v1/sessions", headers=preflight)
    assert "access-control-allow-origin" not in refused.headers
    assert "access-control-allow-origin" not in httpx.get(f"{server.url}/v1/health", headers=preflight).headers
    with StudioServer(tmp_path, "--no-session", "--cors-origin", "https://studio.example") as allowing:
        allowed = httpx.options(f"{allowing.url}/v1/sessions", headers=preflight)
        assert allowed.status_code == 200
        assert allowed.headers["access-control-allow-origin"] == "https://studio.example"
        other = httpx.options(f"{allowing.url}/v1/sessions", headers={**preflight, "Origin": "https://evil.example"})
        assert other.headers.get("access-control-allow-origin") != "https://evil.example"
