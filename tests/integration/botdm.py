"""Helpers shared by integration tests (imported as a sibling module, not a fixture)."""

from __future__ import annotations

from typing import Any

from nerbot.app import NerbotApp


async def open_dm(peer: Any, bot: NerbotApp) -> str:
    """The peer opens an encrypted DM with the bot and reads its welcome."""
    bot_id = bot.config.matrix.user_id
    room_id = await peer.create_encrypted_dm(bot_id)
    await peer.wait_for_join(room_id, bot_id)
    welcome = await peer.wait_for_message(room_id, sender=bot_id)
    assert "nerbot" in welcome.body
    return str(room_id)


async def open_group(peer: Any, bot: NerbotApp, others: list[str]) -> str:
    """The peer opens an encrypted group room with the bot and ``others``; welcome read."""
    bot_id = bot.config.matrix.user_id
    room_id = await peer.create_encrypted_room([bot_id, *others])
    await peer.wait_for_join(room_id, bot_id)
    await peer.wait_for_message(room_id, sender=bot_id)  # the bot's welcome
    return str(room_id)


def adopt_peer(synapse: Any, user: Any, peer: Any) -> Any:
    """The builder's view of an account whose first device is a real E2EE peer."""
    from nerbot.localdev.accounts import BuiltAccount, BuiltDevice
    from nerbot.matrix.crosssigning import SigningKey

    keys = synapse.request("POST", "/_matrix/client/v3/keys/query",
                           {"device_keys": {user.user_id: []}}, token=peer.client.access_token)
    device_keys = keys["device_keys"][user.user_id][peer.device_id]
    device_keys.pop("unsigned", None)
    device = BuiltDevice(peer.device_id, peer.client.access_token, SigningKey.generate(), True,
                         device_keys)
    return BuiltAccount(user.user_id, user.localpart, user.password,
                        devices={peer.device_id: device})


async def start_admin_login_bot(start_bot: Any, make_user: Any, synapse: Any,
                                **options: Any) -> NerbotApp:
    """A bot with a server admin's token and ``backup_check = "admin-login"``: it reads
    account data (secret storage, backup) and session last-seen times."""
    admin = make_user("admin", admin=True)
    token = synapse.admin_access_token(admin.localpart, admin.password)
    bot: NerbotApp = await start_bot(admin_token=token, backup_check="admin-login", **options)
    return bot


async def cross_signed(synapse: Any, user: Any, peer: Any) -> tuple[Any, Any]:
    """Give the peer's account a cross-signing identity that signs the peer's device, as
    current Element does at first login; returns the builder and the account for more."""
    import asyncio

    from nerbot.localdev.accounts import AccountBuilder

    builder, account = AccountBuilder(synapse), adopt_peer(synapse, user, peer)
    await asyncio.to_thread(builder.set_up_cross_signing, account)
    await asyncio.to_thread(builder.sign_device, account, peer.device_id)
    return builder, account
