"""Walkthrough guides shipped as data (``data/*.toml``); parsed by ``nerbot.domain.guide``."""

from __future__ import annotations

import tomllib
from importlib import resources

from nerbot.domain.guide import GuideLibrary


def load_library() -> GuideLibrary:
    """The guides shipped in the package, read here so the domain never touches files."""
    folder = resources.files(__name__).joinpath("data")
    documents = [tomllib.loads(entry.read_text(encoding="utf-8"))
                 for entry in sorted(folder.iterdir(), key=lambda e: e.name)
                 if entry.name.endswith(".toml")]
    return GuideLibrary.from_documents(documents)
