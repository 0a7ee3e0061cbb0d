"""Message catalogs: both languages complete, placeholders consistent, SAS table intact."""

from __future__ import annotations

import pytest

from nerbot.i18n import Catalog
from nerbot.i18n.catalog import load_sas_emoji


def test_catalogs_have_same_keys_and_placeholders() -> None:
    assert Catalog.load().problems() == []


def test_problems_detects_missing_and_mismatched() -> None:
    catalog = Catalog({"zh": {"a": "{x}", "b": "y"}, "en": {"a": "{y}"}})
    assert catalog.problems() == [
        "a: placeholders differ {'zh': {'x'}, 'en': {'y'}}",
        "b: missing in en",
    ]


@pytest.mark.parametrize(("preferred", "expected"), [("en", "en"), ("zh", "zh"), (None, "zh"),
                                                     ("fr", "zh")])
def test_language_falls_back_to_default(preferred: str | None, expected: str) -> None:
    assert Catalog.load(default="zh").language(preferred) == expected


def test_default_language_is_configurable() -> None:
    assert Catalog.load(default="en").language(None) == "en"


def test_rendering_fills_placeholders() -> None:
    catalog = Catalog.load()
    assert "!frob" in catalog.t("en", "command.unknown", name="!frob")
    assert "!frob" in catalog.t("zh", "command.unknown", name="!frob")


def test_sas_table_has_64_entries_with_spec_names() -> None:
    table = load_sas_emoji()
    assert [e.number for e in table] == list(range(64))
    # nio's own names differ from the spec in these three; Element shows the spec's.
    by_number = {e.number: e for e in table}
    assert by_number[0].names == {"en": "Dog", "zh": "狗"}
    names = {e.names["en"] for e in table}
    assert {"Spanner", "Thumbs Up", "Aeroplane"} <= names
    assert by_number[34].emoji == "🔧" and by_number[34].names["zh"] == "扳手"
    assert all(e.names["zh"] for e in table)
