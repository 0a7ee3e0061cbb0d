"""Raw client-server API calls that nio does not wrap (cross-signing, admin API)."""

from __future__ import annotations

import json
import logging
from typing import Any

from nerbot.errors import MatrixRequestError
from nerbot.matrix.wire import WireClient

logger = logging.getLogger(__name__)

JsonDict = dict[str, Any]


class MatrixHttp:
    """A tiny authenticated JSON client on keep-alive connections (``WireClient``).

    nio covers the common endpoints; this covers the rest with the same access token. The token
    travels only in the Authorization header, so nothing logged here contains it.
    """

    def __init__(self, homeserver: str, access_token: str | None = None) -> None:
        self.homeserver = homeserver.rstrip("/")
        self.access_token = access_token
        self.wire = WireClient(self.homeserver, default_timeout=60)

    async def close(self) -> None:
        await self.wire.close()

    async def request(
        self,
        method: str,
        path: str,
        body: JsonDict | None = None,
        *,
        token: str | None = None,
        ok_statuses: tuple[int, ...] = (200,),
    ) -> tuple[int, JsonDict]:
        """Send one request; return ``(status, json)``; raise unless the status is expected."""
        headers = {"Content-Type": "application/json"}
        bearer = token if token is not None else self.access_token
        if bearer:
            headers["Authorization"] = f"Bearer {bearer}"
        data = json.dumps(body) if body is not None else None
        resp = await self.wire.request(method, path, data, headers)
        try:
            payload = await resp.json()
        except ValueError:  # not JSON (or not UTF-8): an error page
            payload = {}
        if not isinstance(payload, dict):
            payload = {"value": payload}
        if resp.status not in ok_statuses:
            raise MatrixRequestError(method, path, resp.status, payload)
        logger.debug("%s %s -> %s", method, path, resp.status)
        return resp.status, payload
