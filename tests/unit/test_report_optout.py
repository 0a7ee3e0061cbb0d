"""``!backup-status`` for someone who turned key storage off: said why, never scolded."""

from __future__ import annotations

import pytest

from nerbot.commands.report_text import render_report
from nerbot.domain.assessment import AssessmentPolicy, UserReport, assess_user
from nerbot.domain.facts import BackupFacts, BackupState, DeviceFacts, UserFacts
from nerbot.i18n import Catalog

CATALOG = Catalog.load()
OPTED_OUT_LINE = {
    "en": "You turned key storage off in your client on purpose (seen in your account data), "
          "so I won't remind you about backup.",
    "zh": "你在客户端里特意关闭了密钥存储（这是在你的账号数据里看到的），所以我不会再提醒你备份。",
}
BACKUP_OFF = {"en": "Key backup: **off**", "zh": "密钥备份：**未开启**"}
ALL_GOOD = {"en": "Everything looks good", "zh": "一切正常"}


def report(opted_out: bool | None, state: BackupState = BackupState.ABSENT,
           cross_signing: bool = True, *devices: DeviceFacts) -> UserReport:
    facts = UserFacts("@a:hs", True, cross_signing, cross_signing,
                      devices or (DeviceFacts("A", "laptop", True, cross_signing),),
                      BackupFacts(state, "7" if state is BackupState.PRESENT else None,
                                  secret_storage=False, storage_opted_out=opted_out),
                      device_activity_known=True)  # backup facts come with the admin API
    return assess_user(facts, AssessmentPolicy(), 0)


def render(lang: str, r: UserReport) -> str:
    return render_report(CATALOG, lang, r, about_self=True)


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_opted_out_line_replaces_backup_off_and_no_backup_step(lang: str) -> None:
    text = render(lang, report(True))
    lines = text.splitlines()
    opted = next(i for i, line in enumerate(lines) if OPTED_OUT_LINE[lang] in line)
    assert opted == 3  # title, blank, identity, then this instead of the backup line
    assert BACKUP_OFF[lang] not in text and "!guide backup" in lines[opted]
    assert sum("!guide backup" in line for line in lines) == 1
    # nothing else to fix, yet "all good" would claim the backup is in order
    assert ALL_GOOD[lang] not in text and lines[-1] == CATALOG.t(lang, "status.activity_source")


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_without_opt_out_backup_is_still_flagged(lang: str) -> None:
    for opted_out in (None, False):
        text = render(lang, report(opted_out))
        assert BACKUP_OFF[lang] in text and OPTED_OUT_LINE[lang] not in text
        assert "`!guide backup`" in text.splitlines()[-1]


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_opted_out_keeps_other_findings_as_next_step(lang: str) -> None:
    r = report(True, BackupState.ABSENT, True, DeviceFacts("A", "laptop", True, True),
               DeviceFacts("B", "old", True, False))
    text = render(lang, r)
    assert OPTED_OUT_LINE[lang] in text and BACKUP_OFF[lang] not in text
    assert text.splitlines()[-1].endswith(
        CATALOG.t(lang, "status.next_step", what=CATALOG.t(
            lang, "finding.unverified_sessions", devices="B"), guide="verify-sessions"))


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_opted_out_without_identity_still_asks_for_identity(lang: str) -> None:
    text = render(lang, report(True, BackupState.UNKNOWN, False))
    assert OPTED_OUT_LINE[lang] in text
    assert CATALOG.t(lang, "status.backup_unknown_likely_absent", mark="")[1:] not in text
    assert "`!guide backup`" in text.splitlines()[-1]


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_live_backup_still_shown_next_to_the_opt_out(lang: str) -> None:
    text = render(lang, report(True, BackupState.PRESENT))
    lines = text.splitlines()
    present = CATALOG.t(lang, "status.backup_present", mark="", version="7")[1:]
    assert lines[3].endswith(present) and OPTED_OUT_LINE[lang] in lines[4]
