"""What is known about one user's E2EE state, already checked, whatever source it came from.

Signatures are verified before facts are built (``nerbot.matrix.keys``), so a ``cross_signed``
here is a cryptographic fact, never the server's word. ``None`` always means "not known".
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class BackupState(enum.Enum):
    PRESENT = "present"    # seen: the server has a live key backup version
    ABSENT = "absent"      # seen: the server has none
    UNKNOWN = "unknown"    # not visible without the admin API (and not enabled)


@dataclass(frozen=True, slots=True)
class DeviceFacts:
    """One session of the user, as its keys and (optionally) the admin API describe it."""

    device_id: str
    display_name: str | None
    has_identity_keys: bool          # uploaded ed25519 + curve25519 keys (E2EE-capable)
    cross_signed: bool               # valid signature by the user's valid self-signing key
    last_seen_ms: int | None = None  # admin API only
    curve25519: str | None = None    # its identity key: which session sent a message


@dataclass(frozen=True, slots=True)
class BackupFacts:
    """Server-side key backup and recovery, with how each fact was learned."""

    state: BackupState = BackupState.UNKNOWN
    version: str | None = None
    secret_storage: bool | None = None        # a default secret-storage key exists (admin)
    key_backup_enabled: bool | None = None    # Element's m.key_backup preference (admin)
    legacy_backup_marker: bool | None = None  # m.megolm_backup.v1 present (survives deletion)
    storage_opted_out: bool | None = None     # user turned key storage off on purpose (admin)

    @property
    def seen(self) -> bool:
        return self.state is not BackupState.UNKNOWN


@dataclass(frozen=True, slots=True)
class UserFacts:
    """Everything the assessment needs about one user."""

    user_id: str
    exists: bool
    has_master_key: bool
    self_signing_valid: bool     # self-signing key present and signed by the master key
    devices: tuple[DeviceFacts, ...]
    backup: BackupFacts = BackupFacts()
    device_activity_known: bool = False  # last-seen times came from the admin API
    remote: bool = False  # on another homeserver: only what federation shows (keys) is seen

    @property
    def cross_signing(self) -> bool:
        return self.has_master_key and self.self_signing_valid


@dataclass(frozen=True, slots=True)
class KeyFacts:
    """What ``/keys/query`` says about one user, after signature checks."""

    user_id: str
    has_master_key: bool
    self_signing_valid: bool
    master_key: str | None
    devices: tuple[DeviceFacts, ...]


@dataclass(frozen=True, slots=True)
class AdminFacts:
    """What the Synapse admin API says about one user."""

    exists: bool
    backup: BackupFacts
    last_seen_ms: dict[str, int | None] = field(default_factory=dict)


def combine(keys: KeyFacts, admin: AdminFacts | None, remote: bool = False) -> UserFacts:
    """One ``UserFacts`` from whatever sources answered (the assessment never knows which).

    ``remote``: the user is on another homeserver, so backup, recovery and last use are not
    merely unknown but cannot be seen from here at all.
    """
    devices = keys.devices
    if admin is not None:
        devices = tuple(
            DeviceFacts(d.device_id, d.display_name, d.has_identity_keys, d.cross_signed,
                        admin.last_seen_ms.get(d.device_id), d.curve25519)
            for d in devices
        )
    return UserFacts(
        user_id=keys.user_id,
        exists=admin.exists if admin is not None else True,
        has_master_key=keys.has_master_key,
        self_signing_valid=keys.self_signing_valid,
        devices=devices,
        backup=admin.backup if admin is not None else BackupFacts(),
        device_activity_known=admin is not None,
        remote=remote,
    )
