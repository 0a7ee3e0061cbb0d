"""The local-dev harness itself: the throw-away Synapse and two real E2EE peers.

If these fail, every bot integration test fails for reasons that are not the bot's.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from nerbot.localdev.peer import E2EEPeer
from nerbot.localdev.synapse import SYNAPSE_VERSION, LocalSynapse, SynapseError


async def test_encrypted_dm_between_two_peers(synapse: LocalSynapse, make_user: Any,
                                              make_peer: Any) -> None:
    alice: E2EEPeer = await make_peer(make_user("alice"))
    bob: E2EEPeer = await make_peer(make_user("bob"))

    room_id = await alice.create_encrypted_dm(bob.user_id)
    await alice.wait_for_join(room_id, bob.user_id)  # bob auto-joins the invite
    await bob.wait_for_join(room_id, bob.user_id)

    event_id = await alice.send_text(room_id, "hello")
    received = await bob.wait_for_message(room_id, sender=alice.user_id)

    assert received.body == "hello"
    assert received.event_id == event_id
    assert received.decrypted, "the message must have travelled encrypted"
    assert bob.client.rooms[room_id].encrypted

    # ... and back, which also exercises ask().
    answer_task = asyncio.create_task(
        alice.wait_for_message(room_id, sender=bob.user_id, timeout=30))
    await bob.send_text(room_id, "hi alice")
    answer = await answer_task
    assert answer.body == "hi alice" and answer.decrypted

    # The DM is recorded in alice's m.direct account data, as clients expect.
    direct = await alice.client.list_direct_rooms()
    assert room_id in direct.rooms[bob.user_id]

    # Own messages are not "received": with sender=None bob only sees alice's messages.
    assert [m.body for m in bob.messages(room_id)] == ["hello", "hi alice"]


async def test_registered_user_has_no_devices(synapse: LocalSynapse, make_user: Any) -> None:
    user = make_user("devices")
    login = await asyncio.to_thread(synapse.login, user.user_id, user.password, "count-me")
    token = login["access_token"]
    try:
        devices = await asyncio.to_thread(synapse.request, "GET", "/_matrix/client/v3/devices",
                                          None, token)
        assert [d["device_id"] for d in devices["devices"]] == [login["device_id"]]
    finally:
        await asyncio.to_thread(synapse.logout, token)

    # The admin API sees the same: after that logout the user has no device at all.
    admin = make_user("admin", admin=True)
    admin_token = await asyncio.to_thread(synapse.admin_access_token, admin.localpart,
                                          admin.password)
    try:
        path = synapse.api_path("/_synapse/admin/v2/users/{}/devices", user.user_id)
        listed = await asyncio.to_thread(synapse.request, "GET", path, None, admin_token)
        assert listed["devices"] == []
    finally:
        await asyncio.to_thread(synapse.logout, admin_token)


def test_server_is_loopback_only_and_pinned(synapse: LocalSynapse) -> None:
    assert synapse.url.startswith("http://127.0.0.1:")
    config = json.loads(synapse.config_path.read_text())
    assert config["listeners"] and all(listener["bind_addresses"] == ["127.0.0.1"]
                                      for listener in config["listeners"])
    versions = synapse.request("GET", "/_matrix/client/versions")
    assert versions["versions"]
    server = synapse.request("GET", "/_synapse/admin/v1/server_version")
    assert server["server_version"].startswith(SYNAPSE_VERSION)


async def test_peer_restore_resumes_the_same_device(synapse: LocalSynapse, make_user: Any,
                                                    make_peer: Any, tmp_path: Path) -> None:
    alice = make_user("alice")
    bob: E2EEPeer = await make_peer(make_user("bob"))
    store = tmp_path / "alice-store"
    first = await E2EEPeer.login(synapse.url, alice.user_id, alice.password, store)
    first.start()
    await first.wait_synced()
    room_id = await first.create_encrypted_dm(bob.user_id)
    await first.wait_for_join(room_id, bob.user_id)
    device_id, token = first.device_id, first.client.access_token
    await first.close()  # no logout: the device lives on

    again = await E2EEPeer.restore(synapse.url, alice.user_id, device_id, token, store)
    try:
        again.start()
        await again.wait_synced()
        assert again.device_id == device_id and room_id in again.client.rooms
        await again.send_text(room_id, "still me")
        received = await bob.wait_for_message(room_id, sender=alice.user_id)
        assert received.body == "still me" and received.decrypted
    finally:
        await again.close(logout=True)
    with pytest.raises(RuntimeError):
        await E2EEPeer.restore(synapse.url, alice.user_id, device_id, token, store)


def test_data_dir_survives_a_second_server(synapse: LocalSynapse, tmp_path: Path) -> None:
    """A reused data dir keeps accounts and secrets; only the process is new."""
    data = tmp_path / "hs"
    with LocalSynapse(data, venv_dir=synapse.venv_dir) as first:
        user_id = first.register_user("carol", "pw-carol")
        first_port, first_pid = first.port, first.pid
    assert first_pid is not None and not Path(f"/proc/{first_pid}").exists()
    second = LocalSynapse(data, venv_dir=synapse.venv_dir)
    assert second.port == first_port  # a free previous port is reused, so saved URLs work
    with second:
        assert second.login("carol", "pw-carol")["user_id"] == user_id
        with pytest.raises(SynapseError) as taken:
            second.register_user("carol", "again")
        assert taken.value.errcode == "M_USER_IN_USE"
    assert second.pid is None
