"""``!guide``, ``!next``, ``!back``, ``!stop``, ``!platform``: the walkthroughs, in the user's DM.

The decisions (which step, did the checkpoint pass) are ``nerbot.domain.guide``'s; this module
loads progress, asks the homeserver (a fresh assessment, never a cached one) when a step has a
checkpoint, and says what happened. Guide content is personal (checkpoint results name the
user's sessions), so it always goes to the encrypted DM; a group room only gets a short pointer.

Where the server does not show a step's result (recovery without the admin token), the bot says
so and asks the person to look and confirm (``!next confirm``); it never infers the result.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Protocol

from nerbot.commands.registry import Command, CommandContext, IncomingText, UsageError
from nerbot.commands.report_text import MARK
from nerbot.domain.assessment import UserReport
from nerbot.domain.facts import DeviceFacts
from nerbot.domain.guide import (
    Checkpoint,
    CheckResult,
    Guide,
    GuideLibrary,
    GuideOutcome,
    GuideProgress,
    GuideStep,
    Move,
    Platform,
    Unseen,
    clamp,
    evaluate_checkpoint,
    guess_platform,
    label_quotes,
    means_confirm,
    means_next,
    next_step,
    previous_step,
    start_guide,
    suggest_guide,
    with_step_id,
)
from nerbot.errors import FactsUnavailable
from nerbot.i18n import Catalog, Voice
from nerbot.i18n.quote import quoted
from nerbot.ids import UserId
from nerbot.ports import Messenger
from nerbot.store import Store

logger = logging.getLogger(__name__)

# What people type for ``!platform``.
PLATFORM_WORDS: dict[str, Platform] = {
    "web": "web", "desktop": "web", "browser": "web", "网页": "web", "电脑": "web", "桌面": "web",
    "mobile": "mobile", "phone": "mobile", "android": "mobile", "ios": "mobile",
    "手机": "mobile", "移动": "mobile",
}
# ``!next confirm``: the person vouches for a step the bot cannot check itself.
CONFIRM_ARGS = frozenset({"confirm", "confirmed", "确认", "已确认"})


class FreshAssessor(Protocol):
    async def assess_one(self, user_id: str, fresh: bool = False) -> UserReport: ...


class GuideConversation:
    """One user's walkthrough at a time: start, move, check, and say it in their language."""

    def __init__(self, library: GuideLibrary, store: Store, hygiene: FreshAssessor,
                 messenger: Messenger, catalog: Catalog, now_ms: Callable[[], int],
                 web_client_url: str = "") -> None:
        self.library = library
        self.store = store
        self.hygiene = hygiene
        self.messenger = messenger
        self.now_ms = now_ms
        self.voice = Voice(catalog, store.get_language)
        # The community's own Element Web (``[guides] web_client_url``); "" = no link.
        self.web_client_url = web_client_url

    # -- text --------------------------------------------------------------------------------

    def _devices(self, user_id: UserId, devices: tuple[DeviceFacts, ...]) -> str:
        return ", ".join(self.voice.t(user_id, "guide.device", device_id=d.device_id,
                                 name=quoted(d.display_name or "")) for d in devices)

    def _labels(self, user_id: UserId) -> Mapping[str, str]:
        return label_quotes(self.library.labels, self.voice.language(user_id))

    def check_text(self, user_id: UserId, step: GuideStep, check: CheckResult,
                   platform: Platform) -> str:
        """What the server showed, and the step's verdict only where its subject was seen.

        Seen: the step's own ✅/❌ line, then what the server showed, concretely. Not seen
        (recovery without the admin token): no verdict and no ✅/❌ at all; the bot says it
        cannot see it and asks the person to look (the step's hint) and confirm, or repeats
        that the pass rests on their word.
        """
        shown = self.voice.t(user_id, f"guide.check.{check.reason.value}",
                             devices=self._devices(user_id, check.devices),
                             label=self._labels(user_id))
        lang = self.voice.language(user_id)
        if check.unseen is not None:
            unseen = self.voice.t(user_id, f"guide.unseen.{check.unseen.value}",
                                  hint=step.hint(lang, platform))
            mark = MARK["info"] if check.unseen is Unseen.CONFIRMED else MARK["unknown"]
            return "\n\n".join([f"{mark} {shown}", unseen])
        verdict = step.check_passed if check.passed else step.check_failed
        return "\n\n".join([*([verdict[lang]] if verdict else []), shown])

    def _body(self, user_id: UserId, step: GuideStep, platform: Platform) -> str:
        """The step in the user's language, then (where the step asks for it) the community's
        own Element Web: its address if configured, else where to get it."""
        body = step.body(self.voice.language(user_id), platform)
        if platform not in step.web_client:
            return body
        place = (self.voice.t(user_id, "guide.web_client_link", url=self.web_client_url)
                 if self.web_client_url else self.voice.t(user_id, "guide.web_client_none"))
        return "\n\n".join([body, place])

    async def platform_of(self, user_id: UserId, report: UserReport | None = None) -> Platform:
        """The user's choice (``!platform``), else a guess from their session names."""
        chosen = PLATFORM_WORDS.get(self.store.get_platform(user_id) or "")
        if chosen is not None:
            return chosen
        if report is None:
            try:
                report = await self.hygiene.assess_one(user_id)
            except FactsUnavailable:  # their server is not answering: guess from nothing
                return guess_platform(())
        return guess_platform(s.device for s in report.sessions)

    def step_text(self, user_id: UserId, guide: Guide, progress: GuideProgress,
                  platform: Platform, before: str = "") -> str:
        lang = self.voice.language(user_id)
        step = guide.steps[progress.step]
        parts = [self.voice.t(user_id, "guide.step_header", title=guide.title[lang],
                         n=progress.step + 1, total=len(guide.steps))]
        if before:
            parts.append(before)
        parts.append(self._body(user_id, step, platform))
        if step.has_variants:
            parts.append(self.voice.t(user_id, f"guide.platform_shown.{platform}"))
        parts.append(guide.footer[lang])
        return "\n\n".join(parts)

    def finished_text(self, user_id: UserId, guide: Guide, before: str,
                      report: UserReport | None) -> str:
        lang = self.voice.language(user_id)
        parts = [before] if before else []
        parts.append(self.voice.t(user_id, "guide.finished", mark=MARK["party"],
                             title=guide.title[lang]))
        parts.append(guide.summary[lang])
        suggestion = report.next_guide if report is not None and report.exists else None
        if suggestion and suggestion != guide.name:
            parts.append(self.voice.t(user_id, "guide.then", guide=suggestion))
        return "\n\n".join(parts)

    # -- actions (each returns the text to send to the user) ---------------------------------

    def active(self, user_id: UserId) -> tuple[Guide, GuideProgress] | None:
        progress = self.store.get_guide_progress(user_id)
        if progress is None:
            return None
        guide = self.library.get(progress.guide)
        if guide is None:  # a guide removed by an update: forget it rather than fail forever
            self.store.end_guide(user_id, "removed", self.now_ms())
            return None
        return guide, clamp(guide, progress)

    async def list_guides(self, user_id: UserId) -> str:
        lang = self.voice.language(user_id)
        report = await self.hygiene.assess_one(user_id)
        suggested = suggest_guide(report)
        lines = [self.voice.t(user_id, "guide.list_header"), ""]
        for name in self.library.names:
            guide = self.library.guides[name]
            key = "guide.list_line_suggested" if name == suggested else "guide.list_line"
            lines.append(self.voice.t(user_id, key, name=name, title=guide.title[lang]))
        lines.append("")
        current = self.active(user_id)
        if current is not None:
            guide, progress = current
            lines.append(self.voice.t(user_id, "guide.list_active", name=guide.name,
                                 n=progress.step + 1, total=len(guide.steps)))
        lines.append(self.voice.t(user_id, "guide.list_footer", name=suggested))
        return "\n".join(lines)

    async def begin(self, user_id: UserId, name: str) -> str:
        guide = self.library.get(name)
        if guide is None:
            close = self.library.close_match(name)
            hint = self.voice.t(user_id, "guide.did_you_mean", name=close) if close else ""
            return self.voice.t(user_id, "guide.unknown", name=quoted(name), hint=hint,
                           names=", ".join(f"`{n}`" for n in self.library.names))
        now = self.now_ms()
        current = self.active(user_id)
        report = await self.hygiene.assess_one(user_id, fresh=True)
        platform = await self.platform_of(user_id, report)
        if current is not None and current[0].name == guide.name:
            return self.step_text(user_id, guide, current[1], platform,
                                  before=self.voice.t(user_id, "guide.resumed"))
        before = ""
        if current is not None:
            self.store.end_guide(user_id, "replaced", now)
            lang = self.voice.language(user_id)
            before = self.voice.t(user_id, "guide.replaced", title=current[0].title[lang])
        progress = start_guide(guide, report, now)
        self.store.save_guide_progress(user_id, with_step_id(guide, progress))
        logger.info("Guide %s started by %s", guide.name, user_id)
        return self.step_text(user_id, guide, progress, platform, before=before)

    async def check(self, user_id: UserId, guide: Guide, progress: GuideProgress,
                    confirmed: bool = False) -> tuple[CheckResult | None, UserReport | None]:
        checkpoint = guide.steps[progress.step].checkpoint
        if checkpoint is None:
            return None, None
        report = await self.hygiene.assess_one(user_id, fresh=True)  # the step just happened
        verified = (checkpoint is Checkpoint.BOT_VERIFIED
                    and self.store.verified_since(user_id, progress.started_ms))
        return evaluate_checkpoint(checkpoint, report, progress, verified, confirmed), report

    async def next(self, user_id: UserId, confirmed: bool = False) -> str:
        """``!next`` (``confirmed``: ``!next confirm``, the person vouching for a step the
        server does not show; it counts only there)."""
        current = self.active(user_id)
        if current is None:
            return self.voice.t(user_id, "guide.none_active")
        guide, progress = current
        check, report = await self.check(user_id, guide, progress, confirmed)
        return await self._apply(user_id, guide, progress,
                                 next_step(guide, progress, check, self.now_ms()), report)

    async def _apply(self, user_id: UserId, guide: Guide, progress: GuideProgress,
                     outcome: GuideOutcome, report: UserReport | None) -> str:
        step = guide.steps[progress.step]
        before = ""
        if outcome.check is not None:
            platform = await self.platform_of(user_id, report)
            before = self.check_text(user_id, step, outcome.check, platform)
        if outcome.move is Move.STAYED:
            return "\n\n".join([before, self.voice.t(user_id, "guide.stayed")])
        if outcome.move is Move.FINISHED:
            self.store.end_guide(user_id, "finished", self.now_ms())
            logger.info("Guide %s finished by %s", guide.name, user_id)
            if report is None:
                report = await self.hygiene.assess_one(user_id, fresh=True)
            return self.finished_text(user_id, guide, before, report)
        assert outcome.progress is not None
        text = self.step_text(user_id, guide, outcome.progress,
                              await self.platform_of(user_id, report), before=before)
        self._save_with_answer(user_id, guide, outcome.progress)
        return text

    async def back(self, user_id: UserId) -> str:
        current = self.active(user_id)
        if current is None:
            return self.voice.t(user_id, "guide.none_active")
        guide, progress = current
        outcome = previous_step(progress, self.now_ms())
        assert outcome.progress is not None
        before = self.voice.t(user_id, "guide.at_start") if outcome.move is Move.AT_START else ""
        text = self.step_text(user_id, guide, outcome.progress,
                              await self.platform_of(user_id), before=before)
        if outcome.move is Move.BACK:
            self._save_with_answer(user_id, guide, outcome.progress)
        return text

    # -- the answer to a step change, exactly once across crashes ----------------------------

    def _save_with_answer(self, user_id: UserId, guide: Guide, progress: GuideProgress
                          ) -> None:
        """Store the new step together with the transaction ID its answer will be sent with.

        The answer is sent right after (``guide_commands``) and then marked sent. A crash in
        between leaves the ID stored; ``resend_unsent`` at the next start sends the step
        again with the same ID, which the homeserver turns into a no-op if it got the first.
        So the step stored is always the step the person sees.
        """
        self.store.save_guide_progress(user_id, with_step_id(guide, progress),
                                       unsent_txn=answer_txn(user_id, progress))

    def unsent_txn(self, user_id: UserId) -> str | None:
        return self.store.unsent_guide_txn(user_id)

    def answer_sent(self, user_id: UserId, txn: str) -> None:
        self.store.guide_answer_sent(user_id, txn)

    async def resend_unsent(self) -> None:
        """At start: send each step whose answer a crash may have kept from the person."""
        for user_id, txn in self.store.unsent_guide_answers():
            try:
                current = self.active(user_id)
                if current is not None:
                    guide, progress = current
                    text = self.step_text(user_id, guide, progress,
                                          await self.platform_of(user_id))
                    await self.messenger.send_dm(user_id, text, txn_id=txn)
                    logger.info("Guide step of %s sent again after a restart", user_id)
                self.answer_sent(user_id, txn)
            except Exception:  # one person's guide must not stop the others'
                logger.exception("Could not send %s's guide step after a restart", user_id)

    def stop(self, user_id: UserId) -> str:
        ended = self.store.end_guide(user_id, "stopped", self.now_ms())
        if ended is None:
            return self.voice.t(user_id, "guide.none_active")
        guide = self.library.get(ended.guide)
        title = guide.title[self.voice.language(user_id)] if guide else ended.guide
        return self.voice.t(user_id, "guide.stopped", title=title, name=ended.guide)

    async def set_platform(self, user_id: UserId, platform: Platform) -> str:
        self.store.set_platform(user_id, platform, self.now_ms())
        text = self.voice.t(user_id, f"guide.platform_set.{platform}")
        current = self.active(user_id)
        if current is not None and current[0].steps[current[1].step].has_variants:
            return self.step_text(user_id, current[0], current[1], platform, before=text)
        return text

    async def on_verified(self, user_id: UserId) -> None:
        """A verification with the bot succeeded: the practice guide moves on by itself."""
        current = self.active(user_id)
        if current is None:
            return
        guide, progress = current
        target = next((i for i, s in enumerate(guide.steps)
                       if s.checkpoint is Checkpoint.BOT_VERIFIED), None)
        if target is None or progress.step > target:
            return
        progress = replace(progress, step=target)
        check, report = await self.check(user_id, guide, progress)
        if check is None or not check.passed:
            return
        text = await self._apply(user_id, guide, progress,
                                 next_step(guide, progress, check, self.now_ms()), report)
        txn = self.unsent_txn(user_id)
        await self.messenger.send_dm(user_id, text, txn_id=txn)
        if txn is not None:
            self.answer_sent(user_id, txn)

    def interpret(self, message: IncomingText) -> str | None:
        """A plain "done"/"好了" in the DM while a guide is active means ``!next``, a plain
        "confirm"/"确认" means ``!next confirm``."""
        if not message.is_dm:
            return None
        command = ("!next" if means_next(message.body)
                   else "!next confirm" if means_confirm(message.body) else None)
        if command is None or self.store.get_guide_progress(message.sender) is None:
            return None
        return command


def answer_txn(user_id: str, progress: GuideProgress) -> str:
    """The transaction ID of the answer to one step change (the same after a restart)."""
    seed = f"{user_id}|{progress.guide}|{progress.started_ms}|{progress.step}|" \
           f"{progress.updated_ms}"
    return "nerbot-guide-" + hashlib.sha256(seed.encode()).hexdigest()[:32]


def guide_commands(conversation: GuideConversation) -> list[Command]:
    async def deliver(ctx: CommandContext, text: str) -> None:
        txn = conversation.unsent_txn(ctx.sender)  # a step change's answer, sent once
        if ctx.is_dm:
            await ctx.messenger.send_notice(ctx.room_id, text, txn_id=txn)
        else:  # walkthroughs are personal: continue in the encrypted DM
            await ctx.messenger.send_dm(ctx.sender, text, txn_id=txn)
            await ctx.reply("guide.continued_in_dm", user=ctx.sender)
        if txn is not None:
            conversation.answer_sent(ctx.sender, txn)

    async def guide(ctx: CommandContext) -> None:
        if len(ctx.args) > 1:
            raise UsageError
        if ctx.args:
            await deliver(ctx, await conversation.begin(ctx.sender, ctx.args[0]))
        else:
            await deliver(ctx, await conversation.list_guides(ctx.sender))

    async def next_(ctx: CommandContext) -> None:
        if len(ctx.args) > 1 or (ctx.args and ctx.args[0].lower() not in CONFIRM_ARGS):
            raise UsageError
        await deliver(ctx, await conversation.next(ctx.sender, confirmed=bool(ctx.args)))

    async def back(ctx: CommandContext) -> None:
        if ctx.args:
            raise UsageError
        await deliver(ctx, await conversation.back(ctx.sender))

    async def stop(ctx: CommandContext) -> None:
        if ctx.args:
            raise UsageError
        await deliver(ctx, conversation.stop(ctx.sender))

    async def platform(ctx: CommandContext) -> None:
        if not ctx.args:
            current = await conversation.platform_of(ctx.sender)
            await ctx.reply(f"guide.platform_current.{current}")
            return
        choice = PLATFORM_WORDS.get(ctx.args[0].lower())
        if len(ctx.args) != 1 or choice is None:
            raise UsageError
        await deliver(ctx, await conversation.set_platform(ctx.sender, choice))

    return [
        Command("guide", guide, aliases=("guides", "引导", "指南")),
        Command("next", next_, aliases=("下一步",)),
        Command("back", back, aliases=("上一步",)),
        Command("stop", stop, aliases=("退出",)),
        Command("platform", platform, aliases=("平台",)),
    ]
