"""Notice rendering: compiled catalog templates give exactly the HTML of a full conversion."""

from __future__ import annotations

import random
import string

import markdown
import pytest

from nerbot.i18n import LANGUAGES, Catalog
from nerbot.i18n.catalog import CatalogText, load_sas_emoji
from nerbot.matrix.render import NoticeRenderer, is_plain

CATALOG = Catalog.load()
KEYS = sorted(CATALOG.messages["zh"])
PLAIN_PIECES = ["Alice", "张三", "ABCDEFGHIJ", "🐶", "狮子", "Thumbs Up", "@alice", "x  y", "5678"]
SIGNIFICANT = ["a_b_c", "*x*", "`code`", "<b>hi</b>", "a\nb", "1. one", "# h", "[l](http://x)",
               "&amp;", " padded ", "", "x:y", "===", "- item", "\ue000"]


def full(text: str) -> str:
    return str(markdown.markdown(str(text), extensions=["nl2br"]))


def fields(template: str) -> list[str]:
    return [f for _, f, _, _ in string.Formatter().parse(template) if f]


@pytest.mark.parametrize("lang", LANGUAGES)
def test_every_catalog_message_renders_as_a_full_conversion_would(lang: str) -> None:
    renderer = NoticeRenderer()
    rng = random.Random(7)
    for key in KEYS:
        template = CATALOG.messages[lang][key]
        for _ in range(12):
            params = {name: rng.choice(PLAIN_PIECES + SIGNIFICANT) + rng.choice(["", "猫", "9"])
                      for name in fields(template)}
            text = CATALOG.t(lang, key, **params)
            assert isinstance(text, CatalogText)
            assert renderer.html(text) == full(text), (key, params)


def test_the_emoji_message_takes_the_compiled_path() -> None:
    renderer = NoticeRenderer()
    table = load_sas_emoji()
    shown = "  ".join(f"{table[i].emoji} {table[i].names['zh']}" for i in (0, 12, 33, 63))
    assert is_plain(shown)
    for lang in LANGUAGES:
        text = CATALOG.t(lang, "verify.sas", emoji=shown, numbers="1234 5678 1111")
        assert isinstance(text, CatalogText)
        compiled = renderer.compiled(text.template)
        assert compiled is not None and set(compiled.fields) == {"emoji", "numbers"}
        assert compiled.takes(text.params), "the emoji message must not need a conversion"
        assert renderer.html(text) == full(text)
    content = renderer.render(text)
    assert content["body"] == str(text) and type(content["body"]) is str


def test_all_spec_emoji_names_are_plain_in_both_languages() -> None:
    for entry in load_sas_emoji():
        for lang in LANGUAGES:
            assert is_plain(f"{entry.emoji} {entry.names[lang]}"), entry


def test_text_built_from_several_messages_is_converted_whole() -> None:
    renderer = NoticeRenderer()
    joined = CATALOG.t("en", "verify.none_active") + "\n\n- " + CATALOG.t("en", "verify.rate")
    assert not isinstance(joined, CatalogText)
    assert "<li>" in renderer.html(joined) and renderer.html(joined) == full(joined)


def test_a_leading_digit_at_the_start_of_a_line_is_not_plain() -> None:
    renderer = NoticeRenderer()
    for template in ("{n}. first\n{m}) second", "intro\n  {n}. first", "x {n}. not a list"):
        compiled = renderer.compile(template)
        assert compiled is not None
        text = CatalogText(template, {"n": "1", "m": "2"})
        assert renderer.html(text) == full(text), template
    assert renderer.compile("{n}. a").line_starts == {"n"}  # type: ignore[union-attr]
    assert renderer.compile("x {n}. a").line_starts == frozenset()  # type: ignore[union-attr]


@pytest.mark.parametrize("template", ["{n:d} items", "{0} positional", "{a.b} attribute",
                                      "{x!r} conversion"])
def test_templates_with_format_specs_are_never_compiled(template: str) -> None:
    assert NoticeRenderer().compile(template) is None
