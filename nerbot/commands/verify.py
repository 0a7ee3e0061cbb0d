"""``!verify``: emoji verification with the bot, and what the person sees along the way."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

import emoji as emoji_lib

from nerbot.commands.registry import Command, CommandContext, UsageError
from nerbot.errors import VerificationRefused
from nerbot.i18n import Catalog, Voice
from nerbot.i18n.catalog import SasEmoji
from nerbot.ids import RoomId, UserId
from nerbot.ports import Messenger

logger = logging.getLogger(__name__)

MISMATCH_CODES = {"m.key_mismatch", "m.mismatched_sas", "m.mismatched_commitment"}


class Verifier(Protocol):
    async def request_in_room(self, user_id: UserId, room_id: RoomId, body: str) -> str: ...
    async def request_to_device(self, user_id: UserId, device_id: str) -> str: ...
    async def cancel_for(self, user_id: UserId) -> bool: ...
    def is_allowed(self, user_id: str) -> bool: ...


class VerificationConversation:
    """Tells the person, in their language and in their DM, what to compare and what happened."""

    def __init__(self, messenger: Messenger, catalog: Catalog, table: list[SasEmoji],
                 language_of: Callable[[UserId], str | None]) -> None:
        self.messenger = messenger
        self.table = table
        self.voice = Voice(catalog, language_of)
        # Called after a successful verification (the practice walkthrough moves on).
        self.on_verified: list[Callable[[UserId], Awaitable[None]]] = []

    def sas_text(self, user_id: UserId, indices: tuple[int, ...],
                 decimals: tuple[int, int, int]) -> str:
        lang = self.voice.language(user_id)
        # The spec table's names, so they read exactly as in Element.
        shown = "  ".join(f"{self.table[i].emoji} {self.table[i].names[lang]}" for i in indices)
        numbers = " ".join(str(n) for n in decimals)
        return self.voice.t(user_id, "verify.sas", emoji=shown, numbers=numbers)

    async def show_sas(self, user_id: UserId, emoji: tuple[int, ...],
                       decimals: tuple[int, int, int]) -> None:
        await self.messenger.send_dm(user_id, self.sas_text(user_id, emoji, decimals))

    async def verified(self, user_id: UserId, device_id: str, identity: bool) -> None:
        mark = emoji_lib.emojize(":check_mark_button:")
        key = "verify.verified_identity" if identity else "verify.verified_device"
        await self.messenger.send_dm(user_id, self.voice.t(user_id, key, mark=mark,
                                                      device_id=device_id))
        for listener in self.on_verified:
            try:
                await listener(user_id)
            except Exception:  # a listener's failure must not undo the verification message
                logger.exception("on_verified listener failed for %s", user_id)

    async def cancelled(self, user_id: UserId, code: str, by_us: bool) -> None:
        if code == "m.user":
            text = self.voice.t(user_id, "verify.cancelled_user")
        elif code == "m.timeout":
            text = self.voice.t(user_id, "verify.cancelled_timeout")
        elif code in MISMATCH_CODES:
            text = self.voice.t(user_id, "verify.cancelled_mismatch",
                           mark=emoji_lib.emojize(":cross_mark:"))
        else:
            text = self.voice.t(user_id, "verify.cancelled_other", code=code)
        await self.messenger.send_dm(user_id, text)

    async def refused(self, user_id: UserId, reason: str) -> None:
        await self.messenger.send_dm(user_id, self.voice.t(user_id, f"verify.{reason}"))


def verify_commands(verifier: Verifier, ensure_dm: Callable[[UserId], Awaitable[RoomId]]
                    ) -> list[Command]:
    async def verify(ctx: CommandContext) -> None:
        if len(ctx.args) > 1:
            raise UsageError
        if ctx.args and ctx.args[0].lower() in ("cancel", "取消", "stop"):
            if not await verifier.cancel_for(ctx.sender):
                await ctx.reply("verify.none_active")
            return
        if not verifier.is_allowed(ctx.sender):  # before any DM is opened for them
            await ctx.reply("verify.not_allowed")
            return
        try:
            if ctx.args:
                device_id = ctx.args[0]
                await verifier.request_to_device(ctx.sender, device_id)
                await ctx.messenger.send_dm(
                    ctx.sender, ctx.t("verify.requested_device", device_id=ctx.quoted(device_id)))
            else:
                room_id = ctx.room_id if ctx.is_dm else await ensure_dm(ctx.sender)
                await verifier.request_in_room(ctx.sender, room_id, ctx.t("verify.requested_room"))
                await ctx.messenger.send_notice(room_id, ctx.t("verify.requested_room"))
            if not ctx.is_dm:
                await ctx.reply("verify.dm_only")
        except VerificationRefused as exc:
            await ctx.reply(f"verify.{exc.reason}", device_id=ctx.quoted("".join(ctx.args[:1])))

    return [Command("verify", verify, aliases=("验证",))]
