"""Client labels (``nerbot/guides/labels.toml``): sourced, complete, and the only bold in a guide.

What "quoting a label" means, precisely: guide data never types a client label and never writes
bold (``**``) by hand; it writes ``{label:ID}``, and the loader renders the label's text in the
reader's language, in bold. So these checks make drift impossible to miss:

- every ``{label:ID}`` in guide data (and every ``{label[ID]}`` in the catalogs) names an entry
  of the label file, and every entry is quoted somewhere (the file lists exactly what is used);
- guide data contains no ``**`` of its own;
- every bold span in a rendered guide is the text of a label in that language (or its English,
  for a Chinese label a build in use may lack, or another wording builds in use show), so bold
  always means "on your screen";
- catalog lines rendered without a label table (``CATALOG_LABEL_LINES``) quote each label
  exactly as ``{label[ID]}`` would, and no other catalog line bolds a label's words by hand.

Updating the labels for a new Element release is editing the label file; nothing else.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

from nerbot.domain.guide import (
    CLIENT_PLATFORMS,
    LABEL_MARKER,
    MISSING,
    PLATFORMS,
    ROLES,
    ClientLabel,
    GuideDataError,
    OtherWording,
    label_quotes,
    parse_guide,
    parse_labels,
    render_labels,
    shown_text,
)
from nerbot.guides import load_labels, load_library
from nerbot.i18n import LANGUAGES, Catalog

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "nerbot" / "guides" / "data"
LABEL_FILE = ROOT / "nerbot" / "guides" / "labels.toml"
RAW = tomllib.loads(LABEL_FILE.read_text(encoding="utf-8"))
LABELS = load_labels()
LIBRARY = load_library()
CATALOG = Catalog.load()
CATALOG_LABEL = re.compile(r"\{label\[([a-z0-9_.-]+)\]\}")
BOLD = re.compile(r"\*\*(.+?)\*\*")
COMMIT = re.compile(r"^[0-9a-f]{40}$")
DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
# Catalog lines that quote client labels in plain bold (rendered by code that passes no label
# table, nerbot/commands/verify.py), with the labels each quotes, in order: each must read
# exactly as {label[ID]} would render it.
CATALOG_LABEL_LINES = {
    "verify.requested_room": ("web.verification_requested", "web.request_verify_user",
                              "x.start_verification", "web.verify_by_emoji"),
    "verify.requested_device": ("web.request_start_verification", "x.start_verification",
                                "web.verify_by_emoji"),
    "verify.sas": ("web.they_match", "web.they_dont_match"),
}
VALUE = re.compile(r"\{[a-z_]+\}")  # **{numbers}**: a value in bold, not a label


def raw_guide_texts() -> list[tuple[str, str]]:
    """Every text in every guide file, as written: ``(where, text)``."""
    found: list[tuple[str, str]] = []

    def walk(value: Any, where: str) -> None:
        if isinstance(value, str):
            found.append((where, value))
        elif isinstance(value, dict):
            for key, item in value.items():
                walk(item, f"{where}.{key}")
        elif isinstance(value, list):
            for i, item in enumerate(value):
                walk(item, f"{where}[{i}]")

    for path in sorted(DATA.glob("*.toml")):
        walk(tomllib.loads(path.read_text(encoding="utf-8")), path.stem)
    return found


def rendered_guide_texts() -> list[tuple[str, str, str]]:
    """Every rendered guide text: ``(where, language, text)``."""
    found = []
    for guide in LIBRARY.guides.values():
        for lang in LANGUAGES:
            for table in (guide.title, guide.summary, guide.footer):
                found.append((guide.name, lang, table[lang]))
            for step in guide.steps:
                where = f"{guide.name}.{step.id}"
                for platform in PLATFORMS:
                    found.append((where, lang, step.body(lang, platform)))
                    if step.confirm_hint:
                        found.append((f"{where}.hint", lang, step.hint(lang, platform)))
                for table in (step.check_failed, step.check_passed):
                    if table:
                        found.append((where, lang, table[lang]))
    return found


def test_the_label_file_loads_with_its_sources() -> None:
    assert len(LABELS) >= 40
    for name, source in RAW["sources"].items():
        assert source["client"] in ("element-web", "element-x"), name
        assert source["platform"] in CLIENT_PLATFORMS[source["client"]], name
        assert "/" in source["repo"] and source["path"], name
        assert COMMIT.match(source["commit"]), f"{name}: a commit, not a branch"
        assert source["language"] in LANGUAGES and source["role"] in ("current", "older"), name
        assert source["version"].strip(), f"{name}: the client release the commit is"
        assert DATE.match(source.get("date", "2000-01-01")), f"{name}: date is YYYY-MM-DD"


def test_a_source_without_its_client_version_is_refused_at_load() -> None:
    """Issue 16: the file records which client release each text was read from, not only
    the commit; a source without a version (or with an empty one) does not load."""
    entry = {"id": "web.a", "client": "element-web", "role": "button", "key": "k", "en": "A",
             "sources": ["web-en"]}
    source = {"repo": "element-hq/element-web", "commit": "0" * 40, "version": "1.12.4"}
    assert parse_labels({"sources": {"web-en": source}, "label": [entry]})["web.a"]
    for broken in ({k: v for k, v in source.items() if k != "version"},
                   {**source, "version": " "}, {**source, "version": 1.12}):
        with pytest.raises(GuideDataError, match="version"):
            parse_labels({"sources": {"web-en": broken}, "label": [entry]})
    with pytest.raises(GuideDataError):
        parse_labels({"sources": {"web-en": "1.12.4"}, "label": [entry]})
    # Every source of the real file, not only the one a label names, must say it.
    raw = {**RAW, "sources": {**RAW["sources"], "unused": {"commit": "0" * 40}}}
    with pytest.raises(GuideDataError, match=r"sources\.unused: version"):
        parse_labels(raw)


def sources_of(names: tuple[str, ...]) -> list[dict[str, Any]]:
    return [RAW["sources"][name] for name in names]


@pytest.mark.parametrize("label_id", sorted(LABELS))
def test_each_label_says_where_it_was_read(label_id: str) -> None:
    label = LABELS[label_id]
    sources = sources_of(label.sources)
    prefix = {"element-web": "web.", "element-x": "x."}[label.client]
    assert label.id.startswith(prefix)
    assert label.role in ROLES
    assert all(s["client"] == label.client for s in sources), "sources of another client"
    current = [s for s in sources if s["role"] == "current"]
    # Read on every platform the client runs on (Element X: Android and iOS), in English and,
    # where it has Chinese, in Chinese.
    for platform in CLIENT_PLATFORMS[label.client]:
        here = {s["language"] for s in current if s["platform"] == platform}
        assert "en" in here, f"no English source on {platform}"
        assert ("zh" in here) == (label.zh is not None), f"zh source on {platform}"
    older = [s for s in sources if s["role"] == "older"]
    assert (label.zh_older is not None) == bool(older), "zh_older needs the older source"
    for other in label.also:
        read = sources_of(other.sources)
        assert all(s["client"] == label.client for s in read)
        assert {s["platform"] for s in read} == set(other.platforms), "sources of each platform"
        assert {s["role"] for s in read} == {"current" if other.when == "current" else "older"}
        for lang, words in (("en", other.en), ("zh", other.zh)):
            if words is not None:
                assert any(s["language"] == lang for s in read), f"no {lang} source"
    assert label.key and label.en.strip() == label.en
    if label.client == "element-web":
        assert "|" in label.key  # the JSON path, joined as Element's _t() keys are
    else:
        assert re.fullmatch(r"[a-z0-9_.]+", label.key)  # a Localazy key


def test_guide_data_quotes_only_known_labels_and_writes_no_bold() -> None:
    used = set()
    for where, text in raw_guide_texts():
        assert "**" not in text, f"{where}: bold is reserved for {{label:ID}}"
        for label_id in LABEL_MARKER.findall(text):
            assert label_id in LABELS, f"{where}: unknown label {label_id}"
            used.add(label_id)
    assert used


def test_every_rendered_bold_span_is_a_client_label() -> None:
    texts = {lang: {t for label in LABELS.values() for t in label.texts(lang)}
             for lang in LANGUAGES}
    english = {shown_text(label.en) for label in LABELS.values() if label.zh_may_be_missing}
    seen = 0
    for where, lang, text in rendered_guide_texts():
        for span in BOLD.findall(text):
            assert span in texts[lang], f"{where} ({lang}): **{span}** is not a client label"
            seen += 1
        # Right after a label, English in brackets only for a label Chinese builds may lack.
        for bracketed in re.findall(r"\*\*（([^（）\u4e00-\u9fff]+)）", text):
            assert lang == "zh" and bracketed in english, f"{where}: （{bracketed}）"
    assert seen > 100


def test_the_file_lists_exactly_the_labels_in_use() -> None:
    used = {label_id for _, text in raw_guide_texts() for label_id in LABEL_MARKER.findall(text)}
    for lang in LANGUAGES:
        for key, text in CATALOG.messages[lang].items():
            for label_id in CATALOG_LABEL.findall(text):
                assert label_id in LABELS, f"{lang} {key}: unknown label {label_id}"
                used.add(label_id)
    by_hand = {label_id for ids in CATALOG_LABEL_LINES.values() for label_id in ids}
    assert by_hand <= set(LABELS), "CATALOG_LABEL_LINES names an unknown label"
    assert set(LABELS) - used - by_hand == set(), "labels quoted nowhere: drop them from the file"


@pytest.mark.parametrize("key", sorted(CATALOG_LABEL_LINES))
@pytest.mark.parametrize("lang", LANGUAGES)
def test_catalog_lines_quoting_labels_by_hand_quote_them_right(key: str, lang: str) -> None:
    """Each label exactly as {label[ID]} renders it (with the English where a build lacks the
    Chinese), in order; every other bold span is a value, never loose words."""
    line = CATALOG.messages[lang][key]
    at = 0
    for label_id in CATALOG_LABEL_LINES[key]:
        quote = LABELS[label_id].quote(lang)
        found = line.find(quote, at)
        assert found >= 0, (lang, key, quote)
        at = found + len(quote)
    labels = [BOLD.findall(LABELS[i].quote(lang)) for i in CATALOG_LABEL_LINES[key]]
    spans = [span for span in BOLD.findall(line) if not VALUE.fullmatch(span)]
    assert spans == [span for quoted in labels for span in quoted], (lang, key, spans)


def test_no_other_catalog_line_bolds_a_label_by_hand() -> None:
    """A client label in a catalog line is {label[ID]}, or the line is in CATALOG_LABEL_LINES
    and checked above: bold label words written anywhere else fail here."""
    for lang in LANGUAGES:
        words = {t for label in LABELS.values() for t in label.texts(lang)}
        for key, text in CATALOG.messages[lang].items():
            if key in CATALOG_LABEL_LINES:
                continue
            hand = [span for span in BOLD.findall(CATALOG_LABEL.sub("", text)) if span in words]
            assert hand == [], f"{lang} {key}: write {hand} as {{label[ID]}}"


def test_catalog_label_references_render_in_both_languages() -> None:
    quotes = {lang: label_quotes(LABELS, lang) for lang in LANGUAGES}
    line = CATALOG.t("zh", "status.recovery_unknown", mark="❔", label=quotes["zh"])
    assert "**所有设置** → **加密**（Encryption）" in line
    assert "**获取恢复密钥**（Get recovery key）" in line
    assert "**设置** → **加密**" in line and "**获取恢复密钥**（旧版本：**设置恢复**" in line
    line = CATALOG.t("en", "status.recovery_unknown", mark="❔", label=quotes["en"])
    assert "**All settings** → **Encryption**" in line and "（" not in line
    assert "**Settings** → **Encryption**" in line and "(older versions: **Set up recovery**)" \
        in line


@pytest.mark.parametrize("key", ["guide.check.no_recovery", "guide.check.backup_absent",
                                 "status.recovery_unknown", "status.recovery_unknown_remote",
                                 "status.backup_unknown", "status.backup_unknown_remote",
                                 "status.backup_opted_out"])
@pytest.mark.parametrize("lang", LANGUAGES)
def test_catalog_paths_name_both_clients(key: str, lang: str) -> None:
    """Lines that send people somewhere in their client, whichever client they use: Element
    Web's way and Element X's, with labels of each from the label file."""
    template = CATALOG.messages[lang][key]
    quoted = CATALOG_LABEL.findall(template)
    assert any(i.startswith("web.") for i in quoted) and any(i.startswith("x.") for i in quoted)
    line = CATALOG.t(lang, key, mark="❔", server="far.example", devices="",
                     label=label_quotes(LABELS, lang))
    assert "Element X" in line and "{" not in line


@pytest.mark.parametrize(("client_string", "shown"), [
    ("Ignore (%(counter)s)", "Ignore"),
    ("忽略（剩余 %(counter)s 秒）", "忽略"),
    ("Verify %1$@", "Verify …"),
    ("Set up recovery", "Set up recovery"),
    ("Can't confirm?", "Can't confirm?"),
])
def test_placeholders_are_dropped_from_what_a_label_shows(client_string: str, shown: str
                                                         ) -> None:
    assert shown_text(client_string) == shown


def label(**fields: Any) -> ClientLabel:
    base: dict[str, Any] = {"id": "web.x", "client": "element-web", "key": "a|b",
                            "en": "Encryption", "zh": "加密", "sources": ("web-en",)}
    return ClientLabel(**{**base, **fields})


def test_quoting_in_each_language() -> None:
    assert label().quote("en") == "**Encryption**"
    assert label().quote("zh") == "**加密**"
    assert label(zh_older="加密了").quote("zh") == "**加密**"  # worded differently, not missing
    # A build in use may show English: the Chinese guide adds it in brackets.
    assert label(zh_older=MISSING).quote("zh") == "**加密**（Encryption）"
    assert label(zh_older=MISSING).quote("en") == "**Encryption**"
    # No Chinese in the client at all: Chinese users see English, so the guide quotes English.
    assert label(zh=None).quote("zh") == "**Encryption**"


def test_the_web_encryption_tab_shows_english_to_older_chinese_builds() -> None:
    """The issue's case: the Encryption tab was untranslated in 2025 builds."""
    for label_id in ("web.encryption_tab", "web.get_recovery_key", "web.finish_set_up",
                     "web.cant_confirm", "web.confirm_identity"):
        assert LABELS[label_id].zh_may_be_missing, label_id
    assert LABELS["web.encryption_tab"].quote("zh") == "**加密**（Encryption）"
    # Changed wording, still translated: no English needed.
    assert LABELS["web.they_match"].quote("zh") == "**匹配**"


def test_unknown_or_malformed_labels_are_refused_at_load() -> None:
    with pytest.raises(GuideDataError):
        render_labels("click {label:web.nope}", "en", LABELS, "x")
    good = {"name": "x", "title": {"zh": "标题", "en": "T"}, "summary": {"zh": "总", "en": "S"},
            "footer": {"zh": "脚", "en": "F"},
            "steps": [{"id": "a", "checkpoint": "", "zh": {"all": "点 {label:web.nope}"},
                       "en": {"all": "E"}}]}
    with pytest.raises(GuideDataError):
        parse_guide(good, LABELS)
    sources = {"web-en": {"version": "1.12.4"}}
    entry = {"id": "web.a", "client": "element-web", "role": "button", "key": "k", "en": "A",
             "sources": ["web-en"]}
    assert parse_labels({"sources": sources, "label": [entry]})["web.a"].zh is None
    for broken in (
        {"sources": sources, "label": [{**entry, "role": "link"}]},           # unknown role
        {"sources": sources, "label": [{k: v for k, v in entry.items() if k != "role"}]},
        {"sources": sources, "label": [{**entry, "role": "tab", "choices": ["c"]}]},  # not an
        {"sources": sources, "label": [{**entry, "choices": "sas"}]},         # action; a list
        {"sources": sources, "label": [entry, entry]},                        # duplicate id
        {"sources": sources, "label": [{**entry, "client": "riot"}]},         # unknown client
        {"sources": sources, "label": [{**entry, "sources": ["nowhere"]}]},   # unknown source
        {"sources": sources, "label": [{**entry, "en": " "}]},                # empty text
        {"sources": sources, "label": [{**entry, "zh": ""}]},                 # empty Chinese
        {"sources": {}, "label": [entry]},                                    # no sources
        {"sources": sources, "label": []},                                    # no labels
    ):
        with pytest.raises(GuideDataError):
            parse_labels(broken)


# -- Element X: Android and iOS, current and older builds ----------------------------------------

WORDING = {"older": {"zh": "旧版本", "en": "older versions"},
           "android": {"zh": "Android", "en": "Android"}, "ios": {"zh": "iOS", "en": "iOS"}}
X_SOURCES = {"x-ios-en": {"version": "26.07.4"}, "x-android-zh": {"version": "26.04.2"},
             "x-android-zh-old": {"version": "0.7.3"}}


def x_label(*also: dict[str, Any]) -> ClientLabel:
    entry = {"id": "x.a", "client": "element-x", "role": "button", "key": "k",
             "en": "Get recovery key", "zh": "获取恢复密钥", "sources": ["x-ios-en"],
             "also": list(also)}
    return parse_labels({"sources": X_SOURCES, "wording": WORDING, "label": [entry]})["x.a"]


def test_a_build_without_chinese_on_one_platform_adds_the_english() -> None:
    """The gap the old model could not say: Chinese missing on Android only (zh_older spoke of
    one older build of one client)."""
    lacking = x_label({"platforms": ["android"], "when": "older", "builds": "v0.7.3",
                       "zh": MISSING, "sources": ["x-android-zh-old"]})
    assert lacking.zh_may_be_missing
    assert lacking.quote("zh") == "**获取恢复密钥**（Get recovery key）"
    assert lacking.quote("en") == "**Get recovery key**"


def test_android_and_ios_wordings_are_both_quoted() -> None:
    differs = x_label({"platforms": ["android"], "when": "current", "builds": "v26.04",
                       "zh": "设置恢复密钥", "sources": ["x-android-zh"]})
    assert differs.quote("zh") == "**获取恢复密钥**（Android：**设置恢复密钥**）"
    assert differs.quote("en") == "**Get recovery key**"  # the English is the same there
    assert differs.texts("zh") == {"获取恢复密钥", "设置恢复密钥"}
    older = x_label({"platforms": ["android", "ios"], "when": "older", "builds": "2025",
                     "en": "Set up recovery", "zh": "设置恢复", "sources": ["x-android-zh-old"]},
                    {"platforms": ["android"], "when": "older", "builds": "2024",
                     "zh": "设置恢复密钥", "sources": ["x-android-zh-old"]})
    assert older.quote("zh") == "**获取恢复密钥**（旧版本：**设置恢复**、**设置恢复密钥**）"
    assert older.quote("en") == "**Get recovery key** (older versions: **Set up recovery**)"
    assert not older.zh_may_be_missing


@pytest.mark.parametrize("other", [
    {"platforms": ["web"], "when": "older", "builds": "b", "zh": "甲", "sources": ["x-ios-en"]},
    {"platforms": [], "when": "older", "builds": "b", "zh": "甲", "sources": ["x-ios-en"]},
    {"platforms": ["ios"], "when": "soon", "builds": "b", "zh": "甲", "sources": ["x-ios-en"]},
    {"platforms": ["ios"], "when": "older", "builds": "b", "zh": "甲", "sources": []},
    {"platforms": ["ios"], "when": "older", "builds": "", "zh": "甲", "sources": ["x-ios-en"]},
    {"platforms": ["ios"], "when": "older", "builds": "b", "zh": "获取恢复密钥",
     "sources": ["x-ios-en"]},                                      # no different words
    {"platforms": ["ios"], "when": "older", "builds": "b", "en": MISSING, "sources": ["x-ios-en"]},
    {"platforms": ["ios"], "when": "older", "builds": "b", "zh": MISSING, "en": "Other",
     "sources": ["x-ios-en"]},                                      # English of another label
])
def test_malformed_other_wordings_are_refused_at_load(other: dict[str, Any]) -> None:
    with pytest.raises(GuideDataError):
        x_label(other)


def test_element_x_labels_as_both_platforms_show_them() -> None:
    """Read in the 2026 files of both platforms: today both say 获取恢复密钥 and 允许密钥存储;
    Android v0.7.3 showed the switch in English, older builds said 设置恢复 (设置恢复密钥
    on Android up to v0.7.2). The Chinese guide quotes all of it."""
    storage = LABELS["x.allow_key_storage"]
    assert storage.quote("zh") == "**允许密钥存储**（Allow key storage）"
    assert [w.platforms for w in storage.also if w.zh == MISSING] == [("android",)]
    recovery = LABELS["x.get_recovery_key"]
    assert recovery.quote("zh") == "**获取恢复密钥**（旧版本：**设置恢复**、**设置恢复密钥**）"
    assert recovery.quote("en") == "**Get recovery key** (older versions: **Set up recovery**)"
    assert any(isinstance(w, OtherWording) and w.platforms == ("android",) for w in recovery.also)
    mobile = "\n".join(step.body("zh", "mobile") for step in LIBRARY.guides["backup"].steps)
    assert "**允许密钥存储**（Allow key storage）" in mobile
    assert "**获取恢复密钥**（旧版本：**设置恢复**" in mobile
    assert "**设置恢复**。" not in mobile  # never the older words alone
