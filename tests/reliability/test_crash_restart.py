"""SIGKILL of the real ``nerbot run`` at seeded random points, then a restart.

Four kinds of work are interrupted: a guide step, a reminder run, a new-session alert and an
emoji verification. After the restart: nothing is sent twice, nothing recorded is lost, a guide
resumes at its step, and a verification is never "verified" on one side only.

Each test is parametrized by seeds (``seed=N`` in its ID); the seed picks where to kill, and
every assertion message starts with the plan, e.g. ``[replay: NERBOT_CRASH_SEEDS=7; ...]``.
``NERBOT_CRASH_SEEDS=7,8 uv run pytest tests/reliability -k guide`` replays other seeds.
A product gap, once observed, fails the test with ``PRODUCT GAP: ...`` naming what went
wrong (the assertions before it held).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import sqlite3
import time
import urllib.parse
from typing import Any

import pytest
from crashkit import (
    BotProcess,
    KillPlan,
    gap,
    room_events,
    seeds,
    sent_by,
    wait_for,
)

from nerbot.domain.guide import Guide, Platform
from nerbot.guides import load_library
from nerbot.localdev.jspeer import JsPeer, JsPeerError
from nerbot.localdev.peer import E2EEPeer

logger = logging.getLogger(__name__)
pytestmark = pytest.mark.timeout(180)

GUIDE = "backup"
PLATFORMS: tuple[Platform, ...] = ("web", "mobile")


# -- helpers --------------------------------------------------------------------------------


async def open_dm(peer: E2EEPeer, bot: BotProcess) -> str:
    room_id = await peer.create_encrypted_dm(bot.user_id)
    await peer.wait_for_join(room_id, bot.user_id, timeout=60)
    await peer.wait_for_message(room_id, sender=bot.user_id, timeout=60)  # the welcome
    return room_id


async def settle_inbox(peer: E2EEPeer, synapse: Any, room_id: str, sender: str,
                       within: float = 30) -> list[str]:
    """Every message ``sender`` managed to store on the server in the room has reached the
    peer (decrypted or not); their event IDs in timeline order."""
    ids = sent_by(room_events(synapse, peer.client.access_token, room_id), sender)

    def arrived() -> bool:
        got = {m.event_id for m in peer.messages(room_id)}
        got |= {e.event_id for rid, e in peer.undecryptable if rid == room_id}
        return all(i in got for i in ids)

    await wait_for(arrived, within, f"the peer to receive {len(ids)} messages of {sender}")
    return ids


def step_of(guide: Guide, body: str) -> int | None:
    """Which step of ``guide`` a reply shows: its text (for either platform) is in it."""
    found = [i for i, step in enumerate(guide.steps)
             if any(step.body("en", p) in body for p in PLATFORMS)]
    return found[-1] if found else None


def walkable_guide() -> Guide:
    """A guide whose first three steps have no checkpoint (``!next`` always moves on there),
    with a fourth step; the backup guide when it qualifies."""
    library = load_library()
    for name in (GUIDE, *library.names):
        guide = library.get(name)
        if guide is not None and len(guide.steps) >= 4 and all(
                step.checkpoint is None for step in guide.steps[:3]):
            return guide
    raise AssertionError("no guide starts with three steps without a checkpoint")


def claimed(bot: BotProcess, event_id: str) -> bool:
    """The bot took the event: it is in ``handled_events`` (claimed before it is handled)."""
    return bool(bot.query("SELECT 1 FROM handled_events WHERE event_id = ?", (event_id,)))


def shown_steps(guide: Guide, peer: E2EEPeer, room_id: str, bot_id: str) -> list[int]:
    return [s for m in peer.messages(room_id) if m.sender == bot_id
            and (s := step_of(guide, m.body)) is not None]


# -- a guide step ---------------------------------------------------------------------------


# 1: random delays both times; 5: the moment the step is stored, then a random delay
@pytest.mark.parametrize("seed", seeds([1, 5]), ids=lambda s: f"seed={s}")
async def test_guide_resumes_at_its_step(
    seed: int, bot_process: Any, make_user: Any, make_peer: Any, synapse: Any
) -> None:
    """``!guide backup``, ``!next``; then ``!next`` and later ``!back``, each killed at a seeded
    point: a random delay after the bot took it (from "just claimed" to a little after its
    answer normally arrives), or the moment the new step is stored; then a restart, and
    ``!next``. The stored progress is the step the person saw last,
    ``!next`` after the restart shows the step after it, and each command got at most one
    answer: the steps the person saw go up or down by one at a time.

    A kill after the bot stored the new step but before its answer reached the server is
    repaired at the next start: the step is stored with its answer's transaction ID, and the
    restarted bot sends that step again with the same ID (the homeserver drops a repeat).
    """
    plan = KillPlan(seed)
    guide = walkable_guide()
    bot = bot_process()
    await bot.restart()
    user = make_user("guide")
    peer = await make_peer(user)
    room_id = await open_dm(peer, bot)

    assert step_of(guide, await peer.ask(room_id, f"!guide {guide.name}", bot.user_id, 60)) == 0
    # How long the bot takes from taking a command to its answer reaching the person: the
    # kills fall anywhere in that window (and a little after it).
    inbox_before = len(peer.messages(room_id))
    event_id = await peer.send_text(room_id, "!next")
    await wait_for(lambda: claimed(bot, event_id), 30, "the bot to take !next", interval=0.005)
    taken = time.monotonic()
    await peer.wait_for_message(room_id, sender=bot.user_id, timeout=60)
    answer_seconds = time.monotonic() - taken
    assert [step_of(guide, m.body) for m in peer.messages(room_id)[inbox_before:]
            if m.sender == bot.user_id] == [1]
    lost: list[str] = []

    def stored_step() -> int | None:
        rows = bot.query("SELECT step FROM guide_progress WHERE user_id = ?", (user.user_id,))
        return int(rows[0][0]) if rows else None

    for kill, command in enumerate(("!next", "!back")):
        # when: a random delay after the bot took the command, or the moment the new step is
        # stored (the bot is then a few milliseconds from sending the answer)
        when = plan.choose(f"kill{kill}_{command[1:]}", ["after_taken", "once_stored"])
        delay = plan.uniform(f"kill{kill}_delay_s", 0.0, 1.2 * answer_seconds)
        before = stored_step()
        inbox_before = len(peer.messages(room_id))
        event_id = await peer.send_text(room_id, command)
        if when == "once_stored":
            await wait_for(lambda b=before: stored_step() != b, 30,  # type: ignore[misc]
                           f"{plan} the bot to store the step", interval=0.001)
        else:
            await wait_for(lambda e=event_id: claimed(bot, e), 30,  # type: ignore[misc]
                           f"{plan} the bot to take {command}", interval=0.005)
            await asyncio.sleep(delay)
        bot.kill()
        # After the restart (seconds later) a send that was in flight at the kill is either
        # on the server or lost for good: only then count what the person got.
        await bot.restart()
        # At start the bot sends a stored step whose answer a crash kept back.
        await wait_for(lambda: not bot.query(
            "SELECT 1 FROM guide_progress WHERE user_id = ? AND unsent_txn IS NOT NULL",
            (user.user_id,)), 30, f"{plan} the restarted bot to send the step it owed")
        await settle_inbox(peer, synapse, room_id, bot.user_id)
        answered = [m for m in peer.messages(room_id)[inbox_before:]
                    if m.sender == bot.user_id]
        assert len(answered) <= 1, f"{plan}: one {command}, {len(answered)} answers"
        seen = shown_steps(guide, peer, room_id, bot.user_id)
        stored = stored_step()
        if not answered:
            lost.append(f"{command} {event_id}")
        assert stored is not None, plan
        if stored != seen[-1]:
            gap(f"{plan} guide step out of step: the bot stored step {stored + 1} but the "
                f"person last saw step {seen[-1] + 1}: killed after save_guide_progress and "
                "before the answer reached the server (nerbot/commands/guide.py "
                "GuideConversation._apply / back() save the new step, then the router sends "
                "it), so the next !next skips or repeats a step")

        inbox_before = len(peer.messages(room_id))
        reply = await peer.ask(room_id, "!next", bot.user_id, 60)
        assert step_of(guide, reply) == seen[-1] + 1, \
            f"{plan}: after the restart !next showed step {step_of(guide, reply)}, " \
            f"the person had seen {seen}"
        await settle_inbox(peer, synapse, room_id, bot.user_id)
        after = [m for m in peer.messages(room_id)[inbox_before:] if m.sender == bot.user_id]
        assert len(after) == 1, f"{plan}: {len(after)} messages after the restart: " \
            f"{[m.body[:60] for m in after]}"

    seen = shown_steps(guide, peer, room_id, bot.user_id)
    assert all(abs(b - a) == 1 for a, b in itertools.pairwise(seen)), \
        f"{plan}: steps shown {seen}"
    assert not peer.undecryptable, f"{plan}: undecryptable after restarts"
    if lost:
        # At most once: the event is claimed (handled_events) before it is handled, and
        # nio stored the sync token before the callbacks ran, so nothing replays it.
        logger.warning("%s: %d command(s) taken but never answered (killed mid-handling): %s",
                       plan, len(lost), lost)


# -- a reminder run -------------------------------------------------------------------------

REMINDED = 5


def admin_get(synapse: Any, token: str, template: str, *ids: str) -> Any:
    return synapse.request("GET", synapse.api_path(template, *ids), token=token)


def bot_messages_per_user(synapse: Any, admin_token: str, bot_id: str, users: list[str],
                          shared_room: str) -> dict[str, int]:
    """For each user: the bot's messages in every room of the bot that the user is in (or
    invited to), apart from the shared group room. Read from the server (admin API)."""
    counts = dict.fromkeys(users, 0)
    rooms = admin_get(synapse, admin_token, "/_synapse/admin/v1/users/{}/joined_rooms",
                      bot_id)["joined_rooms"]
    for room_id in rooms:
        if room_id == shared_room:
            continue
        state = admin_get(synapse, admin_token, "/_synapse/admin/v1/rooms/{}/state",
                          room_id)["state"]
        members = {e["state_key"] for e in state if e["type"] == "m.room.member"
                   and e["content"].get("membership") in ("join", "invite")}
        path = (f"/_synapse/admin/v1/rooms/{urllib.parse.quote(room_id)}/messages"
                "?dir=b&limit=1000")
        chunk = synapse.request("GET", path, token=admin_token)["chunk"]
        sent = sum(1 for e in chunk if e["sender"] == bot_id and e["type"] == "m.room.encrypted")
        for user_id in members & set(users):
            counts[user_id] += sent
    return counts


@pytest.mark.parametrize("seed", seeds([21, 22]), ids=lambda s: f"seed={s}")
async def test_reminder_run_reaches_everyone_once(
    seed: int, bot_process: Any, make_user: Any, synapse: Any
) -> None:
    """Five room-mates are due a reminder. The run is killed once the outbox holds them and a
    seeded number of them (0-4) are sent, plus a seeded fraction of the pacing interval; the
    restarted bot finishes the run. Counted on the homeserver: every user has exactly one
    message from the bot, in one DM room."""
    plan = KillPlan(seed)
    admin = make_user("admin", admin=True)
    admin_token = synapse.admin_access_token(admin.localpart, admin.password)
    users = [make_user("remind") for _ in range(REMINDED)]
    tokens = [synapse.login(u.user_id, u.password)["access_token"] for u in users]
    bot = bot_process(reminders={"enabled": True, "scan_every": "6h", "grace": "0",
                                 "quiet_hours": "", "max_sends_per_minute": 60})
    room = synapse.request("POST", "/_matrix/client/v3/createRoom",
                           {"invite": [bot.user_id] + [u.user_id for u in users[1:]]},
                           token=tokens[0])["room_id"]
    for token in tokens[1:]:
        synapse.request("POST", f"/_matrix/client/v3/join/{urllib.parse.quote(room)}", {},
                        token=token)

    # A first run joins the room; its start-up scan came too early to see anyone, and the
    # next start scans again only once the last scan is forgotten (as if 6 h had passed).
    await bot.restart()
    members = f"/_matrix/client/v3/rooms/{urllib.parse.quote(room)}/joined_members"
    await wait_for(lambda: bot.user_id in synapse.request("GET", members, token=tokens[0])
                   ["joined"], 60, "the bot to join")
    assert bot.terminate() == 0
    with sqlite3.connect(bot.db_path) as conn:
        conn.execute("DELETE FROM meta WHERE key = 'reminders.last_scan_ms'")

    sent_first = plan.choose("kill_once_sent", list(range(REMINDED)))
    then = plan.uniform("then_s", 0.0, 1.0)  # 60/min: a send a second

    def status() -> list[str]:
        return [r[0] for r in bot.query("SELECT status FROM outbox")]

    bot.start()
    await wait_for(lambda: status() and status().count("sent") >= sent_first, 90,
                   f"{plan} the run to be under way")
    await asyncio.sleep(then)
    bot.kill()
    before = status()
    logger.warning("%s: killed with outbox %s", plan, before)

    await bot.restart()
    await wait_for(lambda: len(status()) == REMINDED and set(status()) == {"sent"}, 90,
                   f"{plan} every reminder to be sent (outbox now {status()})")
    assert bot.terminate() == 0, bot.log_tail()

    rows = bot.query("SELECT user_id, room_id, event_id FROM outbox")
    assert sorted(r[0] for r in rows) == sorted(u.user_id for u in users), plan
    counts = bot_messages_per_user(synapse, admin_token, bot.user_id,
                                   [u.user_id for u in users], room)
    assert counts == dict.fromkeys(counts, 1), \
        f"{plan}: messages per user {counts} (outbox at the kill: {before})"


# -- a new-session alert --------------------------------------------------------------------

ALERT_DEBOUNCE_SECONDS = 1


# 36: recorded, reminders on; 41: recorded, alerts only; 31: debounce, alerts only
@pytest.mark.parametrize("seed", seeds([36, 41, 31]), ids=lambda s: f"seed={s}")
async def test_new_session_alert_arrives_once(
    seed: int, bot_process: Any, make_user: Any, make_peer: Any, synapse: Any
) -> None:
    """A person with a DM; the bot has looked at their sessions once. A new, unverified session
    of theirs appears, and the bot is killed at a seeded point: while it waits out the
    debounce, as soon as the alert is recorded in the outbox, or once the person has read it.
    The seed also picks the config: reminders on (the default; their start-up run delivers
    what the outbox holds) or alerts only. After the restart the person has exactly one alert
    naming the new session, and its outbox row is "sent". (A kill during the debounce loses
    nothing: the change sync reported is written down before the sync position moves past it,
    and the next start checks it; the first sync resumes from that position, so it does not
    report the change again.) An alert
    recorded but not yet sent goes out at the next start with either config: with reminders
    on, their start-up job delivers the outbox first; with reminders off, ``NerbotApp.start``
    delivers it when anything is pending. Should it stay pending with reminders off, the test
    fails as a ``PRODUCT GAP`` naming that path.
    """
    plan = KillPlan(seed)
    stage = plan.choose("kill", ["debounce", "recorded", "delivered"])
    reminders = plan.choose("reminders", [True, False])
    bot: BotProcess = bot_process(  # default grace: no reminder DMs
        alerts={"enabled": True, "debounce_seconds": ALERT_DEBOUNCE_SECONDS},
        reminders={"enabled": reminders})
    await bot.restart()
    user = make_user("alert")
    peer = await make_peer(user, device_name="phone")
    room_id = await open_dm(peer, bot)
    await wait_for(lambda: bot.query("SELECT 1 FROM known_devices WHERE device_id = ?",
                                     (peer.device_id,)), 30,
                   f"{plan} the bot's first look at the person's sessions")

    intruder = await make_peer(user, start=False, device_name="unknown laptop")
    new_device = intruder.device_id

    def alert_rows() -> list[tuple[Any, ...]]:
        return bot.query("SELECT status FROM outbox WHERE kind = 'alert' AND user_id = ?",
                         (user.user_id,))

    def alerts_read() -> list[str]:
        return [m.event_id for m in peer.messages(room_id)
                if m.sender == bot.user_id and new_device in m.body]

    if stage == "debounce":
        await asyncio.sleep(plan.uniform("after_login_s", 0.0, ALERT_DEBOUNCE_SECONDS))
    elif stage == "recorded":
        await wait_for(alert_rows, 30, f"{plan} the alert to be recorded", interval=0.005)
    else:
        await wait_for(alerts_read, 30, f"{plan} the alert to arrive")
        await asyncio.sleep(plan.uniform("after_read_s", 0.0, 0.3))
    bot.kill()
    at_kill = alert_rows()
    await bot.restart()

    try:  # the debounce and a check after the first sync: a few seconds at most
        await wait_for(alerts_read, 10, "the alert")
    except AssertionError:
        if at_kill and not reminders and [r[0] for r in alert_rows()] == ["pending"]:
            gap(f"{plan} recorded alert never sent after the restart: with [reminders] "
                "enabled = false nothing delivers the outbox on start (only "
                "ReminderService._startup does; NerbotApp.start calls reminders.start() only "
                "when reminders are enabled)")
        raise AssertionError(f"{plan}: no alert after the restart; outbox at the kill "
                             f"{at_kill}, now {alert_rows()}") from None

    # Nothing else is on its way: a command answered after the restart, then every message
    # of the bot on the server has reached the person.
    await peer.ask(room_id, "!alerts", bot.user_id, 60)
    await settle_inbox(peer, synapse, room_id, bot.user_id)
    assert len(alerts_read()) == 1, f"{plan}: {len(alerts_read())} alerts about {new_device}"
    assert [r[0] for r in alert_rows()] == ["sent"], f"{plan}: outbox {alert_rows()}"
    recorded = bot.query("SELECT devices FROM alerts WHERE user_id = ?", (user.user_id,))
    assert len(recorded) == 1 and new_device in recorded[0][0], f"{plan}: alerts {recorded}"


# -- an emoji verification ------------------------------------------------------------------

VERIFY_STAGES = ["requested", "ready", "sas", "confirmed"]
TERMINAL = ("done", "cancelled")


def flow_events(peer: JsPeer, txn: str, *kinds: str) -> list[dict[str, Any]]:
    return [e for e in peer.events if e.get("txn") == txn and e.get("event") in kinds]


async def drive_to_the_end(peer: JsPeer, txn: str, seconds: float) -> dict[str, Any] | None:
    """What the person does with a verification still open on their screen: tap "They match"
    when emoji appear (once), until it ends; its ``done``/``cancelled`` event, or None if it
    was still open after ``seconds``."""
    deadline = time.monotonic() + seconds
    confirmed = bool(flow_events(peer, txn, "confirmed-by-test"))
    while time.monotonic() < deadline:
        ended = flow_events(peer, txn, *TERMINAL)
        if ended:
            return ended[0]
        if not confirmed and flow_events(peer, txn, "sas"):
            confirmed = True
            try:
                await peer.call("confirm", match=True, txn=txn)
            except JsPeerError as exc:  # e.g. the request was cancelled meanwhile
                logger.info("confirm after the restart failed: %s", exc)
        await asyncio.sleep(0.1)
    return None


async def start_verification(peer: JsPeer, transport: str, bot: BotProcess, room_id: str
                             ) -> str:
    if transport == "to_device":
        request = await peer.call("request_device", user_id=bot.user_id,
                                  device_id=bot.device_id, start_sas=True)
    else:
        request = await peer.call("request_dm", user_id=bot.user_id, room_id=room_id,
                                  start_sas=True)
    return str(request["txn"])


async def person_trusts_bot(peer: JsPeer, bot: BotProcess, seconds: float) -> bool:
    """The person's client trusts the bot's device (polled: trust lags "done" by ~3 s)."""
    try:
        await peer.poll_status(bot.user_id, bot.device_id, timeout=seconds,
                               device_verified=True)
    except JsPeerError:
        return False
    return True


# 41: in-room, at the emoji; 46: to-device, just after "They match"; 63: in-room, after it
@pytest.mark.parametrize("seed", seeds([41, 46, 63]), ids=lambda s: f"seed={s}")
async def test_half_done_verification_is_never_verified_on_one_side(
    seed: int, jspeer_ready: None, bot_process: Any, make_user: Any
) -> None:
    """A person on Element's crypto (matrix-js-sdk + Rust) verifies with the bot; the seed picks
    the transport and where the bot is killed: right after the request, after "ready", when
    the emoji show, or right after the person tapped "They match" (plus 0-0.3 s). After the
    restart the person goes on as a person would (taps "They match" on emoji still showing)
    until the verification ends or 8 s pass. Then the bot recorded "verified" only if the
    person's client trusts the bot, and, once the person closed what is still open, a new
    verification with the restarted bot succeeds.

    At start the restarted bot ends what was in flight (``VerificationService.end_interrupted``):
    one whose partner's MAC was already valid is finished from the resume point stored before
    the bot's MAC went out (MAC and done sent again, the person trusted and recorded
    "verified"); any other is cancelled over its transport with ``m.user``. The test fails
    unless, within 30 s of the restart, no row of the person's is left "pending"; then the bot
    must have recorded "verified" only if the person's client trusts the bot. Verified on the
    person's side only, or still open on the person's screen after the restart, fails as a
    ``PRODUCT GAP``.
    """
    plan = KillPlan(seed)
    transport = plan.choose("transport", ["to_device", "in_room"])
    stage = plan.choose("kill_after", VERIFY_STAGES)
    then = plan.uniform("then_s", 0.0, 0.3)
    bot = bot_process()
    await bot.restart()
    user = make_user("element")
    peer = await JsPeer.start(name=user.localpart)
    try:
        await peer.login(user.homeserver_url, user.user_id, user.password, device_name="Element")
        await peer.call("bootstrap_cross_signing", password=user.password)
        room_id = str((await peer.call("create_dm", user_id=bot.user_id))["room_id"])
        await peer.call("wait_member", room_id=room_id, user_id=bot.user_id, timeout=60)
        await peer.call("track", user_id=bot.user_id, device_id=bot.device_id, timeout=30)
        await wait_for(lambda: bot.query("SELECT 1 FROM dm_rooms WHERE user_id = ?",
                                         (user.user_id,)), 30, "the bot to know the DM")

        txn = await start_verification(peer, transport, bot, room_id)
        if stage == "ready":
            await peer.next_event("phase", txn=txn, phase="ready", timeout=30)
        elif stage in ("sas", "confirmed"):
            await peer.next_event("sas", txn=txn, timeout=30)
            if stage == "confirmed":
                await peer.call("confirm", match=True, txn=txn)
                peer.events.append({"event": "confirmed-by-test", "txn": txn})
        await asyncio.sleep(then)
        bot.kill()
        phases_at_kill = [e["phase"] for e in flow_events(peer, txn, "phase")]
        await bot.restart()

        ended = await drive_to_the_end(peer, txn, 8.0)
        # At start the bot ends what the crash interrupted (finishes or cancels it).
        await wait_for(lambda: not bot.query(
            "SELECT 1 FROM verifications WHERE user_id = ? AND result = 'pending'",
            (user.user_id,)), 30, f"{plan} the restarted bot to end the interrupted verification")
        ended = ended or await drive_to_the_end(peer, txn, 8.0)
        rows = bot.query("SELECT txn, result, cancel_code, master_key_signed FROM "
                         "verifications WHERE user_id = ?", (user.user_id,))
        bot_verified = [r for r in rows if r[1] == "verified"]
        person_verified = await person_trusts_bot(
            peer, bot, 10.0 if ended and ended["event"] == "done" else 2.0)
        story = (f"{plan}: phases at the kill {phases_at_kill}, then {ended}; bot rows {rows}; "
                 f"person trusts the bot: {person_verified}")
        logger.warning("%s", story)
        assert person_verified or not bot_verified, f"bot-side only verified: {story}"
        one_sided = person_verified and not bot_verified

        if ended is None:
            # Still open on the person's screen: they close it (Element's crypto would
            # otherwise cancel both it and any new request: "another request with the same
            # user is ongoing"), then try again.
            await peer.call("cancel", txn=txn, code="m.user")
            await peer.next_event("cancelled", txn=txn, timeout=15)

        # The restarted bot verifies with the person as usual.
        fresh = await start_verification(peer, transport, bot, room_id)
        try:
            await peer.next_event("sas", txn=fresh, timeout=30)
            await peer.call("confirm", match=True, txn=fresh)
            await peer.next_event("done", txn=fresh, timeout=30)
        except JsPeerError as exc:
            events = [e for e in peer.events if e.get("txn") in (txn, fresh)]
            raise AssertionError(f"fresh verification failed: {exc}; {story}; events "
                                 f"{events}; bot log:\n{bot.log_tail(15)}") from None
        assert await person_trusts_bot(peer, bot, 15.0), f"{story}; fresh verification"
        await wait_for(lambda: bot.query("SELECT result FROM verifications WHERE txn = ?",
                                         (fresh,)) == [("verified",)], 15,
                       f"{story}; the bot to record the fresh verification")
    finally:
        await peer.close()

    if one_sided:
        gap(f"verified on the person's side only: {story}. The bot sends its MAC (and done) "
            "before it records 'verified' and signs the master key (VerificationService."
            "_execute in nerbot/matrix/verification.py), so a crash in between is never "
            "recorded or signed, and nothing is resent after the restart")
    stale = [r for r in rows if r[1] == "pending"]
    if stale or ended is None:
        gap(f"half-done verification not cancelled after the restart: {story}. "
            "VerificationService keeps flows only in memory (self.active); on start nothing "
            "ends the rows still 'pending' in the verifications table or sends "
            "m.key.verification.cancel for them, and in-room events of a transaction it does "
            "not know are ignored, so the person's client waits for its 10-minute timeout")
