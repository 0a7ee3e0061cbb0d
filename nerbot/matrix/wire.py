"""A small keep-alive HTTP/1.1 client for the homeserver's client-server API.

Why not aiohttp for every request: against a loopback Synapse an aiohttp request costs ~0.42 ms
of the bot's CPU and the same request over a plain ``asyncio.Protocol`` ~0.16 ms. An emoji
verification in a room takes about 14 requests, so that difference was a fifth of the bot's
CPU per verification. The API needs little of HTTP: one origin, small JSON bodies, responses framed
by ``Content-Length``, ``chunked`` or the connection closing. That much is here; streamed
uploads and downloads and proxies stay on aiohttp (``httpfix.route_requests_over_wire``).

Failures are raised as aiohttp's exception types, so nio's retry loop (it retries
``ClientConnectionError`` and timeouts) and our transient-error handling see what they saw
before.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import zlib
from collections.abc import AsyncIterator, Callable, Mapping
from functools import cached_property
from typing import Any
from urllib.parse import quote, urlsplit

import aiohttp
from aiohttp.multipart import content_disposition_filename, parse_content_disposition
from multidict import CIMultiDict, CIMultiDictProxy

MAX_HEAD_BYTES = 64 * 1024
HEX_DIGITS = frozenset(b"0123456789abcdefABCDEF")
IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})
# Characters left as they are in a request target: nio and MatrixHttp send paths that are
# already percent-encoded, so "%" stays; anything else (spaces, non-ASCII) gets encoded.
TARGET_SAFE = "!#$%&'()*+,/:;=?@[]~"


class WireProtocolError(aiohttp.ClientPayloadError):
    """The server's bytes are not an HTTP/1.1 response we can read."""


class ContentDisposition:
    """What nio reads of ``Content-Disposition`` (aiohttp's object has the same names)."""

    def __init__(self, value: str) -> None:
        self.type, self.parameters = parse_content_disposition(value)
        self.filename = content_disposition_filename(self.parameters, "filename")


class WireResponse:
    """A complete response; offers the part of aiohttp's ``ClientResponse`` nio and we use."""

    def __init__(self, status: int, reason: str, headers: CIMultiDict[str], body: bytes,
                 keep_alive: bool) -> None:
        self.status = status
        self.reason = reason
        self.headers = CIMultiDictProxy(headers)
        self.body = body
        self.keep_alive = keep_alive
        self.content = _BodyReader(body)

    @cached_property
    def _media_type(self) -> tuple[str, str | None]:
        mime, _, params = self.headers.get("Content-Type", "").partition(";")
        charset = None
        for param in params.split(";"):
            key, _, value = param.partition("=")
            if key.strip().lower() == "charset":
                charset = value.strip().strip('"') or None
        return mime.strip().lower() or "application/octet-stream", charset

    @property
    def content_type(self) -> str:
        return self._media_type[0]

    @property
    def charset(self) -> str | None:
        return self._media_type[1]

    @property
    def content_disposition(self) -> ContentDisposition | None:
        value = self.headers.get("Content-Disposition")
        return ContentDisposition(value) if value else None

    async def read(self) -> bytes:
        return self.body

    async def text(self, encoding: str | None = None, errors: str = "strict") -> str:
        return self.body.decode(encoding or self.charset or "utf-8", errors)

    async def json(self, *, loads: Callable[[str], Any] = json.loads,
                   content_type: str | None = None) -> Any:
        """The body as JSON, whatever the Content-Type says.

        aiohttp would raise ``ContentTypeError`` for a wrong type, and nio then parses the text
        anyway; parsing straight away gives nio the same result.
        """
        return loads(self.body.decode(self.charset or "utf-8"))

    def release(self) -> None:
        """Nothing to release: the body is read and the connection already handed back."""

    def close(self) -> None:
        """Nothing to close (see ``release``)."""

    async def __aenter__(self) -> WireResponse:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None


class _BodyReader:
    """``response.content.iter_chunked(n)``, which nio uses to save downloads to a file."""

    def __init__(self, body: bytes) -> None:
        self._body = body

    async def iter_chunked(self, size: int) -> AsyncIterator[bytes]:
        for start in range(0, len(self._body), size):
            yield self._body[start:start + size]


class ResponseParser:
    """Reads one HTTP/1.1 response from bytes fed in pieces of any size (pure, no I/O)."""

    def __init__(self, method: str) -> None:
        self.method = method
        self._buffer = bytearray()
        self._pos = 0
        self._state = "head"
        self._status = 0
        self._reason = ""
        self._headers: CIMultiDict[str] = CIMultiDict()
        self._keep_alive = True
        self._remaining = 0
        self._body = bytearray()

    def feed(self, data: bytes) -> WireResponse | None:
        """Add bytes; the response once it is complete, else None."""
        self._buffer += data
        return self._advance()

    def feed_eof(self) -> WireResponse:
        """The server closed the connection: the response if that ended it, else an error."""
        if self._state == "until_close":
            self._take(len(self._buffer) - self._pos)
            return self._finish()
        raise aiohttp.ServerDisconnectedError()

    @property
    def started(self) -> bool:
        """True once any byte of the response has arrived."""
        return bool(self._buffer) or self._state != "head"

    def _advance(self) -> WireResponse | None:
        while True:
            state = self._state
            if state == "head":
                end = self._buffer.find(b"\r\n\r\n", self._pos)
                if end < 0:
                    if len(self._buffer) - self._pos > MAX_HEAD_BYTES:
                        raise WireProtocolError("response head too large")
                    return None
                self._read_head(bytes(self._buffer[self._pos:end]))
                self._pos = end + 4
                if self._state == "done":
                    return self._finish()
            elif state in ("length", "chunk_data"):
                self._take(min(self._remaining, len(self._buffer) - self._pos))
                if self._remaining:
                    self._compact()
                    return None
                if state == "length":
                    return self._finish()
                self._state = "chunk_end"
            elif state == "chunk_end":
                if len(self._buffer) - self._pos < 2:
                    return None
                if self._buffer[self._pos:self._pos + 2] != b"\r\n":
                    raise WireProtocolError("chunk not followed by CRLF")
                self._pos += 2
                self._state = "chunk_size"
            elif state in ("chunk_size", "trailers"):
                line = self._line()
                if line is None:
                    return None
                if state == "trailers":
                    if not line:
                        return self._finish()
                    continue
                size_text = line.split(b";", 1)[0].strip()
                if not size_text or len(size_text) > 16 or not HEX_DIGITS.issuperset(size_text):
                    raise WireProtocolError(f"bad chunk size {size_text[:20]!r}")
                size = int(size_text, 16)
                self._remaining = size
                self._state = "chunk_data" if size else "trailers"
            else:  # until_close: everything up to EOF is the body
                self._take(len(self._buffer) - self._pos)
                self._compact()
                return None

    def _line(self) -> bytes | None:
        end = self._buffer.find(b"\r\n", self._pos)
        if end < 0:
            if len(self._buffer) - self._pos > MAX_HEAD_BYTES:
                raise WireProtocolError("line too long")
            return None
        line = bytes(self._buffer[self._pos:end])
        self._pos = end + 2
        return line

    def _take(self, count: int) -> None:
        self._body += self._buffer[self._pos:self._pos + count]
        self._pos += count
        self._remaining -= count

    def _compact(self) -> None:
        del self._buffer[:self._pos]
        self._pos = 0

    def _read_head(self, head: bytes) -> None:
        status_line, *lines = head.decode("latin-1").split("\r\n")
        version, _, rest = status_line.partition(" ")
        code, reason = rest[:3], rest[4:]
        if not version.startswith("HTTP/1.") or not (code.isascii() and code.isdigit()) or \
                rest[3:4] not in ("", " "):
            raise WireProtocolError(f"bad status line {status_line[:40]!r}")
        pairs = []
        for line in lines:
            name, colon, value = line.partition(":")
            if not colon or not name or name[0] in " \t" or name[-1] in " \t":
                raise WireProtocolError(f"bad header line {line[:40]!r}")
            pairs.append((name, value.strip()))
        headers = CIMultiDict(pairs)
        status = int(code)
        if 100 <= status < 200:  # informational (100 Continue): the real response follows
            return
        self._status, self._reason, self._headers = status, reason, headers
        connection = headers.get("Connection", "").lower()
        self._keep_alive = version == "HTTP/1.1" and "close" not in connection
        encoding = headers.get("Transfer-Encoding", "").lower()
        if self.method == "HEAD" or status in (204, 304):
            self._state = "done"
        elif encoding:
            if encoding.rsplit(",", 1)[-1].strip() != "chunked":
                raise WireProtocolError(f"unsupported transfer encoding {encoding!r}")
            self._state = "chunk_size"
        elif "Content-Length" in headers:
            length = headers["Content-Length"]
            if not (length.isascii() and length.isdigit()):
                raise WireProtocolError(f"bad Content-Length {length[:20]!r}")
            self._remaining = int(length)
            self._state = "length" if self._remaining else "done"
        else:
            self._keep_alive = False
            self._state = "until_close"

    def _finish(self) -> WireResponse:
        if self._pos != len(self._buffer):  # bytes nobody asked for: do not reuse
            self._keep_alive = False
        self._state = "finished"
        return WireResponse(self._status, self._reason, self._headers,
                            _decoded(bytes(self._body), self._headers), self._keep_alive)


def _decoded(body: bytes, headers: CIMultiDict[str]) -> bytes:
    coding = headers.get("Content-Encoding", "identity").strip().lower()
    if coding in ("identity", "") or not body:
        return body
    if coding not in ("gzip", "x-gzip", "deflate"):
        raise WireProtocolError(f"unsupported content encoding {coding!r}")
    try:
        return zlib.decompress(body, 47)  # gzip or zlib header, detected
    except zlib.error:
        if coding != "deflate":
            raise WireProtocolError("corrupt gzip body") from None
    try:
        return zlib.decompress(body, -15)  # raw deflate, as some servers send it
    except zlib.error:
        raise WireProtocolError("corrupt deflate body") from None


class _Connection(asyncio.Protocol):
    """One TCP (or TLS) connection: one request in flight at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.response_started = False  # of the last exchange: had any byte arrived?
        self._parser: ResponseParser | None = None
        self._waiter: asyncio.Future[WireResponse] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def exchange(self, request: bytes, method: str) -> asyncio.Future[WireResponse]:
        assert self.transport is not None and self._waiter is None
        if self.closed or self.transport.is_closing():
            raise aiohttp.ServerDisconnectedError()
        self._parser = ResponseParser(method)
        self._waiter = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return self._waiter

    def data_received(self, data: bytes) -> None:
        if self._parser is None:  # nothing asked: a confused server; never reuse this one
            self.close()
            return
        try:
            response = self._parser.feed(data)
        except WireProtocolError as exc:
            self._settle(exc)
            self.close()
            return
        if response is not None:
            self._settle(response)

    def eof_received(self) -> bool:
        if self._parser is not None:
            try:
                self._settle(self._parser.feed_eof())
            except aiohttp.ServerDisconnectedError as exc:
                self._settle(exc)
        self.closed = True
        return False  # let the transport close itself

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._parser is not None:
            error = aiohttp.ServerDisconnectedError() if exc is None else \
                aiohttp.ClientOSError(getattr(exc, "errno", None) or 0, str(exc))
            self._settle(error)

    def _settle(self, outcome: WireResponse | BaseException) -> None:
        self.response_started = self._parser is not None and self._parser.started
        waiter, self._waiter, self._parser = self._waiter, None, None
        if waiter is None or waiter.done():
            return
        if isinstance(outcome, BaseException):
            waiter.set_exception(outcome)
        else:
            waiter.set_result(outcome)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class WireClient:
    """Requests to one origin over a small pool of keep-alive connections."""

    def __init__(self, base_url: str, *, ssl_option: Any = None,
                 default_timeout: float | None = 60.0, max_idle: int = 8) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        standard_port = 443 if parts.scheme == "https" else 80
        self.host = parts.hostname
        self.port = parts.port or standard_port
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.host_header = host if self.port == standard_port else f"{host}:{self.port}"
        self.base_path = parts.path.rstrip("/")
        self.ssl_context = _ssl_context(ssl_option) if parts.scheme == "https" else None
        self.default_timeout = default_timeout
        self.max_idle = max_idle
        self.requests = 0
        self._idle: list[_Connection] = []
        self._busy: set[_Connection] = set()

    async def request(self, method: str, path: str, data: str | bytes | None = None,
                      headers: Mapping[str, str] | None = None,
                      time_limit: float | None = None) -> WireResponse:
        """Send one request and read the whole response; ``time_limit`` (s) covers both."""
        method = method.upper()
        message = self._message(method, path, data, headers)
        limit = self.default_timeout if time_limit is None else time_limit
        deadline = asyncio.get_running_loop().time() + limit if limit else None
        return await self._exchange(method, message, deadline)

    async def close(self) -> None:
        for connection in [*self._idle, *self._busy]:
            connection.close()
        self._idle.clear()
        self._busy.clear()

    def _message(self, method: str, path: str, data: str | bytes | None,
                 headers: Mapping[str, str] | None) -> bytes:
        body = data.encode("utf-8") if isinstance(data, str) else (data or b"")
        target = quote(self.base_path + path, safe=TARGET_SAFE)
        lines = [f"{method} {target} HTTP/1.1", f"Host: {self.host_header}",
                 "Accept: */*", "Accept-Encoding: gzip, deflate", "User-Agent: nerbot"]
        for name, value in (headers or {}).items():
            if "\r" in value or "\n" in value or "\r" in name or "\n" in name or ":" in name:
                raise ValueError(f"header {name!r} is not a single line")
            if name.lower() not in ("content-length", "host", "transfer-encoding"):
                lines.append(f"{name}: {value}")
        if body or method in ("POST", "PUT", "PATCH"):
            lines.append(f"Content-Length: {len(body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body

    async def _exchange(self, method: str, message: bytes, deadline: float | None
                        ) -> WireResponse:
        loop = asyncio.get_running_loop()
        while True:
            connection, reused = await self._acquire(deadline)
            try:
                waiter = connection.exchange(message, method)
                # a timer, not asyncio.timeout(): a third of the cost, on every request
                timer = loop.call_at(deadline, _expire, waiter) if deadline else None
                try:
                    response = await waiter
                finally:
                    if timer is not None:
                        timer.cancel()
            except aiohttp.ServerDisconnectedError:
                started = connection.response_started
                self._discard(connection)
                # The server closed a connection we had kept open just as we wrote to it:
                # nothing was done, so a request that may be repeated is sent again.
                if reused and not started and method in IDEMPOTENT:
                    continue
                raise
            except BaseException:
                self._discard(connection)
                raise
            self.requests += 1
            self._busy.discard(connection)
            if response.keep_alive and not connection.closed and \
                    len(self._idle) < self.max_idle:
                self._idle.append(connection)
            else:
                connection.close()
            return response

    async def _acquire(self, deadline: float | None) -> tuple[_Connection, bool]:
        while self._idle:
            connection = self._idle.pop()
            if not connection.closed:
                self._busy.add(connection)
                return connection, True
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout_at(deadline):
                _, connection = await loop.create_connection(
                    _Connection, self.host, self.port, ssl=self.ssl_context,
                    server_hostname=self.host if self.ssl_context else None)
        except TimeoutError:
            raise
        except OSError as exc:
            raise aiohttp.ClientOSError(
                exc.errno or 0, f"cannot connect to {self.host}:{self.port}: {exc}") from exc
        self._busy.add(connection)
        return connection, False

    def _discard(self, connection: _Connection) -> None:
        self._busy.discard(connection)
        connection.close()


def _expire(waiter: asyncio.Future[WireResponse]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError("the homeserver did not answer in time"))


def _ssl_context(option: Any) -> ssl.SSLContext:
    """nio's ``ssl`` option as aiohttp reads it: None/True verify, False does not, or a context."""
    if isinstance(option, ssl.SSLContext):
        return option
    context = ssl.create_default_context()
    if option is False:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context
