"""A small asyncio client of mlmmjadmin's REST API (mailing list subscribers).

``reject_sender_login_mismatch`` asks it whether a logged-in user is
subscribed to the mlmmj mailing list they send as (ALLOWED_LOGIN_MISMATCH_LIST_MEMBER).
mlmmjadmin answers ``GET <endpoint>/<list>/has_subscriber/<address>`` with
``{"_success": true, ...}`` when the address is subscribed (normally, as digest
or as nomail) and ``{"_success": false, ...}`` when not.

Unlike iRedAPD, which called it with no deadline, no certificate check and
unencoded path parts, this client:

* sends the request itself on the event loop (a minimal HTTP/1.1 GET), with
  one deadline for the whole exchange (``MLMMJADMIN_API_TIMEOUT``), so a hung
  API never stalls other requests nor a thread;
* verifies the server certificate of an ``https://`` endpoint unless
  ``MLMMJADMIN_API_VERIFY_TLS = False``;
* percent-encodes both path parts (RFC 3986 section 3.3), keeping ``@``.

Any error (connection, deadline, TLS, HTTP status other than 2xx, a body that
is not a JSON object) means "not a subscriber"; it is logged, at most once a
minute per kind of error.  The auth token is never logged.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import ssl
from dataclasses import dataclass
from typing import Final
from urllib.parse import quote, urlsplit

from iredapd import __version__, aio
from iredapd.config import Settings
from iredapd.ratelimit import RateLimitedLog

__all__ = ["MlmmjAdmin", "MlmmjError", "subscriber_url_path"]

log = logging.getLogger(__name__)

# mlmmjadmin's answers are a few dozen bytes; anything far larger is not it.
MAX_BODY: Final = 64 * 1024
# Longest status or header line read (the StreamReader limit).
MAX_LINE: Final = 8 * 1024
# Headers read before giving up on a response.
MAX_HEADERS: Final = 100
# RFC 9110 section 5.1: a header name is a token.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


class MlmmjError(Exception):
    """The API could not be asked, or its answer could not be read."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail


def subscriber_url_path(base_path: str, list_address: str, address: str) -> str:
    """The request path of ``has_subscriber``, both addresses percent-encoded."""
    base = base_path.rstrip("/")
    return f"{base}/{quote(list_address, safe='@')}/has_subscriber/{quote(address, safe='@')}"


@dataclass(frozen=True, slots=True)
class _Endpoint:
    scheme: str
    host: str
    port: int
    path: str
    host_header: str


def _parse_endpoint(url: str) -> _Endpoint:
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise MlmmjError("settings", "mlmmjadmin_api_endpoint must be an http:// or https:// URL")
    try:
        port = parts.port or (443 if scheme == "https" else 80)
    except ValueError:
        raise MlmmjError("settings", "mlmmjadmin_api_endpoint has an invalid port") from None
    host = parts.hostname or ""
    if not host:
        raise MlmmjError("settings", "mlmmjadmin_api_endpoint has no host")
    host_header = parts.netloc.rpartition("@")[2]
    return _Endpoint(scheme, host, port, parts.path, host_header)


class MlmmjAdmin:
    """mlmmjadmin's ``has_subscriber`` call, with iRedAPD's settings.

    Build one per settings generation (it keeps a TLS context); it is cheap to
    call and safe to share between concurrent requests.
    """

    def __init__(self, settings: Settings, *, ssl_context: ssl.SSLContext | None = None) -> None:
        self.endpoint_url = settings.mlmmjadmin_api_endpoint
        self.header_name = settings.MLMMJADMIN_API_AUTH_TOKEN_HEADER_NAME
        self._token = settings.mlmmjadmin_api_auth_token
        self.timeout = float(settings.MLMMJADMIN_API_TIMEOUT)
        self.verify_tls = bool(settings.MLMMJADMIN_API_VERIFY_TLS)
        self._ssl_context = ssl_context
        self._errors = RateLimitedLog(log, interval=60.0)
        self._endpoint: _Endpoint | None = None
        self._settings_error: MlmmjError | None = None
        if self.configured:
            try:
                self._endpoint = _parse_endpoint(self.endpoint_url)
                self._check_header()
                if self._endpoint.scheme == "https":
                    self._tls()  # reads the CA bundle: now, not on the first request
            except MlmmjError as e:
                self._settings_error = e

    @property
    def configured(self) -> bool:
        """True when both the endpoint and the auth token are set (iRedAPD's rule)."""
        return bool(self.endpoint_url) and bool(self._token)

    def _check_header(self) -> None:
        if not _TOKEN.fullmatch(self.header_name):
            raise MlmmjError("settings", "MLMMJADMIN_API_AUTH_TOKEN_HEADER_NAME is not a name")
        if any(c in self._token for c in "\r\n\0"):
            raise MlmmjError("settings", "mlmmjadmin_api_auth_token contains a line break")

    def _tls(self) -> ssl.SSLContext:
        if self._ssl_context is None:
            context = ssl.create_default_context()
            if not self.verify_tls:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            self._ssl_context = context
        return self._ssl_context

    async def has_subscriber(self, list_address: str, address: str) -> bool:
        """True if mlmmjadmin says ``address`` is subscribed to ``list_address``.

        False when it says no, when the API is not configured, and on any
        error (logged, rate-limited).
        """
        if not self.configured:
            return False
        try:
            status, body = await self._get(list_address, address)
            if not 200 <= status < 300:
                raise MlmmjError("http-status", f"HTTP status {status}")
            return _success(body)
        except MlmmjError as e:
            self._errors.error(
                ("mlmmjadmin", e.kind),
                "mlmmjadmin has_subscriber(%r, %r) failed, taken as 'not a subscriber': %s",
                list_address,
                address,
                e,
            )
            return False

    async def _get(self, list_address: str, address: str) -> tuple[int, bytes]:
        if self._settings_error is not None:
            raise self._settings_error
        endpoint = self._endpoint
        assert endpoint is not None  # configured and parsed
        path = subscriber_url_path(endpoint.path, list_address, address)
        request = (
            f"GET {path} HTTP/1.1\r\n"
            f"Host: {endpoint.host_header}\r\n"
            f"{self.header_name}: {self._token}\r\n"
            f"User-Agent: iredapd/{__version__}\r\n"
            "Accept: application/json\r\n"
            "Connection: close\r\n\r\n"
        ).encode()
        tls = self._tls() if endpoint.scheme == "https" else None
        writer: asyncio.StreamWriter | None = None
        try:
            async with aio.timeout(self.timeout):
                reader, writer = await asyncio.open_connection(
                    endpoint.host,
                    endpoint.port,
                    ssl=tls,
                    server_hostname=endpoint.host if tls is not None else None,
                    limit=MAX_LINE,
                )
                writer.write(request)
                await writer.drain()
                return await _read_response(reader)
        except TimeoutError:
            raise MlmmjError("timeout", f"no answer within {self.timeout:g}s") from None
        except ssl.SSLError as e:
            raise MlmmjError("tls", str(e)) from None
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as e:
            raise MlmmjError("connection", f"{type(e).__name__}: {e}") from None
        finally:
            if writer is not None:
                writer.close()


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """Status and body of one HTTP/1.1 response (RFC 9112)."""
    status_line = (await reader.readline()).decode("latin-1")
    fields = status_line.split(None, 2)
    if len(fields) < 2 or not fields[0].startswith("HTTP/") or not fields[1].isdigit():
        raise MlmmjError("protocol", "not an HTTP response")
    status = int(fields[1])
    headers: dict[str, str] = {}
    for _ in range(MAX_HEADERS):
        line = (await reader.readline()).decode("latin-1")
        if not line.endswith("\n"):
            raise MlmmjError("protocol", "response ended inside the headers")
        if line in ("\r\n", "\n"):
            break
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    else:
        raise MlmmjError("protocol", "too many response headers")
    if "chunked" in headers.get("transfer-encoding", "").lower():
        return status, await _read_chunked(reader)
    length = headers.get("content-length")
    if length is not None:
        if not length.isdigit() or int(length) > MAX_BODY:
            raise MlmmjError("protocol", "bad or too large Content-Length")
        return status, await reader.readexactly(int(length))
    body = await reader.read(MAX_BODY + 1)
    while body and len(body) <= MAX_BODY:
        more = await reader.read(MAX_BODY + 1 - len(body))
        if not more:
            break
        body += more
    if len(body) > MAX_BODY:
        raise MlmmjError("protocol", "response body too large")
    return status, body


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    body = b""
    while True:
        size_line = (await reader.readline()).split(b";", 1)[0].strip()
        try:
            size = int(size_line, 16)
        except ValueError:
            raise MlmmjError("protocol", "bad chunk size") from None
        if size == 0:
            return body
        if size < 0 or len(body) + size > MAX_BODY:
            raise MlmmjError("protocol", "response body too large")
        body += await reader.readexactly(size)
        await reader.readexactly(2)  # the CRLF after each chunk


def _success(body: bytes) -> bool:
    """mlmmjadmin's verdict: a truthy ``_success`` in a JSON object."""
    try:
        answer = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise MlmmjError("not-json", "the answer is not JSON") from None
    if not isinstance(answer, dict):
        raise MlmmjError("not-json", "the answer is not a JSON object")
    return bool(answer.get("_success"))
