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
    text = render_report(Catalog.load(), "en", report, about_self=True, show_activity=False)
    assert "Send `!guide backup`" in text
    assert text.splitlines()[-1] == "After that: `!guide verify-sessions`."
    zh = render_report(Catalog.load(), "zh", report, about_self=True, show_activity=False)
    assert zh.splitlines()[-1] == "之后：`!guide verify-sessions`。"


def test_a_single_guide_is_not_repeated() -> None:
    facts = UserFacts("@a:hs", True, False, False, (DeviceFacts("A", "x", True, False),))
    report = assess_user(facts, AssessmentPolicy(), 0)
    text = render_report(Catalog.load(), "en", report, about_self=True, show_activity=False)
    assert text.count("!guide") == 1 and "After that" not in text
