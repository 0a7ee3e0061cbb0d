"""The hygiene rules, on hand-made facts and a fixed clock."""

from __future__ import annotations

import pytest

from nerbot.domain.assessment import (
    DAY_MS,
    AssessmentPolicy,
    FindingKind,
    SessionMark,
    Severity,
    assess_user,
)
from nerbot.domain.facts import (
    AdminFacts,
    BackupFacts,
    BackupState,
    DeviceFacts,
    KeyFacts,
    UserFacts,
    combine,
)

NOW = 1_000 * DAY_MS
POLICY = AssessmentPolicy(stale_after_days=90)


def device(device_id: str, signed: bool = True, keys: bool = True,
           last_seen_days_ago: int | None = None) -> DeviceFacts:
    seen = None if last_seen_days_ago is None else NOW - last_seen_days_ago * DAY_MS
    return DeviceFacts(device_id, f"name {device_id}", keys, signed and keys, seen)


def user(*devices: DeviceFacts, cross_signing: bool = True,
         backup: BackupFacts | None = None) -> UserFacts:
    return UserFacts("@a:hs", True, cross_signing, cross_signing, devices,
                     backup or BackupFacts())


def kinds(facts: UserFacts) -> list[FindingKind]:
    return [f.kind for f in assess_user(facts, POLICY, NOW).findings]


def test_healthy_user_has_no_findings() -> None:
    report = assess_user(user(device("A"), backup=BackupFacts(BackupState.PRESENT, "3")),
                         POLICY, NOW)
    assert report.ok and report.next_guide is None and report.inferred == ()
    assert report.backup_version == "3"
    assert [s.mark for s in report.sessions] == [SessionMark.VERIFIED]


def test_no_cross_signing_is_high_and_infers_no_backup() -> None:
    report = assess_user(user(device("A", signed=False), cross_signing=False), POLICY, NOW)
    assert [f.kind for f in report.findings] == [FindingKind.NO_CROSS_SIGNING]
    assert report.worst is Severity.HIGH and report.next_guide == "backup"
    assert report.inferred == ("backup_likely_absent",)
    # without an identity, "unverified sessions" is not a separate finding: fix identity first
    assert report.sessions[0].mark is SessionMark.UNVERIFIED


def test_unknown_backup_with_identity_says_not_visible() -> None:
    report = assess_user(user(device("A")), POLICY, NOW)
    assert report.ok and report.inferred == ("backup_not_visible",)


def test_absent_backup_is_a_finding_and_legacy_marker_noted() -> None:
    facts = user(device("A"), backup=BackupFacts(BackupState.ABSENT, legacy_backup_marker=True))
    report = assess_user(facts, POLICY, NOW)
    assert [f.kind for f in report.findings] == [FindingKind.NO_BACKUP]
    assert "legacy_marker_without_backup" in report.inferred


def test_unverified_sessions_listed_and_sessions_without_keys_ignored() -> None:
    facts = user(device("A"), device("B", signed=False), device("C", keys=False))
    report = assess_user(facts, POLICY, NOW)
    finding = report.finding(FindingKind.UNVERIFIED_SESSIONS)
    assert finding is not None and finding.device_ids == ("B",)
    assert finding.guide == "verify-sessions" and finding.severity is Severity.MEDIUM
    assert {s.device.device_id: s.mark for s in report.sessions} == {
        "A": SessionMark.VERIFIED, "B": SessionMark.UNVERIFIED, "C": SessionMark.NO_KEYS}


@pytest.mark.parametrize(("days", "stale"), [(89, False), (90, False), (91, True)])
def test_stale_threshold(days: int, stale: bool) -> None:
    report = assess_user(user(device("A", last_seen_days_ago=days)), POLICY, NOW)
    assert (report.finding(FindingKind.STALE_SESSIONS) is not None) is stale
    assert report.sessions[0].idle_days == days


def test_stale_unsigned_session_is_reported_once_as_inactive() -> None:
    report = assess_user(user(device("A"), device("B", signed=False, last_seen_days_ago=200)),
                         POLICY, NOW)
    assert kinds(user(device("A"), device("B", signed=False, last_seen_days_ago=200))) == [
        FindingKind.STALE_SESSIONS]
    assert report.sessions[1].mark is SessionMark.INACTIVE


def test_no_recovery_is_a_finding_of_its_own_identity_or_not() -> None:
    """Current Element makes the identity and the backup by itself: what people lack is
    recovery, and "has cross-signing" does not mean "has recovery"."""
    no_ssss = BackupFacts(BackupState.PRESENT, "1", secret_storage=False)
    report = assess_user(user(device("A"), backup=no_ssss), POLICY, NOW)
    assert [f.kind for f in report.findings] == [FindingKind.NO_SECRET_STORAGE]
    assert report.worst is Severity.HIGH and report.next_guide == "backup"
    assert report.recovery is False
    assert kinds(user(device("A", signed=False), cross_signing=False, backup=no_ssss)) == [
        FindingKind.NO_CROSS_SIGNING, FindingKind.NO_SECRET_STORAGE]


def test_recovery_is_seen_only_with_the_admin_token() -> None:
    with_key = assess_user(user(device("A"), backup=BackupFacts(secret_storage=True)),
                           POLICY, NOW)
    assert with_key.recovery is True and with_key.ok
    unseen = assess_user(user(device("A")), POLICY, NOW)
    assert unseen.recovery is None and unseen.ok  # not visible: no finding, no guess
    assert unseen.finding(FindingKind.NO_SECRET_STORAGE) is None


def test_findings_are_ordered_by_severity() -> None:
    facts = user(device("A", signed=False, last_seen_days_ago=300), device("B", signed=False),
                 backup=BackupFacts(BackupState.ABSENT))
    report = assess_user(facts, POLICY, NOW)
    assert [f.kind for f in report.findings] == [
        FindingKind.NO_BACKUP, FindingKind.UNVERIFIED_SESSIONS, FindingKind.STALE_SESSIONS]
    assert report.next_guide == "backup"


def test_no_recovery_comes_before_no_backup() -> None:
    """Setting up recovery in Element also makes a working backup: the next step is recovery."""
    facts = user(device("A"), backup=BackupFacts(BackupState.ABSENT, secret_storage=False))
    assert kinds(facts) == [FindingKind.NO_SECRET_STORAGE, FindingKind.NO_BACKUP]


def test_unknown_user() -> None:
    report = assess_user(UserFacts("@x:hs", False, False, False, ()), POLICY, NOW)
    assert not report.exists and report.findings == ()


def test_combine_merges_admin_facts_and_defaults_without_them() -> None:
    keys = KeyFacts("@a:hs", True, True, "M", (device("A"),))
    plain = combine(keys, None)
    assert plain.exists and plain.backup.state is BackupState.UNKNOWN
    assert not plain.device_activity_known and plain.devices[0].last_seen_ms is None
    admin = AdminFacts(False, BackupFacts(BackupState.ABSENT), {"A": 42})
    merged = combine(keys, admin)
    assert not merged.exists and merged.backup.state is BackupState.ABSENT
    assert merged.devices[0].last_seen_ms == 42 and merged.device_activity_known


OPT_OUTS = [
    {"m.key_backup": {"enabled": False}},
    {"m.org.matrix.custom.backup_disabled": {"disabled": True}},
    {"io.element.recovery": {"enabled": False}},
]


def opted_out_facts(global_data: dict[str, object]) -> BackupFacts:
    """What the admin probe builds for a user with no backup and no secret storage."""
    from nerbot.matrix.admin import storage_opt_out

    return BackupFacts(BackupState.ABSENT, secret_storage=False,
                       storage_opted_out=storage_opt_out(global_data))


@pytest.mark.parametrize("global_data", OPT_OUTS)
def test_each_opt_out_suppresses_backup_findings_but_keeps_identity(
    global_data: dict[str, object],
) -> None:
    report = assess_user(user(device("A", signed=False), cross_signing=False,
                              backup=opted_out_facts(global_data)), POLICY, NOW)
    assert [f.kind for f in report.findings] == [FindingKind.NO_CROSS_SIGNING]
    assert report.notes == ("backup_opted_out",) and report.inferred == ()


@pytest.mark.parametrize("global_data", OPT_OUTS)
def test_each_opt_out_suppresses_backup_findings_but_keeps_unverified_sessions(
    global_data: dict[str, object],
) -> None:
    facts = user(device("A"), device("B", signed=False), backup=opted_out_facts(global_data))
    report = assess_user(facts, POLICY, NOW)
    assert [f.kind for f in report.findings] == [FindingKind.UNVERIFIED_SESSIONS]
    assert report.next_guide == "verify-sessions" and report.notes == ("backup_opted_out",)


@pytest.mark.parametrize("global_data", [
    {},
    {"m.key_backup": {"enabled": True}},
    {"m.key_backup": {"enabled": "false"}},
    {"m.key_backup": {"enabled": 0}},
    {"m.key_backup": False},
    {"m.key_backup": ["enabled", False]},
    {"m.org.matrix.custom.backup_disabled": {"disabled": False}},
    {"m.org.matrix.custom.backup_disabled": {"disabled": 1}},
    {"m.org.matrix.custom.backup_disabled": "disabled"},
    {"io.element.recovery": {"enabled": None}},
    {"io.element.recovery": {}},
])
def test_malformed_or_other_content_is_not_an_opt_out(global_data: dict[str, object]) -> None:
    report = assess_user(user(device("A"), backup=opted_out_facts(global_data)), POLICY, NOW)
    assert [f.kind for f in report.findings] == [FindingKind.NO_SECRET_STORAGE,
                                                 FindingKind.NO_BACKUP]
    assert report.notes == ()


def test_opt_out_not_known_without_admin_api_changes_nothing() -> None:
    report = assess_user(user(device("A", signed=False), cross_signing=False), POLICY, NOW)
    assert BackupFacts().storage_opted_out is None
    assert report.notes == () and report.inferred == ("backup_likely_absent",)


def test_opt_out_with_unknown_backup_state_makes_no_backup_inference() -> None:
    facts = user(device("A"), backup=BackupFacts(storage_opted_out=True))
    report = assess_user(facts, POLICY, NOW)
    assert report.ok and report.inferred == () and report.notes == ("backup_opted_out",)
