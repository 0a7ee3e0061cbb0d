"""Operators' side end to end: the community report, admin trust and the admin room's alarms.

A real Synapse, the real bot, real E2EE clients: the admin on nio, the person who verifies on
Element's crypto (matrix-js-sdk + Rust), everyone else built in exact states by the account
builder. The bot's clock is real time plus an offset (for the verification time-out and for
"two hours after the reminders").
"""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import pytest
from botdm import cross_signed, open_dm, open_group
from test_verify import Clock, element_in_dm

from nerbot import cli
from nerbot.app import NerbotApp
from nerbot.localdev.accounts import AccountBuilder
from nerbot.localdev.jspeer import DEFAULT_SDK

HOUR_MS = 3600 * 1000


async def until(condition: Any, what: str, seconds: float = 30) -> None:
    for _ in range(int(seconds / 0.1)):
        if condition():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def bot_messages(peer: Any, room_id: str, bot_id: str) -> list[str]:
    return [m.body for m in peer.messages(room_id) if m.sender == bot_id]


async def admin_with_rooms(synapse: Any, make_user: Any, make_peer: Any, bot_id: str
                           ) -> tuple[Any, Any, str]:
    """An admin whose E2EE session their own identity signed, and an encrypted admin room
    they made with the bot invited (before the bot starts: it joins at its first sync)."""
    admin = make_user("admin")
    peer = await make_peer(admin, device_name="admin laptop")
    builder, account = await cross_signed(synapse, admin, peer)
    await asyncio.to_thread(builder.create_backup, account)
    await asyncio.to_thread(builder.set_up_secret_storage, account)
    room = await peer.create_encrypted_room([bot_id], name="nerbot admins")
    return admin, peer, room


async def test_admin_commands_only_from_a_session_the_admins_identity_signed(
    start_bot: Any, make_user: Any, make_peer: Any, synapse: Any
) -> None:
    admin = make_user("boss")
    bot: NerbotApp = await start_bot(admins=[admin.user_id])
    bot_id = bot.config.matrix.user_id
    phone = await make_peer(admin, device_name="phone")
    room = await open_dm(phone, bot)
    await phone.ask(room, "!lang en", bot_id)
    # No identity at all: nothing can vouch for any session.
    answer = await phone.ask(room, "!report", bot_id)
    assert "no cross-signing identity" in answer and "People:" not in answer
    await cross_signed(synapse, admin, phone)  # the identity signs the phone only
    laptop = await make_peer(admin, device_name="laptop (not verified)")
    await laptop.wait_for_join(room, admin.user_id)
    refused = await laptop.ask(room, "!report", bot_id)
    assert "not verified by your own cross-signing identity" in refused
    assert "`!guide verify-sessions`" in refused and "People:" not in refused
    someone = await make_peer(make_user("someone"))
    other = await laptop.ask(room, f"!backup-status {someone.user_id}", bot_id)
    assert "not verified by your own cross-signing identity" in other
    assert someone.device_id not in other  # nobody's sessions for an unsigned session
    report = await phone.ask(room, "!report", bot_id)
    assert "**Encryption report for the people I serve**" in report
    assert "Emoji or key mismatches: 0 / 0" in report
    assert f"{admin.user_id} (not verified with me" in report


def number(text: str, pattern: str) -> tuple[str, ...]:
    found = re.search(pattern, text)
    assert found is not None, f"{pattern!r} not in report:\n{text}"
    return found.groups()


async def test_report_and_alarms_match_the_world(
    start_bot: Any, bot_account: Any, make_user: Any, make_peer: Any, synapse: Any,
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    clock = Clock()
    admin, admin_peer, admin_room = await admin_with_rooms(synapse, make_user, make_peer,
                                                           bot_account.user_id)
    server_admin = make_user("root", admin=True)
    token = synapse.admin_access_token(server_admin.localpart, server_admin.password)
    data_dir = tmp_path / "data"
    bot: NerbotApp = await start_bot(
        data_dir=data_dir, clock=clock, admin_token=token, backup_check="admin-login",
        admins=[admin.user_id], admin={"room": admin_room}, language="en",
        reminders={"enabled": True, "grace": "0", "quiet_hours": "", "backoff": ["1d"],
                   "scan_every": "7d"})
    bot_id = bot.config.matrix.user_id
    await admin_peer.wait_for_join(admin_room, bot_id)
    await until(lambda: bot.alarms is not None and bot.alarms.check_room() == admin_room,
                "the bot to see the admin room as encrypted")
    admin_dm = await open_dm(admin_peer, bot)
    await admin_peer.ask(admin_dm, "!lang en", bot_id)

    # The world, in exact states (admin-login sees backups; account data shows recovery).
    builder = AccountBuilder(synapse)
    people = await asyncio.to_thread(lambda: [builder.create(f"w{i}") for i in range(4)])
    _no_identity, fine, unverified, no_recovery = people
    for account in people:
        await asyncio.to_thread(builder.add_device, account, "phone")
    for account in (fine, unverified, no_recovery):
        await asyncio.to_thread(builder.set_up_cross_signing, account)
        await asyncio.to_thread(builder.sign_device, account, next(iter(account.devices)))
    for account in (fine, unverified):
        await asyncio.to_thread(builder.create_backup, account)
        await asyncio.to_thread(builder.set_up_secret_storage, account)
    await asyncio.to_thread(builder.add_device, unverified, "old tablet")  # never signed
    group = await open_group(admin_peer, bot, [a.user_id for a in people])
    for account in people:
        await asyncio.to_thread(builder.join_room, account, group)
    await until(lambda: all(bot.events is not None and bot.events.shares_room(a.user_id)
                            for a in people), "the world to join")

    # Verifications with a person on Element's crypto: one verified, one mismatch, one
    # timed out. (Their identity has no backup or recovery: at risk in the numbers.)
    element_user = make_user("element")
    async with element_in_dm(bot, element_user, clock, DEFAULT_SDK) as s:
        await s.peer.call("request_device", user_id=s.bot_id, device_id=s.bot_device,
                          start_sas=True)
        await s.peer.next_event("sas", timeout=30)
        await s.peer.call("confirm", match=True)
        await s.peer.next_event("done", timeout=30)
        await until(lambda: s.records()[-1]["result"] == "verified", "verified")
        await s.peer.call("request_device", user_id=s.bot_id, device_id=s.bot_device,
                          start_sas=True)
        await s.peer.next_event("sas", timeout=30)
        await s.peer.call("confirm", match=False)  # "They don't match"
        await until(lambda: s.records()[-1]["result"] == "cancelled", "the mismatch")
        assert bot.verifier is not None  # over on the bot's side too, before the next one
        await until(lambda: not bot.verifier.active, "the mismatch to end")  # type: ignore[union-attr]
        await s.command(f"!verify {s.peer.device_id}")
        await s.peer.call("stall", on=True)
        clock.offset_ms += 11 * 60 * 1000
        assert bot.verifier is not None
        await bot.verifier.tick()
        assert s.records()[-1]["result"] == "timeout", s.records()
    alarm = await admin_peer.wait_for_message(
        admin_room, sender=bot_id, predicate=lambda m: "Verification mismatch" in m.body)
    assert element_user.user_id in alarm.body and "a to-device request" in alarm.body
    assert alarm.decrypted

    # Someone logs in as the bot: the loudest alarm, once.
    login = await asyncio.to_thread(synapse.login, bot_id, bot_account.password, "intruder")
    intruder = login["device_id"]
    own = await admin_peer.wait_for_message(
        admin_room, sender=bot_id, predicate=lambda m: "logged in as the bot" in m.body)
    assert intruder in own.body

    # Reminders to everyone at risk; then one of them fixes it, and the next scan sees it.
    assert bot.reminders is not None
    first = await bot.reminders.scan()
    assert (first.failed, first.queued) == (0, 4), first
    assert first.delivery is not None and first.delivery.sent == 4, first
    await asyncio.to_thread(builder.create_backup, no_recovery)
    await asyncio.to_thread(builder.set_up_secret_storage, no_recovery)
    clock.offset_ms += 2 * HOUR_MS  # past the admin facts' cache, within the back-off
    await bot.reminders.scan()
    await bot._check_own_account()  # the same intruder again: no second alarm

    report = await admin_peer.ask(admin_dm, "!report", bot_id)
    # admin ✅ everything; fine ✅; no_identity ✗ identity, backup, recovery; unverified: one
    # unsigned session; no_recovery: fixed between the scans; element: identity only.
    assert number(report, r"People: (\d+)") == ("6",)
    assert number(report, r"Cross-signing identity: (\d+) \((\d+)%\)") == ("5", "83")
    assert number(report, r"Recovery set up: (\d+) \((\d+)%\); not set up: (\d+); "
                          r"not visible: (\d+)") == ("4", "67", "2", "0")
    assert number(report, r"seen on (\d+), seen off (\d+); inferred off \(no identity\) "
                          r"(\d+); not visible (\d+)") == ("4", "2", "0", "0")
    assert number(report, r"With unverified sessions: (\d+) \((\d+)%\); unverified sessions "
                          r"in all: (\d+)") == ("1", "17", "1")
    assert number(report, r"At risk [^:]*: (\d+) \((\d+)%\)") == ("3", "50")
    assert number(report, r"Started: (\d+) / (\d+); verified: (\d+) / (\d+); success rate: "
                          r"(\d+)% / (\d+)%") == ("3", "3", "1", "1", "33", "33")
    assert number(report, r"Cancelled: (\d+) / (\d+); timed out: (\d+) / (\d+)") == (
        "1", "1", "1", "1")
    assert "`m.mismatched_sas` 1" in report
    assert number(report, r"Emoji or key mismatches: (\d+) / (\d+)") == ("1", "1")
    assert number(report, r"Sent: (\d+) / (\d+) to (\d+) / (\d+) people") == (
        "4", "4", "4", "4")
    assert number(report, r"Fixed within a week of a reminder: (\d+) / (\d+) people "
                          r"\((\d+)% / (\d+)%\)") == ("1", "1", "25", "25")
    assert f"{element_user.user_id}" not in report and intruder not in report
    assert f"{admin.user_id} (not verified with me" in report

    # Each alarm once: the report above came after the second look at the intruder.
    alarms = bot_messages(admin_peer, admin_room, bot_id)
    assert sum("Verification mismatch" in b for b in alarms) == 1
    assert sum("logged in as the bot" in b for b in alarms) == 1

    # The same numbers from the command line, on the stopped bot's data, without a password.
    await bot.stop()
    config = tmp_path / "report.toml"
    config.write_text(
        f'[matrix]\nhomeserver = "{synapse.url}"\nuser_id = "{bot_id}"\n'
        f'[storage]\ndata_dir = "{data_dir}"\n[bot]\nadmins = ["{admin.user_id}"]\n')
    capsys.readouterr()
    assert cli.main(["report", "-c", str(config), "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["schema"] == 1
    people_json = document["people"]
    assert (people_json["people"], people_json["cross_signing"], people_json["recovery"],
            people_json["no_recovery"], people_json["backup_present"],
            people_json["backup_absent"], people_json["with_unverified"],
            people_json["unverified_sessions"], people_json["at_risk"]) == (
        6, 5, 4, 2, 4, 2, 1, 1, 3)
    week = document["verifications"]["last_7_days"]
    assert (week["started"], week["verified"], week["cancelled"], week["timed_out"],
            week["mismatches"], week["cancel_codes"]) == (
        3, 1, 1, 1, 1, {"m.mismatched_sas": 1})
    assert week["success_rate"] == pytest.approx(1 / 3)
    reminders = document["reminders"]["last_7_days"]
    assert (reminders["sent"], reminders["people_reminded"],
            reminders["people_fixed_within_week"]) == (4, 4, 1)
    assert document["verified_admins"] == []
