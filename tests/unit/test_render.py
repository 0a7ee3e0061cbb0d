"""Notice rendering: every catalog message converts as python-markdown converts it alone."""

from __future__ import annotations

import markdown
import pytest

from nerbot.i18n import LANGUAGES, Catalog
from nerbot.i18n.catalog import load_sas_emoji
from nerbot.matrix.render import NoticeRenderer

CATALOG = Catalog.load()


def full(text: str) -> str:
    return str(markdown.markdown(text, extensions=["nl2br"]))


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
