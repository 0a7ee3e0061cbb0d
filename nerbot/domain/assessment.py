"""Turn a user's E2EE facts into findings: what could make them lose history or be impersonated.

Pure and synchronous: the same facts and ``now`` always give the same report, so every rule is
unit-tested without a homeserver.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from nerbot.domain.facts import BackupState, DeviceFacts, UserFacts

DAY_MS = 24 * 3600 * 1000


class Severity(enum.IntEnum):
    LOW = 1
    MEDIUM = 2
    HIGH = 3


class SessionMark(enum.Enum):
    VERIFIED = "verified"          # cross-signed by the user's own identity
    UNVERIFIED = "unverified"      # has keys, not cross-signed
    NO_KEYS = "no_keys"            # not an encrypting session (never counted as unverified)
    INACTIVE = "inactive"          # not seen for longer than the stale threshold


class FindingKind(enum.Enum):
    """What can go wrong. With current Element the identity (cross-signing) and the key backup
    are created by the client itself at first login, without asking, so the common gap is
    recovery (no secret storage: nothing restores identity and backup once every device is
    gone); a missing identity is rare (an old or another client)."""

    NO_CROSS_SIGNING = "no_cross_signing"
    NO_BACKUP = "no_backup"
    NO_SECRET_STORAGE = "no_secret_storage"
    UNVERIFIED_SESSIONS = "unverified_sessions"
    STALE_SESSIONS = "stale_sessions"


# The guide (walkthrough) that fixes each finding.
GUIDE_FOR: dict[FindingKind, str] = {
    FindingKind.NO_CROSS_SIGNING: "backup",
    FindingKind.NO_BACKUP: "backup",
    FindingKind.NO_SECRET_STORAGE: "backup",
    FindingKind.UNVERIFIED_SESSIONS: "verify-sessions",
    FindingKind.STALE_SESSIONS: "verify-sessions",
}

SEVERITY_OF: dict[FindingKind, Severity] = {
    FindingKind.NO_CROSS_SIGNING: Severity.HIGH,
    FindingKind.NO_BACKUP: Severity.HIGH,
    FindingKind.NO_SECRET_STORAGE: Severity.HIGH,  # lose every device: history and identity go
    FindingKind.UNVERIFIED_SESSIONS: Severity.MEDIUM,
    FindingKind.STALE_SESSIONS: Severity.LOW,
}


@dataclass(frozen=True, slots=True)
class AssessmentPolicy:
    stale_after_days: int = 90


@dataclass(frozen=True, slots=True)
class Finding:
    kind: FindingKind
    severity: Severity
    guide: str
    device_ids: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class SessionReport:
    device: DeviceFacts
    mark: SessionMark
    idle_days: int | None


@dataclass(frozen=True, slots=True)
class UserReport:
    """The assessment of one user; ``inferred`` lists conclusions not directly seen.

    ``recovery``: a default secret-storage key exists (seen in account data with the admin
    token); None when not visible (no admin token, or someone on another homeserver).
    ``notes`` lists things seen that changed the findings (``"backup_opted_out"``: the user
    turned key storage off on purpose, so backup is not flagged). ``remote``: the user is on
    another homeserver, so only their keys were seen; ``activity_known``: session last-use
    times were seen (admin API).
    """

    user_id: str
    exists: bool
    cross_signing: bool
    backup: BackupState
    sessions: tuple[SessionReport, ...]
    findings: tuple[Finding, ...]
    inferred: tuple[str, ...] = field(default=())
    backup_version: str | None = None
    notes: tuple[str, ...] = field(default=())
    remote: bool = False
    activity_known: bool = False
    recovery: bool | None = None

    @property
    def ok(self) -> bool:
        return not self.findings

    @property
    def worst(self) -> Severity | None:
        return max((f.severity for f in self.findings), default=None)

    @property
    def next_guide(self) -> str | None:
        """The guide for the most severe finding (first in report order on ties)."""
        return self.findings[0].guide if self.findings else None

    def finding(self, kind: FindingKind) -> Finding | None:
        return next((f for f in self.findings if f.kind is kind), None)


def _mark(device: DeviceFacts, stale: bool) -> SessionMark:
    if not device.has_identity_keys:
        return SessionMark.NO_KEYS
    if stale:
        return SessionMark.INACTIVE
    return SessionMark.VERIFIED if device.cross_signed else SessionMark.UNVERIFIED


def assess_user(facts: UserFacts, policy: AssessmentPolicy, now_ms: int) -> UserReport:
    """The findings for one user, most severe first."""
    if not facts.exists:
        return UserReport(facts.user_id, False, False, BackupState.UNKNOWN, (), (),
                          remote=facts.remote)
    stale_ms = policy.stale_after_days * DAY_MS
    sessions: list[SessionReport] = []
    for device in sorted(facts.devices, key=lambda d: d.device_id):
        idle_days = None
        if device.last_seen_ms is not None:
            idle_days = max(0, (now_ms - device.last_seen_ms) // DAY_MS)
        stale = device.last_seen_ms is not None and now_ms - device.last_seen_ms > stale_ms
        sessions.append(SessionReport(device, _mark(device, stale), idle_days))

    kinds: list[tuple[FindingKind, tuple[str, ...]]] = []
    inferred: list[str] = []
    notes: list[str] = []
    # Only an explicit "key storage off" in account data; None (not known) is no opt-out.
    opted_out = facts.backup.storage_opted_out is True
    if not facts.cross_signing:
        kinds.append((FindingKind.NO_CROSS_SIGNING, ()))
    # Recovery is its own question, identity or not: current clients make the identity and the
    # backup by themselves, so "has cross-signing" says nothing about a recovery key. Before a
    # missing backup too: Element's recovery setup also makes a working backup.
    if facts.backup.secret_storage is False and not opted_out:
        kinds.append((FindingKind.NO_SECRET_STORAGE, ()))
    if opted_out:
        # They said no: respect it, neither flagging nor guessing about backup.
        notes.append("backup_opted_out")
    elif facts.backup.state is BackupState.ABSENT:
        kinds.append((FindingKind.NO_BACKUP, ()))
    elif facts.backup.state is BackupState.UNKNOWN:
        # Current clients create the key backup together with the identity at first login, so
        # without an identity there is almost certainly no backup; with one, we cannot tell.
        inferred.append("backup_likely_absent" if not facts.cross_signing
                        else "backup_not_visible")
    if facts.cross_signing:
        unverified = tuple(s.device.device_id for s in sessions
                           if s.mark is SessionMark.UNVERIFIED)
        if unverified:
            kinds.append((FindingKind.UNVERIFIED_SESSIONS, unverified))
    stale_ids = tuple(s.device.device_id for s in sessions if s.mark is SessionMark.INACTIVE)
    if stale_ids:
        kinds.append((FindingKind.STALE_SESSIONS, stale_ids))
    if facts.backup.state is BackupState.ABSENT and facts.backup.legacy_backup_marker:
        inferred.append("legacy_marker_without_backup")

    findings = sorted(
        (Finding(kind, SEVERITY_OF[kind], GUIDE_FOR[kind], ids) for kind, ids in kinds),
        key=lambda f: -f.severity,
    )
    return UserReport(
        user_id=facts.user_id,
        exists=True,
        cross_signing=facts.cross_signing,
        backup=facts.backup.state,
        sessions=tuple(sessions),
        findings=tuple(findings),
        inferred=tuple(inferred),
        backup_version=facts.backup.version,
        notes=tuple(notes),
        remote=facts.remote,
        activity_known=facts.device_activity_known,
        recovery=facts.backup.secret_storage,
    )
