"""A homeserver as installed: Synapse's default rate limits, and the bot's exemption from them.

With its defaults Synapse throttles every account like one person typing (``rc_message``: a
burst of 10, then one message every 5 s), the bot's too; eight people asking at once waited
25 s for an answer. With an admin token the bot sets its own override to 0/0 at start, which
switches every per-user limiter off for it. Everything here runs on ``default_limits_synapse``
(the ``synapse`` fixture is replaced for this module), not on the session's limit-free server.
How long answers take is measured in ``bench/ratelimit.py``, not asserted here: what is
asserted is what the server stored, what the bot said, and how often Synapse answered 429.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import nio
import pytest
from botdm import open_dm

from nerbot.app import NerbotApp
from nerbot.ids import RoomId
from nerbot.localdev.synapse import LocalSynapse

PEOPLE = 8  # 8 joins, 8 welcomes, 8 answers: past Synapse's default burst of 10 messages
OVERRIDE = "/_synapse/admin/v1/users/{}/override_ratelimit"
UNLIMITED = {"messages_per_second": 0, "burst_count": 0}


@pytest.fixture(scope="module")
def synapse(default_limits_synapse: LocalSynapse) -> LocalSynapse:
    """Every fixture of this module (bot account, users, the bot) on default rate limits."""
    return default_limits_synapse


def admin_token(synapse: LocalSynapse, make_user: Any) -> str:
    admin = make_user("admin", admin=True)
    return synapse.admin_access_token(admin.localpart, admin.password)


def override_of(synapse: LocalSynapse, token: str, user_id: str) -> Any:
    return synapse.request("GET", synapse.api_path(OVERRIDE, user_id), token=token)


def operator_request(synapse: LocalSynapse, user_id: str) -> str:
    return ('curl -X POST -H "Authorization: Bearer <admin token>" '
            """-d '{"messages_per_second":0,"burst_count":0}' """
            f"{synapse.url}{synapse.api_path(OVERRIDE, user_id)}")


def rate_limit_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records
            if r.name == "nerbot.app" and "Synapse rate limits" in r.getMessage()]


def throttled(bot: NerbotApp) -> list[nio.ErrorResponse]:
    """Every 429 the bot's client is answered from now on (nio waits it out and retries)."""
    seen: list[nio.ErrorResponse] = []

    async def record(response: nio.ErrorResponse) -> None:
        if response.status_code in ("M_LIMIT_EXCEEDED", 429):
            seen.append(response)

    assert bot.session is not None
    bot.session.client.add_response_callback(record, nio.ErrorResponse)
    return seen


async def test_the_bot_lifts_its_limits_and_everyone_asking_at_once_is_answered(
    start_bot: Any, make_user: Any, make_peer: Any, synapse: LocalSynapse,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="nerbot.app")
    token = admin_token(synapse, make_user)
    bot: NerbotApp = await start_bot(admin_token=token)
    bot_id = bot.config.matrix.user_id
    assert override_of(synapse, token, bot_id) == UNLIMITED
    assert bot.rate_limited is False
    assert [(r.levelno, r.getMessage()) for r in rate_limit_lines(caplog)] == [
        (logging.INFO, "Synapse rate limits: lifted for the bot (was no override; "
                       "override now 0/s, burst 0)")]

    refused = throttled(bot)
    people = [await make_peer(make_user("person")) for _ in range(PEOPLE)]
    rooms = await asyncio.gather(*(open_dm(peer, bot) for peer in people))
    answers = await asyncio.gather(*(peer.ask(room, "!help", bot_id, timeout=60)
                                     for peer, room in zip(people, rooms, strict=True)))
    assert all("!backup-status" in answer for answer in answers)
    assert refused == []  # 16 messages and 8 joins, not one of them throttled

    await bot.stop()  # a restart finds the override and only says so
    caplog.clear()
    again: NerbotApp = await start_bot(admin_token=token)
    assert again.rate_limited is False
    assert [(r.levelno, r.getMessage()) for r in rate_limit_lines(caplog)] == [
        (logging.INFO, "Synapse rate limits: the bot is exempt (override 0/s, burst 0, "
                       "set before)")]


async def test_with_the_exemption_off_the_bot_says_what_to_run_and_is_throttled(
    start_bot: Any, make_user: Any, make_peer: Any, synapse: LocalSynapse,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="nerbot.app")
    token = admin_token(synapse, make_user)
    bot: NerbotApp = await start_bot(admin_token=token, exempt_bot_from_ratelimit=False)
    bot_id = bot.config.matrix.user_id
    assert override_of(synapse, token, bot_id) == {}
    assert bot.rate_limited is True
    [line] = rate_limit_lines(caplog)
    message = line.getMessage()
    assert line.levelno == logging.WARNING
    assert message == ("Synapse rate limits apply to the bot (no override) and "
                       "synapse_admin.exempt_bot_from_ratelimit is false; a server admin "
                       f"lifts them with: {operator_request(synapse, bot_id)}")
    assert token not in message

    # What the warning is about: past the burst, Synapse refuses the bot's messages.
    refused = throttled(bot)
    person = await make_peer(make_user("person"))
    room = await open_dm(person, bot)  # the welcome: one message
    assert bot.transport is not None
    for i in range(11):
        await bot.transport.send_notice(RoomId(room), f"notice {i}")
    assert refused, "12 messages at once passed Synapse's default burst of 10"
    last = await person.wait_for_message(room, sender=bot_id,
                                         predicate=lambda m: m.body == "notice 10")
    assert last.decrypted  # waited out, not lost


async def test_a_token_that_is_not_a_server_admins_costs_one_warning(
    start_bot: Any, make_user: Any, synapse: LocalSynapse, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="nerbot.app")
    someone = make_user("not-admin")
    token = str(synapse.login(someone.localpart, someone.password)["access_token"])
    bot: NerbotApp = await start_bot(admin_token=token)
    assert bot.rate_limited is None  # not known
    [line] = rate_limit_lines(caplog)
    message = line.getMessage()
    assert line.levelno == logging.WARNING and "403" in message
    assert message.startswith("Synapse rate limits: could not check the bot's override")
    assert message.endswith(operator_request(synapse, bot.config.matrix.user_id))
    assert token not in message
    assert bot.syncer is not None and bot.syncer.first_sync.is_set()  # running all the same
