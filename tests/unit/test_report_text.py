"""The ``!backup-status`` text: every finding ends with the walkthrough that fixes it."""

from __future__ import annotations

from nerbot.commands.report_text import render_report
from nerbot.domain.assessment import AssessmentPolicy, assess_user
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
