"""Raw client-server API calls that nio does not wrap (cross-signing, admin API)."""

from __future__ import annotations

import json
import logging
from typing import Any

import aiohttp

from nerbot.errors import MatrixRequestError, NerbotError

logger = logging.getLogger(__name__)

JsonDict = dict[str, Any]
REQUEST_TIMEOUT_SECONDS = 60
PROBE_TIMEOUT_SECONDS = 5


class MatrixHttp:
    """A tiny authenticated JSON client on one plain aiohttp session.

    nio covers the common endpoints; this covers the rest with the same access token. The token
    travels only in the Authorization header, so nothing logged here contains it. The session
    is opened on first use (it must be created inside the running event loop) and closed by
    :meth:`close`.
    """

    def __init__(self, homeserver: str, access_token: str | None = None) -> None:
        self.homeserver = homeserver.rstrip("/")
        self.access_token = access_token
        self._session: aiohttp.ClientSession | None = None
        self._closed = False

    async def close(self) -> None:
        """Close the session; a request after this fails instead of opening a new one."""
        self._closed = True
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _opened(self) -> aiohttp.ClientSession:
        if self._closed:
            raise NerbotError("the homeserver client is closed (the bot is stopping)")
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_SECONDS))
        return self._session

    async def request(
        self,
        method: str,
        path: str,
        body: JsonDict | None = None,
        *,
        token: str | None = None,
        ok_statuses: tuple[int, ...] = (200,),
        timeout_seconds: float | None = None,
    ) -> tuple[int, JsonDict]:
        """Send one request; return ``(status, json)``; raise unless the status is expected."""
        headers = {"Content-Type": "application/json"}
        bearer = token if token is not None else self.access_token
        if bearer:
            headers["Authorization"] = f"Bearer {bearer}"
        data = json.dumps(body) if body is not None else None
        options: dict[str, Any] = {"data": data, "headers": headers}
        if timeout_seconds:
            options["timeout"] = aiohttp.ClientTimeout(total=timeout_seconds)
        async with self._opened().request(method, self.homeserver + path, **options) as resp:
            try:
                payload: Any = await resp.json(content_type=None)
            except ValueError:  # not JSON (or not UTF-8): an error page
                payload = {}
            status = resp.status
        if payload is None:  # an empty body
            payload = {}
        elif not isinstance(payload, dict):
            payload = {"value": payload}
        if status not in ok_statuses:
            raise MatrixRequestError(method, path, status, payload)
        logger.debug("%s %s -> %s", method, path, status)
        return status, payload

    async def versions(self) -> None:
        """``GET /_matrix/client/versions``: the reachability probe (no token needed)."""
        await self.request("GET", "/_matrix/client/versions", token="",
                           timeout_seconds=PROBE_TIMEOUT_SECONDS)
