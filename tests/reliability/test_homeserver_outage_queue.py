"""A homeserver outage under a running bot: Synapse stopped for 30 s mid-run, then started.

Meanwhile two people's clients queue a command each (a client that retries its send with the
same transaction ID until the server is back, as Element does), a reminder recorded just
before the outage tries to go out, and a reminder run falls due that cannot look at the
second person. After the return: each command is answered once, each person has exactly one
reminder, and nothing else arrived.
Counted on the homeserver, not only in the clients.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from typing import Any

import pytest
from botdm import open_dm  # type: ignore[import-not-found]
from crashkit import room_events, sent_by, wait_for

from nerbot.localdev.peer import E2EEPeer
from nerbot.localdev.synapse import LocalSynapse

logger = logging.getLogger(__name__)
pytestmark = pytest.mark.timeout(240)
OUTAGE_SECONDS = 30
CLIENT_RETRY_SECONDS = 2.0  # a client's longest wait between two tries of the same request


def queueing(peer: E2EEPeer) -> E2EEPeer:
    """nio retries a request that cannot reach the server with the same body and path (so the
    same transaction ID); only its wait between tries is shortened, as a client that notices
    the network is back would."""
    peer.client.config = dataclasses.replace(
        peer.client.config, max_timeout_retry_wait_time=CLIENT_RETRY_SECONDS)
    return peer


async def test_commands_queued_during_an_outage_are_answered_and_reminders_go_out_once(
    start_bot: Any, make_user: Any, make_peer: Any, synapse: LocalSynapse
) -> None:
    bot = await start_bot(reminders={"enabled": True, "grace": "0", "quiet_hours": "",
                                     "max_sends_per_minute": 60})
    bot_id = bot.config.matrix.user_id
    assert bot.reminders is not None and bot.outbox is not None and bot.store is not None
    people = [queueing(await make_peer(make_user(f"outage{i}"))) for i in range(2)]
    # The first person is due a reminder (no cross-signing, no grace): it is recorded now and
    # goes out later. The second shows up after that run, so the next run must look at them.
    rooms = [await open_dm(people[0], bot)]
    recorded = await bot.reminders.scan(deliver=False)
    assert recorded.queued == 1, recorded
    rooms.append(await open_dm(people[1], bot))

    await asyncio.to_thread(synapse.stop)
    down = time.monotonic()
    try:
        # Each person sends a command; their client keeps trying until the server is back.
        commands = [asyncio.create_task(peer.send_text(room, body), name=f"queued {body}")
                    for peer, room, body in zip(people, rooms, ("!backup-status", "!help"),
                                                strict=True)]
        delivery = await bot.outbox.deliver()  # the recorded reminder cannot go out
        assert delivery.sent == 0, delivery
        # The scheduled run falls due: the second person cannot be looked at (the first was,
        # just before, and is held: their reminder is recorded already).
        scan = await bot.reminders.scan()
        assert scan.failed == 1 and scan.queued == 0, scan
        assert not any(task.done() for task in commands), "a send succeeded during the outage"
        await asyncio.sleep(max(0.0, OUTAGE_SECONDS - (time.monotonic() - down)))
    finally:
        await asyncio.to_thread(synapse.start)
    back = time.monotonic()
    command_ids = [await asyncio.wait_for(task, 60) for task in commands]
    logger.warning("queued commands stored %.1f s after Synapse returned", time.monotonic() - back)

    # The answers: the report names the person's own device; the help lists !backup-status.
    status = await people[0].wait_for_message(
        rooms[0], sender=bot_id, timeout=60, predicate=lambda m: people[0].device_id in m.body)
    helped = await people[1].wait_for_message(
        rooms[1], sender=bot_id, timeout=60, predicate=lambda m: "!backup-status" in m.body)
    assert status.decrypted and helped.decrypted
    await wait_for(lambda: not bot.store.pending_messages(), 60, "the reminders to go out")
    assert bot.reminders.last_failed == 0, "the missed run was not done again"
    # A command after all that: every reaction to the outage has happened by its answer.
    for peer, room in zip(people, rooms, strict=True):
        assert "!backup-status" in await peer.ask(room, "!help", bot_id, timeout=60)

    outbox = bot.store.outbox()
    assert sorted(m.user_id for m in outbox) == sorted(p.user_id for p in people)
    assert {m.status for m in outbox} == {"sent"}
    for peer, room, command_id in zip(people, rooms, command_ids, strict=True):
        events = room_events(synapse, peer.client.access_token, room)
        mine = sent_by(events, peer.user_id)
        assert mine.count(command_id) == 1 and len(mine) == 2, \
            f"{peer.user_id}'s queued command was stored {len(mine) - 1} times"
        # welcome, the queued command's answer, one reminder, the last !help's answer
        theirs = sent_by(events, bot_id)
        reminder = next(m.event_id for m in outbox if m.user_id == peer.user_id)
        assert len(theirs) == 4 and reminder in theirs, \
            f"{peer.user_id}: the bot sent {len(theirs)} messages: {theirs}"
        await wait_for(lambda p=peer, r=room, ids=theirs: {  # type: ignore[misc]
            m.event_id for m in p.messages(r)} >= set(ids), 30, "every message to arrive")
        assert not peer.undecryptable
