"""Step-by-step walkthroughs: guides as data, progress as a value, checkpoints as pure checks.

Everything here decides and nothing does I/O: the command layer loads the user's progress,
fetches a fresh assessment when the current step has a checkpoint, calls these functions and
renders what they return. So every transition and every checkpoint rule is unit-tested without
a homeserver, and a restart loses nothing because progress is a plain value the store keeps.
"""

from __future__ import annotations

import difflib
import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from nerbot.domain.assessment import SessionMark, UserReport
from nerbot.domain.facts import BackupState, DeviceFacts

Platform = Literal["web", "mobile"]
PLATFORMS: tuple[Platform, ...] = ("web", "mobile")
GUIDE_LANGUAGES = ("zh", "en")

# Words people type instead of ``!next`` while a guide is active (compared after normalising).
DONE_WORDS = frozenset({"done", "next", "ok done", "好了", "完成", "下一步", "完成了",
                        "好了下一步"})
_TRAILING = " \t\r\n.。!！~～…,，"

# Session names that only mobile clients give themselves (Element X, Element Android/iOS…).
_MOBILE_HINTS = ("element x", "android", "ios", "iphone", "ipad", "mobile")


class Checkpoint(enum.Enum):
    """What a step asks the homeserver before letting the user move on."""

    CROSS_SIGNING = "cross_signing"
    BACKUP = "backup"
    SESSIONS_VERIFIED = "sessions_verified"
    NEW_SESSION_SIGNED = "new_session_signed"
    BOT_VERIFIED = "bot_verified"


class GuideDataError(ValueError):
    """A guide file is malformed; raised at load time so a bad file never reaches a user."""


@dataclass(frozen=True, slots=True)
class GuideStep:
    id: str
    checkpoint: Checkpoint | None
    # language → variant ("all", or "web" and "mobile") → Markdown
    texts: Mapping[str, Mapping[str, str]]
    check_failed: Mapping[str, str] = field(default_factory=dict)
    check_passed: Mapping[str, str] = field(default_factory=dict)

    def body(self, language: str, platform: Platform) -> str:
        variants = self.texts[language]
        return variants.get("all") or variants[platform]

    @property
    def has_variants(self) -> bool:
        return "all" not in next(iter(self.texts.values()))


@dataclass(frozen=True, slots=True)
class Guide:
    name: str
    title: Mapping[str, str]
    summary: Mapping[str, str]
    footer: Mapping[str, str]
    steps: tuple[GuideStep, ...]

    @property
    def checkpoints(self) -> frozenset[Checkpoint]:
        return frozenset(s.checkpoint for s in self.steps if s.checkpoint is not None)


def _texts(raw: Any, where: str) -> dict[str, str]:
    if not isinstance(raw, dict) or set(raw) != set(GUIDE_LANGUAGES):
        raise GuideDataError(f"{where}: needs exactly {GUIDE_LANGUAGES}")
    if not all(isinstance(v, str) and v.strip() for v in raw.values()):
        raise GuideDataError(f"{where}: empty text")
    return {k: v.strip() for k, v in raw.items()}


def parse_guide(raw: Mapping[str, Any]) -> Guide:
    """A ``Guide`` from one TOML document, checked so a bad file fails at start-up, not later."""
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise GuideDataError("guide without a name")
    steps: list[GuideStep] = []
    raw_steps = raw.get("steps")
    if not isinstance(raw_steps, list) or not raw_steps:
        raise GuideDataError(f"{name}: no steps")
    for raw_step in raw_steps:
        step_id = str(raw_step.get("id", ""))
        where = f"{name}.{step_id}"
        try:
            checkpoint = Checkpoint(raw_step["checkpoint"]) if raw_step.get("checkpoint") else None
        except ValueError as exc:
            raise GuideDataError(f"{where}: unknown checkpoint") from exc
        texts: dict[str, dict[str, str]] = {}
        for lang in GUIDE_LANGUAGES:
            variants = raw_step.get(lang)
            if not isinstance(variants, dict) or set(variants) not in ({"all"}, set(PLATFORMS)):
                raise GuideDataError(f"{where}.{lang}: needs 'all' or 'web' + 'mobile'")
            texts[lang] = {k: str(v).strip() for k, v in variants.items()}
        failed = _texts(raw_step["check_failed"], where) if checkpoint else {}
        passed = _texts(raw_step["check_passed"], where) if checkpoint else {}
        steps.append(GuideStep(step_id, checkpoint, texts, failed, passed))
    return Guide(
        name=name,
        title=_texts(raw.get("title"), f"{name}.title"),
        summary=_texts(raw.get("summary"), f"{name}.summary"),
        footer=_texts(raw.get("footer"), f"{name}.footer"),
        steps=tuple(steps),
    )


@dataclass(frozen=True, slots=True)
class GuideLibrary:
    """All guides by name, in the order ``!guide`` lists them."""

    guides: Mapping[str, Guide]

    ORDER = ("backup", "new-device", "verify-sessions", "verify-user", "practice")

    @classmethod
    def from_documents(cls, documents: Iterable[Mapping[str, Any]]) -> GuideLibrary:
        """Guides from their parsed TOML documents (``nerbot.guides.load_library`` reads them)."""
        guides: dict[str, Guide] = {}
        for document in documents:
            guide = parse_guide(document)
            guides[guide.name] = guide
        return cls(guides)

    @property
    def names(self) -> tuple[str, ...]:
        known = [n for n in self.ORDER if n in self.guides]
        return (*known, *sorted(set(self.guides) - set(known)))

    def get(self, name: str) -> Guide | None:
        return self.guides.get(name.strip().lower())

    def close_match(self, name: str) -> str | None:
        found = difflib.get_close_matches(name.lower(), self.names, n=1, cutoff=0.5)
        return found[0] if found else None


def suggest_guide(report: UserReport | None) -> str:
    """The guide the user needs most: the fix for their worst finding, else practice."""
    if report is not None and report.exists and report.next_guide:
        return report.next_guide
    return "practice"


def guess_platform(devices: Iterable[DeviceFacts]) -> Platform:
    """Mobile if every named session looks like a phone app; Web otherwise (the default)."""
    names = [d.display_name.lower() for d in devices if d.display_name]
    if names and all(any(h in n for h in _MOBILE_HINTS) for n in names):
        return "mobile"
    return "web"


def means_next(text: str) -> bool:
    """True for a plain reply like "done" or "好了" that stands for ``!next``."""
    words = " ".join(text.strip().rstrip(_TRAILING).lower().split())
    return words in DONE_WORDS


@dataclass(frozen=True, slots=True)
class GuideProgress:
    """Where one user is in one guide; stored as-is, so a restart resumes the same step.

    ``signed_at_start``/``known_at_start`` are the user's cross-signed and known sessions when
    the guide began: the ``new_session_signed`` checkpoint compares against them.
    """

    guide: str
    step: int
    started_ms: int
    updated_ms: int
    signed_at_start: frozenset[str] = frozenset()
    known_at_start: frozenset[str] = frozenset()


def start_guide(guide: Guide, report: UserReport | None, now_ms: int) -> GuideProgress:
    sessions = report.sessions if report is not None else ()
    return GuideProgress(
        guide=guide.name,
        step=0,
        started_ms=now_ms,
        updated_ms=now_ms,
        signed_at_start=frozenset(s.device.device_id for s in sessions
                                  if s.device.cross_signed),
        known_at_start=frozenset(s.device.device_id for s in sessions),
    )


class CheckReason(enum.Enum):
    """Why a checkpoint passed or failed; each has a catalog line ``guide.check.<value>``."""

    IDENTITY_PRESENT = "identity_present"
    NO_IDENTITY = "no_identity"
    BACKUP_SEEN = "backup_seen"
    BACKUP_INFERRED = "backup_inferred"          # not visible; inferred from cross-signing
    BACKUP_ABSENT = "backup_absent"
    NEWLY_SIGNED = "newly_signed"
    ALL_SIGNED = "all_signed"
    STILL_UNVERIFIED = "still_unverified"
    BOT_VERIFIED = "bot_verified"
    BOT_NOT_VERIFIED = "bot_not_verified"


@dataclass(frozen=True, slots=True)
class CheckResult:
    passed: bool
    reason: CheckReason
    devices: tuple[DeviceFacts, ...] = ()  # the sessions the reason is about


def _unverified(report: UserReport) -> tuple[DeviceFacts, ...]:
    return tuple(s.device for s in report.sessions if s.mark is SessionMark.UNVERIFIED)


def evaluate_checkpoint(checkpoint: Checkpoint, report: UserReport, progress: GuideProgress,
                        verified_with_bot: bool = False) -> CheckResult:
    """Did the step really happen? Judged on a fresh assessment, never on the user's word."""
    if checkpoint is Checkpoint.BOT_VERIFIED:
        reason = CheckReason.BOT_VERIFIED if verified_with_bot else CheckReason.BOT_NOT_VERIFIED
        return CheckResult(verified_with_bot, reason)
    if checkpoint is Checkpoint.CROSS_SIGNING:
        if report.cross_signing:
            return CheckResult(True, CheckReason.IDENTITY_PRESENT)
        return CheckResult(False, CheckReason.NO_IDENTITY)
    if checkpoint is Checkpoint.BACKUP:
        if report.backup is BackupState.PRESENT:
            return CheckResult(True, CheckReason.BACKUP_SEEN)
        if report.backup is BackupState.ABSENT:
            return CheckResult(False, CheckReason.BACKUP_ABSENT)
        # Not visible without the admin API: every current client creates the cross-signing
        # identity in the same setup, so its appearance is the best evidence we can get.
        if report.cross_signing:
            return CheckResult(True, CheckReason.BACKUP_INFERRED)
        return CheckResult(False, CheckReason.NO_IDENTITY)
    if not report.cross_signing:
        return CheckResult(False, CheckReason.NO_IDENTITY)
    unverified = _unverified(report)
    if checkpoint is Checkpoint.NEW_SESSION_SIGNED:
        before = progress.signed_at_start
        newly = tuple(s.device for s in report.sessions
                      if s.device.cross_signed and s.device.device_id not in before)
        if newly:
            return CheckResult(True, CheckReason.NEWLY_SIGNED, newly)
    if unverified:
        return CheckResult(False, CheckReason.STILL_UNVERIFIED, unverified)
    return CheckResult(True, CheckReason.ALL_SIGNED)


class Move(enum.Enum):
    ADVANCED = "advanced"    # moved to the next step (after a passed checkpoint, if any)
    STAYED = "stayed"        # the checkpoint failed; same step, with the reason
    FINISHED = "finished"    # the last step is done: summary, progress cleared
    BACK = "back"            # moved one step back
    AT_START = "at_start"    # ``!back`` on the first step


@dataclass(frozen=True, slots=True)
class GuideOutcome:
    move: Move
    progress: GuideProgress | None   # None once finished
    check: CheckResult | None = None


def next_step(guide: Guide, progress: GuideProgress, check: CheckResult | None,
              now_ms: int) -> GuideOutcome:
    """``!next``: the caller evaluated the current step's checkpoint (if it has one)."""
    step = guide.steps[min(progress.step, len(guide.steps) - 1)]
    if step.checkpoint is not None and (check is None or not check.passed):
        return GuideOutcome(Move.STAYED, progress, check)
    if progress.step + 1 >= len(guide.steps):
        return GuideOutcome(Move.FINISHED, None, check)
    return GuideOutcome(Move.ADVANCED, replace(progress, step=progress.step + 1,
                                               updated_ms=now_ms), check)


def previous_step(progress: GuideProgress, now_ms: int) -> GuideOutcome:
    if progress.step == 0:
        return GuideOutcome(Move.AT_START, progress)
    return GuideOutcome(Move.BACK, replace(progress, step=progress.step - 1, updated_ms=now_ms))


def clamp(guide: Guide, progress: GuideProgress) -> GuideProgress:
    """A stored step beyond the guide's end (the guide got shorter in an update) → last step."""
    last = len(guide.steps) - 1
    return progress if progress.step <= last else replace(progress, step=last)
