"""Notice content: a plain body and HTML rendered from the same Markdown.

Converting Markdown is the costliest step of a notice (about half a millisecond for the emoji
message of a verification). Most notices are one catalog template filled with plain values: a
user ID, a number, emoji and their names. For those the template is converted once, with
stand-ins where the values go, and each message only puts its values in. A value that Markdown
could give a meaning to (``*``, ``_``, a backquote, ``<``, a line break…) sends the whole
message through Markdown as before, so the HTML is the same either way; a test holds the two
paths to that for every catalog message.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from typing import Any

import markdown

from nerbot.i18n.catalog import CatalogText

# Anything Markdown (with nl2br) can read as syntax, alone or next to template text.
MARKDOWN_SIGNIFICANT = frozenset("\\`*_{}[]()#+-=.!<>&|~:\"'\n\r\t\ue000\ue001")
STAND_IN = "\ue000{}\ue001"  # private-use characters: plain text to Markdown


def is_plain(value: Any, line_start: bool = True) -> bool:
    """True if ``value`` reads as the same literal text where a template puts it.

    At the start of a line, a leading digit could become a list item with the template's
    next characters (``{n}. …``).
    """
    text = str(value)
    return (bool(text) and text == text.strip() and not (line_start and text[0].isdigit())
            and MARKDOWN_SIGNIFICANT.isdisjoint(text))


@dataclass(frozen=True, slots=True)
class CompiledTemplate:
    """A template's HTML with stand-ins, split at them: literal parts and field names."""

    parts: tuple[str, ...]
    fields: tuple[str, ...]
    line_starts: frozenset[str]  # fields that begin a line somewhere in the template

    def takes(self, params: dict[str, Any]) -> bool:
        return all(is_plain(params[name], name in self.line_starts) for name in self.fields)

    def fill(self, params: dict[str, Any]) -> str:
        out = [self.parts[0]]
        for name, part in zip(self.fields, self.parts[1:], strict=True):
            out.append(str(params[name]))
            out.append(part)
        return "".join(out)


class NoticeRenderer:
    """Renders ``m.notice`` content from Markdown.

    One ``Markdown`` instance, reset between messages: building a new one per message (what
    ``markdown.markdown`` does) cost two thirds of the rendering. Catalog templates are
    compiled once each (see the module docstring).
    """

    def __init__(self) -> None:
        self._markdown = markdown.Markdown(extensions=["nl2br"])
        self._compiled: dict[str, CompiledTemplate | None] = {}

    def html(self, markdown_text: str) -> str:
        if isinstance(markdown_text, CatalogText):
            compiled = self.compiled(markdown_text.template)
            if compiled is not None and compiled.takes(markdown_text.params):
                return compiled.fill(markdown_text.params)
        html: str = self._markdown.reset().convert(markdown_text)
        return html

    def render(self, markdown_text: str) -> dict[str, Any]:
        return {
            "msgtype": "m.notice",
            "body": str(markdown_text),
            "format": "org.matrix.custom.html",
            "formatted_body": self.html(markdown_text),
        }

    def compiled(self, template: str) -> CompiledTemplate | None:
        if template not in self._compiled:
            self._compiled[template] = self.compile(template)
        return self._compiled[template]

    def compile(self, template: str) -> CompiledTemplate | None:
        """None when the template cannot take stand-ins (format specs, odd fields)."""
        names: list[str] = []
        occurrences: list[str] = []
        line_starts: set[str] = set()
        at_line_start = True
        for literal, field, spec, conversion in string.Formatter().parse(template):
            if literal:
                at_line_start = literal.rsplit("\n", 1)[-1].strip() == "" and (
                    "\n" in literal or at_line_start)
            if field is None:
                continue
            if spec or conversion or not field.isidentifier():
                return None
            occurrences.append(field)
            if field not in names:
                names.append(field)
            if at_line_start:
                line_starts.add(field)
            at_line_start = False
        stand_ins = {name: STAND_IN.format(i) for i, name in enumerate(names)}
        html = self._markdown.reset().convert(template.format_map(stand_ins))
        parts: list[str] = []
        fields: list[str] = []
        rest = html
        while "\ue000" in rest:
            before, _, after = rest.partition("\ue000")
            index, closed, rest = after.partition("\ue001")
            if not closed or not index.isdigit() or int(index) >= len(names):
                return None  # Markdown changed a stand-in: never guess
            parts.append(before)
            fields.append(names[int(index)])
        parts.append(rest)
        if sorted(fields) != sorted(occurrences):
            return None  # a stand-in went missing or was duplicated
        return CompiledTemplate(tuple(parts), tuple(fields), frozenset(line_starts))
