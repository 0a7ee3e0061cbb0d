"""``!report``: the community report for admins, in their language, never in a shared room."""

from __future__ import annotations

from collections.abc import Callable

import emoji

from nerbot.commands.registry import Command, CommandContext, UsageError
from nerbot.domain.community import CommunityReport, PeopleCounts, iso
from nerbot.i18n import Catalog


def render_community_report(catalog: Catalog, lang: str, report: CommunityReport,
                            admins: list[str]) -> str:
    def t(key: str, **params: object) -> str:
        return catalog.t(lang, f"report.{key}", **params)

    def pct(value: float | None) -> str:
        return t("unknown_share") if value is None else f"{value * 100:.0f}%"

    lines = [t("title"), t("generated", at=iso(report.generated_ms).replace("T", " "),
                          scan=iso(report.last_scan_ms).replace("T", " ")
                          if report.last_scan_ms else t("never_scanned"))]
    if admins:
        marks = [t("admin_verified" if a in report.verified_admins else "admin_unverified",
                   user=a) for a in admins]
        lines.append(t("admins", admins=", ".join(marks)))
    if report.rate_limited:
        lines.append(t("rate_limited", mark=emoji.emojize(":warning:")))
    lines.append("")
    p = report.people
    if not p.people:
        lines.append(t("no_people"))
    else:
        lines += [
            t("people_title", people=p.people),
            t("cross_signing", n=p.cross_signing, share=pct(p.share(p.cross_signing))),
            t("recovery", yes=p.recovery, share=pct(p.share(p.recovery)), no=p.no_recovery,
              unknown=p.recovery_unknown),
            t("backup", present=p.backup_present, absent=p.backup_absent,
              likely=p.backup_likely_absent, unknown=p.backup_unknown),
            t("unverified", n=p.with_unverified, share=pct(p.share(p.with_unverified)),
              sessions=p.unverified_sessions),
            t("inactive", n=p.with_inactive, share=pct(p.share(p.with_inactive))),
            t("at_risk", n=p.at_risk, share=pct(p.share(p.at_risk))),
        ]

        def trend(label: str, day: str, c: PeopleCounts) -> str:
            return t("trend_line", label=t(label), day=day, cross=pct(c.share(c.cross_signing)),
                     recovery=pct(c.share(c.recovery)), risk=pct(c.share(c.at_risk)))

        lines += ["", t("trend_title"),
                  trend("trend_now", iso(report.generated_ms)[:10], p)]
        points = [(label, point) for label, point in
                  (("trend_week", report.week_ago), ("trend_month", report.four_weeks_ago))
                  if point is not None]
        lines += [trend(label, point.day, point.counts) for label, point in points] \
            or [t("trend_none")]
    v7, v30 = report.verifications_7d, report.verifications_30d
    lines += [
        "", t("verif_title"),
        t("verif_started", a=v7.started, b=v30.started, va=v7.verified, vb=v30.verified,
          ra=pct(v7.success_rate), rb=pct(v30.success_rate)),
        t("verif_ended", ca=v7.cancelled, cb=v30.cancelled, ta=v7.timed_out, tb=v30.timed_out,
          pa=v7.in_progress, pb=v30.in_progress),
    ]
    if v30.cancel_codes:
        lines.append(t("verif_codes", codes=", ".join(
            f"`{code}` {n}" for code, n in v30.cancel_codes.items())))
    mismatch = "mismatch_bad" if v30.mismatches else "mismatch_ok"
    lines.append(t(mismatch, a=v7.mismatches, b=v30.mismatches, mark=emoji.emojize(
        ":police_car_light:" if v30.mismatches else ":check_mark_button:")))
    lines += ["", t("logins_title", days=", ".join(
        f"{day[5:]} {n}" for day, n in report.new_unverified_per_day.items())),
        t("resets", a=report.identity_resets_7d, b=report.identity_resets_30d)]
    r7, r30 = report.reminders_7d, report.reminders_30d
    lines += [
        "", t("reminders_title"),
        t("reminders_sent", a=r7.sent, b=r30.sent, pa=r7.people_reminded,
          pb=r30.people_reminded),
        t("reminders_fixed", fa=r7.people_fixed_within_week, fb=r30.people_fixed_within_week,
          ra=pct(r7.fix_rate), rb=pct(r30.fix_rate)),
        t("reminders_choices", off=r30.turned_off, snoozed=r30.snoozed),
    ]
    return "\n".join(lines)


def report_commands(report: Callable[[], CommunityReport], admins: list[str],
                    admin_room: str | None, encrypted: Callable[[str], bool]) -> list[Command]:
    """``encrypted(room)``: the bot's view of a room's encryption. The report names the
    admins and whether each is verified: posted in the admin room only while it is encrypted
    (as the alarms are), else sent to the asking admin's DM."""
    async def report_(ctx: CommandContext) -> None:
        if ctx.args:
            raise UsageError
        text = render_community_report(ctx.catalog, ctx.language, report(), admins)
        if ctx.is_dm or (ctx.room_id == admin_room and encrypted(ctx.room_id)):
            await ctx.messenger.send_notice(ctx.room_id, text)
        else:  # a shared room is no place for it: the admin's DM
            await ctx.messenger.send_dm(ctx.sender, text)
            await ctx.reply("status.sent_dm", user=ctx.sender)

    return [Command("report", report_, aliases=("报告",), admin_only=True)]
