"""A hygiene report as a message, in the reader's language (marks from the ``emoji`` package)."""

from __future__ import annotations

import emoji

from nerbot.domain.assessment import FindingKind, SessionMark, UserReport
from nerbot.domain.facts import BackupState
from nerbot.i18n import Catalog
from nerbot.ids import server_of

MARK = {
    "ok": emoji.emojize(":check_mark_button:"),
    "bad": emoji.emojize(":cross_mark:"),
    "warn": emoji.emojize(":warning:"),
    "unknown": emoji.emojize(":white_question_mark:"),
    "idle": emoji.emojize(":zzz:"),
    "none": emoji.emojize(":white_circle:"),
    "party": emoji.emojize(":party_popper:"),
    "info": emoji.emojize(":information:"),
}

SESSION_LINE = {
    SessionMark.VERIFIED: ("status.session_verified", "ok"),
    SessionMark.UNVERIFIED: ("status.session_unverified", "warn"),
    SessionMark.NO_KEYS: ("status.session_no_keys", "none"),
    SessionMark.INACTIVE: ("status.session_inactive", "idle"),
}


def render_report(catalog: Catalog, lang: str, report: UserReport, about_self: bool) -> str:
    """The full report: identity, backup, every session, then the one next step.

    For someone on another homeserver it also says what federation shows and what it cannot.
    """
    t = catalog.t
    lines = [t(lang, "status.title_self") if about_self
             else t(lang, "status.title_other", user=report.user_id), ""]
    if report.cross_signing:
        lines.append(t(lang, "status.cross_signing_ok", mark=MARK["ok"]))
    else:
        lines.append(t(lang, "status.cross_signing_missing", mark=MARK["bad"]))
    # A deliberate "key storage off" replaces the alarming backup line (a live backup still shows).
    opted_out = "backup_opted_out" in report.notes
    if report.backup is BackupState.PRESENT:
        version = report.backup_version or "?"
        lines.append(t(lang, "status.backup_present", mark=MARK["ok"], version=version))
    elif opted_out:
        pass  # the opted-out line below says why backup is not flagged
    elif report.backup is BackupState.ABSENT:
        lines.append(t(lang, "status.backup_absent", mark=MARK["bad"]))
    elif "backup_likely_absent" in report.inferred:
        lines.append(t(lang, "status.backup_unknown_likely_absent", mark=MARK["unknown"]))
    elif report.remote:
        lines.append(t(lang, "status.backup_unknown_remote", mark=MARK["unknown"],
                       server=server_of(report.user_id)))
    else:
        lines.append(t(lang, "status.backup_unknown", mark=MARK["unknown"]))
    if opted_out:
        lines.append(t(lang, "status.backup_opted_out", mark=MARK["info"]))
    if "legacy_marker_without_backup" in report.inferred:
        lines.append(t(lang, "status.legacy_marker"))
    if report.finding(FindingKind.NO_SECRET_STORAGE):
        lines.append(t(lang, "status.secret_storage_missing", mark=MARK["warn"]))

    lines += ["", t(lang, "status.sessions_header", count=len(report.sessions))]
    for session in report.sessions:
        key, mark = SESSION_LINE[session.mark]
        name = session.device.display_name or ""
        line = t(lang, key, mark=MARK[mark], device_id=session.device.device_id, name=name,
                 days=session.idle_days or 0)
        if session.mark is not SessionMark.INACTIVE and session.idle_days:
            line += t(lang, "status.last_seen", days=session.idle_days)
        lines.append(line)
    if not report.sessions:
        lines.append(t(lang, "status.no_sessions"))
    if report.activity_known:
        lines.append(t(lang, "status.activity_source"))
    if report.remote:
        lines += ["", t(lang, "status.remote_scope", mark=MARK["info"],
                        server=server_of(report.user_id))]

    if report.findings:
        lines.append("")
        first = report.findings[0]
        what = t(lang, f"finding.{first.kind.value}", devices=", ".join(first.device_ids))
        lines.append(t(lang, "status.next_step", what=what, guide=first.guide))
        later = list(dict.fromkeys(f.guide for f in report.findings if f.guide != first.guide))
        if later:
            lines.append(t(lang, "status.then_guides",
                           guides=", ".join(f"`!guide {g}`" for g in later)))
    elif not opted_out:  # "all good" would claim the backup is in order
        lines += ["", t(lang, "status.all_good", mark=MARK["party"])]
    return "\n".join(lines)
