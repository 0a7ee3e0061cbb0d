"""Notice content: a plain body and HTML rendered from the same Markdown (python-markdown).

Raw HTML in the Markdown is never passed through: the catalog's templates use none, and
values put into them (device names, user IDs, anything a person typed) must not become markup
in the formatted body. python-markdown's own processors for raw HTML are switched off through
its public registry, so ``<b>`` arrives as the text ``<b>``.
"""

from __future__ import annotations

from typing import Any

import markdown


def plain_markdown() -> markdown.Markdown:
    """A converter for Element's Markdown subset, with raw HTML shown as text."""
    converter = markdown.Markdown(extensions=["nl2br"])
    converter.preprocessors.deregister("html_block")
    converter.inlinePatterns.deregister("html")
    return converter


class NoticeRenderer:
    """Renders ``m.notice`` content from Markdown, as Element displays it.

    One ``Markdown`` instance, reset between messages (the library's documented way to reuse
    it): building a new one per message is most of the cost of a conversion.
    """

    def __init__(self) -> None:
        self._markdown = plain_markdown()

    def html(self, markdown_text: str) -> str:
        html: str = self._markdown.reset().convert(markdown_text)
        return html

    def render(self, markdown_text: str) -> dict[str, Any]:
        return {
            "msgtype": "m.notice",
            "body": markdown_text,
            "format": "org.matrix.custom.html",
            "formatted_body": self.html(markdown_text),
        }
