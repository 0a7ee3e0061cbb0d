"""Notice rendering: every catalog message converts as python-markdown converts it alone."""

from __future__ import annotations

import pytest

from nerbot.i18n import LANGUAGES, Catalog
from nerbot.i18n.catalog import load_sas_emoji
from nerbot.matrix.render import NoticeRenderer, plain_markdown

CATALOG = Catalog.load()


def full(text: str) -> str:
    return str(plain_markdown().convert(text))


@pytest.mark.parametrize("lang", LANGUAGES)
def test_reusing_one_converter_gives_what_a_fresh_one_gives(lang: str) -> None:
    renderer = NoticeRenderer()
    table = load_sas_emoji()
    shown = "  ".join(f"{table[i].emoji} {table[i].names[lang]}" for i in (0, 12, 33, 63))
    texts = [CATALOG.t(lang, "verify.sas", emoji=shown, numbers="1234 5678 1111"),
             CATALOG.t(lang, "verify.none_active") + "\n\n- " + CATALOG.t(lang, "verify.rate"),
             "1. first\n2) second", "*x* `code` <b>hi</b>"]
    for text in texts * 2:  # the second round reuses a converter that has state to reset
        assert renderer.html(text) == full(text)
    content = renderer.render(texts[0])
    assert content["body"] == texts[0] and content["msgtype"] == "m.notice"
    assert content["format"] == "org.matrix.custom.html"
    assert "<li>" in renderer.html(texts[1])


@pytest.mark.parametrize("hostile", ["<b>bold</b>", "<script>alert(1)</script>",
                                     "<img src=x onerror=y>", "<div>\nblock\n</div>",
                                     "a<br>b", "<a href='https://evil'>x</a>"])
def test_raw_html_from_values_is_shown_as_text(hostile: str) -> None:
    html = NoticeRenderer().html(f"Session `ABC` {hostile} — **not verified**")
    assert "<strong>not verified</strong>" in html  # Markdown still works
    assert "&lt;" in html
    for tag in ("<b>", "<script", "<img", "<div", "<br>", "<a "):
        assert tag not in html
