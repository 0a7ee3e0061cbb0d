"""A hygiene report as a message, in the reader's language (marks from the ``emoji`` package).

Where a line tells people where to look in Element, it quotes the client's labels from the
label file (``{label[ID]}`` in the catalog), so the report and the guides name the same places.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import emoji

from nerbot.domain.assessment import SessionMark, UserReport
from nerbot.domain.facts import BackupState
from nerbot.domain.guide import label_quotes
from nerbot.guides import load_labels
from nerbot.i18n import Catalog
from nerbot.i18n.quote import quoted
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


def _recovery_line(t: Callable[..., str], report: UserReport, opted_out: bool) -> str | None:
    """Recovery, on its own line: the common gap now that clients make the identity and the
    backup by themselves. A ✅/❌ only where it was seen (the admin token shows it)."""
    if report.recovery is True:
        return t("status.recovery_set_up", mark=MARK["ok"])
    if report.recovery is False:
        # A deliberate "key storage off" is said once, below, instead of scolding here.
        return None if opted_out else t("status.recovery_missing", mark=MARK["bad"])
    if report.remote:
        return t("status.recovery_unknown_remote", mark=MARK["unknown"],
                 server=server_of(report.user_id))
    return t("status.recovery_unknown", mark=MARK["unknown"])


def render_report(catalog: Catalog, lang: str, report: UserReport, about_self: bool) -> str:
    """The full report: identity, recovery, backup, every session, then the one next step.

    For someone on another homeserver it also says what federation shows and what it cannot.
    """
    labels = label_quotes(load_labels(), catalog.language(lang))

    def t(key: str, **params: Any) -> str:
        return catalog.t(lang, key, label=labels, **params)

    lines = [t("status.title_self") if about_self
             else t("status.title_other", user=report.user_id), ""]
    if report.cross_signing:
        lines.append(t("status.cross_signing_ok", mark=MARK["ok"]))
    else:
        lines.append(t("status.cross_signing_missing", mark=MARK["bad"]))
    # A deliberate "key storage off" replaces the alarming backup line (a live backup still shows).
    opted_out = "backup_opted_out" in report.notes
    recovery = _recovery_line(t, report, opted_out)
    if recovery is not None:
        lines.append(recovery)
    if report.backup is BackupState.PRESENT:
        version = report.backup_version or "?"
        lines.append(t("status.backup_present", mark=MARK["ok"], version=version))
    elif opted_out:
        pass  # the opted-out line below says why backup is not flagged
    elif report.backup is BackupState.ABSENT:
        lines.append(t("status.backup_absent", mark=MARK["bad"]))
    elif "backup_likely_absent" in report.inferred:
        lines.append(t("status.backup_unknown_likely_absent", mark=MARK["unknown"]))
    elif report.remote:
        lines.append(t("status.backup_unknown_remote", mark=MARK["unknown"],
                       server=server_of(report.user_id)))
    else:
        lines.append(t("status.backup_unknown", mark=MARK["unknown"]))
    if opted_out:
        lines.append(t("status.backup_opted_out", mark=MARK["info"]))
    if "legacy_marker_without_backup" in report.inferred:
        lines.append(t("status.legacy_marker"))

    lines += ["", t("status.sessions_header", count=len(report.sessions))]
    for session in report.sessions:
        key, mark = SESSION_LINE[session.mark]
        name = quoted(session.device.display_name or "")  # chosen by whoever logged in
        line = t(key, mark=MARK[mark], device_id=session.device.device_id, name=name,
                 days=session.idle_days or 0)
        if session.mark is not SessionMark.INACTIVE and session.idle_days:
            line += t("status.last_seen", days=session.idle_days)
        lines.append(line)
    if not report.sessions:
        lines.append(t("status.no_sessions"))
    if report.activity_known:
        lines.append(t("status.activity_source"))
    if report.remote:
        lines += ["", t("status.remote_scope", mark=MARK["info"],
                        server=server_of(report.user_id))]

    if report.findings:
        lines.append("")
        first = report.findings[0]
        what = t(f"finding.{first.kind.value}", devices=", ".join(first.device_ids))
        lines.append(t("status.next_step", what=what, guide=first.guide))
        later = list(dict.fromkeys(f.guide for f in report.findings if f.guide != first.guide))
        if later:
            lines.append(t("status.then_guides",
                           guides=", ".join(f"`!guide {g}`" for g in later)))
    elif opted_out:
        pass  # "all good" would claim the backup is in order
    elif report.backup is BackupState.PRESENT and report.recovery is True:
        lines += ["", t("status.all_good", mark=MARK["party"])]  # everything was seen
    elif report.recovery is True:  # the backup was not seen: "all good" covers what was
        lines += ["", t("status.all_good_recovery_seen", mark=MARK["ok"])]
    else:
        lines += ["", t("status.all_good_backup_unseen", mark=MARK["ok"])]
    return "\n".join(lines)
