"""New-session and identity-reset alerts: what changed since the bot last looked at a user.

Pure: the caller passes what the bot remembered (sessions with the time it first saw them, the
master key) and what ``/keys/query`` says now; this decides what to remember and what to say.
The first look at a user only records a baseline, so nobody is alerted about sessions that
existed before the bot knew them (the reminder scan covers those).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

from nerbot.domain.facts import DeviceFacts, KeyFacts


@dataclass(frozen=True, slots=True)
class AlertDecision:
    new_unsigned: tuple[DeviceFacts, ...]  # sessions to warn about (new, with keys, unsigned)
    identity_reset: bool                    # the master key changed since last seen
    remember_devices: tuple[str, ...]       # sessions to add to what the bot knows
    remember_master_key: str | None         # to store ("" = none yet; None: keep what is stored)

    @property
    def alert(self) -> bool:
        return bool(self.new_unsigned) or self.identity_reset


def review_sessions(known_devices: Mapping[str, int], known_master_key: str | None,
                    facts: KeyFacts) -> AlertDecision:
    """Compare the user's keys now with what the bot remembered.

    A session without identity keys is not remembered yet: clients upload keys just after the
    login, and that upload (another device-list change) is when it is judged.
    """
    with_keys = [d for d in facts.devices if d.has_identity_keys]
    new = [d for d in with_keys if d.device_id not in known_devices]
    # ``known_master_key``: None = never looked at this user, "" = looked, they had none.
    first_look = not known_devices and known_master_key is None
    reset = bool(known_master_key) and bool(facts.master_key) \
        and facts.master_key != known_master_key
    remember_master: str | None = None
    if known_master_key is None:
        remember_master = facts.master_key or ""
    elif facts.master_key and facts.master_key != known_master_key:
        remember_master = facts.master_key
    return AlertDecision(
        new_unsigned=() if first_look else tuple(d for d in new if not d.cross_signed),
        identity_reset=reset,
        remember_devices=tuple(sorted(d.device_id for d in new)),
        remember_master_key=remember_master,
    )


def alert_key(user_id: str, decision: AlertDecision) -> str:
    """The exactly-once key of one alert message (same sessions → same key)."""
    parts = [user_id, *sorted(d.device_id for d in decision.new_unsigned)]
    if decision.identity_reset:
        parts.append(f"master={decision.remember_master_key}")
    return "alert|" + "|".join(parts)


def alert_txn_id(key: str) -> str:
    return "nerbot-alert-" + hashlib.sha256(key.encode("utf-8")).hexdigest()[:32]
