"""Commands every deployment has: help, language, fingerprint."""

from __future__ import annotations

from collections.abc import Callable

from nerbot.commands.registry import Command, CommandContext, CommandRegistry, UsageError
from nerbot.i18n import LANGUAGES
from nerbot.store import Store


def basic_commands(
    registry: CommandRegistry,
    store: Store,
    now_ms: Callable[[], int],
    fingerprint: Callable[[], str],
) -> list[Command]:
    """Build the basic commands over the services they need (no globals)."""

    async def help_(ctx: CommandContext) -> None:
        lines = [ctx.t("help.header")]
        for command in registry.commands:
            usage, summary = ctx.t(command.usage_key), ctx.t(command.summary_key)
            lines.append(ctx.t("help.line", usage=usage, summary=summary))
        lines.append("")
        lines.append(ctx.t("help.footer"))
        await ctx.messenger.send_notice(ctx.room_id, "\n".join(lines))

    async def lang(ctx: CommandContext) -> None:
        if not ctx.args:
            await ctx.reply("cmd.lang.current")
            return
        choice = ctx.args[0].lower()
        if len(ctx.args) != 1 or choice not in LANGUAGES:
            raise UsageError
        store.set_language(ctx.sender, choice, now_ms())
        await ctx.messenger.send_notice(ctx.room_id, ctx.catalog.t(choice, "cmd.lang.set"))

    async def fingerprint_(ctx: CommandContext) -> None:
        await ctx.reply("cmd.fingerprint.text", fingerprint=fingerprint())

    return [
        Command("help", help_, aliases=("h", "帮助")),
        Command("lang", lang, aliases=("language", "语言")),
        Command("fingerprint", fingerprint_),
    ]
