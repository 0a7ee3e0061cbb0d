"""Command parsing and routing against a recording messenger (pure logic, no homeserver)."""

from __future__ import annotations

from zoneinfo import ZoneInfo

import pytest
from fakes import RecordingMessenger, admins_trusted

from nerbot.commands.basic import basic_commands
from nerbot.commands.guide import GuideConversation, guide_commands
from nerbot.commands.registry import (
    Command,
    CommandContext,
    CommandRegistry,
    CommandRouter,
    IncomingText,
    ParsedCommand,
    parse_command,
)
from nerbot.commands.remind import MessageText, remind_commands
from nerbot.commands.status import status_commands
from nerbot.commands.verify import verify_commands
from nerbot.domain.assessment import UserReport
from nerbot.domain.reminders import ReminderDecision
from nerbot.errors import VerificationRefused
from nerbot.guides import load_library
from nerbot.i18n import Catalog
from nerbot.ids import EventId, RoomId, UserId
from nerbot.matrix.render import NoticeRenderer
from nerbot.store import Store

ALICE = UserId("@alice:localhost")
ROOM = RoomId("!room:localhost")


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
                           admins_trusted(*(admins or set())))
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


# -- user input echoed in replies -----------------------------------------------------------

FLOOD = "\u202e`<b>y</b>" + "x" * 20_000  # one token: bidi override, code-span breakout, flood


def assert_inert(text: str) -> None:
    """Short, no bidi override, and no HTML from the input once rendered as Element would."""
    assert len(text) < 300, f"{len(text)} characters"
    assert "\u202e" not in text and "x" * 65 not in text
    html = NoticeRenderer().html(text)
    assert "<b>" not in html and "</b>" not in html


async def test_a_huge_unknown_command_comes_back_short_and_without_bidi() -> None:
    router, messenger, _ = make_router(Store(":memory:"))
    assert await router.handle(msg("!" + "\u202e" + "x" * 20_000))
    (_, text), = messenger.sent
    assert len(text) < 200 and "\u202e" not in text
    assert "`!" + "x" * 63 + "…`" in text  # 64 characters of it, then the ellipsis


async def test_a_backtick_cannot_smuggle_html_out_of_the_code_span() -> None:
    router, messenger, _ = make_router(Store(":memory:"))
    await router.handle(msg("!x`<b>y</b>"))
    (_, text), = messenger.sent
    assert_inert(text)
    assert "&lt;b&gt;y&lt;/b&gt;" in NoticeRenderer().html(text)  # shown as typed, as code


class NoFacts:
    async def assess_one(self, user_id: str, fresh: bool = False) -> UserReport:
        raise AssertionError("the echo paths answer before any assessment")


class Refusing:
    async def request_in_room(self, user_id: UserId, room_id: RoomId, body: str) -> str:
        raise AssertionError("not used")

    async def request_to_device(self, user_id: UserId, device_id: str) -> str:
        raise VerificationRefused("unknown_device")

    async def cancel_for(self, user_id: UserId) -> bool:
        return False

    def is_allowed(self, user_id: str) -> bool:
        return user_id != OUTSIDER


OUTSIDER = UserId("@eve:elsewhere.example")


@pytest.mark.parametrize("is_dm", [True, False])
@pytest.mark.parametrize("command", ["!verify", "!verify ABCDEF"])
async def test_verify_from_a_server_the_bot_does_not_serve_is_refused_in_words(
        command: str, is_dm: bool) -> None:
    """A person whose server is not allowed gets a localized refusal where they asked (no
    "something went wrong"), and no DM is opened for them."""
    router, messenger, registry = make_router(Store(":memory:"))
    registry.extend(verify_commands(Refusing(), no_dm))
    await router.handle(IncomingText(OUTSIDER, ROOM, EventId("$v"), command, is_dm))
    (room, text), = messenger.sent
    assert room == ROOM and text == Catalog.load().t("zh", "verify.not_allowed")


def no_decision(user_id: UserId, report: UserReport) -> ReminderDecision:
    raise AssertionError("not used")


async def no_dm(user_id: UserId) -> RoomId:
    raise AssertionError("not used")


async def exists(user_id: str) -> bool:
    return True


@pytest.mark.parametrize(("lang", "expected"), [
    ("zh", ("不是 Matrix 用户 ID", "时长", "没有叫", "找不到带加密密钥")),
    ("en", ("not a Matrix user ID", "not a duration", "no walkthrough", "cannot find a session")),
])
async def test_every_reply_that_echoes_an_argument_quotes_it(
        lang: str, expected: tuple[str, ...]) -> None:
    store = Store(":memory:")
    store.set_language(ALICE, lang, 0)
    router, messenger, registry = make_router(store, admins={ALICE})
    catalog, hygiene = Catalog.load(), NoFacts()
    registry.extend(status_commands(hygiene, exists))
    registry.extend(remind_commands(store, hygiene, no_decision,
                                    MessageText(catalog, store, ZoneInfo("UTC")), lambda: 1_000))
    registry.extend(guide_commands(GuideConversation(load_library(), store, hygiene, messenger,
                                                     catalog, lambda: 1_000)))
    registry.extend(verify_commands(Refusing(), no_dm))
    commands = ("!backup-status", "!remind snooze", "!guide", "!verify")
    for command, words in zip(commands, expected, strict=True):
        messenger.sent.clear()
        await router.handle(msg(f"{command} {FLOOD}"))
        (_, text), = messenger.sent
        assert words in text, text
        assert_inert(text)
        assert "ˋ<b>y</b>" + "x" * 55 + "…" in text  # 64 characters of the argument, cut


@pytest.mark.parametrize("encrypted", [True, False])
async def test_the_report_goes_to_the_admin_room_only_while_it_is_encrypted(
        encrypted: bool) -> None:
    """It names the admins and whether each is verified: an unencrypted admin room gets a
    pointer, the report goes to the admin's DM (as alarms refuse such a room)."""
    from nerbot.commands.report import report_commands
    from nerbot.report_service import collect_report

    store = Store(":memory:")
    router, messenger, registry = make_router(store, admins={ALICE})
    registry.extend(report_commands(lambda: collect_report(store, 1_000, [ALICE]), [ALICE],
                                    ROOM, encrypted=lambda room: encrypted))
    await router.handle(IncomingText(ALICE, ROOM, EventId("$r"), "!report", False))
    where = [room for room, _ in messenger.sent]
    assert where == ([ROOM] if encrypted else [f"dm:{ALICE}", ROOM])
    if not encrypted:  # in the room only the pointer to the DM
        assert messenger.sent[1][1] == Catalog.load().t("zh", "status.sent_dm", user=ALICE)
