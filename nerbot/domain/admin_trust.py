"""Whether a command really comes from an administrator: their account *and* their session.

An admin's account alone is not enough (a stolen password logs in a new session): the session
that sent the command must be one the admin's own cross-signing identity signed, checked by the
bot's signature checks like everyone's sessions. The session is known from the encrypted
message itself: the identity key (curve25519) that Megolm binds the message to.
"""

from __future__ import annotations

import enum

from nerbot.domain.facts import KeyFacts


class AdminCheck(enum.Enum):
    TRUSTED = "trusted"              # a configured admin, from a session their identity signed
    NOT_ADMIN = "not_admin"          # not in ``bot.admins``
    NOT_ENCRYPTED = "not_encrypted"  # sent unencrypted: no session to check
    UNSIGNED_SESSION = "unsigned"    # their session is not signed by their own identity
    NO_IDENTITY = "no_identity"      # the admin has no (valid) cross-signing identity
    UNKNOWN_SESSION = "unknown"      # no session of theirs has this key (deleted, or forged)


def check_admin_session(is_admin: bool, sender_key: str | None,
                        facts: KeyFacts | None) -> AdminCheck:
    """``facts``: the admin's keys as the bot checked them (None: none to be had)."""
    if not is_admin:
        return AdminCheck.NOT_ADMIN
    if not sender_key:
        return AdminCheck.NOT_ENCRYPTED
    if facts is None or not (facts.has_master_key and facts.self_signing_valid):
        return AdminCheck.NO_IDENTITY
    # Anyone can publish a device that copies a public identity key, but only the key's owner
    # can send with it (Olm authenticates it): one signed session with the key is enough.
    sessions = [d for d in facts.devices if d.curve25519 == sender_key]
    if not sessions:
        return AdminCheck.UNKNOWN_SESSION
    return (AdminCheck.TRUSTED if any(d.cross_signed for d in sessions)
            else AdminCheck.UNSIGNED_SESSION)
