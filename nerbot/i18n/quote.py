"""User input quoted back in a reply: short, on one line, and unable to spoof or break out.

The catalog puts an echoed value in a Markdown code span (``I don't know the command `{name}` ``),
so what a person typed must not end that span (a backtick would let raw HTML through to the
formatted body), must not reorder the text around it (bidi overrides such as U+202E), must not
hide in invisible characters and must not flood the chat (a 20,000-character "command").
"""

from __future__ import annotations

import re
import unicodedata

QUOTE_LIMIT = 64
ELLIPSIS = "…"
ZWJ = "\u200d"  # joins emoji sequences (👩‍💻): a format character, but one that must stay
# Modifier letter grave accent: looks like a backtick, means nothing to Markdown.
BACKTICK_STANDIN = "\u02cb"

# Emoji tag sequences (subdivision flags such as 🏴󠁧󠁢󠁳󠁣󠁴󠁿): invisible tag characters after a black
# flag, closed by CANCEL TAG. Only these keep their tags; stray tags elsewhere hide text.
_TAG_SEQUENCE = re.compile("\U0001f3f4[\U000e0020-\U000e007e]+\U000e007f")
_DROPPED_CATEGORIES = frozenset({"Cc", "Cf", "Cs"})  # controls, format/bidi, lone surrogates
_SPACES = re.compile(" {2,}")


def _visible(text: str) -> str:
    """``text`` without control, format (bidi, zero-width) and surrogate characters."""
    kept: list[str] = []
    for ch in text:
        if ch.isspace():
            kept.append(" ")
        elif ch == ZWJ or unicodedata.category(ch) not in _DROPPED_CATEGORIES:
            kept.append(ch)
    return "".join(kept)


def _clean(text: str) -> str:
    parts: list[str] = []
    last = 0
    for match in _TAG_SEQUENCE.finditer(text):
        parts += [_visible(text[last:match.start()]), match.group()]
        last = match.end()
    parts.append(_visible(text[last:]))
    return _SPACES.sub(" ", "".join(parts)).strip().replace("`", BACKTICK_STANDIN)


def _regional(ch: str) -> bool:
    return "\U0001f1e6" <= ch <= "\U0001f1ff"  # two of these make a flag (🇨🇳)


def _splits_a_character(text: str, end: int) -> bool:
    """Cutting ``text`` at ``end`` would split what reads as one character: a joiner, mark,
    selector, skin tone or tag follows, a joiner precedes, or a flag's second half follows."""
    ch = text[end]
    if ch == ZWJ or text[end - 1] == ZWJ or "\U0001f3fb" <= ch <= "\U0001f3ff":
        return True
    if unicodedata.category(ch) in ("Mn", "Me", "Cf"):
        return True
    if _regional(ch):
        start = end
        while start > 0 and _regional(text[start - 1]):
            start -= 1
        return (end - start) % 2 == 1
    return False


def quoted(text: str, limit: int = QUOTE_LIMIT) -> str:
    """``text`` made safe to echo inside a catalog code span.

    Control, format and bidi characters are removed (the zero-width joiner of emoji sequences
    stays), runs of whitespace and newlines become one space, backticks become a lookalike
    (U+02CB) that cannot end the code span, and anything longer than ``limit`` characters is
    cut to ``limit`` characters and "…" (never inside an emoji sequence or after a joiner).
    """
    clean = _clean(text)
    if len(clean) <= limit:
        return clean
    end = max(limit, 0)
    while end > 0 and _splits_a_character(clean, end):
        end -= 1
    return clean[:end].rstrip() + ELLIPSIS
