"""Step-by-step walkthroughs: guides as data, progress as a value, checkpoints as pure checks.

Everything here decides and nothing does I/O: the command layer loads the user's progress,
fetches a fresh assessment when the current step has a checkpoint, calls these functions and
renders what they return. So every transition and every checkpoint rule is unit-tested without
a homeserver, and a restart loses nothing because progress is a plain value the store keeps.

Client labels (the words Element shows on a button or a screen) are data too, with their
source: ``nerbot/guides/labels.toml`` lists each one with its translation key, its text in each
language and the client file and commit it was read from. Guide texts never type a label: they
write ``{label:ID}``, and ``parse_guide`` replaces the marker with the label's text in the
step's language, in bold. Bold in a rendered guide therefore always means "exactly these words
are on your screen", and updating the labels for a new Element release means editing one file.
"""

from __future__ import annotations

import difflib
import enum
import re
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
# Words that also confirm a step the bot cannot check itself (``!next confirm``).
CONFIRM_WORDS = frozenset({"confirm", "confirmed", "确认", "已确认", "我确认", "确认了"})
_TRAILING = " \t\r\n.。!！~～…,，"

# Session names that only mobile clients give themselves (Element X, Element Android/iOS…).
_MOBILE_HINTS = ("element x", "android", "ios", "iphone", "ipad", "mobile")

# ``{label:web.encryption_tab}``: a client label, rendered from the label file.
LABEL_MARKER = re.compile(r"\{label:([a-z0-9_.-]+)\}")
# Format placeholders in client strings: ``%(counter)s`` (Web), ``%1$@`` / ``%1$s`` (Element X).
_CLIENT_PLACEHOLDER = r"%(?:\([A-Za-z_]+\)s|\d+\$[@sd]|[@sd])"
_PLACEHOLDER_IN_BRACKETS = re.compile(
    rf"\s*[(（][^()（）]*{_CLIENT_PLACEHOLDER}[^()（）]*[)）]")
_PLACEHOLDER = re.compile(_CLIENT_PLACEHOLDER)
CLIENTS = ("element-web", "element-x")
MISSING = "missing"  # a build with no Chinese for the label: it shows the English
# Where a client runs: Element Web/Desktop on "web"; Element X on "android" and "ios".
CLIENT_PLATFORMS = {"element-web": ("web",), "element-x": ("android", "ios")}
# What a label is on screen. Pressing, switching or typing into one is an action; a menu
# item or a tab only leads to a screen (navigation); a title is words to look for.
ACTION_ROLES = frozenset({"button", "toggle", "field"})
NAVIGATION_ROLES = frozenset({"menu", "tab"})
ROLES = ACTION_ROLES | NAVIGATION_ROLES | {"title"}
WHEN = ("current", "older")  # an other wording: shown by a current build, or an older one


class GuideDataError(ValueError):
    """A guide or the label file is malformed; raised at load time, never at a user."""


# -- client labels --------------------------------------------------------------------------


def shown_text(client_string: str) -> str:
    """What a client string shows as a label: a placeholder in brackets (a countdown, a name)
    is left out, any other placeholder becomes "…": "Ignore (%(counter)s)" → "Ignore"."""
    text = _PLACEHOLDER_IN_BRACKETS.sub("", client_string)
    return _PLACEHOLDER.sub("…", text).strip()


@dataclass(frozen=True, slots=True)
class OtherWording:
    """What some builds in use show instead of a label's current text, read in their files.

    ``platforms`` are where (Element X: "android", "ios"); ``when`` is "current" (a current
    build of that platform differs, e.g. Android and iOS disagree) or "older" (builds before
    the change). ``en``/``zh`` are that build's words (None: not recorded, the same as now);
    ``zh == "missing"``: that build has no Chinese, so Chinese users see the English label.
    ``where`` is how a guide names those builds in each language ("older versions",
    "Android"), from the label file's ``[wording]`` table.
    """

    platforms: tuple[str, ...]
    when: str
    builds: str
    sources: tuple[str, ...]
    where: Mapping[str, str]
    en: str | None = None
    zh: str | None = None

    def text(self, language: str) -> str | None:
        words = self.zh if language == "zh" else self.en
        return None if words is None or words == MISSING else shown_text(words)


@dataclass(frozen=True, slots=True)
class ClientLabel:
    """One label as a client shows it, read from the client's own string files.

    ``zh`` is None when the client has no Chinese for it (Chinese users then see English).
    ``zh_older`` records what an older build showed, where that was checked: ``"missing"``
    means no translation there, so Chinese users of that build see the English label; other
    text is a close rewording people still recognise, recorded but not quoted. ``also`` lists
    the other wordings builds in use show (per platform, current or older); guides quote them
    after the current text. ``role`` is what the label is on screen (``ROLES``); ``choices``
    names the decisions an action label is one answer of (the buttons offered together, of
    which the person presses one: "They match" / "They don't match").
    """

    id: str
    client: str
    key: str
    en: str
    zh: str | None
    sources: tuple[str, ...]
    zh_older: str | None = None
    role: str = "button"
    choices: frozenset[str] = frozenset()
    also: tuple[OtherWording, ...] = ()

    def text(self, language: str) -> str:
        """The label's words on screen in ``language`` (English where Chinese is missing)."""
        if language == "zh" and self.zh is not None:
            return shown_text(self.zh)
        return shown_text(self.en)

    @property
    def zh_may_be_missing(self) -> bool:
        return (self.zh is None or self.zh_older == MISSING
                or any(w.zh == MISSING for w in self.also))

    @property
    def is_action(self) -> bool:
        return self.role in ACTION_ROLES

    def other_texts(self, language: str) -> list[tuple[str, list[str]]]:
        """The other wordings a guide quotes in ``language``, grouped by where they are shown:
        ``[("older versions", ["Set up recovery"])]``."""
        groups: dict[str, list[str]] = {}
        for wording in self.also:
            words = wording.text(language)
            if words is None or words == self.text(language):
                continue
            shown = groups.setdefault(wording.where[language], [])
            if words not in shown:
                shown.append(words)
        return list(groups.items())

    def texts(self, language: str) -> frozenset[str]:
        """Every wording of the label a guide may quote in ``language``."""
        return frozenset({self.text(language),
                          *(w for _, words in self.other_texts(language) for w in words)})

    def quote(self, language: str) -> str:
        """The label as a guide quotes it: bold; in Chinese with the English in brackets where
        a build in use may show English instead; then the other wordings builds in use show:
        **获取恢复密钥**（旧版本：**设置恢复**）, **Get recovery key** (older versions: **Set up
        recovery**)."""
        quoted = f"**{self.text(language)}**"
        if language == "zh" and self.zh is not None and self.zh_may_be_missing:
            quoted = f"{quoted}（{shown_text(self.en)}）"
        others = self.other_texts(language)
        if not others:
            return quoted
        if language == "zh":
            listed = "；".join(f"{where}：" + "、".join(f"**{w}**" for w in words)
                              for where, words in others)
            return f"{quoted}（{listed}）"
        listed = "; ".join(f"{where}: " + " / ".join(f"**{w}**" for w in words)
                           for where, words in others)
        return f"{quoted} ({listed})"


def _label_field(raw: Mapping[str, Any], name: str, where: str) -> str:
    value = raw.get(name)
    if not isinstance(value, str) or not value.strip():
        raise GuideDataError(f"{where}: {name} must be a non-empty string")
    return value


def _optional_text(raw: Mapping[str, Any], name: str, where: str) -> str | None:
    value = raw.get(name)
    if value is not None and (not isinstance(value, str) or not value.strip()):
        raise GuideDataError(f"{where}: {name} must be a non-empty string or left out")
    return value


def _source_refs(raw: Mapping[str, Any], sources: Mapping[str, Any], where: str
                 ) -> tuple[str, ...]:
    refs = raw.get("sources")
    if not isinstance(refs, list) or not refs or any(r not in sources for r in refs):
        raise GuideDataError(f"{where}: sources must name entries of [sources]")
    return tuple(refs)


def _where_names(wording: Mapping[str, Any], name: str, where: str) -> Mapping[str, str]:
    names = wording.get(name)
    if not isinstance(names, Mapping) or set(names) != set(GUIDE_LANGUAGES) or not all(
            isinstance(v, str) and v.strip() for v in names.values()):
        raise GuideDataError(f"{where}: [wording.{name}] needs a text in {GUIDE_LANGUAGES}")
    return dict(names)


def _other_wording(raw: Any, label: ClientLabel, sources: Mapping[str, Any],
                   wording: Mapping[str, Any], where: str) -> OtherWording:
    if not isinstance(raw, Mapping):
        raise GuideDataError(f"{where}: must be a table")
    platforms = raw.get("platforms")
    allowed = CLIENT_PLATFORMS[label.client]
    if not isinstance(platforms, list) or not platforms or any(
            p not in allowed for p in platforms) or len(set(platforms)) != len(platforms):
        raise GuideDataError(f"{where}: platforms must be some of {allowed}")
    when = raw.get("when")
    if when not in WHEN:
        raise GuideDataError(f"{where}: when must be one of {WHEN}")
    en, zh = _optional_text(raw, "en", where), _optional_text(raw, "zh", where)
    if en == MISSING:
        raise GuideDataError(f"{where}: en cannot be missing")
    if zh == MISSING and en is not None and en != label.en:
        raise GuideDataError(f"{where}: without Chinese the build shows the label's English")
    if (en is None or en == label.en) and (zh is None or zh == label.zh):
        raise GuideDataError(f"{where}: words no different from the label's")
    # Older builds are named as such; a current build by its platforms ("Android").
    names = ([_where_names(wording, "older", where)] if when == "older"
             else [_where_names(wording, p, where) for p in platforms])
    where_shown = {lang: "/".join(n[lang] for n in names) for lang in GUIDE_LANGUAGES}
    return OtherWording(platforms=tuple(platforms), when=when,
                        builds=_label_field(raw, "builds", where),
                        sources=_source_refs(raw, sources, where), where=where_shown,
                        en=en, zh=zh)


def parse_labels(raw: Mapping[str, Any]) -> dict[str, ClientLabel]:
    """The label file (``[sources.*]``, ``[wording.*]`` and ``[[label]]``), checked, by id."""
    sources = raw.get("sources")
    if not isinstance(sources, Mapping) or not sources:
        raise GuideDataError("labels: no [sources]")
    for name, source in sources.items():
        # Which client release the texts are from (issue 16): a commit alone does not say.
        if not isinstance(source, Mapping):
            raise GuideDataError(f"sources.{name}: must be a table")
        _label_field(source, "version", f"sources.{name}")
    wording = raw.get("wording", {})
    labels: dict[str, ClientLabel] = {}
    for entry in raw.get("label", []):
        label_id = _label_field(entry, "id", "label")
        where = f"label {label_id}"
        if label_id in labels:
            raise GuideDataError(f"{where}: duplicate id")
        client = _label_field(entry, "client", where)
        if client not in CLIENTS:
            raise GuideDataError(f"{where}: client must be one of {CLIENTS}")
        role = entry.get("role")
        if role not in ROLES:
            raise GuideDataError(f"{where}: role must be one of {sorted(ROLES)}")
        choices = entry.get("choices", [])
        if not isinstance(choices, list) or not all(isinstance(c, str) and c for c in choices):
            raise GuideDataError(f"{where}: choices must be a list of names")
        if choices and role not in ACTION_ROLES:
            raise GuideDataError(f"{where}: only an action ({sorted(ACTION_ROLES)}) is a choice")
        label = ClientLabel(
            id=label_id, client=client, key=_label_field(entry, "key", where),
            en=_label_field(entry, "en", where), zh=_optional_text(entry, "zh", where),
            sources=_source_refs(entry, sources, where),
            zh_older=_optional_text(entry, "zh_older", where), role=role,
            choices=frozenset(choices))
        also = entry.get("also", [])
        if not isinstance(also, list):
            raise GuideDataError(f"{where}: also must be a list of tables")
        labels[label_id] = replace(label, also=tuple(
            _other_wording(other, label, sources, wording, f"{where}.also[{i}]")
            for i, other in enumerate(also)))
    if not labels:
        raise GuideDataError("labels: no [[label]] entries")
    return labels


def label_quotes(labels: Mapping[str, ClientLabel], language: str) -> dict[str, str]:
    """Every label quoted in ``language``, for catalog lines that write ``{label[ID]}``."""
    return {label_id: label.quote(language) for label_id, label in labels.items()}


def render_labels(text: str, language: str, labels: Mapping[str, ClientLabel],
                  where: str = "") -> str:
    """``text`` with every ``{label:ID}`` replaced by the label quoted in ``language``."""
    def one(match: re.Match[str]) -> str:
        label = labels.get(match.group(1))
        if label is None:
            raise GuideDataError(f"{where}: unknown label {match.group(1)!r}")
        return label.quote(language)

    return LABEL_MARKER.sub(one, text)


def bundled_actions(text: str, labels: Mapping[str, ClientLabel]) -> list[str]:
    """The action labels a step text asks for when they are more than one action: empty when
    the text quotes at most one action label (button, switch, field), or only the answers of
    one decision (the buttons offered together, of which the person presses one). Navigation
    (a menu item, a tab) and titles are free: "Room info → People" is a path, not an action.
    """
    actions = sorted({i for i in LABEL_MARKER.findall(text) if i in labels
                      and labels[i].is_action})
    if len(actions) <= 1:
        return []
    shared = frozenset.intersection(*(labels[i].choices for i in actions))
    return [] if shared else actions


# -- guides -----------------------------------------------------------------------------------


class Checkpoint(enum.Enum):
    """What a step asks the homeserver before letting the user move on."""

    RECOVERY = "recovery"
    SESSIONS_VERIFIED = "sessions_verified"
    NEW_SESSION_SIGNED = "new_session_signed"
    BOT_VERIFIED = "bot_verified"

    @property
    def may_be_unseen(self) -> bool:
        """The subject may be invisible to the bot, so the person is asked to confirm it."""
        return self is Checkpoint.RECOVERY


Texts = Mapping[str, Mapping[str, str]]  # language → variant ("all" / "web", "mobile") → text


@dataclass(frozen=True, slots=True)
class GuideStep:
    id: str
    checkpoint: Checkpoint | None
    texts: Texts
    check_failed: Mapping[str, str] = field(default_factory=dict)
    check_passed: Mapping[str, str] = field(default_factory=dict)
    # Where to look in the client when the checkpoint cannot be seen (same shape as texts).
    confirm_hint: Texts = field(default_factory=dict)
    # Platforms on which the step is followed by the community's own Element Web (its address
    # from the configuration, or where to ask for it): ``web_client = "mobile"`` in the data.
    web_client: frozenset[Platform] = frozenset()

    def body(self, language: str, platform: Platform) -> str:
        return _variant(self.texts, language, platform)

    def hint(self, language: str, platform: Platform) -> str:
        return _variant(self.confirm_hint, language, platform) if self.confirm_hint else ""

    @property
    def has_variants(self) -> bool:
        return "all" not in next(iter(self.texts.values()))


def _variant(texts: Texts, language: str, platform: Platform) -> str:
    variants = texts[language]
    return variants.get("all") or variants[platform]


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


def _texts(raw: Any, where: str, labels: Mapping[str, ClientLabel]) -> dict[str, str]:
    if not isinstance(raw, dict) or set(raw) != set(GUIDE_LANGUAGES):
        raise GuideDataError(f"{where}: needs exactly {GUIDE_LANGUAGES}")
    if not all(isinstance(v, str) and v.strip() for v in raw.values()):
        raise GuideDataError(f"{where}: empty text")
    return {k: render_labels(v.strip(), k, labels, where) for k, v in raw.items()}


def _variants(raw_step: Mapping[str, Any], table: str | None, where: str,
              labels: Mapping[str, ClientLabel]) -> dict[str, dict[str, str]]:
    """``{lang: {"all": …} or {"web": …, "mobile": …}}`` from a step (or one of its tables)."""
    source = raw_step.get(table) if table else raw_step
    if not isinstance(source, Mapping):
        raise GuideDataError(f"{where}: {table} must be a table")
    texts: dict[str, dict[str, str]] = {}
    for lang in GUIDE_LANGUAGES:
        variants = source.get(lang)
        if not isinstance(variants, dict) or set(variants) not in ({"all"}, set(PLATFORMS)):
            raise GuideDataError(f"{where}.{lang}: needs 'all' or 'web' + 'mobile'")
        if not all(isinstance(v, str) and v.strip() for v in variants.values()):
            raise GuideDataError(f"{where}.{lang}: empty text")
        texts[lang] = {k: render_labels(str(v).strip(), lang, labels, f"{where}.{lang}")
                       for k, v in variants.items()}
    return texts


def parse_guide(raw: Mapping[str, Any], labels: Mapping[str, ClientLabel] | None = None
                ) -> Guide:
    """A ``Guide`` from one TOML document, its labels rendered, checked so a bad file fails at
    start-up, not later."""
    book = labels or {}
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
        texts = _variants(raw_step, None, where, book)
        failed = _texts(raw_step.get("check_failed"), f"{where}.check_failed", book) \
            if checkpoint else {}
        passed = _texts(raw_step.get("check_passed"), f"{where}.check_passed", book) \
            if checkpoint else {}
        hint: dict[str, dict[str, str]] = {}
        if checkpoint is not None and checkpoint.may_be_unseen:
            hint = _variants(raw_step, "confirm_hint", f"{where}.confirm_hint", book)
        elif "confirm_hint" in raw_step:
            raise GuideDataError(f"{where}: confirm_hint without a checkpoint that needs it")
        web_client = raw_step.get("web_client")
        if web_client is not None and web_client not in PLATFORMS:
            raise GuideDataError(f"{where}: web_client must be one of {PLATFORMS}")
        steps.append(GuideStep(step_id, checkpoint, texts, failed, passed, hint,
                               frozenset({web_client}) if web_client else frozenset()))
    return Guide(
        name=name,
        title=_texts(raw.get("title"), f"{name}.title", book),
        summary=_texts(raw.get("summary"), f"{name}.summary", book),
        footer=_texts(raw.get("footer"), f"{name}.footer", book),
        steps=tuple(steps),
    )


@dataclass(frozen=True, slots=True)
class GuideLibrary:
    """All guides by name, in the order ``!guide`` lists them, with the labels they quote."""

    guides: Mapping[str, Guide]
    labels: Mapping[str, ClientLabel] = field(default_factory=dict)

    ORDER = ("backup", "new-device", "verify-sessions", "verify-user", "practice")

    @classmethod
    def from_documents(cls, documents: Iterable[Mapping[str, Any]],
                       labels: Mapping[str, ClientLabel] | None = None) -> GuideLibrary:
        """Guides from their parsed TOML documents (``nerbot.guides.load_library`` reads them)."""
        guides: dict[str, Guide] = {}
        for document in documents:
            guide = parse_guide(document, labels)
            guides[guide.name] = guide
        return cls(guides, dict(labels or {}))

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


def _normalised(text: str) -> str:
    return " ".join(text.strip().rstrip(_TRAILING).lower().split())


def means_next(text: str) -> bool:
    """True for a plain reply like "done" or "好了" that stands for ``!next``."""
    return _normalised(text) in DONE_WORDS


def means_confirm(text: str) -> bool:
    """True for a plain "confirm" / "确认": ``!next confirm``, the person vouching for a step
    the bot cannot check itself."""
    return _normalised(text) in CONFIRM_WORDS


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
    step_id: str | None = None  # as stored: the ID of the step at ``step`` when it was saved


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


# -- checkpoints ------------------------------------------------------------------------------


class CheckReason(enum.Enum):
    """What the server showed (or that it shows nothing about the step's subject); each has a
    catalog line ``guide.check.<value>``."""

    RECOVERY_SET_UP = "recovery_set_up"
    NO_RECOVERY = "no_recovery"
    BACKUP_ABSENT = "backup_absent"
    RECOVERY_NOT_VISIBLE = "recovery_not_visible"
    RECOVERY_NOT_VISIBLE_REMOTE = "recovery_not_visible_remote"
    NO_IDENTITY = "no_identity"
    NEWLY_SIGNED = "newly_signed"
    ALL_SIGNED = "all_signed"
    STILL_UNVERIFIED = "still_unverified"
    BOT_VERIFIED = "bot_verified"
    BOT_NOT_VERIFIED = "bot_not_verified"


class Unseen(enum.Enum):
    """The step's subject is not visible to the bot, and what the verdict rests on instead;
    each has a catalog line ``guide.unseen.<value>``."""

    ASK_CONFIRM = "ask_confirm"   # nothing to go on: the person is asked to look and confirm
    CONFIRMED = "confirmed"       # the person said they see it done: their word, not a check


@dataclass(frozen=True, slots=True)
class CheckResult:
    """A checkpoint's verdict.

    ``reason`` is what the server showed. ``unseen`` is set when the step's own subject was not
    visible (recovery without the admin token): then nothing about the subject is announced as
    a fact and no ✅/❌ is put on it; the person is asked to confirm, or has confirmed.
    """

    passed: bool
    reason: CheckReason
    devices: tuple[DeviceFacts, ...] = ()  # the sessions the reason is about
    unseen: Unseen | None = None

    @property
    def seen(self) -> bool:
        return self.unseen is None


def _unverified(report: UserReport) -> tuple[DeviceFacts, ...]:
    return tuple(s.device for s in report.sessions if s.mark is SessionMark.UNVERIFIED)


def _recovery(report: UserReport, confirmed: bool) -> CheckResult:
    """Recovery (a default secret-storage key, seen with the admin token), with the key backup
    behind it where the admin-login check shows it. Never inferred from cross-signing: current
    Element creates the identity by itself, so it says nothing about recovery."""
    if report.recovery is True:
        if report.backup is BackupState.ABSENT:
            return CheckResult(False, CheckReason.BACKUP_ABSENT)
        return CheckResult(True, CheckReason.RECOVERY_SET_UP)
    if report.recovery is False:
        return CheckResult(False, CheckReason.NO_RECOVERY)
    reason = (CheckReason.RECOVERY_NOT_VISIBLE_REMOTE if report.remote
              else CheckReason.RECOVERY_NOT_VISIBLE)
    if confirmed:
        return CheckResult(True, reason, unseen=Unseen.CONFIRMED)
    return CheckResult(False, reason, unseen=Unseen.ASK_CONFIRM)


def evaluate_checkpoint(checkpoint: Checkpoint, report: UserReport, progress: GuideProgress,
                        verified_with_bot: bool = False, confirmed: bool = False
                        ) -> CheckResult:
    """Did the step really happen? Judged on a fresh assessment; the person's word
    (``confirmed``) counts only where the server shows nothing about the step."""
    if checkpoint is Checkpoint.BOT_VERIFIED:
        reason = CheckReason.BOT_VERIFIED if verified_with_bot else CheckReason.BOT_NOT_VERIFIED
        return CheckResult(verified_with_bot, reason)
    if checkpoint is Checkpoint.RECOVERY:
        return _recovery(report, confirmed)
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
    return GuideOutcome(Move.ADVANCED, replace(progress, step=progress.step + 1, step_id=None,
                                               updated_ms=now_ms), check)


def previous_step(progress: GuideProgress, now_ms: int) -> GuideOutcome:
    if progress.step == 0:
        return GuideOutcome(Move.AT_START, progress)
    return GuideOutcome(Move.BACK, replace(progress, step=progress.step - 1, step_id=None,
                                           updated_ms=now_ms))


def with_step_id(guide: Guide, progress: GuideProgress) -> GuideProgress:
    """The progress as it is stored: with the ID of its step, which ``clamp`` finds again."""
    return replace(progress, step_id=guide.steps[progress.step].id)


def clamp(guide: Guide, progress: GuideProgress) -> GuideProgress:
    """Where stored progress resumes in the guide as it is now: at the step with the stored ID
    (steps inserted or removed around it move nobody); without one (saved before IDs were
    stored, or a step an update removed) at the stored position, the last step past the end."""
    ids = [step.id for step in guide.steps]
    if progress.step_id in ids:
        at = ids.index(progress.step_id)
        return progress if at == progress.step else replace(progress, step=at)
    last = len(guide.steps) - 1
    return progress if progress.step <= last else replace(progress, step=last)
