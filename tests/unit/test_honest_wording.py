"""What the bot says matches what it saw: a ✅/❌ states only seen facts; the rest is inference.

Without the admin API (or for someone on another homeserver) the key backup is not visible:
every text the person can get then, the status report, reminders and the walkthrough
checkpoints, must word the backup as not seen or inferred, never put a verdict mark on it.
With the admin-login check the backup is seen, and then the ✅/❌ lines are right to appear.

Recovery (secret storage) likewise: seen only with the admin token. Without it the report says
it cannot see recovery, and the backup guide's checkpoint asks the person to look and confirm
instead of inferring success from the cross-signing identity (which current Element usually
creates by itself, so it says nothing about recovery).

Guide steps are sent before the bot has looked at anything: they state nothing about the
person's identity, backup, recovery, sessions or account as a fact ("Element already created
your identity and a key backup") unless hedged first ("usually", "if", "once").
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from zoneinfo import ZoneInfo

import pytest
from fakes import DmRecorder

from nerbot.commands.guide import GuideConversation
from nerbot.commands.remind import MessageText
from nerbot.commands.report_text import render_report
from nerbot.domain.assessment import AssessmentPolicy, UserReport, assess_user
from nerbot.domain.facts import BackupFacts, BackupState, DeviceFacts, UserFacts
from nerbot.domain.guide import PLATFORMS, Checkpoint, Guide, evaluate_checkpoint, start_guide
from nerbot.domain.reminders import DecisionKind, ReminderDecision
from nerbot.guides import load_library
from nerbot.i18n import LANGUAGES, Catalog
from nerbot.ids import UserId
from nerbot.store import Store

CATALOG = Catalog.load()
LIBRARY = load_library()
LOCAL, REMOTE = UserId("@a:hs"), UserId("@r:far.example")
DAY_MS = 24 * 3600 * 1000
NOW = 400 * DAY_MS

VERDICT_MARKS = ("✅", "❌", "🎉")
# The thing itself, not the name of the setup flow ("secure backup") or of a command.
BACKUP_WORD = {"en": re.compile(r"backup", re.IGNORECASE), "zh": re.compile(r"备份")}
FLOW_NAME = {"en": re.compile(r"secure backup", re.IGNORECASE), "zh": re.compile(r"安全备份")}
CODE_SPAN = re.compile(r"`[^`]*`")
# Recovery itself (not the words "recovery key" in an instruction).
RECOVERY_WORD = {"en": re.compile(r"\brecovery\b(?! key)", re.IGNORECASE),
                 "zh": re.compile(r"恢复(?!密钥)")}
NOT_SEEN = {"en": "not seen", "zh": "直接看到"}
UNSEEN_WORDS = {"en": ("not seen", "cannot see"), "zh": ("直接看到", "看不到")}
INFERRED = {"en": "(inferred, not seen)", "zh": "（推断，并非直接看到）"}


def signed(device_id: str) -> DeviceFacts:
    return DeviceFacts(device_id, f"{device_id} laptop", True, True, NOW - DAY_MS)


def unsigned(device_id: str) -> DeviceFacts:
    return DeviceFacts(device_id, f"{device_id} phone", True, False, NOW - DAY_MS)


NOT_LOOKED_AT = BackupFacts()  # no admin API: state UNKNOWN, nothing about recovery either


def facts(cross_signing: bool, *devices: DeviceFacts, backup: BackupFacts = NOT_LOOKED_AT,
          remote: bool = False, admin: bool = False) -> UserFacts:
    return UserFacts(REMOTE if remote else LOCAL, True, cross_signing, cross_signing,
                     devices, backup, device_activity_known=admin, remote=remote)


# Backup UNKNOWN in every one: no admin API, an admin token without the admin-login check
# (account data seen, the backup itself not), or a person on another homeserver.
UNSEEN = {
    "no identity": facts(False, unsigned("A")),
    "identity, all signed": facts(True, signed("A")),
    "identity, one unverified": facts(True, signed("A"), unsigned("B")),
    "remote, no identity": facts(False, unsigned("A"), remote=True),
    "remote, identity": facts(True, signed("A"), unsigned("B"), remote=True),
    "admin token, no recovery key": facts(True, signed("A"), admin=True,
                                          backup=BackupFacts(secret_storage=False)),
    "admin token, all in order": facts(True, signed("A"), admin=True,
                                       backup=BackupFacts(secret_storage=True)),
}


def seen_backup(state: BackupState, cross_signing: bool = True) -> UserFacts:
    """Facts with the admin-login check: the backup itself was looked at."""
    backup = BackupFacts(state, "3" if state is BackupState.PRESENT else None,
                         secret_storage=True)
    return facts(cross_signing, signed("A"), backup=backup, admin=True)


def assess(f: UserFacts) -> UserReport:
    return assess_user(f, AssessmentPolicy(), NOW)


def lines_without_code(text: str) -> Iterator[str]:
    for line in text.splitlines():
        yield CODE_SPAN.sub("", line)


def says_unseen(line: str, lang: str) -> bool:
    return any(word in line for word in UNSEEN_WORDS[lang])


def claims_backup(line: str, lang: str) -> bool:
    return bool(BACKUP_WORD[lang].search(FLOW_NAME[lang].sub("", line)))


def marked_backup_lines(text: str, lang: str) -> list[str]:
    return [line for line in lines_without_code(text)
            if any(mark in line for mark in VERDICT_MARKS) and claims_backup(line, lang)]


def marked_recovery_lines(text: str, lang: str) -> list[str]:
    """Lines that put a verdict on recovery (a walkthrough's "🎉 Done: <title>" is about the
    walkthrough, not a state, and is left out)."""
    done = CATALOG.t(lang, "guide.finished", mark="🎉", title="")
    return [line for line in lines_without_code(text)
            if any(mark in line for mark in VERDICT_MARKS) and RECOVERY_WORD[lang].search(line)
            and not line.startswith(done.removesuffix("**"))]


class Texts:
    """Everything the person can be sent about their state, in one language."""

    def __init__(self, lang: str, report: UserReport) -> None:
        self.lang, self.report = lang, report
        self.user = UserId(report.user_id)
        self.store = Store(":memory:")
        self.store.set_language(self.user, lang, 0)
        self.store.touch_user(self.user, 0)
        self.conversation = GuideConversation(LIBRARY, self.store, _Fixed(report), DmRecorder(),
                                              CATALOG, lambda: NOW)

    def status(self) -> str:
        return render_report(CATALOG, self.lang, self.report, about_self=True)

    def reminders(self) -> list[str]:
        text = MessageText(CATALOG, self.store, ZoneInfo("Asia/Shanghai"))
        sent = [text.all_good(self.user)]
        if self.report.findings:
            decision = ReminderDecision(DecisionKind.REMIND, "due", self.report.findings)
            sent.append(text.reminder(self.user, decision, self.report))
        return sent

    def checkpoints(self, checkpoint: Checkpoint | None = None, confirmed: bool = False
                    ) -> list[str]:
        """The checkpoint answer of every guide step that has one (or only ``checkpoint``),
        on both platforms."""
        found = []
        for guide in LIBRARY.guides.values():
            progress = start_guide(guide, self.report, 0)
            for step in guide.steps:
                if step.checkpoint is None or checkpoint not in (None, step.checkpoint):
                    continue
                check = evaluate_checkpoint(step.checkpoint, self.report, progress, True,
                                            confirmed)
                for platform in ("web", "mobile"):
                    found.append(self.conversation.check_text(self.user, step, check,
                                                              platform))
        return found

    def finished(self) -> str:
        return self.conversation.finished_text(self.user, LIBRARY.guides["backup"], "",
                                               self.report)

    def everything(self) -> list[str]:
        return [self.status(), *self.reminders(), *self.checkpoints(),
                *self.checkpoints(confirmed=True), self.finished()]


class _Fixed:
    def __init__(self, report: UserReport) -> None:
        self.report = report

    async def assess_one(self, user_id: str, fresh: bool = False) -> UserReport:
        return self.report


@pytest.mark.parametrize("lang", LANGUAGES)
@pytest.mark.parametrize("name", sorted(UNSEEN))
def test_no_verdict_mark_on_a_backup_that_was_not_seen(name: str, lang: str) -> None:
    report = assess(UNSEEN[name])
    assert report.backup is BackupState.UNKNOWN
    for text in Texts(lang, report).everything():
        assert marked_backup_lines(text, lang) == [], text


@pytest.mark.parametrize("lang", LANGUAGES)
@pytest.mark.parametrize("name", sorted(UNSEEN))
def test_an_unseen_backup_is_worded_as_not_seen(name: str, lang: str) -> None:
    report = assess(UNSEEN[name])
    texts = Texts(lang, report)
    status = texts.status()
    backup_lines = [line for line in lines_without_code(status) if claims_backup(line, lang)]
    assert backup_lines and all(says_unseen(line, lang) for line in backup_lines), status
    if not report.cross_signing:
        assert INFERRED[lang] in status
        reminder = texts.reminders()[-1]
        assert INFERRED[lang] in reminder
        assert all(says_unseen(line, lang) for line in lines_without_code(reminder)
                   if claims_backup(line, lang)), reminder


@pytest.mark.parametrize("lang", LANGUAGES)
@pytest.mark.parametrize("name", [n for n in sorted(UNSEEN) if "admin token" not in n])
def test_unseen_recovery_gets_no_mark_and_is_worded_as_not_seen(name: str, lang: str) -> None:
    """No admin token: recovery is not visible, whatever the identity shows."""
    report = assess(UNSEEN[name])
    assert report.recovery is None
    texts = Texts(lang, report)
    for text in texts.everything():
        assert marked_recovery_lines(text, lang) == [], text
    recovery_lines = [line for line in lines_without_code(texts.status())
                      if line.startswith("❔") and RECOVERY_WORD[lang].search(line)]
    assert len(recovery_lines) == 1 and says_unseen(recovery_lines[0], lang), texts.status()


@pytest.mark.parametrize("lang", LANGUAGES)
def test_the_recovery_checkpoint_asks_instead_of_inferring(lang: str) -> None:
    """The issue's case: no admin token, the person has just set up recovery; the identity is
    there (current Element made it by itself). No ✅ from it: the bot says it cannot see
    recovery and asks the person to look and confirm; their confirmation passes the step,
    worded as theirs."""
    for name in ("identity, all signed", "no identity"):
        texts = Texts(lang, assess(UNSEEN[name]))
        for asked in texts.checkpoints(Checkpoint.RECOVERY):
            first = asked.split("\n\n")[0]
            assert first.startswith("❔") and NOT_SEEN[lang] in first
            assert not any(m in asked for m in VERDICT_MARKS) and "`!next confirm`" in asked
            assert CATALOG.t(lang, "guide.check.no_identity") not in asked
        for confirmed in texts.checkpoints(Checkpoint.RECOVERY, confirmed=True):
            assert not any(m in confirmed for m in VERDICT_MARKS)
            assert NOT_SEEN[lang] in confirmed.split("\n\n")[-1]


@pytest.mark.parametrize("lang", LANGUAGES)
@pytest.mark.parametrize(("recovery", "mark"), [(True, "✅"), (False, "❌")])
def test_seen_recovery_gets_its_verdict_mark(recovery: bool, mark: str, lang: str) -> None:
    """With the admin token recovery is seen: the report and the checkpoint mark it."""
    facts_ = facts(True, signed("A"), admin=True, backup=BackupFacts(secret_storage=recovery))
    texts = Texts(lang, assess(facts_))
    status_lines = marked_recovery_lines(texts.status(), lang)
    assert status_lines and {line[0] for line in status_lines} == {mark}, texts.status()
    for checkpoint in texts.checkpoints(Checkpoint.RECOVERY):
        assert checkpoint.startswith(mark) and NOT_SEEN[lang] not in checkpoint
        assert "!next confirm" not in checkpoint


@pytest.mark.parametrize("lang", LANGUAGES)
@pytest.mark.parametrize(("state", "mark"), [(BackupState.PRESENT, "✅"),
                                             (BackupState.ABSENT, "❌")])
def test_a_seen_backup_gets_its_verdict_mark(state: BackupState, mark: str, lang: str) -> None:
    report = assess(seen_backup(state))
    texts = Texts(lang, report)
    status_lines = marked_backup_lines(texts.status(), lang)
    assert any(line.startswith(mark) for line in status_lines), texts.status()
    for checkpoint in texts.checkpoints(Checkpoint.RECOVERY):  # recovery is set up (seen)
        assert checkpoint.startswith(mark), checkpoint
        if state is BackupState.ABSENT:  # recovery without a backup: not complete
            assert claims_backup(checkpoint.split("\n\n")[1], lang)
        assert INFERRED[lang] not in checkpoint and NOT_SEEN[lang] not in checkpoint
    assert INFERRED[lang] not in texts.status() and NOT_SEEN[lang] not in texts.status()
    if state is BackupState.PRESENT:  # all in order, the backup included: all may be said
        assert texts.status().splitlines()[-1] == CATALOG.t(lang, "status.all_good", mark="🎉")


@pytest.mark.parametrize("lang", LANGUAGES)
def test_all_good_claims_the_backup_only_when_it_was_seen(lang: str) -> None:
    unseen = Texts(lang, assess(UNSEEN["identity, all signed"])).status().splitlines()[-1]
    assert unseen == CATALOG.t(lang, "status.all_good_backup_unseen", mark="✅")
    assert not claims_backup(unseen, lang)
    reminder_all_good = CATALOG.t(lang, "remind.all_good", mark="🎉")
    assert not claims_backup(reminder_all_good, lang)  # sent without knowing what was seen


@pytest.mark.parametrize("lang", LANGUAGES)
def test_a_missing_identity_reminder_does_not_claim_a_missing_recovery_key(lang: str) -> None:
    line = CATALOG.t(lang, "remind.problem.no_cross_signing", mark="⚠️", since="2026-01-01")
    assert not claims_backup(line, lang)
    assert ("recovery key" if lang == "en" else "恢复密钥") not in line
    # With the backup seen, the reminder says nothing about it being missing.
    report = assess(seen_backup(BackupState.PRESENT, cross_signing=False))
    reminder = Texts(lang, report).reminders()[-1]
    assert INFERRED[lang] not in reminder


def test_inference_wording_is_the_same_in_both_languages() -> None:
    en, zh = CATALOG.messages["en"], CATALOG.messages["zh"]
    inferred = {key for key, text in en.items() if INFERRED["en"] in text}
    assert inferred == {key for key, text in zh.items() if INFERRED["zh"] in text}
    assert {"status.backup_unknown_likely_absent", "remind.inferred.backup_likely_absent"} \
        <= inferred
    # Nothing is inferred about recovery any more: it is seen, or said to be unseen.
    assert not any(key.startswith("guide.") for key in inferred)
    not_seen = {key for key, text in en.items() if "not seen" in text}
    assert not_seen == {key for key, text in zh.items() if NOT_SEEN["zh"] in text}


# -- guide texts: nothing about the account stated as a fact the bot has not seen ---------------

# A sentence about the person's identity, backup, recovery (not "recovery key": that is the
# thing in their hands), sessions or account, saying what is already so or what Element did
# by itself, is a statement of fact about their account.
ACCOUNT_SUBJECT = {
    "en": re.compile(r"\b(identity|backup|sessions?|account)\b|\brecovery\b(?! key)",
                     re.IGNORECASE),
    "zh": re.compile(r"身份|备份|会话|账号|恢复(?!密钥)"),
}
ACCOUNT_STATE = {
    "en": re.compile(r"\b(already|by itself|automatically|now|created|made)\b", re.IGNORECASE),
    "zh": re.compile(r"已经|自动|创建"),
}
# ... unless something before it makes it a condition or a likelihood.
HEDGE = {
    "en": re.compile(r"\b(if|usually|may|might|once|when|should|whether|until)\b|\?",
                     re.IGNORECASE),
    "zh": re.compile(r"如果|通常|一般|可能|要是|的话|一旦|之后|应该|不管|直到|？"),
}
SENTENCE = {"en": re.compile(r"(?<=[.!?:;])\s+|\n+"), "zh": re.compile(r"(?<=[。！？；：])|\n+")}


def unseen_claims(text: str, lang: str) -> list[str]:
    """The sentences of ``text`` that state a fact about the account without a hedge first."""
    found = []
    for sentence in SENTENCE[lang].split(CODE_SPAN.sub("", text)):
        state = ACCOUNT_STATE[lang].search(sentence)
        if state and ACCOUNT_SUBJECT[lang].search(sentence) and not HEDGE[lang].search(
                sentence[:state.start()]):
            found.append(sentence)
    return found


def summary_rests_on_a_seen_check(guide: Guide) -> bool:
    """The summary is sent once the guide's checkpoints passed; it may state what they saw
    only when the bot sees every one of them (never on the person's word alone)."""
    return bool(guide.checkpoints) and not any(c.may_be_unseen for c in guide.checkpoints)


def guide_texts(lang: str) -> Iterator[tuple[str, str]]:
    """What a guide says before (or without) seeing the account: every step on every platform,
    the hints for what the bot cannot see, and the summaries no seen check stands behind."""
    for guide in LIBRARY.guides.values():
        if not summary_rests_on_a_seen_check(guide):
            yield f"{guide.name}.summary", guide.summary[lang]
        for step in guide.steps:
            for platform in PLATFORMS:
                yield f"{guide.name}.{step.id}.{platform}", step.body(lang, platform)
                yield f"{guide.name}.{step.id}.hint.{platform}", step.hint(lang, platform)


@pytest.mark.parametrize("lang", LANGUAGES)
def test_guide_steps_state_no_unseen_fact_about_the_account(lang: str) -> None:
    found = {where: claims for where, text in guide_texts(lang)
             if (claims := unseen_claims(text, lang))}
    assert found == {}


@pytest.mark.parametrize(("lang", "claim", "honest"), [
    ("en", "Current Element already created your identity and a key backup by itself when you "
           "first signed in, but without a recovery key that backup cannot be opened.",
     "Current Element usually creates your identity and a key backup by itself when you first "
     "sign in; if yours did, that backup still cannot be opened without a recovery key."),
    ("zh", "新版 Element 在你第一次登录时已经自动创建了你的身份和密钥备份，但如果没有恢复密钥，"
           "这份备份就再也打不开了。",
     "新版 Element 通常会在你第一次登录时自动创建你的身份和密钥备份；如果你的也是这样，没有恢复"
     "密钥，这份备份就打不开了。"),
    ("en", "You and the other person have signed each other: your session is now verified.",
     "If you both confirmed that the emoji match, your session is now verified."),
])
def test_the_check_tells_a_stated_fact_from_a_hedged_one(lang: str, claim: str, honest: str
                                                        ) -> None:
    """The backup guide's old "why" step (the audit's case) is caught; its rewording is not."""
    assert unseen_claims(claim, lang)
    assert unseen_claims(honest, lang) == []


def test_only_summaries_behind_seen_checks_are_spared() -> None:
    spared = {g.name for g in LIBRARY.guides.values() if summary_rests_on_a_seen_check(g)}
    assert spared == {"new-device", "verify-sessions", "practice"}  # not backup, verify-user
