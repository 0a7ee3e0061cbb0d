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
