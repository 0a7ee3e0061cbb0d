"""``!backup-status``: a user's own E2EE health, always delivered in their encrypted DM."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

from nerbot.commands.registry import Command, CommandContext, UsageError
from nerbot.commands.report_text import render_report
from nerbot.domain.assessment import UserReport
from nerbot.i18n.quote import quoted
from nerbot.ids import UserId, is_user_id

logger = logging.getLogger(__name__)


class Assessor(Protocol):
    async def assess_one(self, user_id: str, fresh: bool = False) -> UserReport: ...


def status_commands(
    hygiene: Assessor,
    user_exists: Callable[[str], Awaitable[bool]],
) -> list[Command]:
    async def backup_status(ctx: CommandContext) -> None:
        if len(ctx.args) > 1:
            raise UsageError
        target = UserId(ctx.args[0]) if ctx.args else ctx.sender
        about_self = target == ctx.sender
        if not about_self:
            if not await ctx.require_admin(refusal="status.refused_other"):
                return
            if not is_user_id(target):
                await ctx.reply("status.not_a_user", arg=quoted(target))
                return
        # Fresh: the person is looking right now, so no cached view of their sessions.
        report = await hygiene.assess_one(target, fresh=True)
        if not report.exists or (not about_self and not await user_exists(target)):
            text = ctx.t("status.unknown_user", user=quoted(target))
        else:
            text = render_report(ctx.catalog, ctx.language, report, about_self)
        if ctx.is_dm:
            await ctx.messenger.send_notice(ctx.room_id, text)
        else:
            # Device lists never go to a shared room: answer briefly there, details in the DM.
            await ctx.messenger.send_dm(ctx.sender, text)
            await ctx.reply("status.sent_dm", user=ctx.sender)

    return [Command("backup-status", backup_status, aliases=("status", "备份状态"))]
