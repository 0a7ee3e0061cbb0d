"""Gather users' key facts: batched ``/keys/query`` with a cache that sync invalidates.

Every signature is checked here (never trusted from the server's word) and each check is
memoised on (key, signature, signed bytes), so no signature is verified twice. A user's entry is
dropped when ``/sync`` reports their device list changed; that only happens for users sharing a
room with the bot, so anyone else is re-queried whenever a scan needs them.

A user whose facts cannot be had (their server is listed in the response's ``failures``, or the
request itself failed) is left out of the result rather than reported as "no keys": an
unreachable server must never look like a person without cross-signing.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import urllib.parse
from collections import deque
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from nerbot.domain.facts import DeviceFacts, KeyFacts
from nerbot.errors import NerbotError
from nerbot.ids import server_of
from nerbot.matrix.crosssigning import (
    canonical_json,
    device_keys_of,
    master_key_of,
    parse_public_key,
    self_signing_key_of,
    verify_signature,
)
from nerbot.matrix.http import MatrixHttp

logger = logging.getLogger(__name__)

KEYS_QUERY = "/_matrix/client/v3/keys/query"
DEFAULT_BATCH = 250
PREFETCH = 3


SignatureCheck = Callable[[bytes, str, Any], bool]
"""``verify_signature``'s shape: (signed bytes, signature, parsed public key) → valid."""


class SignatureCache:
    """Signature checks memoised on (public key, signature, signed bytes); parsed keys kept.

    Canonical JSON is built once per object and passed as bytes, so a device checked for its
    own signature and for its cross-signature is encoded once.
    """

    def __init__(self, check: SignatureCheck = verify_signature) -> None:
        self._results: dict[tuple[str, str, bytes], bool] = {}  # (key, signature, digest)
        self._keys: dict[str, Any] = {}
        self._check = check

    def verify(self, obj: Any, user_id: str, key_id: str, public_key: str) -> bool:
        """The ``Verifier`` shape used by ``self_signing_key_of``."""
        signature = _signature(obj, user_id, key_id)
        if signature is None:
            return False
        try:
            message = canonical_json(obj)
        except (TypeError, ValueError, RecursionError):
            return False
        return self.verify_message(message, signature, public_key)

    def verify_message(self, message: bytes, signature: str, public_key: str) -> bool:
        # Keyed on the message's digest, not the message: tens of thousands of devices' signed
        # JSON would otherwise stay in memory for as long as the bot runs.
        memo = (public_key, signature, hashlib.sha256(message).digest())
        cached = self._results.get(memo)
        if cached is not None:
            return cached
        key = self._keys.get(public_key)
        if key is None:
            key = parse_public_key(public_key)
            if key is not None:
                self._keys[public_key] = key
        result = key is not None and self._check(message, signature, key)
        self._results[memo] = result
        return result


def _signature(obj: Any, user_id: str, key_id: str) -> str | None:
    try:
        signature = obj["signatures"][user_id][key_id]
    except (KeyError, TypeError, AttributeError):
        return None
    return signature if isinstance(signature, str) else None


def facts_from_response(
    response: Mapping[str, Any], user_id: str, signatures: SignatureCache
) -> KeyFacts:
    """One user's facts from a /keys/query response (every signature checked, memoised)."""
    master = master_key_of(response, user_id)
    ssk = self_signing_key_of(response, user_id, signatures.verify)
    by_user = response.get("device_keys", {})
    devices_raw = by_user.get(user_id) if isinstance(by_user, Mapping) else None
    devices: list[DeviceFacts] = []
    if isinstance(devices_raw, Mapping):
        for device_id in devices_raw:
            device = device_keys_of(response, user_id, str(device_id))
            if device is None:
                continue
            keys = device.get("keys")
            ed25519 = keys.get(f"ed25519:{device_id}") if isinstance(keys, Mapping) else None
            curve = keys.get(f"curve25519:{device_id}") if isinstance(keys, Mapping) else None
            own = _signature(device, user_id, f"ed25519:{device_id}")
            try:
                message = canonical_json(device)
            except (TypeError, ValueError, RecursionError):
                continue
            # A device's own signature must hold, or its keys are not really its keys.
            self_signed = (isinstance(ed25519, str) and own is not None
                           and signatures.verify_message(message, own, ed25519))
            has_keys = bool(self_signed and isinstance(curve, str))
            cross = _signature(device, user_id, f"ed25519:{ssk}") if ssk else None
            cross_signed = bool(has_keys and ssk is not None and cross is not None
                                and signatures.verify_message(message, cross, ssk))
            unsigned = device.get("unsigned")
            name = unsigned.get("device_display_name") if isinstance(unsigned, Mapping) else None
            devices.append(DeviceFacts(str(device_id), name if isinstance(name, str) else None,
                                       has_keys, cross_signed,
                                       curve25519=curve if has_keys else None))
    return KeyFacts(user_id, master is not None, ssk is not None, master, tuple(devices))


@dataclass
class KeyDirectory:
    """Key facts for many users at the cost of as few ``/keys/query`` requests as possible."""

    http: MatrixHttp
    shares_room: Callable[[str], bool]
    batch_size: int = DEFAULT_BATCH
    signatures: SignatureCache = field(default_factory=SignatureCache)
    _cache: dict[str, KeyFacts] = field(default_factory=dict)

    def invalidate(self, user_ids: Iterable[str]) -> None:
        """Forget users whose device lists changed (called from the sync handler)."""
        for user_id in user_ids:
            self._cache.pop(user_id, None)

    def cached(self, user_id: str) -> KeyFacts | None:
        return self._cache.get(user_id)

    async def facts(self, user_ids: Iterable[str], fresh: bool = False,
                    reuse: Collection[str] = ()) -> dict[str, KeyFacts]:
        """Facts for each user that could be had; a user left out of the result is unavailable
        (logged here with the reason), never a user without keys. ``reuse``: users known not
        to have changed (``nerbot.domain.freshness``), whose cached facts stand too."""
        wanted = list(dict.fromkeys(user_ids))
        result: dict[str, KeyFacts] = {}
        missing: list[str] = []
        for user_id in wanted:
            cached = None if fresh else self._cache.get(user_id)
            # Only room-mates' device-list changes reach us, so only their entries are trusted,
            # and those of people whose activity shows no change.
            if cached is not None and (user_id in reuse or self.shares_room(user_id)):
                result[user_id] = cached
            else:
                missing.append(user_id)
        batches = [missing[i:i + self.batch_size]
                   for i in range(0, len(missing), self.batch_size)]
        # A few requests in flight ahead of the one being checked: the server (another process)
        # answers them while this process verifies signatures.
        pending = deque(self._fetch(b) for b in batches[:PREFETCH])
        try:
            for index, batch in enumerate(batches):
                current = pending.popleft()
                if index + PREFETCH < len(batches):
                    pending.append(self._fetch(batches[index + PREFETCH]))
                try:
                    response = await current
                except FETCH_ERRORS as exc:  # this batch is unavailable; the others go on
                    logger.warning("Key query for %d user(s) failed (%s: %s); their keys "
                                   "are unavailable: %s", len(batch), type(exc).__name__, exc,
                                   _named(batch))
                    continue
                await asyncio.sleep(0)  # let the queued requests go out before the CPU work
                unreachable = _failed_servers(response)
                for user_id in batch:
                    if server_of(user_id) in unreachable and not _listed(response, user_id):
                        logger.info("Keys of %s unavailable: %s did not answer", user_id,
                                    server_of(user_id))
                        continue
                    facts = facts_from_response(response, user_id, self.signatures)
                    self._cache[user_id] = facts
                    result[user_id] = facts
        finally:
            for task in pending:  # only left when a caller cancelled us
                task.cancel()
        return result

    def _fetch(self, batch: list[str]) -> asyncio.Task[dict[str, Any]]:
        async def fetch() -> dict[str, Any]:
            _, response = await self.http.request(
                "POST", KEYS_QUERY, {"device_keys": {u: [] for u in batch}, "timeout": 10000})
            return response
        return asyncio.get_running_loop().create_task(fetch())


FETCH_ERRORS: tuple[type[BaseException], ...] = (
    NerbotError, aiohttp.ClientError, OSError, TimeoutError, ValueError)
"""What a failed ``/keys/query`` raises (HTTP error, connection, time-out, bad body)."""


LOGGED_USERS = 1000
"""At most this many user IDs in one log line; more are counted (a batch has 250)."""


def _named(users: list[str]) -> str:
    """Everyone affected, for a log line: ``@a:x, @b:y`` (``... and N more`` past the cap)."""
    shown = ", ".join(users[:LOGGED_USERS])
    rest = len(users) - LOGGED_USERS
    return f"{shown} and {rest} more" if rest > 0 else shown


def _failed_servers(response: Mapping[str, Any]) -> set[str]:
    failures = response.get("failures")
    return {str(s) for s in failures} if isinstance(failures, Mapping) else set()


def _listed(response: Mapping[str, Any], user_id: str) -> bool:
    """The server answered for this user after all (e.g. from its device-list cache)."""
    return any(isinstance(section, Mapping) and user_id in section
               for section in (response.get("device_keys"), response.get("master_keys")))


async def user_exists(http: MatrixHttp, user_id: str) -> bool:
    """Whether the homeserver knows the user (profile lookup; 404 means no such user)."""
    path = f"/_matrix/client/v3/profile/{urllib.parse.quote(user_id, safe='')}"
    status, _ = await http.request("GET", path, ok_statuses=(200, 403, 404))
    return status != 404
