"""The architecture, enforced: which packages may import what."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "nerbot"

MATRIX_LIBS = {"nio", "simplematrixbotlib", "aiohttp", "vodozemac"}
IO_LIBS = MATRIX_LIBS | {"asyncio", "sqlite3", "sqlite_utils", "apscheduler", "time"}


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


def modules(sub: str) -> list[Path]:
    return sorted((PACKAGE / sub).rglob("*.py"))


def test_only_matrix_and_localdev_touch_matrix_libraries() -> None:
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE)
        if rel.parts[0] in ("matrix", "localdev"):
            continue
        bad = imports_of(path) & MATRIX_LIBS
        if bad:
            offenders.append(f"{rel}: {sorted(bad)}")
    assert offenders == []


def test_domain_is_pure() -> None:
    offenders = []
    for path in modules("domain"):
        bad = imports_of(path) & IO_LIBS
        if bad:
            offenders.append(f"{path.name}: {sorted(bad)}")
    assert offenders == []


def test_only_store_speaks_sql() -> None:
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE)
        if rel.parts[0] == "store":
            continue
        bad = imports_of(path) & {"sqlite3", "sqlite_utils"}
        if bad:
            offenders.append(str(rel))
    assert offenders == []


def test_no_print_outside_cli() -> None:
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if path.name == "cli.py":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and \
                    node.func.id in ("print", "input"):
                offenders.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
    assert offenders == []
