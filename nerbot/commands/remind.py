"""``!remind`` and ``!alerts``, and the words of reminders and alerts (zh/en catalog).

Reminders name the concrete problem (which sessions, since when) and end with the ``!guide``
that fixes it and how to pause them; alerts say what appeared and what to do either way.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Protocol
from zoneinfo import ZoneInfo

from nerbot.commands.registry import Command, CommandContext, UsageError
from nerbot.commands.report_text import MARK
from nerbot.domain.alerts import AlertDecision
from nerbot.domain.assessment import FindingKind, UserReport
from nerbot.domain.reminders import ReminderDecision, parse_duration
from nerbot.i18n import Catalog, Voice
from nerbot.i18n.quote import quoted
from nerbot.ids import UserId, server_of
from nerbot.store import Store

ON_WORDS = {"on", "开", "开启"}
OFF_WORDS = {"off", "关", "关闭"}


class MessageText:
    """Reminder, all-good and alert messages in the recipient's language."""

    def __init__(self, catalog: Catalog, store: Store, zone: ZoneInfo) -> None:
        self.store = store
        self.zone = zone
        self.voice = Voice(catalog, store.get_language)

    def when(self, ms: int, with_time: bool = False) -> str:
        moment = datetime.fromtimestamp(ms / 1000, self.zone)
        return moment.strftime("%Y-%m-%d %H:%M" if with_time else "%Y-%m-%d")

    def _sessions(self, user_id: UserId, report: UserReport, ids: tuple[str, ...]) -> str:
        seen = self.store.known_devices(user_id)
        names = {s.device.device_id: quoted(s.device.display_name or "")
                 for s in report.sessions}
        parts = []
        for device_id in ids:
            since = seen.get(device_id)
            key = "remind.session_since" if since else "remind.session"
            parts.append(self.voice.t(user_id, key, device_id=device_id,
                                 name=names.get(device_id, ""),
                                 since=self.when(since) if since else ""))
        return "\n".join(parts)

    def reminder(self, user_id: UserId, decision: ReminderDecision, report: UserReport) -> str:
        record = self.store.get_user(user_id)
        since = self.when(record.first_seen_ms) if record else ""
        lines = [self.voice.t(user_id, "remind.intro"), ""]
        for finding in decision.findings:
            lines.append(self.voice.t(user_id, f"remind.problem.{finding.kind.value}",
                                 mark=MARK["warn"], since=since))
            if finding.device_ids:
                lines.append(self._sessions(user_id, report, finding.device_ids))
            if finding.kind is FindingKind.NO_CROSS_SIGNING \
                    and "backup_likely_absent" in report.inferred:
                # The backup itself was not seen: said as the inference it is, not as a fact.
                lines.append(self.voice.t(user_id, "remind.inferred.backup_likely_absent",
                                          mark=MARK["unknown"]))
        if report.remote:
            lines.append(self.voice.t(user_id, "remind.remote_scope", server=server_of(user_id)))
        lines.append("")
        for guide in dict.fromkeys(f.guide for f in decision.findings):
            lines.append(self.voice.t(user_id, "remind.fix", guide=guide))
        lines += ["", self.voice.t(user_id, "remind.footer")]
        return "\n".join(lines)

    def all_good(self, user_id: UserId) -> str:
        return self.voice.t(user_id, "remind.all_good", mark=MARK["party"])

    def alert(self, user_id: UserId, decision: AlertDecision, noticed_ms: int) -> str:
        lines: list[str] = []
        if decision.new_unsigned:
            lines.append(self.voice.t(user_id, "alert.new_sessions", mark=MARK["warn"],
                                 count=len(decision.new_unsigned)))
            for device in decision.new_unsigned:
                lines.append(self.voice.t(user_id, "alert.session", device_id=device.device_id,
                                     name=quoted(device.display_name or ""),
                                     when=self.when(noticed_ms, with_time=True)))
            lines += ["", self.voice.t(user_id, "alert.new_sessions_todo")]
        if decision.identity_reset:
            if lines:
                lines.append("")
            lines.append(self.voice.t(user_id, "alert.identity_reset", mark=MARK["warn"],
                                 when=self.when(noticed_ms, with_time=True)))
        lines += ["", self.voice.t(user_id, "alert.footer")]
        return "\n".join(lines)


class ReminderView(Protocol):
    async def assess_one(self, user_id: str, fresh: bool = False) -> UserReport: ...


def remind_commands(store: Store, hygiene: ReminderView,
                    decision_for: Callable[[UserId, UserReport], ReminderDecision],
                    text: MessageText, now_ms: Callable[[], int]) -> list[Command]:
    async def remind(ctx: CommandContext) -> None:
        args = [a.lower() for a in ctx.args]
        if not args:
            state = f"{ctx.t('remind.state_header')}\n\n{await state_text(ctx)}"
            if ctx.is_dm:
                await ctx.messenger.send_notice(ctx.room_id, state)
            else:  # what is pending names the user's problems: only in their DM
                await ctx.messenger.send_dm(ctx.sender, state)
                await ctx.reply("status.sent_dm", user=ctx.sender)
            return
        if args == ["off"] or (len(args) == 1 and args[0] in OFF_WORDS):
            store.set_reminder_choice(ctx.sender, now_ms(), opted_out=True,
                                      snoozed_until_ms=None)
            await ctx.reply("remind.turned_off")
        elif len(args) == 1 and args[0] in ON_WORDS:
            store.set_reminder_choice(ctx.sender, now_ms(), opted_out=False,
                                      snoozed_until_ms=None)
            await ctx.reply("remind.turned_on")
        elif len(args) == 2 and args[0] in ("snooze", "暂停"):
            try:
                until = now_ms() + parse_duration(args[1])
            except ValueError:
                await ctx.reply("remind.bad_duration", value=quoted(ctx.args[1]))
                return
            store.set_reminder_choice(ctx.sender, now_ms(), snoozed_until_ms=until)
            await ctx.reply("remind.snoozed", until=text.when(until, with_time=True))
        else:
            raise UsageError

    async def state_text(ctx: CommandContext) -> str:
        report = await hygiene.assess_one(ctx.sender)
        decision = decision_for(ctx.sender, report)
        if decision.reason == "opted_out":
            return ctx.t("remind.state_off")
        if decision.not_before_ms is None:
            return ctx.t("remind.state_nothing", mark=MARK["ok"])
        problems = ", ".join(ctx.t(f"remind.short.{f.kind.value}")
                             for f in decision.findings) or ctx.t("remind.short.all_good")
        key = "remind.state_snoozed" if decision.reason == "snoozed" else "remind.state_next"
        return ctx.t(key, when=text.when(decision.not_before_ms, with_time=True),
                     problems=problems)

    async def alerts(ctx: CommandContext) -> None:
        args = [a.lower() for a in ctx.args]
        if not args:
            key = "alerts.state_off" if store.alerts_off(ctx.sender) else "alerts.state_on"
            await ctx.reply(key)
        elif len(args) == 1 and args[0] in ON_WORDS | OFF_WORDS:
            off = args[0] in OFF_WORDS
            store.set_reminder_choice(ctx.sender, now_ms(), alerts_off=off)
            await ctx.reply("alerts.turned_off" if off else "alerts.turned_on")
        else:
            raise UsageError

    return [Command("remind", remind, aliases=("提醒",)),
            Command("alerts", alerts, aliases=("警报",))]

