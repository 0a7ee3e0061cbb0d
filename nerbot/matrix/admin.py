"""Facts only a Synapse admin can see: key backup, secret storage, session last-seen times.

Another user's key backup is invisible through the client API. With ``backup_check =
"admin-login"`` the bot logs in *as* the user via the admin API (which creates no device), asks
``/room_keys/version`` and logs that token out at once. Everything runs with bounded
concurrency, since Synapse serves about ten parallel requests per device.
"""

from __future__ import annotations

import asyncio
import json
import logging
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from nerbot.clock import SystemClock
from nerbot.domain.facts import AdminFacts, BackupFacts, BackupState
from nerbot.domain.freshness import Listed
from nerbot.errors import MatrixRequestError
from nerbot.matrix.http import MatrixHttp
from nerbot.ports import Clock

logger = logging.getLogger(__name__)

# Account data that records a user's recovery set-up, as Element writes it.
SECRET_STORAGE_DEFAULT = "m.secret_storage.default_key"
KEY_BACKUP_PREF = "m.key_backup"
LEGACY_BACKUP_MARKER = "m.megolm_backup.v1"
BACKUP_DISABLED_MARKER = "m.org.matrix.custom.backup_disabled"  # Element Web
RECOVERY_PREF = "io.element.recovery"  # Element X

# A deliberate "key storage off": (event type, content key, the value that means off).
STORAGE_OPT_OUTS: tuple[tuple[str, str, bool], ...] = (
    (KEY_BACKUP_PREF, "enabled", False),
    (BACKUP_DISABLED_MARKER, "disabled", True),
    (RECOVERY_PREF, "enabled", False),
)


def _quote(user_id: str) -> str:
    return urllib.parse.quote(user_id, safe="")


# Users per page of the listing. Synapse pages by offset, each page dearer than the last:
# 10,000 people took 3.2-3.5 s in pages of 500, 1.2-1.3 s in pages of 2,000 and 0.73-0.76 s
# in pages of 5,000 (bench/scale.py's world, Synapse otherwise idle). A page of 5,000 is
# about 1.5 MB of JSON.
LISTING_PAGE = 5000

# Synapse's per-user rate-limit override. A rate of 0 switches off every limiter that knows
# the user (messages, joins, invites, room creation, ...), whatever the burst says.
RATELIMIT_OVERRIDE_PATH = "/_synapse/admin/v1/users/{}/override_ratelimit"
UNLIMITED: Final[dict[str, int]] = {"messages_per_second": 0, "burst_count": 0}
RATELIMIT_TIMEOUT_SECONDS = 10.0  # a start-up check: never hold the bot up for long


@dataclass(frozen=True, slots=True)
class RatelimitOverride:
    """What ``GET .../override_ratelimit`` answered when an override is set."""

    messages_per_second: float
    burst_count: int

    @property
    def unlimited(self) -> bool:
        """Synapse's own rule (``Ratelimiter.can_do_action``): a zero rate means no limits."""
        return not self.messages_per_second

    def __str__(self) -> str:
        return f"{self.messages_per_second:g}/s, burst {self.burst_count}"


def override_text(found: RatelimitOverride | None) -> str:
    """An override for a log line: ``no override`` or ``override 0.2/s, burst 10``."""
    return "no override" if found is None else f"override {found}"


def ratelimit_override_path(user_id: str) -> str:
    return RATELIMIT_OVERRIDE_PATH.format(_quote(user_id))


def lift_ratelimit_request(homeserver: str, user_id: str) -> str:
    """The request an operator runs to exempt ``user_id`` (the token is left as a blank)."""
    body = json.dumps(UNLIMITED, separators=(",", ":"))
    url = homeserver.rstrip("/") + ratelimit_override_path(user_id)
    return (f"curl -X POST -H \"Authorization: Bearer <admin token>\" -d '{body}' {url}")


def _override(body: Mapping[str, Any]) -> RatelimitOverride | None:
    """``{}`` (none set) → None; a missing or null number is Synapse's 0; anything else that
    is not a number is no answer (ValueError), never taken for an exemption."""
    if not body:
        return None
    rate, burst = (0 if v is None else v
                   for v in (body.get("messages_per_second"), body.get("burst_count")))
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in (rate, burst)):
        raise ValueError(f"unexpected override_ratelimit answer: {dict(body)}")
    return RatelimitOverride(rate, int(burst))


def storage_opt_out(global_data: object) -> bool:
    """Did the user turn key storage off on purpose? Only an explicit boolean counts.

    Anything absent or malformed is no opt-out, so a broken client never silences reminders.
    """
    if not isinstance(global_data, dict):
        return False
    for event_type, key, off in STORAGE_OPT_OUTS:
        content = global_data.get(event_type)
        if isinstance(content, dict) and content.get(key) is off:
            return True
    return False


class AdminProbe:
    """Reads admin-only facts about users (needs a Synapse admin token)."""

    def __init__(self, http: MatrixHttp, token: str, backup_check: bool, concurrency: int = 8,
                 clock: Clock | None = None) -> None:
        self.http = http
        self.clock = clock or SystemClock()
        self.token = token
        self.backup_check = backup_check
        self._limit = asyncio.Semaphore(concurrency)
        # Users the last listing returned (they exist): their facts skip the existence check,
        # a third of the admin requests of an all-local scan.
        self._listed: frozenset[str] = frozenset()
        # Their last_seen_ts then (when Synapse shows it), and when the listing was taken.
        self._last_seen: dict[str, int | None] = {}
        self._listed_at_ms = 0

    async def _call(self, method: str, path: str, body: dict[str, Any] | None = None,
                    token: str | None = None, ok: tuple[int, ...] = (200,)
                    ) -> tuple[int, dict[str, Any]]:
        async with self._limit:
            return await self.http.request(method, path, body, token=token or self.token,
                                           ok_statuses=ok)

    async def _brief(self, method: str, path: str, body: dict[str, Any] | None = None
                     ) -> dict[str, Any]:
        """One call at start-up, given :data:`RATELIMIT_TIMEOUT_SECONDS` at most."""
        async with self._limit:
            _, answer = await self.http.request(method, path, body, token=self.token,
                                                timeout_seconds=RATELIMIT_TIMEOUT_SECONDS)
        return answer

    async def ratelimit_override(self, user_id: str) -> RatelimitOverride | None:
        """The user's rate-limit override on Synapse, or None when none is set."""
        return _override(await self._brief("GET", ratelimit_override_path(user_id)))

    async def lift_ratelimit(self, user_id: str) -> RatelimitOverride | None:
        """Set the user's override to 0/0 (no limits); what Synapse stored, as it says."""
        return _override(await self._brief("POST", ratelimit_override_path(user_id),
                                           dict(UNLIMITED)))

    async def local_users(self) -> list[str]:
        """Every active, non-guest local user (``/_synapse/admin/v2/users``, paginated)."""
        users: list[str] = []
        last_seen: dict[str, int | None] = {}
        listed_at_ms = self.clock.now_ms()
        start: str | None = "0"
        while start is not None:
            query = urllib.parse.urlencode({"from": start, "limit": LISTING_PAGE, "guests": "false",
                                            "deactivated": "false"})
            _, page = await self._call("GET", f"/_synapse/admin/v2/users?{query}")
            for entry in page.get("users", []):
                name = entry.get("name") if isinstance(entry, dict) else None
                if isinstance(name, str) and not entry.get("is_guest") \
                        and not entry.get("deactivated"):
                    users.append(name)
                    seen = entry.get("last_seen_ts", False)
                    if seen is None or (isinstance(seen, int) and not isinstance(seen, bool)):
                        last_seen[name] = seen
            token = page.get("next_token")
            start = str(token) if token is not None else None
        self._listed = frozenset(users)
        self._last_seen, self._listed_at_ms = last_seen, listed_at_ms
        return users

    def listed(self, user_id: str) -> Listed | None:
        """The user as the latest listing showed them (``nerbot.domain.freshness``)."""
        if user_id not in self._last_seen:
            return None
        return Listed(self._last_seen[user_id], self._listed_at_ms)

    async def facts(self, user_id: str) -> AdminFacts:
        user = _quote(user_id)
        if user_id not in self._listed:
            status, _ = await self._call("GET", f"/_synapse/admin/v2/users/{user}",
                                         ok=(200, 404))
            if status == 404:
                return AdminFacts(False, BackupFacts(), {})
        async with asyncio.TaskGroup() as group:  # no request outlives a failed sibling
            devices_task = group.create_task(
                self._call("GET", f"/_synapse/admin/v2/users/{user}/devices", ok=(200, 404)))
            account_data_task = group.create_task(
                self._call("GET", f"/_synapse/admin/v1/users/{user}/accountdata",
                           ok=(200, 404)))
        devices, account_data = devices_task.result(), account_data_task.result()
        if devices[0] == 404 or account_data[0] == 404:  # gone since it was listed
            return AdminFacts(False, BackupFacts(), {})
        last_seen = {
            str(d["device_id"]): (int(d["last_seen_ts"]) if d.get("last_seen_ts") else None)
            for d in devices[1].get("devices", []) if isinstance(d, dict) and "device_id" in d
        }
        global_data = account_data[1].get("account_data", {}).get("global", {})
        if not isinstance(global_data, dict):
            global_data = {}
        state, version = BackupState.UNKNOWN, None
        if self.backup_check:
            state, version = await self._backup_version(user_id)
        pref = global_data.get(KEY_BACKUP_PREF)
        backup = BackupFacts(
            state=state,
            version=version,
            secret_storage=_has_default_key(global_data),
            key_backup_enabled=pref.get("enabled") if isinstance(pref, dict) and isinstance(
                pref.get("enabled"), bool) else None,
            legacy_backup_marker=LEGACY_BACKUP_MARKER in global_data,
            storage_opted_out=storage_opt_out(global_data),
        )
        # Only the facts: the account data itself (secret storage and backup key material,
        # encrypted) is not kept in memory for thousands of people.
        return AdminFacts(True, backup, last_seen)

    async def _backup_version(self, user_id: str) -> tuple[BackupState, str | None]:
        """Log in as the user (no device is created), read the backup version, log out."""
        _, login = await self._call(
            "POST", f"/_synapse/admin/v1/users/{_quote(user_id)}/login", {})
        token = str(login["access_token"])
        try:
            status, body = await self._call("GET", "/_matrix/client/v3/room_keys/version",
                                            token=token, ok=(200, 404))
        finally:
            try:
                await self._call("POST", "/_matrix/client/v3/logout", {}, token=token)
            except MatrixRequestError:
                logger.warning("Could not log out the backup-check token for %s", user_id)
        if status == 404:
            return BackupState.ABSENT, None
        return BackupState.PRESENT, str(body.get("version"))


def _has_default_key(global_data: Mapping[str, Any]) -> bool:
    """A default secret-storage key is set (malformed account data counts as none)."""
    content = global_data.get(SECRET_STORAGE_DEFAULT)
    return isinstance(content, Mapping) and bool(content.get("key"))
