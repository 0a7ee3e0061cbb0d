"""When facts fetched earlier still describe a person who shares no room with the bot.

Sync tells the bot when a room-mate's devices change; for everyone else (an all-local scan of
thousands of people) no event says so, and re-reading each person's keys and account data on
every scan is the whole cost of an unchanged rescan. Synapse's user listing (admin API) gives
each user's ``last_seen_ts``: the newest request any of their sessions made. Every change a
person makes to their own keys, devices or account data is such a request, so facts fetched
at ``F`` still hold while the listing shows the same ``last_seen_ts`` -- provided ``F`` was
at least :data:`SETTLE_MS` after it. Synapse records a session's requests at most every two
minutes (``LAST_SEEN_GRANULARITY``) and writes them in batches, so a request just before ``F``
might not have moved ``last_seen_ts`` yet; five minutes covers both. What no request of the
person's causes (an admin deleting a device, a session expiring) is caught by
:data:`MAX_REUSE_MS`: facts are fetched again at least once a day whatever the listing says.
A listing speaks only for the moment it was taken: older than :data:`LISTING_VALID_MS`, it
proves nothing (a command between two scans reads facts as before).
"""

from __future__ import annotations

from dataclasses import dataclass

SETTLE_MS = 5 * 60 * 1000
MAX_REUSE_MS = 24 * 60 * 60 * 1000
LISTING_VALID_MS = 60 * 1000


@dataclass(frozen=True, slots=True)
class Listed:
    """A local user as Synapse's user listing showed them, and when it was taken."""

    last_seen_ms: int | None
    listed_at_ms: int


@dataclass(frozen=True, slots=True)
class Fetched:
    """When a person's facts were fetched, and their ``last_seen_ts`` in the listing then."""

    at_ms: int
    last_seen_ms: int | None


def speaks_for_now(listed: Listed, now_ms: int) -> bool:
    """Whether the listing is recent enough to say anything about requests made until now."""
    return now_ms - listed.listed_at_ms <= LISTING_VALID_MS


def still_current(fetched: Fetched, listed: Listed, now_ms: int) -> bool:
    """Whether facts fetched then can stand for now (no request of theirs since)."""
    if not speaks_for_now(listed, now_ms) or now_ms - fetched.at_ms >= MAX_REUSE_MS:
        return False
    last_seen = listed.last_seen_ms
    if last_seen != fetched.last_seen_ms:
        return False
    return last_seen is None or fetched.at_ms - last_seen >= SETTLE_MS
