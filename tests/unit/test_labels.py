"""Client labels (``nerbot/guides/labels.toml``): sourced, complete, and the only bold in a guide.

What "quoting a label" means, precisely: guide data never types a client label and never writes
bold (``**``) by hand; it writes ``{label:ID}``, and the loader renders the label's text in the
reader's language, in bold. So these checks make drift impossible to miss:

- every ``{label:ID}`` in guide data (and every ``{label[ID]}`` in the catalogs) names an entry
  of the label file, and every entry is quoted somewhere (the file lists exactly what is used);
- guide data contains no ``**`` of its own;
- every bold span in a rendered guide is the text of a label in that language (or its English,
  for a Chinese label a build in use may lack), so bold always means "on your screen".

Updating the labels for a new Element release is editing the label file; nothing else.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

from nerbot.domain.guide import (
    LABEL_MARKER,
    MISSING,
    PLATFORMS,
    ClientLabel,
    GuideDataError,
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
# Catalog lines that quote client labels in plain bold (rendered by code that passes no label
# table): their bold must still be label texts.
CATALOG_LABEL_LINES = ("verify.requested_room", "verify.requested_device")


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
        assert "/" in source["repo"] and source["path"], name
        assert COMMIT.match(source["commit"]), f"{name}: a commit, not a branch"
        assert source["language"] in LANGUAGES and source["role"] in ("current", "older"), name


@pytest.mark.parametrize("label_id", sorted(LABELS))
def test_each_label_says_where_it_was_read(label_id: str) -> None:
    label = LABELS[label_id]
    sources = [RAW["sources"][name] for name in label.sources]
    prefix = {"element-web": "web.", "element-x": "x."}[label.client]
    assert label.id.startswith(prefix)
    assert all(s["client"] == label.client for s in sources), "sources of another client"
    current = [s for s in sources if s["role"] == "current"]
    assert any(s["language"] == "en" for s in current), "no English source"
    assert (label.zh is not None) == any(s["language"] == "zh" for s in current), "zh source"
    older = [s for s in sources if s["role"] == "older"]
    assert (label.zh_older is not None) == bool(older), "zh_older needs the older source"
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
    texts = {lang: {label.text(lang) for label in LABELS.values()} for lang in LANGUAGES}
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
    assert set(LABELS) - used == set(), "labels quoted nowhere: drop them from the file"


def test_catalog_lines_quoting_labels_by_hand_quote_them_right() -> None:
    for key in CATALOG_LABEL_LINES:
        for lang in LANGUAGES:
            texts = {label.text(lang) for label in LABELS.values()}
            spans = BOLD.findall(CATALOG.messages[lang][key])
            assert spans and all(span in texts for span in spans), (lang, key, spans)


def test_catalog_label_references_render_in_both_languages() -> None:
    quotes = {lang: label_quotes(LABELS, lang) for lang in LANGUAGES}
    line = CATALOG.t("zh", "status.recovery_unknown", mark="❔", label=quotes["zh"])
    assert "**所有设置** → **加密**（Encryption）" in line
    assert "**获取恢复密钥**（Get recovery key）" in line
    line = CATALOG.t("en", "status.recovery_unknown", mark="❔", label=quotes["en"])
    assert "**All settings** → **Encryption**" in line and "（" not in line


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
    sources = {"web-en": {}}
    entry = {"id": "web.a", "client": "element-web", "key": "k", "en": "A", "sources": ["web-en"]}
    assert parse_labels({"sources": sources, "label": [entry]})["web.a"].zh is None
    for broken in (
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
