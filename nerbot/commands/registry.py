"""Declared commands and the router that dispatches ``!name args`` to them."""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

from nerbot.domain.admin_trust import AdminCheck
from nerbot.errors import FactsUnavailable
from nerbot.i18n import Catalog, Language
from nerbot.i18n.quote import quoted
from nerbot.ids import EventId, RoomId, UserId, server_of
from nerbot.metrics import UNKNOWN_COMMAND, BotMetrics
from nerbot.ports import Messenger

logger = logging.getLogger(__name__)

PREFIX = "!"


@dataclass(frozen=True, slots=True)
class ParsedCommand:
    """A message that looks like a command: ``!name arg1 arg2``."""

    name: str
    args: tuple[str, ...]


def parse_command(body: str) -> ParsedCommand | None:
    """Split ``!name args``; None for ordinary text (so chatter is never mistaken for a command)."""
    text = body.strip()
    if not text.startswith(PREFIX) or len(text) == len(PREFIX):
        return None
    parts = text[len(PREFIX):].split()
    if not parts:
        return None
    return ParsedCommand(parts[0].lower(), tuple(parts[1:]))


@dataclass(frozen=True, slots=True)
class CommandContext:
    """Everything a handler needs to know about one incoming command."""

    sender: UserId
    room_id: RoomId
    event_id: EventId
    is_dm: bool
    language: Language
    args: tuple[str, ...]
    messenger: Messenger
    catalog: Catalog
    sender_key: str | None = None  # the sending session's identity key (encrypted only)
    check_admin: Callable[[UserId, str | None], Awaitable[AdminCheck]] | None = None

    async def require_admin(self, refusal: str = "command.admin_only") -> bool:
        """True if the sender is an admin writing from a session their identity signed;
        otherwise answers why not (``refusal`` for someone who is no admin at all)."""
        check = (AdminCheck.NOT_ADMIN if self.check_admin is None
                 else await self.check_admin(self.sender, self.sender_key))
        if check is AdminCheck.TRUSTED:
            return True
        if check is not AdminCheck.NOT_ADMIN:
            logger.warning("Admin command from %s refused: %s", self.sender, check.value)
        await self.reply(refusal if check is AdminCheck.NOT_ADMIN else f"admin.{check.value}")
        return False

    def t(self, key: str, **params: object) -> str:
        return self.catalog.t(self.language, key, **params)

    @staticmethod
    def quoted(text: str) -> str:
        """What the person typed, made safe to echo in a reply (``nerbot.i18n.quote``)."""
        return quoted(text)

    async def reply(self, key: str, **params: object) -> None:
        """Answer in the room the command came from, in the sender's language."""
        await self.messenger.send_notice(self.room_id, self.t(key, **params))


class UsageError(Exception):
    """Raised by a handler when its arguments are wrong; the router answers with the usage."""


Handler = Callable[[CommandContext], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Command:
    """One chat command. ``summary``/``usage`` text lives in the catalog under ``cmd.<name>``."""

    name: str
    handler: Handler
    aliases: tuple[str, ...] = ()
    admin_only: bool = False

    @property
    def summary_key(self) -> str:
        return f"cmd.{self.name}.summary"

    @property
    def usage_key(self) -> str:
        return f"cmd.{self.name}.usage"


@dataclass
class CommandRegistry:
    """Commands by name and alias; ``!help`` is generated from it."""

    commands: list[Command] = field(default_factory=list)
    _by_name: dict[str, Command] = field(default_factory=dict)

    def add(self, command: Command) -> None:
        for name in (command.name, *command.aliases):
            if name in self._by_name:
                raise ValueError(f"command name {name!r} registered twice")
            self._by_name[name] = command
        self.commands.append(command)

    def extend(self, commands: Iterable[Command]) -> None:
        for command in commands:
            self.add(command)

    def get(self, name: str) -> Command | None:
        return self._by_name.get(name)


@dataclass(frozen=True, slots=True)
class IncomingText:
    """A text message the bot may have to act on."""

    sender: UserId
    room_id: RoomId
    event_id: EventId
    body: str
    is_dm: bool
    sender_key: str | None = None  # set for a message that was decrypted


class CommandRouter:
    """Parses messages, checks permissions and runs handlers; never lets a handler crash the bot."""

    def __init__(
        self,
        registry: CommandRegistry,
        catalog: Catalog,
        messenger: Messenger,
        language_of: Callable[[UserId], str | None],
        check_admin: Callable[[UserId, str | None], Awaitable[AdminCheck]],
        interpret: Callable[[IncomingText], str | None] | None = None,
        metrics: BotMetrics | None = None,
    ) -> None:
        self.registry = registry
        self.metrics = metrics
        self.interpret = interpret  # plain text that stands for a command ("好了" → "!next")
        self.catalog = catalog
        self.messenger = messenger
        self.language_of = language_of
        self.check_admin = check_admin

    async def handle(self, message: IncomingText) -> bool:
        """Act on one message; True if it was a command (known or not)."""
        parsed = parse_command(message.body)
        if parsed is None and self.interpret is not None:
            meant = self.interpret(message)
            parsed = parse_command(meant) if meant else None
        if parsed is None:
            return False
        language = self.catalog.language(self.language_of(message.sender))
        ctx = CommandContext(
            sender=message.sender,
            room_id=message.room_id,
            event_id=message.event_id,
            is_dm=message.is_dm,
            language=language,
            args=parsed.args,
            messenger=self.messenger,
            catalog=self.catalog,
            sender_key=message.sender_key,
            check_admin=self.check_admin,
        )
        command = self.registry.get(parsed.name)
        if command is None:
            self._count(UNKNOWN_COMMAND, "unknown")  # never what they typed: bounded labels
            await ctx.reply("command.unknown", name=quoted(PREFIX + parsed.name))
            return True
        started = time.perf_counter()
        outcome = "ok"
        try:
            if command.admin_only and not await ctx.require_admin():
                self._count(command.name, "refused")
                return True
            await command.handler(ctx)
        except UsageError:
            outcome = "usage"
            await ctx.reply("command.usage", usage=ctx.t(command.usage_key))
        except FactsUnavailable as exc:  # their homeserver (or ours) did not answer: say so
            outcome = "unavailable"
            logger.warning("Command %s from %s: facts of %s unavailable", command.name,
                           message.sender, exc.user_id)
            await ctx.reply("command.facts_unavailable", user=exc.user_id,
                            server=server_of(exc.user_id))
        except Exception:
            outcome = "failed"
            ref = secrets.token_hex(4)
            logger.exception("Command %s failed (reference %s)", command.name, ref)
            await ctx.reply("command.failed", ref=ref)
        self._count(command.name, outcome, time.perf_counter() - started)
        return True

    def _count(self, name: str, outcome: str, seconds: float | None = None) -> None:
        if self.metrics is not None:
            self.metrics.command(name, outcome, seconds)
