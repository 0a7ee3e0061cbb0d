"""The federation fixtures themselves: a person on the remote server and one on the session's
server share an encrypted room.

If this fails, every test with people on another server fails for reasons that are not the
bot's.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

from nerbot.localdev.peer import E2EEPeer
from nerbot.localdev.synapse import LocalSynapse

logger = logging.getLogger(__name__)


async def test_remote_and_local_user_share_an_encrypted_room(
    synapse: LocalSynapse, remote_synapse: LocalSynapse, make_user: Any,
    make_remote_user: Any, make_peer: Any,
) -> None:
    assert remote_synapse.server_name == f"127.0.0.1:{remote_synapse.federation_port}"
    alice: E2EEPeer = await make_peer(make_user("alice"))
    bob: E2EEPeer = await make_peer(make_remote_user("bob"))
    assert alice.user_id.endswith(":localhost")
    assert bob.user_id.endswith(":" + remote_synapse.server_name)

    started = time.monotonic()
    room_id = await alice.create_encrypted_room([bob.user_id], name="federated")
    await alice.wait_for_join(room_id, bob.user_id)  # bob auto-joins over federation
    await bob.wait_for_join(room_id, bob.user_id)
    logger.info("Federated invite and join took %.2f s", time.monotonic() - started)

    event_id = await alice.send_text(room_id, "hello from localhost")
    received = await bob.wait_for_message(room_id, sender=alice.user_id)
    assert received.body == "hello from localhost"
    assert received.event_id == event_id
    assert received.decrypted, "the message must have travelled encrypted"

    answer_task = asyncio.create_task(alice.wait_for_message(room_id, sender=bob.user_id))
    await bob.send_text(room_id, "hello from the remote server")
    answer = await answer_task
    assert answer.body == "hello from the remote server" and answer.decrypted

    # The room really lives on both servers: each one's own view lists both members.
    for server, peer in ((synapse, alice), (remote_synapse, bob)):
        path = server.api_path("/_matrix/client/v3/rooms/{}/joined_members", room_id)
        members = await asyncio.to_thread(server.request, "GET", path, None,
                                          peer.client.access_token)
        assert set(members["joined"]) == {alice.user_id, bob.user_id}


def test_both_servers_federate_on_loopback_only(synapse: LocalSynapse,
                                                remote_synapse: LocalSynapse) -> None:
    for server in (synapse, remote_synapse):
        config = json.loads(server.config_path.read_text())
        tls = [listener for listener in config["listeners"] if listener["tls"]]
        assert [(listener["port"], listener["bind_addresses"]) for listener in tls] == [
            (server.federation_port, ["127.0.0.1"])]
        assert server.tls_key_path.stat().st_mode & 0o077 == 0
    assert synapse.federation_port == 8448  # where servers look for a name without a port
