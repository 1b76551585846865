"""The server's bearer token: from ``ANCHORCAST_TOKEN``, else made at start, printed once and kept in a file
only its owner can read (``anchorcast say`` and ``anchorcast sessions`` read it from there).

Every route but ``/v1/health`` needs it. Programs send ``Authorization: Bearer TOKEN``. A browser cannot set
that header on a page, a video element or a WebSocket, so safe requests (GET, and the WebSocket handshake) may
also carry it as ``?token=`` (which the access log never shows) or as the cookie ``/docs?token=`` sets. Requests
that change something (POST, DELETE) take the header only: a cookie there would let any web page the operator
visits drive the anchor. Tokens are compared in constant time.
"""

from __future__ import annotations

import hmac
import logging
import os
import re
import secrets
from pathlib import Path

from anchorcast.storage import anchorcast_home

TOKEN_ENV = "ANCHORCAST_TOKEN"
COOKIE = "anchorcast_token"
_MIN_LENGTH = 16


def token_file() -> Path:
    return anchorcast_home() / "server-token"


def server_token(path: Path | None = None) -> tuple[str, bool]:
    """The token the server requires and whether it was generated now (then it is written to ``path``,
    mode 0600). A token from the environment is never written anywhere."""
    given = os.environ.get(TOKEN_ENV, "").strip()
    if given:
        if len(given) < _MIN_LENGTH:
            from anchorcast.errors import AnchorcastError

            raise AnchorcastError(f"{TOKEN_ENV} is {len(given)} characters long: use at least {_MIN_LENGTH} "
                                  "(for example the output of `python -c \"import secrets; "
                                  "print(secrets.token_urlsafe(24))\"`)")
        return given, False
    token = secrets.token_urlsafe(24)
    target = path or token_file()
    target.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(token + "\n")
    os.chmod(target, 0o600)  # an older file may have been created with wider permissions
    return token, True


def client_token(path: Path | None = None) -> str | None:
    """The token a client uses: ``ANCHORCAST_TOKEN``, else the file a local server wrote."""
    given = os.environ.get(TOKEN_ENV, "").strip()
    if given:
        return given
    try:
        return (path or token_file()).read_text(encoding="utf-8").strip() or None
    except OSError:
        return None


def token_matches(expected: str, offered: str | None) -> bool:
    if not offered:
        return False
    return hmac.compare_digest(expected.encode(), offered.encode())


def watch_key(token: str, session_id: str) -> str:
    """The key that lets its holder watch one session over WHEP and do nothing else: what an overlay URL in an
    OBS scene carries instead of the server's token. Derived from the token, so it changes when the token does."""
    return hmac.new(token.encode(), f"watch:{session_id}".encode(), "sha256").hexdigest()[:32]


def bearer(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" else None


class RedactTokens(logging.Filter):
    """Keeps ``token=...`` and ``watch=...`` out of every log line (uvicorn's access log prints query strings)."""

    _pattern = re.compile(r"((?:token|watch)=)[^&\s\"']+")

    def filter(self, record: logging.LogRecord) -> bool:
        if record.args:
            record.args = tuple(self._pattern.sub(r"\1***", a) if isinstance(a, str) else a
                                for a in (record.args if isinstance(record.args, tuple) else (record.args,)))
        if isinstance(record.msg, str):
            record.msg = self._pattern.sub(r"\1***", record.msg)
        return True
