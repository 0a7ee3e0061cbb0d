"""Emoji verification between the bot and Element's crypto (matrix-js-sdk + Rust crypto).

Interop can only be proven against the crypto people run: every test drives a js-sdk peer
against the real bot on a real Synapse. The emoji the bot shows are compared with the peer's.

Every test runs once per SDK pair (``js-sdk-36``: the older clients, which do not all update;
``js-sdk-43``: what Element Web ships today), and so does the hygiene check: what the bot's
``!backup-status`` makes of a person whose Element set up cross-signing and recovery.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import pytest
from botdm import start_admin_login_bot

from nerbot.app import NerbotApp
from nerbot.commands.registry import IncomingText
from nerbot.domain.assessment import FindingKind, SessionMark
from nerbot.domain.facts import BackupState
from nerbot.i18n.catalog import load_sas_emoji
from nerbot.ids import EventId, RoomId, UserId
from nerbot.localdev.jspeer import (
    DEFAULT_SDK,
    SDK_PAIRS,
    JsPeer,
    ensure_installed,
    node_available,
)

logger = logging.getLogger(__name__)
pytestmark = pytest.mark.timeout(180)
TABLE = load_sas_emoji()


@pytest.fixture(scope="session", params=list(SDK_PAIRS))
def js_sdk(request: pytest.FixtureRequest) -> str:
    """The SDK pair the person's Element runs (the test ID), installed from its lock file."""
    assert node_available(), "node and npm are required (.ci/run installs them)"
    ensure_installed(str(request.param))
    return str(request.param)


class Clock:
    """Real time plus an offset the test can advance (for the 10-minute timeout)."""

    def __init__(self) -> None:
        self.offset_ms = 0

    def now_ms(self) -> int:
        return int(time.time() * 1000) + self.offset_ms


@dataclass
class Setup:
    bot: NerbotApp
    peer: JsPeer
    user_id: str
    room_id: str
    shown: list[tuple[int, ...]]
    clock: Clock

    @property
    def bot_id(self) -> str:
        return self.bot.config.matrix.user_id

    @property
    def bot_device(self) -> str:
        assert self.bot.session is not None
        return self.bot.session.device_id

    async def command(self, body: str) -> None:
        """The person's command, through the bot's real router (as if typed in the DM)."""
        assert self.bot.router is not None
        await self.bot.router.handle(IncomingText(UserId(self.user_id), RoomId(self.room_id),
                                                  EventId(f"$cmd{time.time()}"), body, True))

    def bot_emoji(self) -> list[list[str]]:
        (indices,) = self.shown[-1:]
        return [[TABLE[i].emoji, TABLE[i].names["en"]] for i in indices]

    def records(self) -> list[dict[str, Any]]:
        assert self.bot.store is not None
        return self.bot.store.verifications(UserId(self.user_id))


@contextlib.asynccontextmanager
async def element_in_dm(bot: NerbotApp, user: Any, clock: Clock, sdk: str = DEFAULT_SDK
                        ) -> AsyncIterator[Setup]:
    """A js-sdk peer (Element's crypto, on the pair ``sdk``) for ``user`` on their own
    homeserver, cross-signed, in an encrypted DM with the bot, knowing the bot's device; the
    bot's emoji are recorded."""
    peer = await JsPeer.start(sdk, name=user.localpart)
    try:
        await peer.login(user.homeserver_url, user.user_id, user.password,
                         device_name="Element")
        await peer.call("bootstrap_cross_signing", password=user.password)
        bot_id = bot.config.matrix.user_id
        room_id = str((await peer.call("create_dm", user_id=bot_id))["room_id"])
        await peer.call("wait_member", room_id=room_id, user_id=bot_id, timeout=30)
        assert bot.session is not None
        await peer.call("track", user_id=bot_id, device_id=bot.session.device_id, timeout=30)
        shown: list[tuple[int, ...]] = []
        assert bot.verifier is not None and bot.verifier.ui is not None
        real_show = bot.verifier.ui.show_sas

        async def spy(user_id: UserId, emoji: tuple[int, ...], decimals: Any) -> None:
            shown.append(emoji)
            await real_show(user_id, emoji, decimals)

        bot.verifier.ui.show_sas = spy  # type: ignore[method-assign]
        for _ in range(100):  # the bot must know the DM before in-room events can flow
            if bot.store is not None and bot.store.get_dm_room(UserId(user.user_id)):
                break
            await asyncio.sleep(0.1)
        yield Setup(bot, peer, user.user_id, room_id, shown, clock)
    finally:
        await peer.close()


@pytest.fixture
async def setup(js_sdk: str, start_bot: Callable[..., Any], make_user: Any
                ) -> AsyncIterator[Setup]:
    clock = Clock()
    bot = await start_bot(clock=clock)
    async with element_in_dm(bot, make_user("element"), clock, js_sdk) as opened:
        yield opened


async def finish_and_check(s: Setup, txn: str | None = None) -> None:
    """Compare emoji, let the person confirm, then check trust on both sides."""
    sas = await s.peer.next_event("sas", timeout=30)
    for _ in range(50):
        if s.shown:
            break
        await asyncio.sleep(0.1)
    assert s.bot_emoji() == sas["emoji"], "the bot must show exactly the emoji Element shows"
    await s.peer.call("confirm", match=True)
    await s.peer.next_event("done", timeout=30)
    status = await s.peer.poll_status(s.bot_id, s.bot_device, timeout=15,
                                      device_verified=True, identity_verified=True)
    assert status["device_verified"] and status["identity_verified"]
    for _ in range(50):
        if s.records() and s.records()[-1]["result"] == "verified":
            break
        await asyncio.sleep(0.1)
    record = s.records()[-1]
    assert record["result"] == "verified" and record["master_key_signed"] == 1
    assert record["duration_ms"] is not None
    # the bot's signature is on the person's master key now
    assert s.bot.http is not None
    _, keys = await s.bot.http.request("POST", "/_matrix/client/v3/keys/query",
                                       {"device_keys": {s.user_id: []}})
    master = keys["master_keys"][s.user_id]
    assert s.bot_id in master.get("signatures", {}), "bot did not sign the verified identity"


async def test_person_requests_to_device(setup: Setup) -> None:
    await setup.peer.call("request_device", user_id=setup.bot_id, device_id=setup.bot_device,
                          start_sas=True)
    await finish_and_check(setup)
    assert setup.records()[-1]["transport"] == "to_device"
    assert setup.records()[-1]["direction"] == "incoming"


async def test_bot_requests_to_device_with_verify_device(setup: Setup) -> None:
    await setup.command(f"!verify {setup.peer.device_id}")
    await setup.peer.call("accept_next", timeout=30)
    await finish_and_check(setup)
    assert setup.records()[-1]["direction"] == "outgoing"


async def test_person_requests_in_room(setup: Setup) -> None:
    await setup.peer.call("request_dm", user_id=setup.bot_id, room_id=setup.room_id,
                          start_sas=True)
    await finish_and_check(setup)
    assert setup.records()[-1]["transport"] == "in_room"


async def test_bot_requests_in_room_with_verify(setup: Setup) -> None:
    await setup.command("!verify")
    await setup.peer.call("accept_next", timeout=30)
    await finish_and_check(setup)
    record = setup.records()[-1]
    assert record["transport"] == "in_room" and record["direction"] == "outgoing"


async def test_person_cancels_nothing_verified(setup: Setup) -> None:
    await setup.peer.call("request_device", user_id=setup.bot_id, device_id=setup.bot_device,
                          start_sas=True)
    await setup.peer.next_event("sas", timeout=30)
    await setup.peer.call("cancel", code="m.user")
    for _ in range(50):
        if setup.records() and setup.records()[-1]["result"] != "pending":
            break
        await asyncio.sleep(0.1)
    record = setup.records()[-1]
    assert record["result"] == "cancelled" and record["cancel_code"] == "m.user"
    status = await setup.peer.call("status", user_id=setup.bot_id, device_id=setup.bot_device)
    assert not status["device_verified"] and not status["identity_verified"]


async def test_tampered_mac_is_key_mismatch(setup: Setup) -> None:
    verifier = setup.bot.verifier
    assert verifier is not None
    real_handle = verifier._handle

    async def tamper(transport: Any, txn: str, event_type: str, sender: str,
                     content: dict[str, Any], room_id: Any) -> None:
        if event_type == "m.key.verification.mac":
            content = {**content, "mac": {k: v[::-1] for k, v in content["mac"].items()}}
        await real_handle(transport, txn, event_type, sender, content, room_id)

    verifier._handle = tamper  # type: ignore[method-assign]
    await setup.peer.call("request_device", user_id=setup.bot_id, device_id=setup.bot_device,
                          start_sas=True)
    await setup.peer.next_event("sas", timeout=30)
    await setup.peer.call("confirm", match=True)
    cancelled = await setup.peer.next_event("cancelled", timeout=30)
    assert cancelled["code"] == "m.key_mismatch"
    record = setup.records()[-1]
    assert record["result"] == "cancelled" and record["cancel_code"] == "m.key_mismatch"
    assert record["master_key_signed"] == 0


async def test_stalled_peer_times_out(setup: Setup) -> None:
    await setup.command(f"!verify {setup.peer.device_id}")
    await setup.peer.call("stall", on=True)
    verifier = setup.bot.verifier
    assert verifier is not None and verifier.active
    setup.clock.offset_ms = 11 * 60 * 1000  # eleven minutes later
    await verifier.tick()
    record = setup.records()[-1]
    assert record["result"] == "timeout" and record["cancel_code"] == "m.timeout"
    assert not verifier.active


async def test_requests_from_users_not_allowed_are_never_accepted(
    js_sdk: str, start_bot: Callable[..., Any], make_user: Any, synapse: Any
) -> None:
    bot = await start_bot(allowed_servers=["elsewhere.example"])
    user = make_user("stranger")
    peer = await JsPeer.start(js_sdk, name=user.localpart)
    try:
        await peer.login(synapse.url, user.user_id, user.password, device_name="Element")
        assert bot.session is not None
        # A shared room (opened by the bot itself), so the peer learns the bot's device.
        room = await bot.session.client.room_create(
            invite=[user.user_id],
            initial_state=[{"type": "m.room.encryption", "state_key": "",
                            "content": {"algorithm": "m.megolm.v1.aes-sha2"}}])
        await peer.call("join", room_id=room.room_id)
        await peer.call("track", user_id=bot.config.matrix.user_id,
                        device_id=bot.session.device_id, timeout=30)
        await peer.call("request_device", user_id=bot.config.matrix.user_id,
                        device_id=bot.session.device_id, start_sas=True)
        cancelled = await peer.next_event("cancelled", timeout=30)
        assert cancelled["code"] == "m.user"
        assert not [e for e in peer.events if e["event"] == "sas"]
        assert bot.store is not None and bot.store.verifications() == []
    finally:
        await peer.close()


async def test_practice_guide_hands_over_to_verification_and_moves_on(setup: Setup) -> None:
    await setup.command("!guide practice")
    store = setup.bot.store
    assert store is not None
    progress = store.get_guide_progress(UserId(setup.user_id))
    assert progress is not None and (progress.guide, progress.step) == ("practice", 0)
    await setup.command("!verify")
    await setup.peer.call("accept_next", timeout=30)
    await finish_and_check(setup)
    for _ in range(50):  # the success moves the guide past its "verified with me" checkpoint
        progress = store.get_guide_progress(UserId(setup.user_id))
        if progress is not None and progress.step == 4:
            break
        await asyncio.sleep(0.1)
    assert progress is not None and progress.step == 4
    await setup.command("!next")  # the last step: the guide finishes with its summary
    assert store.get_guide_progress(UserId(setup.user_id)) is None
    assert [r["result"] for r in store.guide_runs(UserId(setup.user_id))] == ["finished"]


async def test_backup_status_sees_elements_cross_signing_then_recovery(
    js_sdk: str, start_bot: Callable[..., Any], make_user: Any, synapse: Any
) -> None:
    """Hygiene against Element's crypto: the identity and device signature js-sdk uploads
    count as cross-signed, and its secret storage and key backup are seen (admin-login check)."""
    bot = await start_admin_login_bot(start_bot, make_user, synapse)
    assert bot.hygiene is not None
    async with element_in_dm(bot, make_user("element"), Clock(), js_sdk) as s:
        device = s.peer.device_id
        # Cross-signing only (element_in_dm bootstrapped it): the session is verified by its
        # own identity, and nothing protects the keys yet.
        report = await bot.hygiene.assess_one(s.user_id, fresh=True)
        assert report.cross_signing is True
        assert {r.device.device_id: r.mark for r in report.sessions} == {
            device: SessionMark.VERIFIED}
        assert report.backup is BackupState.ABSENT
        assert {f.kind for f in report.findings} == {FindingKind.NO_BACKUP,
                                                      FindingKind.NO_SECRET_STORAGE}

        recovery = await s.peer.call("bootstrap_recovery")
        assert recovery["secret_storage_ready"] is True and recovery["backup_version"]
        assert recovery["backup_trusted"] is True
        assert recovery["backup_active_version"] == recovery["backup_version"]
        report = await bot.hygiene.assess_one(s.user_id, fresh=True)
        assert report.ok, report.findings
        assert report.backup is BackupState.PRESENT
        assert report.backup_version == recovery["backup_version"]
        assert {r.device.device_id: r.mark for r in report.sessions} == {
            device: SessionMark.VERIFIED}

        # And as the person reads it: asked from Element's crypto in the encrypted DM.
        await s.peer.call("send_text", room_id=s.room_id, body="!lang en",
                          reply_from=s.bot_id, expect="English", timeout=30)
        reply = await s.peer.call("send_text", room_id=s.room_id, body="!backup-status",
                                  reply_from=s.bot_id, expect="Cross-signing", timeout=60)
        text = reply["reply"]["body"]
        assert "Cross-signing identity: set up" in text
        assert f"Key backup: on (version {recovery['backup_version']})" in text
        (line,) = [x for x in text.splitlines() if f"`{device}`" in x]
        assert line.endswith("— verified")
