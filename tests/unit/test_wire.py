"""The keep-alive HTTP/1.1 client: its parser on hand-made bytes, the client against aiohttp's
own web server (an independent HTTP implementation) and against raw sockets that misbehave."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import gzip
import json
import ssl
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import nio
import pytest
from aiohttp import web

from nerbot.matrix.httpfix import route_requests_over_wire
from nerbot.matrix.wire import ResponseParser, WireClient, WireProtocolError, WireResponse

# --- the parser --------------------------------------------------------------------------


def feed_in_pieces(raw: bytes, method: str = "GET", size: int = 1) -> WireResponse | None:
    parser = ResponseParser(method)
    result = None
    for start in range(0, len(raw), size):
        assert result is None, "complete before all bytes arrived"
        result = parser.feed(raw[start:start + size])
    return result


LENGTH = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json; charset=utf-8\r\n"
          b"Content-Length: 15\r\n\r\n{\"a\": \"\xc3\xa4\xc3\xb6\xc3\xbc\"}")
CHUNKED = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Seen: 1\r\nx-seen: 2\r\n\r\n"
           b"5;ext=1\r\nhello\r\n1A\r\n abcdefghijklmnopqrstuvwxy\r\n0\r\nTrailer: t\r\n\r\n")


@pytest.mark.parametrize("size", [1, 2, 3, 7, 1000])
def test_content_length_response_in_any_pieces(size: int) -> None:
    response = feed_in_pieces(LENGTH, size=size)
    assert response is not None
    assert (response.status, response.reason, response.keep_alive) == (200, "OK", True)
    assert response.content_type == "application/json" and response.charset == "utf-8"
    assert asyncio.run(response.json()) == {"a": "äöü"}


@pytest.mark.parametrize("size", [1, 2, 5, 11, 1000])
def test_chunked_response_with_extensions_and_trailers(size: int) -> None:
    response = feed_in_pieces(CHUNKED, size=size)
    assert response is not None and response.keep_alive
    assert response.body == b"hello abcdefghijklmnopqrstuvwxy"
    assert response.headers.getall("X-Seen") == ["1", "2"]


def test_body_up_to_close_when_no_length_is_given() -> None:
    parser = ResponseParser("GET")
    assert parser.feed(b"HTTP/1.1 200 OK\r\n\r\npart one, ") is None
    assert parser.feed(b"part two") is None
    response = parser.feed_eof()
    assert response.body == b"part one, part two" and not response.keep_alive


@pytest.mark.parametrize(("method", "head"), [
    ("GET", b"HTTP/1.1 204 No Content\r\n\r\n"),
    ("GET", b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n"),
    ("HEAD", b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n"),
    ("GET", b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
])
def test_responses_without_a_body_end_at_the_head(method: str, head: bytes) -> None:
    response = ResponseParser(method).feed(head)
    assert response is not None and response.body == b"" and response.keep_alive


def test_informational_response_is_skipped() -> None:
    response = feed_in_pieces(b"HTTP/1.1 100 Continue\r\n\r\n" + LENGTH, size=4)
    assert response is not None and response.status == 200


@pytest.mark.parametrize("head", [
    b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n",
])
def test_connection_is_not_reused_when_the_server_says_so(head: bytes) -> None:
    response = ResponseParser("GET").feed(head)
    assert response is not None and not response.keep_alive


def test_bytes_after_the_response_mean_the_connection_is_not_reused() -> None:
    response = ResponseParser("GET").feed(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nxy")
    assert response is not None and response.body == b"x" and not response.keep_alive


@pytest.mark.parametrize(("coding", "compress"), [
    ("gzip", gzip.compress),
    ("deflate", zlib.compress),
    ("deflate", lambda b: zlib.compress(b, wbits=-15)),
])
def test_compressed_bodies_are_decoded(coding: str, compress: Callable[[bytes], bytes]) -> None:
    body = compress(b'{"ok": true}' * 50)
    raw = (f"HTTP/1.1 200 OK\r\nContent-Encoding: {coding}\r\nContent-Length: {len(body)}"
           "\r\n\r\n").encode() + body
    response = feed_in_pieces(raw, size=9)
    assert response is not None and response.body == b'{"ok": true}' * 50


@pytest.mark.parametrize("raw", [
    b"SPDY/3 200 OK\r\n\r\n",
    b"HTTP/1.1 2000 OK\r\n\r\n",
    b"HTTP/1.1 OK\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
    b"HTTP/1.1 200 OK\r\n folded: header\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 1e3\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n-5\r\nhello\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\r\nhello\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXY0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Encoding: br\r\nContent-Length: 2\r\n\r\nab",
    b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: 2\r\n\r\nab",
    b"HTTP/1.1 200 OK\r\n" + b"X-Big: " + b"a" * 70_000,
])
def test_malformed_responses_are_protocol_errors(raw: bytes) -> None:
    with pytest.raises(WireProtocolError):
        ResponseParser("GET").feed(raw)


def test_connection_closed_mid_body_is_a_disconnect() -> None:
    parser = ResponseParser("GET")
    assert parser.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc") is None
    with pytest.raises(aiohttp.ServerDisconnectedError):
        parser.feed_eof()


async def test_response_offers_what_nio_reads() -> None:
    raw = (b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\n"
           b"Content-Disposition: attachment; filename=\"cat.png\"\r\n"
           b"Content-Length: 10\r\n\r\n0123456789")
    response = ResponseParser("GET").feed(raw)
    assert response is not None
    assert response.content_type == "image/png" and response.charset is None
    assert response.content_disposition is not None
    assert response.content_disposition.filename == "cat.png"
    assert [c async for c in response.content.iter_chunked(4)] == [b"0123", b"4567", b"89"]
    assert await response.text() == "0123456789"
    bare = ResponseParser("GET").feed(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    assert bare is not None and bare.content_type == "application/octet-stream"
    assert bare.content_disposition is None


# --- the client against aiohttp's web server ----------------------------------------------


class Server:
    """aiohttp.web on 127.0.0.1: echoes requests and remembers which connection each used."""

    def __init__(self, keepalive_timeout: float = 75.0) -> None:
        self.peers: list[Any] = []
        self.keepalive_timeout = keepalive_timeout
        self.app = web.Application()
        self.app.router.add_route("*", "/echo/{tail:.*}", self.echo)
        self.app.router.add_get("/chunked", self.chunked)
        self.app.router.add_get("/slow", self.slow)
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def echo(self, request: web.Request) -> web.Response:
        self.peers.append(request.transport.get_extra_info("peername") if request.transport
                          else None)
        return web.json_response({
            "method": request.method, "raw_path": request.raw_path,
            "authorization": request.headers.get("Authorization"),
            "content_type": request.headers.get("Content-Type"),
            "body": (await request.read()).decode("utf-8"),
        })

    async def chunked(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        for i in range(5):
            await response.write(f"piece {i};".encode() * 1000)
            await asyncio.sleep(0.01)
        await response.write_eof()
        return response

    async def slow(self, request: web.Request) -> web.Response:
        await asyncio.sleep(float(request.query.get("s", "0.3")))
        return web.json_response({"slept": True})

    async def start(self, ssl_context: ssl.SSLContext | None = None) -> str:
        self.runner = web.AppRunner(self.app, keepalive_timeout=self.keepalive_timeout,
                                    access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0, ssl_context=ssl_context)
        await site.start()
        port = self.runner.addresses[0][1]
        self.url = f"{'https' if ssl_context else 'http'}://127.0.0.1:{port}"
        return self.url

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    running = Server()
    await running.start()
    yield running
    await running.stop()


async def test_requests_round_trip_with_headers_paths_and_bodies(server: Server) -> None:
    wire = WireClient(server.url)
    try:
        headers = {"Authorization": "Bearer secret", "Content-Type": "application/json"}
        for method, data in (("GET", None), ("PUT", '{"x": "ü"}'), ("POST", b"{}"),
                             ("DELETE", None), ("POST", None)):
            response = await wire.request(method, "/echo/%21room%3Aexample.org?a=1&b=%2F",
                                          data, headers)
            seen = await response.json()
            assert response.status == 200
            assert seen == {"method": method, "raw_path": "/echo/%21room%3Aexample.org?a=1&b=%2F",
                            "authorization": "Bearer secret",
                            "content_type": "application/json",
                            "body": data.decode() if isinstance(data, bytes) else (data or "")}
        spaced = await (await wire.request("GET", "/echo/a b/ä")).json()
        assert spaced["raw_path"] == "/echo/a%20b/%C3%A4"
        assert len(set(server.peers)) == 1, "one kept-alive connection for all of them"
        assert wire.requests == 6
    finally:
        await wire.close()


async def test_base_path_of_the_homeserver_url_is_kept(server: Server) -> None:
    wire = WireClient(server.url + "/echo/")
    try:
        seen = await (await wire.request("GET", "/_matrix/client/versions")).json()
        assert seen["raw_path"] == "/echo/_matrix/client/versions"
    finally:
        await wire.close()


async def test_concurrent_requests_use_separate_connections(server: Server) -> None:
    wire = WireClient(server.url, max_idle=2)
    try:
        slow = asyncio.create_task(wire.request("GET", "/slow?s=0.3"))
        fast = [await wire.request("GET", f"/echo/{i}") for i in range(3)]
        assert not slow.done(), "the quick ones did not wait for the long poll"
        assert [r.status for r in fast] == [200, 200, 200]
        assert await (await slow).json() == {"slept": True}
        many = await asyncio.gather(*(wire.request("GET", f"/echo/{i}") for i in range(6)))
        assert {r.status for r in many} == {200}
        assert len(wire._idle) <= 2 and not wire._busy
    finally:
        await wire.close()


async def test_chunked_stream_is_read_whole(server: Server) -> None:
    wire = WireClient(server.url)
    try:
        response = await wire.request("GET", "/chunked")
        assert response.body == b"".join(f"piece {i};".encode() * 1000 for i in range(5))
        assert (await wire.request("GET", "/echo/after")).status == 200
        assert len(wire._idle) == 1
    finally:
        await wire.close()


async def test_connection_the_server_closed_while_idle_is_replaced() -> None:
    server = Server(keepalive_timeout=0.05)
    await server.start()
    wire = WireClient(server.url)
    try:
        assert (await wire.request("GET", "/echo/1")).status == 200
        await asyncio.sleep(0.3)  # the server hangs up the idle connection
        assert (await wire.request("GET", "/echo/2")).status == 200
        assert len(set(server.peers)) == 2
    finally:
        await wire.close()
        await server.stop()


async def test_time_limit_raises_and_drops_the_connection(server: Server) -> None:
    wire = WireClient(server.url)
    try:
        with pytest.raises(TimeoutError):
            await wire.request("GET", "/slow?s=2", time_limit=0.1)
        assert not wire._idle and not wire._busy
        assert (await wire.request("GET", "/echo/next")).status == 200
    finally:
        await wire.close()


async def test_cancelled_request_does_not_return_its_connection(server: Server) -> None:
    wire = WireClient(server.url)
    try:
        task = asyncio.create_task(wire.request("GET", "/slow?s=2"))
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not wire._idle and not wire._busy
        assert (await wire.request("GET", "/echo/next")).status == 200
    finally:
        await wire.close()


async def test_refused_connection_is_an_aiohttp_connection_error(server: Server) -> None:
    url = server.url
    await server.stop()
    wire = WireClient(url)
    with pytest.raises(aiohttp.ClientConnectionError):
        await wire.request("GET", "/echo/x")


def test_header_injection_is_refused() -> None:
    wire = WireClient("http://127.0.0.1:1")
    with pytest.raises(ValueError, match="single line"):
        wire._message("GET", "/x", None, {"Authorization": "Bearer a\r\nX-Evil: 1"})


@pytest.mark.parametrize("url", ["ftp://example.org", "example.org", "http://"])
def test_only_http_urls_are_accepted(url: str) -> None:
    with pytest.raises(ValueError, match="http"):
        WireClient(url)


# --- raw sockets that misbehave ---------------------------------------------------------


@contextlib.asynccontextmanager
async def wire_to(handle: Callable[[asyncio.StreamReader, asyncio.StreamWriter],
                                   Awaitable[None]]) -> AsyncIterator[WireClient]:
    """A ``WireClient`` for a raw server on 127.0.0.1 that answers with ``handle``."""
    listening = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = listening.sockets[0].getsockname()[1]
    wire = WireClient(f"http://127.0.0.1:{port}")
    try:
        yield wire
    finally:
        await wire.close()
        listening.close()


async def read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            await reader.readexactly(int(line.split(b":")[1]))
    return head


async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 reply: bytes) -> None:
    """Read one request and write ``reply`` (any bytes: a response, part of one, garbage)."""
    await read_request(reader)
    writer.write(reply)
    await writer.drain()


PARTIAL = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n{"


@pytest.mark.parametrize(("method", "second_reply", "retried"), [
    ("GET", b"", True), ("PUT", b"", True), ("POST", b"", False), ("GET", PARTIAL, False),
])
async def test_kept_connection_closed_under_the_next_request(
    method: str, second_reply: bytes, retried: bool
) -> None:
    """The server answers once, then closes that connection on the next request: unanswered,
    a repeatable request is sent again on a new connection, a POST is not (nio retries it);
    half answered, the server did act on it, so it is never sent again."""
    connections = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        await answer(reader, writer, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
        await answer(reader, writer, second_reply)
        writer.close()

    async with wire_to(handle) as wire:
        assert (await wire.request(method, "/first", "{}")).status == 200
        if retried:
            assert (await wire.request(method, "/second", "{}")).status == 200
            assert connections == 2
        else:
            with pytest.raises(aiohttp.ServerDisconnectedError):
                await wire.request(method, "/second", "{}")
            assert connections == 1


@pytest.mark.parametrize("reply", [
    b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc",   # closed mid-body
    b"HTTP/1.1 200 OK\r\n",                                 # closed mid-head
    b"garbage\r\n\r\n",                                     # not HTTP
])
async def test_broken_replies_raise_aiohttp_errors_and_are_not_retried(reply: bytes) -> None:
    requests = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal requests
        await answer(reader, writer, reply)
        requests += 1
        writer.close()

    async with wire_to(handle) as wire:
        with pytest.raises(aiohttp.ClientError):
            await wire.request("GET", "/x")
        assert requests == 1 and not wire._idle and not wire._busy


async def test_close_delimited_response_then_a_new_connection() -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await answer(reader, writer,
                     b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n{\"n\": 1}")
        writer.close()

    async with wire_to(handle) as wire:
        for _ in range(2):
            assert await (await wire.request("GET", "/x")).json() == {"n": 1}
        assert not wire._idle


async def test_connection_close_header_is_obeyed_even_if_the_socket_stays_open() -> None:
    connections = 0
    finished = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        await answer(reader, writer,
                     b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}")
        await finished.wait()  # says close, does not: a reused connection would hang here
        writer.close()

    try:
        async with wire_to(handle) as wire:
            for _ in range(2):
                assert (await wire.request("GET", "/x", time_limit=2)).status == 200
            assert connections == 2 and not wire._idle
    finally:
        finished.set()


# --- TLS ------------------------------------------------------------------------------


def self_signed(directory: Path) -> tuple[Path, Path]:
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


async def test_tls_verifies_by_default_and_follows_nios_ssl_option(tmp_path: Path) -> None:
    cert_path, key_path = self_signed(tmp_path)
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert_path, key_path)
    server = Server()
    url = await server.start(server_context)
    trusting = ssl.create_default_context(cafile=str(cert_path))
    try:
        with pytest.raises(aiohttp.ClientConnectionError):
            await WireClient(url).request("GET", "/echo/unverified")
        for option in (trusting, False):
            wire = WireClient(url, ssl_option=option)
            try:
                seen = await (await wire.request("GET", "/echo/tls")).json()
                assert seen["raw_path"] == "/echo/tls"
                await wire.request("GET", "/echo/again")
                assert len(wire._idle) == 1
            finally:
                await wire.close()
    finally:
        await server.stop()


# --- nio over the wire ------------------------------------------------------------------


async def test_nio_requests_go_over_the_wire_and_close_with_the_client() -> None:
    whoami: list[str] = []

    async def handler(request: web.Request) -> web.Response:
        whoami.append(request.headers.get("Authorization", ""))
        return web.json_response({"user_id": "@bot:example.org", "device_id": "DEV"})

    server = Server()
    server.app.router.add_get("/_matrix/client/v3/account/whoami", handler)
    await server.start()
    client = nio.AsyncClient(server.url, "@bot:example.org")
    client.access_token = "token"
    try:
        wire = route_requests_over_wire(client)
        assert wire is not None
        response = await client.whoami()
        assert isinstance(response, nio.WhoamiResponse)
        assert response.user_id == "@bot:example.org"
        assert whoami == ["Bearer token"] and wire.requests == 1
        assert client.client_session is None, "aiohttp was never needed"
        await client.close()
        assert not wire._idle
    finally:
        await server.stop()


async def test_streamed_bodies_and_proxies_stay_on_aiohttp(server: Server) -> None:
    proxied = nio.AsyncClient(server.url, "@bot:example.org", proxy="http://127.0.0.1:9")
    assert route_requests_over_wire(proxied) is None
    client = nio.AsyncClient(server.url, "@bot:example.org")
    wire = route_requests_over_wire(client)
    assert wire is not None

    async def body() -> AsyncIterator[bytes]:
        yield b'{"streamed": '
        yield b"true}"

    response = await client.send("POST", "/echo/streamed", body(),
                                 {"Content-Type": "application/json"})
    assert json.loads((await response.json())["body"]) == {"streamed": True}
    assert wire.requests == 0 and client.client_session is not None
    await client.close()
