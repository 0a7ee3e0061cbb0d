"""Walkthrough guides shipped as data (``data/*.toml``) and the client labels they quote
(``labels.toml``); parsed by ``nerbot.domain.guide``."""

from __future__ import annotations

import functools
import tomllib
from collections.abc import Mapping
from importlib import resources

from nerbot.domain.guide import ClientLabel, GuideLibrary, parse_labels


@functools.cache
def load_labels() -> Mapping[str, ClientLabel]:
    """The client labels shipped in the package, by id (read once: they are package data)."""
    text = resources.files(__name__).joinpath("labels.toml").read_text(encoding="utf-8")
    return parse_labels(tomllib.loads(text))


def load_library() -> GuideLibrary:
    """The guides shipped in the package, read here so the domain never touches files."""
    folder = resources.files(__name__).joinpath("data")
    documents = [tomllib.loads(entry.read_text(encoding="utf-8"))
                 for entry in sorted(folder.iterdir(), key=lambda e: e.name)
                 if entry.name.endswith(".toml")]
    return GuideLibrary.from_documents(documents, load_labels())
