"""Message catalogs. Every string a user reads comes from here, never from code."""

from __future__ import annotations

import json
import string
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any, Literal

from nerbot.ids import UserId

Language = Literal["zh", "en"]
LANGUAGES: tuple[Language, ...] = ("zh", "en")

# Spec locale names in sas-emoji.json for each language we speak.
_SAS_LOCALE = {"zh": "zh_Hans", "en": None}


@dataclass(frozen=True, slots=True)
class SasEmoji:
    """One entry of the spec's SAS emoji table, with the names Element shows."""

    number: int
    emoji: str
    names: dict[str, str]


def _placeholders(template: str) -> set[str]:
    return {field for _, field, _, _ in string.Formatter().parse(template) if field}


class Catalog:
    """zh/en messages loaded from package data; ``t`` renders one with parameters."""

    def __init__(self, messages: dict[str, dict[str, str]], default: Language = "zh") -> None:
        self.messages = messages
        self.default = default

    @classmethod
    def load(cls, default: Language = "zh") -> Catalog:
        messages: dict[str, dict[str, str]] = {}
        base = resources.files("nerbot.i18n")
        for lang in LANGUAGES:
            with base.joinpath(f"{lang}.toml").open("rb") as fh:
                messages[lang] = _flatten(tomllib.load(fh))
        return cls(messages, default)

    def language(self, preferred: str | None) -> Language:
        """The user's language if we speak it, else the configured default."""
        for lang in LANGUAGES:
            if preferred == lang:
                return lang
        return self.default

    def t(self, lang: str | None, key: str, **params: Any) -> str:
        """Render message ``key`` in ``lang`` (falling back to the default language)."""
        chosen = self.language(lang)
        template = self.messages[chosen].get(key)
        if template is None:
            template = self.messages[self.default][key]
        return template.format_map(params)

    def problems(self) -> list[str]:
        """Keys missing in a language or with mismatched placeholders (checked by tests)."""
        found: list[str] = []
        keys = set().union(*(set(m) for m in self.messages.values()))
        for key in sorted(keys):
            present = {lang: self.messages[lang].get(key) for lang in LANGUAGES}
            missing = [lang for lang, text in present.items() if text is None]
            if missing:
                found.append(f"{key}: missing in {', '.join(missing)}")
                continue
            shapes = {lang: _placeholders(text or "") for lang, text in present.items()}
            if len({frozenset(s) for s in shapes.values()}) > 1:
                found.append(f"{key}: placeholders differ {shapes}")
        return found


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, str]:
    flat: dict[str, str] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, dotted + "."))
        else:
            flat[dotted] = str(value)
    return flat


@dataclass(frozen=True, slots=True)
class Voice:
    """The catalog speaking to one person at a time, in the language they chose."""

    catalog: Catalog
    language_of: Callable[[UserId], str | None]

    def language(self, user_id: UserId) -> Language:
        return self.catalog.language(self.language_of(user_id))

    def t(self, user_id: UserId, key: str, **params: Any) -> str:
        return self.catalog.t(self.language(user_id), key, **params)


def load_sas_emoji() -> list[SasEmoji]:
    """The spec table (copied into the package) so our names match Element's exactly."""
    with resources.files("nerbot.i18n").joinpath("sas-emoji.json").open("rb") as fh:
        raw = json.load(fh)
    table: list[SasEmoji] = []
    for entry in raw:
        names = {"en": entry["description"]}
        for lang, locale in _SAS_LOCALE.items():
            if locale is not None:
                names[lang] = entry["translated_descriptions"].get(locale) or entry["description"]
        table.append(SasEmoji(int(entry["number"]), entry["emoji"], names))
    return table
