"""Notice content: a plain body and HTML rendered from the same Markdown (python-markdown)."""

from __future__ import annotations

from typing import Any

import markdown


class NoticeRenderer:
    """Renders ``m.notice`` content from Markdown, as Element displays it.

    One ``Markdown`` instance, reset between messages (the library's documented way to reuse
    it): building a new one per message is most of the cost of a conversion.
    """

    def __init__(self) -> None:
        self._markdown = markdown.Markdown(extensions=["nl2br"])

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
