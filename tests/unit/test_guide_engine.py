"""The walkthrough engine: pure transitions and checkpoints, then the conversation over fakes."""

from __future__ import annotations

import dataclasses

import pytest
from fakes import DmRecorder

from nerbot.commands.guide import GuideConversation
from nerbot.commands.registry import IncomingText
from nerbot.domain.assessment import AssessmentPolicy, UserReport, assess_user
from nerbot.domain.facts import BackupFacts, BackupState, DeviceFacts, UserFacts
from nerbot.domain.guide import (
    Checkpoint,
    CheckReason,
    GuideDataError,
    GuideProgress,
    Move,
    Unseen,
    clamp,
    evaluate_checkpoint,
    guess_platform,
    means_confirm,
    means_next,
    next_step,
    parse_guide,
    previous_step,
    start_guide,
    suggest_guide,
)
from nerbot.guides import load_library
from nerbot.i18n import Catalog
from nerbot.ids import EventId, RoomId, UserId
from nerbot.store import Store

ALICE = UserId("@alice:hs")
LIBRARY = load_library()
BACKUP = LIBRARY.guides["backup"]


def dev(device_id: str, signed: bool = True, name: str | None = None) -> DeviceFacts:
    return DeviceFacts(device_id, name or f"name {device_id}", True, signed)


def report(*devices: DeviceFacts, cross_signing: bool = True,
           backup: BackupState = BackupState.UNKNOWN, recovery: bool | None = None,
           remote: bool = False) -> UserReport:
    facts = UserFacts(ALICE, True, cross_signing, cross_signing, devices,
                      BackupFacts(backup, "1" if backup is BackupState.PRESENT else None,
                                  secret_storage=recovery), remote=remote)
    return assess_user(facts, AssessmentPolicy(), 0)


def progress(step: int = 0, signed: tuple[str, ...] = (), known: tuple[str, ...] = ()
             ) -> GuideProgress:
    return GuideProgress("backup", step, 0, 0, frozenset(signed), frozenset(known))


# -- pure decisions ------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["done", "Done.", " next ", "好了", "好了！", "完成", "下一步",
                                  "完成了。", "NEXT!"])
def test_done_words_mean_next(text: str) -> None:
    assert means_next(text)


@pytest.mark.parametrize("text", ["", "not done", "done?x", "好", "hello", "!next", "nextly"])
def test_other_text_does_not(text: str) -> None:
    assert not means_next(text)


@pytest.mark.parametrize("text", ["confirm", "Confirmed.", "确认", "已确认！", " 我确认 "])
def test_confirm_words(text: str) -> None:
    assert means_confirm(text) and not means_next(text)


@pytest.mark.parametrize("text", ["done", "好了", "confirm it", "不确认", ""])
def test_other_text_is_no_confirmation(text: str) -> None:
    assert not means_confirm(text)


def test_steps_move_forward_back_and_finish() -> None:
    p = progress()
    out = next_step(BACKUP, p, None, now_ms=5)
    assert out.move is Move.ADVANCED and out.progress is not None
    assert out.progress.step == 1 and out.progress.updated_ms == 5
    assert previous_step(out.progress, 6).progress == dataclasses.replace(
        out.progress, step=0, updated_ms=6)
    assert previous_step(p, 7).move is Move.AT_START
    last = progress(step=len(BACKUP.steps) - 1)
    passed = evaluate_checkpoint(Checkpoint.RECOVERY, report(dev("A"), recovery=True), last)
    finished = next_step(BACKUP, last, passed, now_ms=8)
    assert finished.move is Move.FINISHED and finished.progress is None


def test_a_checkpoint_step_never_advances_without_a_passed_check() -> None:
    finish = next(i for i, s in enumerate(BACKUP.steps) if s.checkpoint is Checkpoint.RECOVERY)
    p = progress(step=finish)
    assert next_step(BACKUP, p, None, 1).move is Move.STAYED
    for unfinished in (report(dev("A"), recovery=False), report(dev("A"))):
        failed = evaluate_checkpoint(Checkpoint.RECOVERY, unfinished, p)
        out = next_step(BACKUP, p, failed, 1)
        assert out.move is Move.STAYED and out.progress == p and out.check == failed


def test_recovery_checkpoint_checks_recovery_itself() -> None:
    """The backup guide's last step: recovery (secret storage) with the admin token, the key
    backup behind it with the admin-login check; never cross-signing."""
    p = progress()
    seen = evaluate_checkpoint(Checkpoint.RECOVERY, report(recovery=True), p)
    assert seen.passed and seen.reason is CheckReason.RECOVERY_SET_UP and seen.seen
    both = evaluate_checkpoint(Checkpoint.RECOVERY,
                               report(recovery=True, backup=BackupState.PRESENT), p)
    assert both.passed and both.reason is CheckReason.RECOVERY_SET_UP
    no_backup = evaluate_checkpoint(Checkpoint.RECOVERY,
                                    report(recovery=True, backup=BackupState.ABSENT), p)
    assert not no_backup.passed and no_backup.reason is CheckReason.BACKUP_ABSENT
    missing = evaluate_checkpoint(Checkpoint.RECOVERY, report(recovery=False), p)
    assert not missing.passed and missing.reason is CheckReason.NO_RECOVERY and missing.seen
    # A confirmation changes nothing where the server shows the answer.
    assert evaluate_checkpoint(Checkpoint.RECOVERY, report(recovery=False), p,
                               confirmed=True) == missing
    # Recovery exists without a cross-signing identity (an old client): recovery is the subject.
    assert evaluate_checkpoint(Checkpoint.RECOVERY,
                               report(cross_signing=False, recovery=True), p).passed


def test_unseen_recovery_asks_the_person_and_never_infers_from_cross_signing() -> None:
    p = progress()
    for identity in (True, False):
        asked = evaluate_checkpoint(Checkpoint.RECOVERY, report(cross_signing=identity), p)
        assert not asked.passed and not asked.seen
        assert asked.reason is CheckReason.RECOVERY_NOT_VISIBLE
        assert asked.unseen is Unseen.ASK_CONFIRM
        confirmed = evaluate_checkpoint(Checkpoint.RECOVERY, report(cross_signing=identity), p,
                                        confirmed=True)
        assert confirmed.passed and confirmed.unseen is Unseen.CONFIRMED
    remote = evaluate_checkpoint(Checkpoint.RECOVERY, report(remote=True), p)
    assert remote.reason is CheckReason.RECOVERY_NOT_VISIBLE_REMOTE and not remote.seen
    # The other checkpoints look at what they judge: always seen, a confirmation is ignored.
    for checkpoint in (Checkpoint.SESSIONS_VERIFIED, Checkpoint.NEW_SESSION_SIGNED,
                       Checkpoint.BOT_VERIFIED):
        for r in (report(), report(cross_signing=False), report(dev("A", False))):
            assert evaluate_checkpoint(checkpoint, r, p).seen
            assert evaluate_checkpoint(checkpoint, r, p, confirmed=True) == \
                evaluate_checkpoint(checkpoint, r, p)


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_unseen_recovery_gets_no_verdict_mark_and_asks_to_confirm(lang: str) -> None:
    conv, store, _, _ = conversation(report())
    store.set_language(ALICE, lang, 0)
    finish = next(s for s in BACKUP.steps if s.checkpoint is Checkpoint.RECOVERY)
    not_seen = {"en": "(not seen)", "zh": "（未直接看到）"}[lang]
    for platform in ("web", "mobile"):
        asked = conv.check_text(ALICE, finish, evaluate_checkpoint(
            Checkpoint.RECOVERY, report(), progress()), platform)
        assert not any(m in asked for m in ("✅", "❌"))
        assert finish.check_failed[lang] not in asked and not_seen in asked
        assert asked.startswith("❔") and finish.hint(lang, platform) in asked
        assert "`!next confirm`" in asked
        confirmed = conv.check_text(ALICE, finish, evaluate_checkpoint(
            Checkpoint.RECOVERY, report(), progress(), confirmed=True), platform)
        assert not any(m in confirmed for m in ("✅", "❌"))
        assert finish.check_passed[lang] not in confirmed and not_seen in confirmed
    for recovery, backup, mark in ((True, BackupState.UNKNOWN, "✅"),
                                   (True, BackupState.PRESENT, "✅"),
                                   (False, BackupState.UNKNOWN, "❌"),
                                   (True, BackupState.ABSENT, "❌")):
        check = evaluate_checkpoint(Checkpoint.RECOVERY,
                                    report(recovery=recovery, backup=backup), progress())
        texts = finish.check_passed if check.passed else finish.check_failed
        text = conv.check_text(ALICE, finish, check, "web")
        assert text.startswith(texts[lang]) and texts[lang].startswith(mark)
        assert not_seen not in text and "!next confirm" not in text


def test_new_session_signed_names_the_session_that_changed() -> None:
    p = progress(signed=("OLD",), known=("OLD",))
    unsigned = report(dev("OLD"), dev("NEW", signed=False))
    result = evaluate_checkpoint(Checkpoint.NEW_SESSION_SIGNED, unsigned, p)
    assert not result.passed and result.reason is CheckReason.STILL_UNVERIFIED
    assert [d.device_id for d in result.devices] == ["NEW"]
    signed = evaluate_checkpoint(Checkpoint.NEW_SESSION_SIGNED, report(dev("OLD"), dev("NEW")),
                                 p)
    assert signed.passed and signed.reason is CheckReason.NEWLY_SIGNED
    assert [d.device_id for d in signed.devices] == ["NEW"]
    # A session that was there unsigned at the start and got signed counts too.
    p2 = progress(signed=("OLD",), known=("OLD", "NEW"))
    assert evaluate_checkpoint(Checkpoint.NEW_SESSION_SIGNED, report(dev("OLD"), dev("NEW")),
                               p2).reason is CheckReason.NEWLY_SIGNED
    # Nothing changed but everything is signed (done before the guide began): passes.
    p3 = progress(signed=("OLD", "NEW"), known=("OLD", "NEW"))
    assert evaluate_checkpoint(Checkpoint.NEW_SESSION_SIGNED, report(dev("OLD"), dev("NEW")),
                               p3).reason is CheckReason.ALL_SIGNED
    no_identity = evaluate_checkpoint(Checkpoint.NEW_SESSION_SIGNED,
                                      report(dev("A", False), cross_signing=False), p)
    assert no_identity.reason is CheckReason.NO_IDENTITY


def test_sessions_verified_and_bot_verified() -> None:
    p = progress()
    bad = evaluate_checkpoint(Checkpoint.SESSIONS_VERIFIED, report(dev("A"), dev("B", False)), p)
    assert not bad.passed and [d.device_id for d in bad.devices] == ["B"]
    assert evaluate_checkpoint(Checkpoint.SESSIONS_VERIFIED, report(dev("A")), p).passed
    assert evaluate_checkpoint(Checkpoint.BOT_VERIFIED, report(), p, verified_with_bot=True
                               ).passed
    assert not evaluate_checkpoint(Checkpoint.BOT_VERIFIED, report(), p).passed


def test_start_records_the_session_baseline() -> None:
    started = start_guide(BACKUP, report(dev("A"), dev("B", False)), now_ms=42)
    assert started.step == 0 and started.started_ms == 42
    assert started.signed_at_start == {"A"} and started.known_at_start == {"A", "B"}
    assert start_guide(BACKUP, None, 1).known_at_start == frozenset()


def test_suggestion_platform_guess_and_clamp() -> None:
    assert suggest_guide(report(dev("A", False), cross_signing=False)) == "backup"
    assert suggest_guide(report(dev("A"), dev("B", False))) == "verify-sessions"
    assert suggest_guide(report(dev("A"))) == "practice" and suggest_guide(None) == "practice"
    assert guess_platform([dev("A", name="Element X on iPhone")]) == "mobile"
    assert guess_platform([dev("A", name="Element X on iPhone"),
                           dev("B", name="app.element.io: Firefox on Linux")]) == "web"
    assert guess_platform([]) == "web"
    assert clamp(BACKUP, progress(step=99)).step == len(BACKUP.steps) - 1


# Each guide's step ids before the 2026 split into one action per step. Progress saved before
# step IDs were stored (migration 0011) has only its position (``guide_progress.step``), so a
# person who saved position j in the old list resumes at position j of the new one.
BEFORE_SPLIT = {
    "backup": ("why", "open-settings", "open-encryption", "start-recovery", "show-key",
               "save-key", "finish"),
    "new-device": ("sign-in", "never-cant-confirm", "use-key", "use-other-device",
                   "accept-on-old", "compare-emoji", "check-signed", "wait-for-history"),
    "verify-sessions": ("open-sessions", "shields", "verify-yours", "accept-there",
                        "remove-others", "change-password", "check-sessions"),
    "verify-user": ("second-channel", "open-person", "start", "they-accept", "compare-emoji",
                    "no-strangers", "no-reset"),
    "practice": ("send-verify", "compare", "result"),
}


@pytest.mark.parametrize("name", sorted(BEFORE_SPLIT))
def test_a_position_saved_before_the_split_resumes_at_or_before_its_step(name: str) -> None:
    """The split only inserted steps: every old id is still there, in the old order, with its
    checkpoint, so a saved position resumes on the step the person was on or an earlier one
    (a step repeated, never one skipped); a position past the end lands on the last step."""
    guide = LIBRARY.guides[name]
    ids = [step.id for step in guide.steps]
    old = BEFORE_SPLIT[name]
    assert set(old) <= set(ids), "a step id saved progress may mean was dropped"
    positions = [ids.index(step_id) for step_id in old]
    assert positions == sorted(positions) and len(ids) > len(old)
    for saved, step_id in enumerate(old):
        stored = GuideProgress(name, saved, 0, 0)
        assert clamp(guide, stored).step <= ids.index(step_id), step_id
    checkpointed = [step.id for step in guide.steps if step.checkpoint is not None]
    assert set(checkpointed) <= set(old)  # the checks stayed on the steps they check
    past_end = clamp(guide, GuideProgress(name, len(ids) + 3, 0, 0))
    assert past_end.step == len(ids) - 1


async def test_a_guide_edited_between_two_visits_resumes_at_the_same_step() -> None:
    """Progress is stored with its step's ID: steps inserted before it, or the ones around it
    removed, move nobody. Rows without an ID (written before IDs were stored) and IDs an
    update removed resume by position."""
    conv, store, _, _ = conversation(report(dev("A"), recovery=False))
    await conv.begin(ALICE, "backup")
    await conv.next(ALICE)
    await conv.next(ALICE)
    stored = store.get_guide_progress(ALICE)
    assert stored is not None and stored.step == 2
    assert stored.step_id == BACKUP.steps[2].id
    intro = dataclasses.replace(BACKUP.steps[0], id="new-intro")
    edited = dataclasses.replace(BACKUP, steps=(intro, *BACKUP.steps))
    assert clamp(edited, stored).step == 3 and edited.steps[3].id == stored.step_id
    shorter = dataclasses.replace(BACKUP, steps=BACKUP.steps[:1] + BACKUP.steps[2:])
    assert shorter.steps[clamp(shorter, stored).step].id == stored.step_id
    assert clamp(edited, dataclasses.replace(stored, step_id=None)).step == 2  # an old row
    gone = dataclasses.replace(BACKUP, steps=BACKUP.steps[:2] + BACKUP.steps[3:])
    assert clamp(gone, stored).step == 2  # its step was removed: the same position
    await conv.back(ALICE)
    back = store.get_guide_progress(ALICE)
    assert back is not None and back.step_id == BACKUP.steps[1].id


def test_library_lookup_and_close_match() -> None:
    assert LIBRARY.names[0] == "backup" and len(LIBRARY.names) == 5
    assert LIBRARY.get(" Backup ") is BACKUP and LIBRARY.get("nope") is None
    assert LIBRARY.close_match("bakup") == "backup"
    assert LIBRARY.close_match("new-devcie") == "new-device"
    assert LIBRARY.close_match("zzzz") is None


def test_malformed_guide_data_is_refused_at_load() -> None:
    good = {"name": "x", "title": {"zh": "标题", "en": "T"}, "summary": {"zh": "总", "en": "S"},
            "footer": {"zh": "脚", "en": "F"},
            "steps": [{"id": "a", "checkpoint": "", "zh": {"all": "中"}, "en": {"all": "E"}}]}
    assert parse_guide(good).steps[0].body("en", "web") == "E"
    broken = [
        {**good, "steps": []},
        {**good, "title": {"en": "only English"}},
        {**good, "steps": [{**good["steps"][0], "checkpoint": "moon_phase"}]},
        {**good, "steps": [{**good["steps"][0], "en": {"web": "only web"}}]},
        {k: v for k, v in good.items() if k != "name"},
    ]
    for raw in broken:
        with pytest.raises(GuideDataError):
            parse_guide(raw)


# -- the conversation, over an in-memory store and fakes ------------------------------------


class Hygiene:
    def __init__(self, current: UserReport) -> None:
        self.current = current
        self.fresh_calls = 0

    async def assess_one(self, user_id: str, fresh: bool = False) -> UserReport:
        self.fresh_calls += fresh
        return self.current


def conversation(current: UserReport) -> tuple[GuideConversation, Store, Hygiene, DmRecorder]:
    store, hygiene, messenger = Store(":memory:"), Hygiene(current), DmRecorder()
    store.set_language(ALICE, "en", 0)
    return (GuideConversation(LIBRARY, store, hygiene, messenger, Catalog.load(), lambda: 100),
            store, hygiene, messenger)


async def test_conversation_checks_fresh_and_keeps_progress_in_the_store() -> None:
    conv, store, hygiene, _ = conversation(report(dev("A"), recovery=False))
    first = await conv.begin(ALICE, "backup")
    total = len(BACKUP.steps)
    assert first.startswith(f"**Set up recovery** · step 1 of {total}")
    assert "!platform" not in first  # same text on every platform: no hint
    second = await conv.next(ALICE)
    assert "Steps for Element Web" in second and "!platform mobile" in second  # guessed
    for _ in range(total - 2):
        await conv.next(ALICE)
    before = hygiene.fresh_calls
    stayed = await conv.next(ALICE)
    assert hygiene.fresh_calls == before + 1  # the checkpoint bypassed the cache
    assert "❌ Recovery is not complete yet." in stayed and "**no recovery**" in stayed
    assert "**Finish set up**" in stayed  # a client label, from the label file
    saved = store.get_guide_progress(ALICE)
    assert saved is not None and saved.step == total - 1
    # Seen on the server: the person's word changes nothing.
    assert "stay on this step" in await conv.next(ALICE, confirmed=True)
    hygiene.current = report(dev("A"), recovery=True)
    done = await conv.next(ALICE)
    assert "✅ Recovery is set up for your account." in done and "**Done: Set up recovery**" in done
    assert store.get_guide_progress(ALICE) is None
    await conv.begin(ALICE, "backup")
    other = await conv.begin(ALICE, "verify-user")
    steps = len(LIBRARY.guides["verify-user"].steps)
    assert "I closed the walkthrough" in other and f"step 1 of {steps}" in other
    assert [r["result"] for r in store.guide_runs(ALICE)] == ["finished", "replaced"]


async def test_unseen_recovery_is_passed_on_the_persons_confirmation() -> None:
    conv, store, _, _ = conversation(report(dev("A")))  # no admin token: recovery unseen
    await conv.begin(ALICE, "backup")
    finish = [step.id for step in BACKUP.steps].index("finish")
    store.save_guide_progress(ALICE, GuideProgress("backup", finish, 0, 0))
    asked = await conv.next(ALICE)
    assert "not visible to me on this server (not seen)" in asked
    assert "**Change recovery key**" in asked and "`!next confirm`" in asked
    assert "stay on this step" in asked
    done = await conv.next(ALICE, confirmed=True)
    assert "You confirmed that recovery is set up" in done and "(not seen)" in done
    assert "**Done: Set up recovery**" in done and "✅" not in done


async def test_the_community_web_client_follows_the_phone_step() -> None:
    conv, store, _, _ = conversation(report(dev("A")))
    store.set_platform(ALICE, "mobile", 0)
    step = await conv.begin(ALICE, "verify-sessions")
    assert "Ask an admin for the address of your community's Element Web." in step
    assert "app.element.io" not in step
    conv.web_client_url = "https://chat.example.org"
    with_link = await conv.begin(ALICE, "verify-sessions")
    assert "[https://chat.example.org](https://chat.example.org)" in with_link
    store.set_platform(ALICE, "web", 0)
    assert "chat.example.org" not in await conv.begin(ALICE, "verify-sessions")


async def test_platform_choice_changes_the_variant_shown() -> None:
    conv, store, _, _ = conversation(report(dev("A")))
    await conv.begin(ALICE, "backup")
    await conv.next(ALICE)  # "open-settings" differs between web and mobile
    mobile = await conv.set_platform(ALICE, "mobile")
    assert "Element X" in mobile and "**Settings**" in mobile and "!platform web" in mobile
    assert store.get_platform(ALICE) == "mobile"
    assert "**All settings**" in await conv.set_platform(ALICE, "web")


async def test_plain_done_only_counts_in_a_dm_with_an_active_guide() -> None:
    conv, _, _, _ = conversation(report(dev("A")))

    def msg(body: str, is_dm: bool = True) -> IncomingText:
        return IncomingText(ALICE, RoomId("!r:hs"), EventId("$e"), body, is_dm)

    assert conv.interpret(msg("好了")) is None  # no guide yet
    assert conv.interpret(msg("确认")) is None
    await conv.begin(ALICE, "practice")
    assert conv.interpret(msg("好了")) == "!next"
    assert conv.interpret(msg("确认")) == "!next confirm"
    assert conv.interpret(msg("confirm")) == "!next confirm"
    assert conv.interpret(msg("好了", is_dm=False)) is None
    assert conv.interpret(msg("确认", is_dm=False)) is None
    assert conv.interpret(msg("thanks")) is None


async def test_a_verification_with_the_bot_moves_the_practice_guide_on() -> None:
    conv, store, _, messenger = conversation(report(dev("A")))
    await conv.begin(ALICE, "practice")
    await conv.on_verified(ALICE)  # no verification record: nothing happens
    assert messenger.dms == []
    store.verification_started("t1", ALICE, "A", "incoming", "in_room", 50)
    store.verification_ended("t1", "verified", 150)
    await conv.on_verified(ALICE)
    assert len(messenger.dms) == 1 and "completed an emoji verification" in messenger.dms[0]
    practice = LIBRARY.guides["practice"]
    after = 1 + next(i for i, s in enumerate(practice.steps)
                     if s.checkpoint is Checkpoint.BOT_VERIFIED)
    saved = store.get_guide_progress(ALICE)
    assert saved is not None and saved.step == after


async def test_a_guide_removed_by_an_update_is_forgotten_cleanly() -> None:
    conv, store, _, _ = conversation(report(dev("A")))
    store.save_guide_progress(ALICE, GuideProgress("retired-guide", 3, 0, 0))
    assert "no walkthrough in progress" in await conv.next(ALICE)
    assert store.get_guide_progress(ALICE) is None


async def test_a_step_change_and_its_answer_survive_a_crash_between_them() -> None:
    """The new step is stored with its answer's transaction ID; if the answer was never marked
    sent (the bot died in between), the next start sends the same step with the same ID."""
    from nerbot.commands.guide import answer_txn

    conv, store, _, messenger = conversation(report(dev("A"), recovery=False))
    await conv.begin(ALICE, "backup")
    assert store.unsent_guide_answers() == []  # starting a guide moves no step
    shown = await conv.next(ALICE)  # the bot "dies" here: the answer is never sent
    progress = store.get_guide_progress(ALICE)
    assert progress is not None and progress.step == 1
    txn = answer_txn(ALICE, progress)
    assert store.unsent_guide_answers() == [(ALICE, txn)] and conv.unsent_txn(ALICE) == txn
    sent: list[tuple[str, str | None]] = []

    async def send_dm(user_id: str, markdown: str, txn_id: str | None = None) -> str:
        sent.append((markdown, txn_id))
        return "!dm:hs"

    messenger.send_dm = send_dm  # type: ignore[method-assign]
    await conv.resend_unsent()  # the next start
    [(text, used)] = sent
    assert used == txn and text.splitlines()[0] == shown.splitlines()[0]  # step 2
    assert store.unsent_guide_answers() == []
    await conv.resend_unsent()
    assert len(sent) == 1  # once sent, never again
    back = await conv.back(ALICE)
    assert f"step 1 of {len(BACKUP.steps)}" in back and conv.unsent_txn(ALICE) is not None
    conv.answer_sent(ALICE, str(conv.unsent_txn(ALICE)))  # what guide_commands does
    assert store.unsent_guide_answers() == []
