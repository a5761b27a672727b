"""The mlmmjadmin client against a tiny HTTP server on 127.0.0.1 (port 0).

The server answers like mlmmjadmin (``{"_success": true|false}``), or
misbehaves on request: HTTP 500, non-JSON, a hang, a slow drip, a dropped
connection.  Every failure must read as "not a subscriber", within the
deadline, logged once a minute per kind and never with the token.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest

from iredapd.config import default_settings
from iredapd.mlmmj import MlmmjAdmin, subscriber_url_path
from tests.conftest import TIMEOUT_SCALE
from tests.support.services import require

TOKEN = "s3cret-token"
HEADER = "X-MLMMJADMIN-API-AUTH-TOKEN"
LIST = "list@example.com"
SUBSCRIBERS = {(LIST, "member@example.com"), (LIST, "o'brien+x@example.com")}


def _response(status: int, body: bytes, headers: str = "") -> bytes:
    head = f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n{headers}"
    if "Transfer-Encoding" not in headers and "no-length" not in headers:
        head += f"Content-Length: {len(body)}\r\n"
    return head.encode() + b"\r\n" + body


def _json(value: Any) -> bytes:
    return json.dumps(value).encode()


@dataclass
class StubMlmmjadmin:
    """A minimal mlmmjadmin: ``mode`` picks the answer; ``requests`` records them."""

    mode: str = "normal"
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    server: asyncio.Server | None = None
    port: int = 0
    tls: ssl.SSLContext | None = None
    handlers: set[asyncio.Task[Any]] = field(default_factory=set)

    async def __aenter__(self) -> StubMlmmjadmin:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.tls)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        for task in self.handlers:
            task.cancel()
        await asyncio.gather(*self.handlers, return_exceptions=True)
        await self.server.wait_closed()

    @property
    def endpoint(self) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://127.0.0.1:{self.port}/api"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.handlers.add(task)
        try:
            request_line = (await reader.readline()).decode()
            headers: dict[str, str] = {}
            while (line := (await reader.readline()).decode()) not in ("\r\n", "\n", ""):
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            path = request_line.split(" ")[1]
            self.requests.append((path, headers))
            await self._answer(path, headers, writer)
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        finally:
            writer.close()

    async def _answer(self, path: str, headers: dict[str, str], w: asyncio.StreamWriter) -> None:
        mode = self.mode
        if mode == "hang":
            await asyncio.sleep(3600)
        if mode == "drip":  # a header byte every 50 ms, never finished
            w.write(b"HTTP/1.1 200 OK\r\n")
            while True:
                w.write(b"X")
                await w.drain()
                await asyncio.sleep(0.05)
        if mode == "close":
            return
        if headers.get(HEADER.lower()) != TOKEN:
            w.write(_response(401, _json({"_success": False, "_msg": "INVALID_MLMMJADMIN_TOKEN"})))
            return
        prefix = "/api/"
        parts = path[len(prefix) :].split("/")
        ok = (
            path.startswith(prefix)
            and len(parts) == 3
            and parts[1] == "has_subscriber"
            and (unquote(parts[0]), unquote(parts[2])) in SUBSCRIBERS
        )
        answer = _json({"_success": True, "_data": "normal"} if ok else {"_success": False})
        if mode == "normal":
            w.write(_response(200, answer))
        elif mode == "500":
            w.write(_response(500, _json({"_success": True})))
        elif mode == "html":
            w.write(_response(200, b"<html>Internal error</html>"))
        elif mode == "json-list":
            w.write(_response(200, b"[true]"))
        elif mode == "chunked":
            half = len(answer) // 2
            chunks = b"".join(
                f"{len(c):x}\r\n".encode() + c + b"\r\n" for c in (answer[:half], answer[half:])
            )
            w.write(_response(200, chunks + b"0\r\n\r\n", "Transfer-Encoding: chunked\r\n"))
        elif mode == "no-length":
            w.write(_response(200, answer, "X-no-length: 1\r\n"))
        elif mode == "huge":
            w.write(_response(200, b" " * 100_000 + answer))
        await w.drain()


def client(endpoint: str, **overrides: Any) -> MlmmjAdmin:
    ssl_context = overrides.pop("_ssl", None)
    overrides.setdefault("mlmmjadmin_api_auth_token", TOKEN)
    overrides.setdefault("MLMMJADMIN_API_TIMEOUT", 2.0 * TIMEOUT_SCALE)
    settings = default_settings(mlmmjadmin_api_endpoint=endpoint, **overrides)
    return MlmmjAdmin(settings, ssl_context=ssl_context)


@pytest.mark.parametrize(
    ("mode", "address", "expected"),
    [
        ("normal", "member@example.com", True),
        ("normal", "stranger@example.com", False),
        ("normal", "o'brien+x@example.com", True),  # encoded, decoded by the server
        ("chunked", "member@example.com", True),
        ("chunked", "stranger@example.com", False),
        ("no-length", "member@example.com", True),  # body until the server closes
        ("500", "member@example.com", False),  # an error status, whatever the body
        ("html", "member@example.com", False),  # not JSON
        ("json-list", "member@example.com", False),  # JSON, but not an object
        ("close", "member@example.com", False),  # connection closed without an answer
        ("huge", "member@example.com", False),  # larger than any real answer
    ],
)
async def test_has_subscriber(mode: str, address: str, expected: bool) -> None:
    async with StubMlmmjadmin(mode) as api:
        assert await client(api.endpoint).has_subscriber(LIST, address) is expected
        assert len(api.requests) == 1
        _path, headers = api.requests[0]
        assert headers[HEADER.lower()] == TOKEN
        assert headers["host"] == f"127.0.0.1:{api.port}"


async def test_bad_token_is_not_a_subscriber_and_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, logger="iredapd.mlmmj")
    async with StubMlmmjadmin() as api:
        mlmmj = client(api.endpoint, mlmmjadmin_api_auth_token="wrong-token")
        assert await mlmmj.has_subscriber(LIST, "member@example.com") is False
        assert await mlmmj.has_subscriber(LIST, "member@example.com") is False
    assert api.requests[0][1][HEADER.lower()] == "wrong-token"
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1, lines  # rate-limited: one line per kind per minute
    assert "401" in lines[0]
    assert "wrong-token" not in caplog.text


async def test_custom_header_name() -> None:
    async with StubMlmmjadmin() as api:
        mlmmj = client(api.endpoint, MLMMJADMIN_API_AUTH_TOKEN_HEADER_NAME="X-Other")
        assert await mlmmj.has_subscriber(LIST, "member@example.com") is False
        assert api.requests[0][1]["x-other"] == TOKEN
        assert HEADER.lower() not in api.requests[0][1]


@pytest.mark.parametrize("mode", ["hang", "drip"])
async def test_deadline_covers_the_whole_exchange(
    mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    timeout = 0.3 * TIMEOUT_SCALE
    async with StubMlmmjadmin(mode) as api:
        mlmmj = client(api.endpoint, MLMMJADMIN_API_TIMEOUT=timeout)
        started = time.monotonic()
        assert await mlmmj.has_subscriber(LIST, "member@example.com") is False
        elapsed = time.monotonic() - started
    assert timeout <= elapsed < timeout + 1.0 * TIMEOUT_SCALE
    assert "no answer within" in caplog.text


async def test_a_hung_api_does_not_stall_the_event_loop() -> None:
    async with StubMlmmjadmin("hang") as api:
        mlmmj = client(api.endpoint, MLMMJADMIN_API_TIMEOUT=0.5 * TIMEOUT_SCALE)
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        task = asyncio.create_task(ticker())
        assert await mlmmj.has_subscriber(LIST, "member@example.com") is False
        task.cancel()
    assert ticks >= 10  # the loop kept running while the call waited


async def test_refused_connection_is_not_a_subscriber(caplog: pytest.LogCaptureFixture) -> None:
    async with StubMlmmjadmin() as api:
        endpoint = api.endpoint
    # the server is gone: nothing listens on that port now
    assert await client(endpoint).has_subscriber(LIST, "member@example.com") is False
    assert "connection" in caplog.text


@pytest.mark.parametrize(
    ("endpoint", "token"),
    [
        ("", TOKEN),  # no endpoint
        ("http://127.0.0.1:{port}/api", ""),  # no token: iRedAPD does not call
    ],
)
async def test_not_configured_makes_no_call(endpoint: str, token: str) -> None:
    async with StubMlmmjadmin() as api:
        mlmmj = client(endpoint.format(port=api.port), mlmmjadmin_api_auth_token=token)
        assert not mlmmj.configured
        assert await mlmmj.has_subscriber(LIST, "member@example.com") is False
        assert api.requests == []


@pytest.mark.parametrize(
    ("endpoint", "header"),
    [
        ("ftp://127.0.0.1/api", HEADER),
        ("http:///api", HEADER),
        ("http://127.0.0.1:99999/api", HEADER),
        ("http://127.0.0.1/api", "Bad Header:"),
    ],
)
async def test_unusable_settings_are_not_a_subscriber(
    endpoint: str, header: str, caplog: pytest.LogCaptureFixture
) -> None:
    mlmmj = client(endpoint, MLMMJADMIN_API_AUTH_TOKEN_HEADER_NAME=header)
    assert await mlmmj.has_subscriber(LIST, "member@example.com") is False
    assert "settings" in caplog.text


async def test_token_with_a_line_break_is_never_sent() -> None:
    async with StubMlmmjadmin() as api:
        mlmmj = client(api.endpoint, mlmmjadmin_api_auth_token="tok\r\nX-Injected: 1")
        assert await mlmmj.has_subscriber(LIST, "member@example.com") is False
        assert api.requests == []


ODD_ADDRESSES = [
    "a%b@example.com",
    "a/b@example.com",
    "a?b#c@example.com",
    "a b@example.com",
    "o'brien\"x\\y@example.com",
    "a*(b)_c@example.com",
    "a+b=c&d@example.com",
    "üñí©ødé@exämple.com",
    "..@example.com",
    "x" * 300 + "@example.com",
    "a\r\nX-Injected: 1@example.com",
]


@pytest.mark.parametrize("address", ODD_ADDRESSES)
async def test_path_parts_are_url_encoded(address: str) -> None:
    odd_list = "odd/list?%@example.com"
    async with StubMlmmjadmin() as api:
        assert await client(api.endpoint).has_subscriber(odd_list, address) is False
    path, headers = api.requests[0]
    assert "x-injected" not in headers
    assert path.isascii()
    assert not set(path) & set(" ?#\"'\\\r\n")
    prefix = "/api/"
    first, verb, second = path[len(prefix) :].split("/")
    assert (unquote(first), verb, unquote(second)) == (odd_list, "has_subscriber", address)


@pytest.mark.parametrize(
    ("base", "expected"),
    [
        ("/api", "/api/l@x.com/has_subscriber/u@x.com"),
        ("/api/", "/api/l@x.com/has_subscriber/u@x.com"),
        ("", "/l@x.com/has_subscriber/u@x.com"),
        ("/mlmmj/api", "/mlmmj/api/l@x.com/has_subscriber/u@x.com"),
    ],
)
def test_url_path(base: str, expected: str) -> None:
    assert subscriber_url_path(base, "l@x.com", "u@x.com") == expected


# --- TLS -----------------------------------------------------------------


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    openssl = require("openssl", "openssl is needed to make a test certificate")
    d = tmp_path_factory.mktemp("tls")
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "2",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
        timeout=30 * TIMEOUT_SCALE,
    )
    return cert, key


def _server_tls(certificate: tuple[Path, Path]) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*certificate)
    return context


async def _ask_over_tls(
    certificate: tuple[Path, Path], make: Callable[[str], MlmmjAdmin]
) -> tuple[bool, int]:
    async with StubMlmmjadmin(tls=_server_tls(certificate)) as api:
        answer = await make(api.endpoint).has_subscriber(LIST, "member@example.com")
        return answer, len(api.requests)


async def test_tls_certificate_is_verified_by_default(
    certificate: tuple[Path, Path], caplog: pytest.LogCaptureFixture
) -> None:
    answer, requests = await _ask_over_tls(certificate, client)
    assert (answer, requests) == (False, 0)  # self-signed: refused, nothing sent
    assert "tls" in caplog.text.lower()


async def test_tls_with_a_trusted_certificate(certificate: tuple[Path, Path]) -> None:
    trusted = ssl.create_default_context(cafile=str(certificate[0]))
    answer = await _ask_over_tls(certificate, lambda e: client(e, _ssl=trusted))
    assert answer == (True, 1)


async def test_tls_verification_can_be_turned_off(certificate: tuple[Path, Path]) -> None:
    answer = await _ask_over_tls(certificate, lambda e: client(e, MLMMJADMIN_API_VERIFY_TLS=False))
    assert answer == (True, 1)
