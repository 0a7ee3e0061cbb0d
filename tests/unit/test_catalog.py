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


def refusal_reasons() -> set[str]:
    """Every reason a verification can be refused with, read from the code that refuses:
    ``VerificationRefused("…")`` and the strings the ``refusal`` functions return."""
    import ast
    from pathlib import Path

    import nerbot

    reasons: set[str] = set()
    root = Path(nerbot.__file__).parent
    for source in (root / "matrix" / "verification.py", root / "domain" / "verification.py"):
        tree = ast.parse(source.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and getattr(node.func, "id", "") == \
                    "VerificationRefused" and isinstance(node.args[0], ast.Constant):
                reasons.add(node.args[0].value)
            if isinstance(node, ast.FunctionDef) and node.name in ("refusal", "_refusal"):
                reasons.update(ret.value.value for ret in ast.walk(node)
                               if isinstance(ret, ast.Return)
                               and isinstance(ret.value, ast.Constant)
                               and isinstance(ret.value.value, str))
    return reasons


def test_every_verification_refusal_has_words_in_both_languages() -> None:
    """``!verify`` answers a refusal with ``verify.<reason>``: a reason without words was a
    "something went wrong" (``not_allowed`` was)."""
    reasons = refusal_reasons()
    assert {"unknown_device", "busy", "not_allowed", "rate", "cooldown"} <= reasons
    catalog = Catalog.load()
    for lang in ("zh", "en"):
        for reason in sorted(reasons):
            assert catalog.t(lang, f"verify.{reason}", device_id="`X`")
