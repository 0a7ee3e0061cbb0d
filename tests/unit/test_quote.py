"""``quoted``: user input echoed in a reply is short, on one line, visible and inert."""

from __future__ import annotations

import unicodedata

import pytest

from nerbot.i18n.quote import BACKTICK_STANDIN, ELLIPSIS, QUOTE_LIMIT, quoted
from nerbot.matrix.render import NoticeRenderer

BIDI_AND_INVISIBLE = [
    "\u202a", "\u202b", "\u202c", "\u202d", "\u202e",  # embeddings and overrides
    "\u2066", "\u2067", "\u2068", "\u2069",            # isolates
    "\u200e", "\u200f", "\u061c",                      # marks
    "\u200b", "\u2060", "\ufeff", "\u00ad",            # zero-width space, joiner, BOM, SHY
    "\U000e0041",                                      # a stray tag character (hidden text)
]
CONTROLS = ["\x00", "\x07", "\x1b", "\x7f", "\x9b"]  # (line breaks: see whitespace)


def test_a_flood_is_cut_to_the_limit_with_an_ellipsis() -> None:
    out = quoted("x" * 20_000)
    assert len(out) == QUOTE_LIMIT + 1 <= 65 and out.endswith(ELLIPSIS)
    assert out == "x" * QUOTE_LIMIT + ELLIPSIS
    assert quoted("x" * QUOTE_LIMIT) == "x" * QUOTE_LIMIT  # exactly the limit: untouched
    assert quoted("abcdef", limit=3) == "abc" + ELLIPSIS


@pytest.mark.parametrize("char", BIDI_AND_INVISIBLE + CONTROLS)
def test_bidi_format_and_control_characters_are_removed(char: str) -> None:
    out = quoted(f"!cmd{char}evil{char}")
    assert out == "!cmdevil"
    assert all(unicodedata.category(c) not in ("Cc", "Cf") for c in out)


def test_the_classic_override_spoof_reads_as_typed() -> None:
    # "‮gpj.exe" shows as "exe.jpg" in a bidi-aware client; quoted, it shows what was typed.
    assert quoted("photo\u202egpj.exe") == "photogpj.exe"
    assert "\u202e" not in quoted("\u202e" * 20_000 + "x")


def test_whitespace_and_newlines_collapse_to_single_spaces() -> None:
    assert quoted("  a\n\nb\t\tc\r\nd\u2028e\u00a0\u3000f\x85g\x0bh  ") == "a b c d e f g h"
    assert quoted("a \u200b b") == "a b"  # removing an invisible character leaves no gap


def test_backticks_cannot_end_the_code_span() -> None:
    out = quoted("!x`<b>y</b>")
    assert "`" not in out and out == f"!x{BACKTICK_STANDIN}<b>y</b>"
    html = NoticeRenderer().html(f"I don't know the command `{out}`.")
    assert "<b>" not in html and "&lt;b&gt;" in html


def test_emoji_sequences_and_cjk_are_kept() -> None:
    family = "👨\u200d👩\u200d👧"
    coder = "👩🏽\u200d💻"
    scotland = "🏴\U000e0067\U000e0062\U000e0073\U000e0063\U000e0074\U000e007f"
    keycap = "1\ufe0f\u20e3"
    text = f"备份 {family} {coder} {scotland} {keycap} 🇨🇳 中文命令"
    assert quoted(text) == text


def test_the_cut_never_splits_an_emoji_or_leaves_a_joiner() -> None:
    coder = "👩\u200d💻"
    for pad in range(QUOTE_LIMIT - 4, QUOTE_LIMIT + 1):
        out = quoted("a" * pad + coder + "tail")
        kept = out.removesuffix(ELLIPSIS)
        assert not kept.endswith("\u200d")
        assert coder in kept or "👩" not in kept  # whole sequence or none of it
    flags = quoted("a" * (QUOTE_LIMIT - 1) + "🇨🇳🇨🇳")
    assert flags == "a" * (QUOTE_LIMIT - 1) + ELLIPSIS  # not half a flag
    skin = quoted("a" * (QUOTE_LIMIT - 1) + "👍🏽 more")
    assert skin.removesuffix(ELLIPSIS) == "a" * (QUOTE_LIMIT - 1)


def test_lone_surrogates_are_dropped_so_the_reply_can_be_encoded() -> None:
    out = quoted("a\ud800b")
    assert out == "ab"
    out.encode("utf-8")


def test_ordinary_input_is_unchanged() -> None:
    for text in ("!frobnicate", "soon", "@alice:example.org", "ABCDEFGHIJ", "bakup", "7天"):
        assert quoted(text) == text
    assert quoted("") == ""
