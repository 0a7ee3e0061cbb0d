"""Guide content (``nerbot/guides/data/*.toml``): complete in both languages, renderable in Matrix,
and saying what the issue about today's Element asked for.

Pure file checks: the guides are data, so a typo in a table name, a step missing in one language
or a broken link would otherwise only show up when a user reaches that step. The client labels
they quote are checked in test_labels.py.
"""

from __future__ import annotations

import json
import re
import tomllib
import unicodedata
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import emoji
import markdown
import pytest

from nerbot.domain.guide import LABEL_MARKER, PLATFORMS, Checkpoint, bundled_actions
from nerbot.guides import load_labels, load_library
from nerbot.matrix.render import NoticeRenderer

DATA = Path(__file__).resolve().parents[2] / "nerbot" / "guides" / "data"
GUIDES = ("backup", "new-device", "verify-sessions", "verify-user", "practice")
LANGUAGES = ("zh", "en")
CHECKPOINTS = {"", *(c.value for c in Checkpoint)}
TOP_KEYS = {"name", "title", "summary", "footer", "steps"}
STEP_KEYS = {"id", "checkpoint", *LANGUAGES, "check_failed", "check_passed", "confirm_hint",
             "web_client"}
LIBRARY = load_library()
LABELS = load_labels()
MAX_TEXT_CHARS = 1500
# Matrix caps an event at 65,536 bytes; Megolm ciphertext is base64 of the padded JSON, so stay
# far below: title + step + footer as the notice the bot sends (plain body + HTML).
MAX_EVENT_BYTES = 8000

ID_RE = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")
LINK_RE = re.compile(r"\[([^\[\]\n]+)\]\(([^()\s]+)\)")
CJK_RE = re.compile(r"[\u4e00-\u9fff]")
NAV_RE = re.compile(r"!(back|stop)\b")


def load(name: str) -> dict[str, Any]:
    with (DATA / f"{name}.toml").open("rb") as f:
        return tomllib.load(f)


def step_variants(step: dict[str, Any], lang: str) -> dict[str, str]:
    """``{"all": …}`` or ``{"web": …, "mobile": …}`` for one language."""
    table = step[lang]
    assert isinstance(table, dict), f"{step['id']}.{lang} must be a table"
    return table


def texts(guide: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """Every user-visible text as ``(where, text)``, as written in the file."""
    for table in ("title", "summary", "footer"):
        for lang in LANGUAGES:
            yield f"{table}.{lang}", guide[table][lang]
    for step in guide["steps"]:
        for lang in LANGUAGES:
            for platform, text in step_variants(step, lang).items():
                yield f"{step['id']}.{lang}.{platform}", text
            for platform, text in step.get("confirm_hint", {}).get(lang, {}).items():
                yield f"{step['id']}.confirm_hint.{lang}.{platform}", text
        for table in ("check_failed", "check_passed"):
            for lang in LANGUAGES:
                if table in step:
                    yield f"{step['id']}.{table}.{lang}", step[table][lang]


def rendered(name: str, lang: str, platform: str) -> list[str]:
    """A guide's step texts in one language and platform, labels rendered (as sent)."""
    guide = LIBRARY.guides[name]
    return [step.body(lang, platform) for step in guide.steps]


@pytest.fixture(scope="module", params=GUIDES)
def guide(request: pytest.FixtureRequest) -> dict[str, Any]:
    return load(request.param)


def test_data_folder_holds_exactly_the_guides() -> None:
    assert sorted(p.stem for p in DATA.glob("*.toml")) == sorted(GUIDES)


def test_header(guide: dict[str, Any]) -> None:
    assert set(guide) <= TOP_KEYS, f"unknown keys {set(guide) - TOP_KEYS}"
    assert guide["name"] in GUIDES
    for table in ("title", "summary", "footer"):
        assert set(guide[table]) == set(LANGUAGES), f"{guide['name']}: {table}"
        for lang in LANGUAGES:
            assert isinstance(guide[table][lang], str) and guide[table][lang].strip()


@pytest.mark.parametrize("name", GUIDES)
def test_name_matches_file(name: str) -> None:
    assert load(name)["name"] == name


def test_footer_carries_the_navigation_hint(guide: dict[str, Any]) -> None:
    for lang in LANGUAGES:
        footer = guide["footer"][lang]
        for command in ("`!next`", "`!back`", "`!stop`"):
            assert command in footer, f"{guide['name']}: footer.{lang} lacks {command}"
        assert "done" in footer and "好了" in footer
    # The engine appends the footer; steps must not repeat it.
    for where, text in texts(guide):
        if not where.startswith("footer."):
            assert not NAV_RE.search(text), f"{guide['name']}: {where} repeats the footer"


def test_steps_are_well_formed(guide: dict[str, Any]) -> None:
    steps = guide["steps"]
    assert isinstance(steps, list) and steps
    ids = [step["id"] for step in steps]
    assert len(ids) == len(set(ids)), f"{guide['name']}: duplicate step ids {ids}"
    for step in steps:
        where = f"{guide['name']}.{step['id']}"
        assert ID_RE.match(step["id"]), f"{where}: id must be kebab-case"
        assert set(step) <= STEP_KEYS, f"{where}: unknown keys {set(step) - STEP_KEYS}"
        assert step["checkpoint"] in CHECKPOINTS, f"{where}: checkpoint {step['checkpoint']!r}"
        shapes = []
        for lang in LANGUAGES:
            variants = step_variants(step, lang)
            assert set(variants) in ({"all"}, {"web", "mobile"}), f"{where}.{lang}: {set(variants)}"
            assert all(isinstance(t, str) and t.strip() for t in variants.values()), where
            shapes.append(set(variants))
        assert shapes[0] == shapes[1], f"{where}: zh and en have different shapes"
        checked = ("check_failed", "check_passed")
        if step["checkpoint"]:
            for table in checked:
                assert set(step.get(table, {})) == set(LANGUAGES), f"{where}: {table}"
        else:
            assert not any(table in step for table in checked), f"{where}: no checkpoint to check"
        # A checkpoint the bot may be unable to see says where the person looks instead.
        unseen = bool(step["checkpoint"]) and Checkpoint(step["checkpoint"]).may_be_unseen
        assert ("confirm_hint" in step) is unseen, f"{where}: confirm_hint"
        if unseen:
            hint = step["confirm_hint"]
            assert set(hint) == set(LANGUAGES), f"{where}: confirm_hint languages"
            assert all(set(hint[lang]) == set(PLATFORMS) for lang in LANGUAGES), where
        assert step.get("web_client", "mobile") in PLATFORMS, f"{where}: web_client"


def test_languages_are_what_they_claim(guide: dict[str, Any]) -> None:
    for where, text in texts(guide):
        if where.endswith(".zh") or ".zh." in where:
            assert CJK_RE.search(text), f"{guide['name']}: {where} has no Chinese"
        elif not where.startswith("footer."):  # the English footer quotes 好了 on purpose
            assert not CJK_RE.search(text), f"{guide['name']}: {where} has Chinese"


def test_checkpoints_cover_the_issue() -> None:
    def checkpoints(name: str) -> list[str]:
        return [step["checkpoint"] for step in load(name)["steps"]]

    # The backup guide's "finished, key saved" step checks recovery, never cross-signing
    # (current Element creates the identity by itself: it says nothing about recovery).
    assert [c for c in checkpoints("backup") if c] == ["recovery"]
    assert checkpoints("backup")[-1] == "recovery"
    assert "new_session_signed" in checkpoints("new-device")
    assert "sessions_verified" in checkpoints("verify-sessions")
    practice = load("practice")
    assert any("`!verify`" in t for _, t in texts(practice))
    assert "bot_verified" in checkpoints("practice")


def test_the_engine_loads_every_guide_from_the_package() -> None:
    library = load_library()
    assert library.names == GUIDES
    for name in GUIDES:
        guide = library.get(name)
        assert guide is not None and len(guide.steps) == len(load(name)["steps"])


def test_text_lengths(guide: dict[str, Any]) -> None:
    for where, text in texts(guide):
        assert len(text) <= MAX_TEXT_CHARS, f"{guide['name']}: {where} is {len(text)} chars"


def test_both_platforms_walk_the_same_steps(guide: dict[str, Any]) -> None:
    for lang in LANGUAGES:
        for platform in PLATFORMS:
            assert len(rendered(guide["name"], lang, platform)) == len(guide["steps"])


def test_one_action_per_step(guide: dict[str, Any]) -> None:
    """Each step, on each platform, asks for one action: it quotes at most one action label
    (a button, a switch, a field: ``role`` in labels.toml), or only the answers of one
    decision (``choices``: "They match" / "They don't match"). Navigation labels (a menu
    item, a tab) are free, so "Room info → People → the person" stays one step."""
    for step in guide["steps"]:
        for lang in LANGUAGES:
            for platform, text in step_variants(step, lang).items():
                where = f"{guide['name']}.{step['id']}.{lang}.{platform}"
                assert bundled_actions(text, LABELS) == [], f"{where}: more than one action"


# Steps as they were before the split, verbatim: each bundles actions (the audit's list).
BUNDLED = {
    "backup.finish (web)": "Now click {label:web.continue}. Element asks you to type the key "
    "once more: paste it into {label:web.enter_recovery_key} and click "
    "{label:web.finish_set_up}.",
    "new-device.use-key (web)": "Way 1: your recovery key. Click {label:web.use_recovery_key}, "
    "paste your saved recovery key into {label:web.recovery_key_field} and click "
    "{label:web.continue}.",
    "verify-user.start (mobile)": "In their profile, tap {label:x.verify_user}, then "
    "{label:x.start_verification}. They get a verification request.",
    "verify-sessions.accept-there (web)": "That device shows {label:web.verification_requested}: "
    "click {label:web.request_start_verification}, then {label:web.verify_by_emoji}, and "
    "compare the emoji on both. Click {label:web.they_match} only if they are identical.",
    "practice.send-verify (web)": "Send `!verify` here in our direct chat. Element shows "
    "{label:web.verification_requested}: click {label:web.request_verify_user}, then "
    "{label:web.verify_by_emoji}.",
    "backup.finish (mobile)": "Now tap {label:x.done}. If Element X asks {label:x.have_you_saved}, "
    "tap {label:x.continue} only if you really stored it.",
    "backup.start-recovery (web)": "Under {label:web.backup_section}, click "
    "{label:web.get_recovery_key}. ({label:web.allow_key_storage} under "
    "{label:web.key_storage} must be on; if it is off, turn it on first.)",
}


@pytest.mark.parametrize("where", sorted(BUNDLED))
def test_the_one_action_rule_catches_a_bundled_step(where: str) -> None:
    assert len(bundled_actions(BUNDLED[where], LABELS)) >= 2, where


def test_the_one_action_rule_allows_a_path_and_one_decision() -> None:
    path = ("click {label:web.room_info} → {label:web.people} → them, then click "
            "{label:web.verify_user}")
    decision = "click {label:web.they_match} if identical, else {label:web.they_dont_match}"
    warning = ("click {label:web.get_recovery_key}; never click {label:web.dismiss}")
    for text in (path, decision, warning, "no label at all"):
        assert bundled_actions(text, LABELS) == [], text
    # Answers of two different decisions are two actions.
    assert bundled_actions("click {label:web.they_match}, then {label:web.dismiss}", LABELS)


def test_longest_rendered_message_fits(guide: dict[str, Any]) -> None:
    extras = [
        step.get(table, {}).get(lang, "")
        for step in guide["steps"]
        for table in ("check_failed", "check_passed")
        for lang in LANGUAGES
    ]
    renderer = NoticeRenderer()
    for step in guide["steps"]:
        for lang in LANGUAGES:
            for text in step_variants(step, lang).values():
                text = LABEL_MARKER.sub("**Confirm your digital identity**（Confirm）", text)
                message = "\n\n".join(
                    [
                        f"**{guide['title'][lang]}**",
                        max(extras, key=len),
                        text,
                        guide["footer"][lang],
                    ]
                )
                content = renderer.render(message)
                # one renderer for all messages: nothing carries over from the one before
                assert content["formatted_body"] == markdown.markdown(message,
                                                                     extensions=["nl2br"])
                size = len(json.dumps(content, ensure_ascii=False).encode("utf-8"))
                assert size < MAX_EVENT_BYTES, f"{guide['name']}.{step['id']}: {size} bytes"
                assert content["formatted_body"].strip()


def test_links_are_well_formed(guide: dict[str, Any]) -> None:
    for where, text in texts(guide):
        links = LINK_RE.findall(text)
        assert text.count("](") == len(links), f"{guide['name']}: {where} has a broken link"
        for _label, url in links:
            parsed = urllib.parse.urlparse(url)
            assert parsed.scheme in ("http", "https") and parsed.netloc, f"{where}: {url}"


def test_no_stray_placeholders(guide: dict[str, Any]) -> None:
    """Only ``{label:ID}`` markers; after rendering, no brace at all."""
    for where, text in texts(guide):
        bare = LABEL_MARKER.sub("", text).replace("{{", "").replace("}}", "")
        assert "{" not in bare and "}" not in bare, f"{guide['name']}: {where} has a placeholder"
    for lang in LANGUAGES:
        for platform in PLATFORMS:
            for text in rendered(guide["name"], lang, platform):
                assert "{" not in text and "}" not in text, text


def test_no_public_client_links(guide: dict[str, Any]) -> None:
    """The phone path points to the community's own Element Web (config), not a public one."""
    for where, text in texts(guide):
        assert "element.io" not in text and "http" not in text, f"{guide['name']}: {where}"


def joined(name: str, lang: str, platform: str) -> str:
    return "\n".join(rendered(name, lang, platform))


@pytest.mark.parametrize("lang", LANGUAGES)
@pytest.mark.parametrize("platform", PLATFORMS)
def test_the_backup_guide_walks_todays_clients(lang: str, platform: str) -> None:
    text = joined("backup", lang, platform)
    if platform == "web":
        path = ["**所有设置**", "**加密**", "**获取恢复密钥**", "**完成设置**"] if lang == "zh" \
            else ["**All settings**", "**Encryption**", "**Get recovery key**", "**Finish set up**"]
    else:
        path = ["**设置**", "**加密**", "**获取恢复密钥**", "**保存恢复密钥**", "**完成**"] \
            if lang == "zh" else ["**Settings**", "**Encryption**", "**Get recovery key**",
                                  "**Save recovery key**", "**Done**"]
    at = 0
    for label in path:  # each one after the one before, in the order people click them
        at = text.index(label, at)
    # The screens of the seed guides' Element are gone: no Secure Backup panel, no choice
    # between a generated key and a phrase.
    for gone in ("Secure Backup", "安全备份", "Security & Privacy", "安全与隐私", "Cross-signing",
                 "Generate a Security Key", "Enter a Security Phrase", "Set up on this device",
                 "生成一个安全密钥", "使用一个安全密码", "在此设备上设置"):
        assert gone not in text, gone
    if platform == "web":  # the toast's Dismiss records "recovery off"
        assert ("不要点 **忽略**" if lang == "zh" else "Never click **Dismiss**") in text
    # Save the key before going on: the warning comes before the step that leaves the key.
    steps = [step.id for step in LIBRARY.guides["backup"].steps]
    assert steps.index("save-key") < steps.index("store-key") < steps.index("go-on")
    save = LIBRARY.guides["backup"].steps[steps.index("save-key")].body(lang, platform)
    assert "⚠️" in save and ("先把它存好" if lang == "zh" else "Store it first") in save


@pytest.mark.parametrize("lang", LANGUAGES)
@pytest.mark.parametrize("platform", PLATFORMS)
def test_the_new_device_guide_warns_about_cant_confirm(lang: str, platform: str) -> None:
    guide = LIBRARY.guides["new-device"]
    texts_ = rendered("new-device", lang, platform)
    cant = "**无法确认？**" if lang == "zh" else "**Can't confirm?**"
    warning = next(i for i, t in enumerate(texts_) if t.startswith("⚠️") and cant in t)
    key = "**使用恢复密钥**" if lang == "zh" else "**Use recovery key**"
    other = ("**使用另一设备**" if platform == "web" else "**使用其它设备**") if lang == "zh" \
        else "**Use another device**"
    first_use = min(i for i, t in enumerate(texts_) if key in t or other in t)
    assert warning < first_use  # the warning comes before either way is taken
    joined_ = "\n".join(texts_)
    assert ("**Start Verification**" if platform == "web" else "**Start verification**") in \
        joined_ or lang == "zh"
    assert "**Accept**" not in joined_ and "**接受**" not in joined_
    assert guide.steps[-2].checkpoint is Checkpoint.NEW_SESSION_SIGNED


@pytest.mark.parametrize("lang", LANGUAGES)
def test_verifying_a_person_uses_todays_labels(lang: str) -> None:
    web = joined("verify-user", lang, "web")
    mobile = joined("verify-user", lang, "mobile")
    if lang == "en":
        for label in ("**Room info**", "**People**", "**Verify User**", "**Start Verification**",
                      "**Verify by emoji**", "**They match**", "**They don't match**"):
            assert label in web, label
        for label in ("**Verify user**", "**Start verification**", "**They match**"):
            assert label in mobile, label
    else:
        for label in ("**房间信息**", "**人员**", "**验证用户**", "**开始验证**",
                      "**使用 Emoji 验证**", "**匹配**", "**不匹配**"):
            assert label in web, label
        for label in ("**验证用户**", "**开始验证**", "**匹配**"):
            assert label in mobile, label


def test_emoji_are_valid(guide: dict[str, Any]) -> None:
    for where, text in texts(guide):
        covered: set[int] = set()
        for found in emoji.emoji_list(text):
            assert emoji.is_emoji(found["emoji"]), f"{guide['name']}: {where}: {found}"
            covered.update(range(found["match_start"], found["match_end"]))
        # Leftover pieces of emoji (joiners, selectors, modifiers, pictographs the emoji
        # package does not know) would render as boxes or split glyphs.
        for i, ch in enumerate(text):
            if i in covered:
                continue
            assert ch not in "\u200d\ufe0f", f"{guide['name']}: {where}: stray {ch!r} at {i}"
            stray = unicodedata.category(ch) in ("So", "Sk") and ord(ch) >= 0x1F000
            assert not stray, f"{guide['name']}: {where}: unknown emoji {ch!r} at {i}"
