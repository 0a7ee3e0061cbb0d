"""Command parsing and routing against a recording messenger (pure logic, no homeserver)."""

from __future__ import annotations

import pytest

from nerbot.commands.basic import basic_commands
from nerbot.commands.registry import (
    Command,
    CommandContext,
    CommandRegistry,
    CommandRouter,
    IncomingText,
    ParsedCommand,
    parse_command,
)
from nerbot.i18n import Catalog
from nerbot.ids import EventId, RoomId, UserId
from nerbot.store import Store

ALICE = UserId("@alice:localhost")
ROOM = RoomId("!room:localhost")


class RecordingMessenger:
    def __init__(self) -> None:
        self.sent: list[tuple[str, str]] = []

    async def send_notice(self, room_id: RoomId, markdown: str) -> str | None:
        self.sent.append((room_id, markdown))
        return "$sent"

    async def send_dm(self, user_id: UserId, markdown: str) -> RoomId:
        self.sent.append((f"dm:{user_id}", markdown))
        return RoomId("!dm:localhost")


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("!help", ParsedCommand("help", ())),
        ("  !LANG en ", ParsedCommand("lang", ("en",))),
        ("!lang   zh  extra", ParsedCommand("lang", ("zh", "extra"))),
        ("hello !help", None),
        ("!", None),
        ("! ", None),
        ("", None),
        ("help", None),
    ],
)
def test_parse_command(body: str, expected: ParsedCommand | None) -> None:
    assert parse_command(body) == expected


def make_router(store: Store, admins: set[str] | None = None
                ) -> tuple[CommandRouter, RecordingMessenger, CommandRegistry]:
    registry = CommandRegistry()
    registry.extend(basic_commands(registry, store, lambda: 1_000, lambda: "ABCD EFGH"))
    messenger = RecordingMessenger()
    router = CommandRouter(registry, Catalog.load(default="zh"), messenger, store.get_language,
                           lambda u: u in (admins or set()))
    return router, messenger, registry


def msg(body: str, sender: UserId = ALICE) -> IncomingText:
    return IncomingText(sender, ROOM, EventId("$1"), body, True)


async def test_help_lists_every_command_in_default_language() -> None:
    store = Store(":memory:")
    router, messenger, registry = make_router(store)
    assert await router.handle(msg("!help"))
    (room, text), = messenger.sent
    assert room == ROOM
    assert "可用命令" in text
    for command in registry.commands:
        assert f"!{command.name}" in text


async def test_lang_switches_and_persists() -> None:
    store = Store(":memory:")
    router, messenger, _ = make_router(store)
    await router.handle(msg("!lang en"))
    assert messenger.sent[-1][1] == "OK, I will write to you in English from now on."
    assert store.get_language(ALICE) == "en"
    await router.handle(msg("!help"))
    assert "Commands:" in messenger.sent[-1][1]


async def test_lang_bad_argument_gets_usage_in_user_language() -> None:
    store = Store(":memory:")
    router, messenger, _ = make_router(store)
    await router.handle(msg("!lang fr"))
    assert messenger.sent[-1][1] == "用法：`!lang zh|en`"
    assert store.get_language(ALICE) is None


async def test_unknown_command_gets_hint() -> None:
    store = Store(":memory:")
    router, messenger, _ = make_router(store)
    assert await router.handle(msg("!frobnicate now"))
    assert "`!frobnicate`" in messenger.sent[-1][1]
    assert "!help" in messenger.sent[-1][1]


async def test_plain_text_is_not_a_command() -> None:
    store = Store(":memory:")
    router, messenger, _ = make_router(store)
    assert not await router.handle(msg("hello"))
    assert messenger.sent == []


async def test_failing_handler_answers_with_reference_and_keeps_running() -> None:
    store = Store(":memory:")
    router, messenger, registry = make_router(store)

    async def boom(ctx: CommandContext) -> None:
        raise RuntimeError("secret detail")

    registry.add(Command("boom", boom))
    await router.handle(msg("!boom"))
    text = messenger.sent[-1][1]
    assert "编号" in text and "secret detail" not in text
    await router.handle(msg("!help"))
    assert len(messenger.sent) == 2


async def test_admin_only_command_refuses_others() -> None:
    store = Store(":memory:")
    router, messenger, registry = make_router(store, admins={"@root:localhost"})
    ran: list[str] = []

    async def secret(ctx: CommandContext) -> None:
        ran.append(ctx.sender)

    registry.add(Command("secret", secret, admin_only=True))
    await router.handle(msg("!secret"))
    assert ran == [] and "管理员" in messenger.sent[-1][1]
    await router.handle(msg("!secret", UserId("@root:localhost")))
    assert ran == ["@root:localhost"]


def test_duplicate_names_are_rejected() -> None:
    registry = CommandRegistry()

    async def noop(ctx: CommandContext) -> None:
        return None

    registry.add(Command("a", noop, aliases=("x",)))
    with pytest.raises(ValueError):
        registry.add(Command("x", noop))


async def test_fingerprint_command() -> None:
    store = Store(":memory:")
    router, messenger, _ = make_router(store)
    await router.handle(msg("!fingerprint"))
    assert "`ABCD EFGH`" in messenger.sent[-1][1]


async def test_unreachable_homeserver_gets_a_localized_answer_not_a_failure() -> None:
    from nerbot.errors import FactsUnavailable

    store = Store(":memory:")
    router, messenger, registry = make_router(store)

    async def needs_facts(ctx: CommandContext) -> None:
        raise FactsUnavailable("@r:far.example")

    registry.add(Command("needs-facts", needs_facts))
    await router.handle(msg("!needs-facts"))
    (_, text), = messenger.sent
    assert "far.example" in text and "没有响应" in text and "编号" not in text
