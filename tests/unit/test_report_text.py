"""The ``!backup-status`` text: every finding ends with the walkthrough that fixes it."""

from __future__ import annotations

from nerbot.commands.report_text import render_report
from nerbot.domain.assessment import AssessmentPolicy, UserReport, assess_user
from nerbot.domain.facts import BackupFacts, BackupState, DeviceFacts, UserFacts
from nerbot.i18n import Catalog


def test_each_needed_guide_is_named_once_most_severe_first() -> None:
    facts = UserFacts("@a:hs", True, True, True,
                      (DeviceFacts("A", "laptop", True, True),
                       DeviceFacts("B", "old", True, False)),
                      BackupFacts(BackupState.ABSENT))
    report = assess_user(facts, AssessmentPolicy(), 0)
    text = render_report(Catalog.load(), "en", report, about_self=True)
    assert "Send `!guide backup`" in text
    assert text.splitlines()[-1] == "After that: `!guide verify-sessions`."
    zh = render_report(Catalog.load(), "zh", report, about_self=True)
    assert zh.splitlines()[-1] == "之后：`!guide verify-sessions`。"


def test_a_single_guide_is_not_repeated() -> None:
    facts = UserFacts("@a:hs", True, False, False, (DeviceFacts("A", "x", True, False),))
    report = assess_user(facts, AssessmentPolicy(), 0)
    text = render_report(Catalog.load(), "en", report, about_self=True)
    assert text.count("!guide") == 1 and "After that" not in text


def test_remote_report_says_what_is_seen_and_what_cannot_be() -> None:
    facts = UserFacts("@r:far.example", True, True, True,
                      (DeviceFacts("A", "laptop", True, True),
                       DeviceFacts("B", "phone", True, False)), remote=True)
    report = assess_user(facts, AssessmentPolicy(), 0)
    catalog = Catalog.load()
    en = render_report(catalog, "en", report, about_self=True)
    assert "kept on your own homeserver, far.example (not seen)" in en
    assert "You are on another homeserver (far.example)" in en
    assert "What I cannot see: your key backup, your recovery key and when each session was " \
           "last used" in en
    assert "`B` phone — **not verified**" in en  # sessions still shown: federation has them
    assert catalog.t("en", "status.activity_source") not in en
    zh = render_report(catalog, "zh", report, about_self=True)
    assert "你的账号在另一个服务器上（far.example）" in zh and "我看不到的" in zh
    local = render_report(catalog, "en", assess_user(
        UserFacts("@a:hs", True, True, True, (DeviceFacts("A", "x", True, True),)),
        AssessmentPolicy(), 0), about_self=True)
    assert "another homeserver" not in local and "on this server (not seen)" in local


def recovery_report(recovery: bool | None, remote: bool = False,
                    cross_signing: bool = True) -> UserReport:
    facts = UserFacts("@r:far.example" if remote else "@a:hs", True, cross_signing,
                      cross_signing, (DeviceFacts("A", "laptop", True, cross_signing),),
                      BackupFacts(secret_storage=recovery), device_activity_known=not remote,
                      remote=remote)
    return assess_user(facts, AssessmentPolicy(), 0)


def test_recovery_has_its_own_line_right_after_the_identity() -> None:
    catalog = Catalog.load()
    for lang, missing, unknown in (("en", "Recovery: **not set up**", "Recovery (recovery key)"),
                                   ("zh", "恢复：**未设置**", "恢复（恢复密钥）")):
        seen = render_report(catalog, lang, recovery_report(True), about_self=True)
        assert seen.splitlines()[3].startswith("✅")
        assert seen.splitlines()[-1] == catalog.t(lang, "status.all_good_recovery_seen",
                                                  mark="✅")
        absent = render_report(catalog, lang, recovery_report(False), about_self=True)
        assert absent.splitlines()[3].startswith("❌") and missing in absent.splitlines()[3]
        assert "`!guide backup`" in absent.splitlines()[-1]
        # With an identity (current Element made it): recovery is still the one finding.
        assert recovery_report(False).next_guide == "backup"
        unseen = render_report(catalog, lang, recovery_report(None), about_self=True)
        line = unseen.splitlines()[3]
        assert line.startswith("❔") and unknown in line and "!guide" not in line


def test_unseen_recovery_points_to_the_encryption_tab_with_todays_labels() -> None:
    catalog = Catalog.load()
    en = render_report(catalog, "en", recovery_report(None), about_self=True)
    assert "**All settings** → **Encryption**" in en and "**Get recovery key**" in en
    assert "Secure Backup" not in en and "Security →" not in en
    zh = render_report(catalog, "zh", recovery_report(None), about_self=True)
    # The Encryption tab was untranslated in 2025 builds: the English comes in brackets.
    assert "**加密**（Encryption）" in zh and "**获取恢复密钥**（Get recovery key）" in zh
    remote = render_report(catalog, "en", recovery_report(None, remote=True), about_self=True)
    assert "kept on your own homeserver, far.example (not seen)" in remote.splitlines()[3]
