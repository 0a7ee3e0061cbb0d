"""The verification handshake, driven with two real machines (real SAS maths) and a fake clock."""

from __future__ import annotations

from typing import Any

import vodozemac
from nio.crypto import OlmDevice

from nerbot.domain import verification as v
from nerbot.matrix.sas import SasExchange

T0 = 1_700_000_000_000
BOT, BOT_DEV = "@nerbot:hs", "BOTDEV"
ALICE, ALICE_DEV = "@alice:hs", "ALICEDEV"
KEYS = {d: vodozemac.Account().ed25519_key.to_base64() for d in (BOT_DEV, ALICE_DEV, "OTHER")}
MASTERS = {BOT: "BOTMASTER", ALICE: "ALICEMASTER"}


def flow(us: str, our_dev: str, them: str, their_dev: str | None, we_requested: bool,
         txn: str = "txn1") -> v.VerificationFlow:
    def factory(device_id: str) -> SasExchange:
        other = OlmDevice(them, device_id, {"ed25519": KEYS[device_id], "curve25519": "c"})
        return SasExchange(us, our_dev, KEYS[our_dev], other, txn, MASTERS[us], MASTERS[them])
    return v.VerificationFlow(txn, us, our_dev, them, their_dev, we_requested, factory, T0)


def sends(actions: list[v.Action]) -> list[v.Send]:
    return [a for a in actions if isinstance(a, v.Send)]


def deliver(actions: list[v.Action], to: v.VerificationFlow, sender: str, now: int = T0
            ) -> list[v.Action]:
    out: list[v.Action] = []
    for send in sends(actions):
        out += to.receive(send.event_type, sender, dict(send.content), now)
    return out


def of(actions: list[v.Action], kind: type) -> list[Any]:
    return [a for a in actions if isinstance(a, kind)]


def run_bot_requests() -> tuple[v.VerificationFlow, v.VerificationFlow, list[v.Action],
                                list[v.Action]]:
    bot = flow(BOT, BOT_DEV, ALICE, ALICE_DEV, we_requested=True)
    alice = flow(ALICE, ALICE_DEV, BOT, None, we_requested=False)
    ready = alice.receive_request(bot.request_content(T0), T0)
    start = deliver(ready, bot, ALICE)
    accept = deliver(start, alice, BOT)
    key = deliver(accept, bot, ALICE)
    alice_key_and_sas = deliver(key, alice, BOT)
    bot_sas = deliver(alice_key_and_sas, bot, ALICE)
    return bot, alice, alice_key_and_sas, bot_sas


def test_bot_requested_flow_completes_with_identical_emoji() -> None:
    bot, alice, alice_actions, bot_actions = run_bot_requests()
    (alice_sas,), (bot_sas,) = of(alice_actions, v.ShowSas), of(bot_actions, v.ShowSas)
    assert alice_sas == bot_sas and len(bot_sas.emoji) == 7
    assert bot.phase is v.Phase.KEYS and sends(bot_actions) == []  # the bot waits for her MAC
    mac = alice.confirm()  # Alice taps "They match"
    bot_reply = deliver(mac, bot, ALICE)
    assert [s.event_type for s in sends(bot_reply)] == [v.MAC, v.DONE]
    (verified,) = of(bot_reply, v.Verified)
    assert verified == v.Verified(ALICE_DEV, "ALICEMASTER")
    alice_reply = deliver(bot_reply, alice, BOT)
    assert of(alice_reply, v.Verified) == [v.Verified(BOT_DEV, "BOTMASTER")]
    assert of(alice_reply, v.Finished)  # she had the bot's done already
    assert of(deliver(alice_reply, bot, ALICE), v.Finished)
    assert bot.phase is alice.phase is v.Phase.DONE


def test_person_requested_and_started() -> None:
    alice = flow(ALICE, ALICE_DEV, BOT, BOT_DEV, we_requested=True)
    bot = flow(BOT, BOT_DEV, ALICE, None, we_requested=False)
    ready = bot.receive_request(alice.request_content(T0), T0)
    assert bot.their_device == ALICE_DEV
    start = deliver(ready, alice, BOT)        # Alice's client starts SAS
    accept = deliver(start, bot, ALICE)       # the bot accepts
    assert [s.event_type for s in sends(accept)] == [v.ACCEPT]
    key = deliver(accept, alice, BOT)
    bot_actions = deliver(key, bot, ALICE)    # bot sends its key and shows the emoji
    alice_actions = deliver(bot_actions, alice, BOT)
    assert of(bot_actions, v.ShowSas) == of(alice_actions, v.ShowSas)
    final = deliver(alice.confirm(), bot, ALICE)
    assert of(final, v.Verified)


def test_their_cancel_is_recorded_and_nothing_verified() -> None:
    bot, _alice, _, _ = run_bot_requests()
    actions = bot.receive(v.CANCEL, ALICE, {"code": "m.user", "reason": "no"}, T0)
    assert actions == [v.Cancelled("m.user", "no", by_us=False)]
    assert bot.result is None and bot.phase is v.Phase.CANCELLED
    assert bot.receive(v.MAC, ALICE, {}, T0) == []  # finished: further events ignored


def test_tampered_mac_is_key_mismatch() -> None:
    bot, alice, _, _ = run_bot_requests()
    (mac,) = sends(alice.confirm())
    content = dict(mac.content)
    content["mac"] = {k: val[::-1] for k, val in content["mac"].items()}
    actions = bot.receive(v.MAC, ALICE, content, T0)
    assert of(actions, v.Cancelled) == [v.Cancelled("m.key_mismatch", v.REASONS[v.KEY_MISMATCH],
                                                    by_us=True)]
    assert not of(actions, v.Verified) and bot.result is None
    assert sends(actions)[0].event_type == v.CANCEL


def test_inactivity_and_request_timeouts() -> None:
    bot = flow(BOT, BOT_DEV, ALICE, ALICE_DEV, we_requested=True)
    assert bot.tick(T0 + v.REQUEST_VALID_MS) == []
    (_send, cancelled) = bot.tick(T0 + v.REQUEST_VALID_MS + 1)
    assert isinstance(cancelled, v.Cancelled) and cancelled.code == "m.timeout"
    # A stale request is ignored (spec), not answered: the flow ends with nothing to send.
    stale = flow(BOT, BOT_DEV, ALICE, None, we_requested=False)
    old = {"from_device": ALICE_DEV, "methods": [v.SAS_V1], "timestamp": T0}
    assert stale.receive_request(old, T0 + v.REQUEST_VALID_MS + 1) == []
    assert stale.finished and stale.cancel is None
    mid, _alice, _, _ = run_bot_requests()
    assert mid.tick(T0 + v.INACTIVITY_MS) == []
    assert of(mid.tick(T0 + v.INACTIVITY_MS + 1), v.Cancelled)[0].code == "m.timeout"


def test_out_of_order_malformed_and_foreign_events() -> None:
    bot = flow(BOT, BOT_DEV, ALICE, ALICE_DEV, we_requested=True)
    assert of(bot.receive(v.KEY, ALICE, {"key": "x"}, T0), v.Cancelled)[0].code == \
        "m.unexpected_message"
    bot = flow(BOT, BOT_DEV, ALICE, ALICE_DEV, we_requested=True)
    assert of(bot.receive(v.READY, "@mallory:hs", {}, T0), v.Cancelled)[0].code == \
        "m.user_mismatch"
    bot = flow(BOT, BOT_DEV, ALICE, ALICE_DEV, we_requested=True)
    assert of(bot.receive(v.READY, ALICE, {"methods": [v.SAS_V1]}, T0), v.Cancelled)[0].code \
        == "m.invalid_message"
    bot = flow(BOT, BOT_DEV, ALICE, None, we_requested=False)
    assert of(bot.receive_request({"from_device": "D", "methods": ["m.qr_code.show.v1"]}, T0),
              v.Cancelled)[0].code == "m.unknown_method"
    for malformed in ({}, {"from_device": "D"}, {"from_device": "D", "methods": "m.sas.v1"},
                      {"from_device": "D" * 10_000, "methods": [v.SAS_V1]}):
        bot = flow(BOT, BOT_DEV, ALICE, None, we_requested=False)
        assert bot.receive_request(malformed, T0) == [] and bot.finished  # ignored, no cancel
    bot = flow(BOT, BOT_DEV, ALICE, ALICE_DEV, we_requested=True)
    assert bot.receive("m.key.verification.unknown", ALICE, {}, T0) == []
    assert bot.phase is v.Phase.REQUESTED


def test_ready_from_another_of_their_devices_is_ignored() -> None:
    bot = flow(BOT, BOT_DEV, ALICE, ALICE_DEV, we_requested=True)
    assert bot.receive(v.READY, ALICE, {"from_device": "OTHER", "methods": [v.SAS_V1]}, T0) == []
    actions = bot.receive(v.READY, ALICE, {"from_device": ALICE_DEV, "methods": [v.SAS_V1]}, T0)
    assert [s.event_type for s in sends(actions)] == [v.START]


def test_both_start_the_smaller_user_wins() -> None:
    bot = flow(BOT, BOT_DEV, ALICE, ALICE_DEV, we_requested=True)
    bot.receive(v.READY, ALICE, {"from_device": ALICE_DEV, "methods": [v.SAS_V1]}, T0)
    alice = flow(ALICE, ALICE_DEV, BOT, BOT_DEV, we_requested=False)
    alice_start = alice.sas_factory(BOT_DEV).make_start({})
    # "@alice:hs" < "@nerbot:hs": Alice's start wins, the bot answers it with accept
    actions = bot.receive(v.START, ALICE, alice_start, T0)
    assert [s.event_type for s in sends(actions)] == [v.ACCEPT]


def test_legacy_bare_start_is_accepted() -> None:
    bot = flow(BOT, BOT_DEV, ALICE, None, we_requested=False)
    alice = flow(ALICE, ALICE_DEV, BOT, BOT_DEV, we_requested=True)
    start = alice.sas_factory(BOT_DEV).make_start({})
    actions = bot.receive(v.START, ALICE, start, T0)
    assert [s.event_type for s in sends(actions)] == [v.ACCEPT]
    assert bot.their_device == ALICE_DEV


def test_user_cancel() -> None:
    bot, _alice, _, _ = run_bot_requests()
    (send, cancelled) = bot.user_cancel()
    assert isinstance(send, v.Send) and send.content["code"] == "m.user"
    assert isinstance(cancelled, v.Cancelled) and cancelled.by_us
    assert bot.user_cancel() == []


def test_start_carries_transport_fields_inside_the_commitment() -> None:
    fields = {"m.relates_to": {"rel_type": "m.reference", "event_id": "txn1"}}
    bot = flow(BOT, BOT_DEV, ALICE, ALICE_DEV, we_requested=True)
    bot.start_fields = fields
    alice = flow(ALICE, ALICE_DEV, BOT, None, we_requested=False)
    ready = alice.receive_request(bot.request_content(T0), T0)
    start = deliver(ready, bot, ALICE)
    assert sends(start)[0].content["m.relates_to"] == fields["m.relates_to"]
    key = deliver(deliver(start, alice, BOT), bot, ALICE)
    shown = deliver(deliver(key, alice, BOT), bot, ALICE)
    assert of(shown, v.ShowSas) and bot.phase is v.Phase.KEYS  # commitment held
