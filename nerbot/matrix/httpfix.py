"""Make nio's request path cheaper (small shims over nio's HTTP and sync handling, nothing else).

- nio opens its aiohttp session lazily with a ``TraceConfig`` whose only hook feeds upload
  progress monitors (``TransferMonitor``), which the bot never uses. With any trace config,
  aiohttp builds and awaits a trace-parameters object at each stage of every request (start,
  connection reuse, headers sent, each chunk, end). And its cookie jar filters cookies into
  every request and parses them out of every response, for an API that uses none. The bot
  hands nio the same session nio would build, minus the trace, with a jar that does nothing.
- aiohttp itself costs more CPU per request than the rest of a small request together. nio's
  requests with a body it already holds in memory (all the bot makes) go over ``WireClient``
  (``wire.py``); streamed bodies, and everything when a proxy is configured, stay on aiohttp.
- Every message the bot sends comes back to it in a sync. nio would parse, validate and
  decrypt each one and run the callbacks, all of which ignore the bot's own messages: about a
  millisecond per echo. The bot's own non-state timeline events are dropped from sync
  responses before nio parses them. State events (membership, encryption, power levels) always
  stay: nio's room state is built from them.
"""

from __future__ import annotations

from typing import Any

import aiohttp
import nio

from nerbot.matrix.wire import WireClient


def lean_session(timeout_seconds: float | None, connector: Any = None) -> aiohttp.ClientSession:
    """An aiohttp session for the Matrix API: no trace hooks, no cookies."""
    return aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_seconds),
                                 connector=connector, cookie_jar=aiohttp.DummyCookieJar())


async def use_lean_session(client: nio.AsyncClient) -> None:
    """Give ``client`` an aiohttp session like nio's own, without trace hooks or cookies."""
    if client.client_session is not None:
        await client.client_session.close()
    connector = None
    if client.proxy:  # nio's own choice, kept as is
        from aiohttp_socks import ProxyConnector
        connector = ProxyConnector.from_url(client.proxy)
    client.client_session = lean_session(client.config.request_timeout, connector)


def route_requests_over_wire(client: nio.AsyncClient) -> WireClient | None:
    """Send ``client``'s in-memory requests over a ``WireClient``; None if it keeps aiohttp.

    ``client.close()`` closes the wire's connections too.
    """
    if client.proxy:
        return None
    wire = WireClient(client.homeserver, ssl_option=client.ssl,
                      default_timeout=client.config.request_timeout)
    aiohttp_send, nio_close = client.send, client.close

    async def send(method: str, path: str, data: Any = None,
                   headers: dict[str, str] | None = None, trace_context: Any = None,
                   timeout: float | None = None) -> Any:  # noqa: ASYNC109 (nio's signature)
        if data is not None and not isinstance(data, (str, bytes)):
            return await aiohttp_send(method, path, data, headers, trace_context, timeout)
        return await wire.request(method, path, data, headers, time_limit=timeout)

    async def close() -> None:
        await wire.close()
        await nio_close()

    client.send = send
    client.close = close
    return wire


def drop_own_echoes(body: dict[str, Any], user_id: str) -> int:
    """Remove ``user_id``'s non-state events from a sync body's joined timelines; how many."""
    dropped = 0
    rooms = body.get("rooms")
    joined = rooms.get("join") if isinstance(rooms, dict) else None
    if not isinstance(joined, dict):
        return 0
    for room in joined.values():
        timeline = room.get("timeline") if isinstance(room, dict) else None
        events = timeline.get("events") if isinstance(timeline, dict) else None
        if not isinstance(events, list):
            continue
        kept = [e for e in events if not (isinstance(e, dict) and e.get("sender") == user_id
                                          and "state_key" not in e)]
        if len(kept) != len(events):
            dropped += len(events) - len(kept)
            assert isinstance(timeline, dict)
            timeline["events"] = kept
    return dropped


def skip_own_echoes_in_syncs(client: nio.AsyncClient) -> None:
    """Make ``client`` drop its user's own non-state timeline events from every sync."""
    original = client.create_matrix_response

    async def create_matrix_response(response_class: type, transport_response: Any,
                                     data: tuple[Any, ...] | None = None,
                                     save_to: Any = None) -> Any:
        if response_class is not nio.SyncResponse or transport_response.status != 200:
            return await original(response_class, transport_response, data, save_to)
        body = await client.parse_body(transport_response)  # what nio's own branch does
        drop_own_echoes(body, str(client.user_id))
        response = nio.SyncResponse.from_dict(body)  # type: ignore[attr-defined]
        response.transport_response = transport_response
        return response

    client.create_matrix_response = create_matrix_response
