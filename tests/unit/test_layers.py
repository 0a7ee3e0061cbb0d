"""The architecture, enforced: which packages may import what."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "nerbot"

MATRIX_LIBS = {"nio", "simplematrixbotlib", "aiohttp", "vodozemac"}
IO_LIBS = MATRIX_LIBS | {"asyncio", "sqlite3", "sqlite_utils", "apscheduler", "time"}


# What the domain may import: an allow-list, so a module added later (a service, a server) is
# refused without anyone remembering to list it. Its own package, two pure leaf modules, and the
# standard library less what does I/O, talks to the network, runs processes or threads, or logs.
DOMAIN_MAY_IMPORT = {"nerbot.domain", "nerbot.ids", "nerbot.errors"}
STDLIB_NOT_FOR_DOMAIN = {"asyncio", "sqlite3", "time", "os", "pathlib", "io", "importlib",
                         "tomllib", "shutil", "glob", "socket", "ssl", "subprocess", "threading",
                         "multiprocessing", "concurrent", "select", "selectors", "signal",
                         "http", "urllib", "logging", "tempfile", "sys"}
# Reads of the clock (the caller passes ``now``) and of files (data is handed in).
CLOCK_READS = {("datetime", "now"), ("datetime", "utcnow"), ("date", "today"), ("time", "time"),
               ("time", "monotonic"), ("time", "perf_counter"), ("loop", "time"),
               ("datetime", "today"), ("get_running_loop", "time"), ("get_event_loop", "time")}
FILE_CALLS = {"open", "read_text", "read_bytes", "iterdir", "files", "glob", "rglob"}
FILE_MODULES = {"os", "pathlib", "io", "importlib", "tomllib", "shutil", "glob"}


def absolute(path: Path, node: ast.ImportFrom) -> str:
    """The absolute module an ``ImportFrom`` names, relative ones resolved from ``path``."""
    if node.level == 0:
        return node.module or ""
    package = path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1]
    base = list(package[:len(package) - (node.level - 1)])
    return ".".join([*base, node.module] if node.module else base)


def module_imports(path: Path) -> set[str]:
    """Every module ``path`` imports, dotted and absolute (relative imports resolved)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            module = absolute(path, node)
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def imports_of(path: Path) -> set[str]:
    """Top-level packages imported (``nerbot`` for our own)."""
    return {m.split(".")[0] for m in module_imports(path)}


def modules(sub: str) -> list[Path]:
    return sorted((PACKAGE / sub).rglob("*.py"))


# The metrics endpoint serves plain HTTP with aiohttp.web; it talks no Matrix.
HTTP_SERVERS = {"metrics.py": {"aiohttp"}}


def test_only_matrix_and_localdev_touch_matrix_libraries() -> None:
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE)
        if rel.parts[0] in ("matrix", "localdev"):
            continue
        bad = imports_of(path) & MATRIX_LIBS - HTTP_SERVERS.get(str(rel), set())
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


def not_for_domain(module: str) -> bool:
    """Whether domain/ may not import ``module`` (dotted, absolute)."""
    top = module.split(".")[0]
    if top == "nerbot":
        return not any(module == allowed or module.startswith(allowed + ".")
                       for allowed in DOMAIN_MAY_IMPORT)
    return top not in sys.stdlib_module_names or top in STDLIB_NOT_FOR_DOMAIN


def test_domain_imports_only_what_it_may() -> None:
    offenders = []
    for path in modules("domain"):
        offenders += [f"{path.name}: {m}" for m in sorted(module_imports(path))
                      if not_for_domain(m)]
    assert offenders == []


def test_the_allow_list_refuses_every_other_layer_old_or_new() -> None:
    layers = {f"nerbot.{p.stem}" for p in PACKAGE.glob("*.py") if p.stem != "__init__"} | \
        {f"nerbot.{p.name}" for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}
    assert {m for m in layers if not not_for_domain(m)} == DOMAIN_MAY_IMPORT
    # among the refused: the services and servers the old deny-list had not caught up with
    assert {"nerbot.alarm_service", "nerbot.report_service", "nerbot.metrics"} <= layers
    assert not_for_domain("nerbot.matrix.keys") and not_for_domain("nerbot.domainx")
    assert not_for_domain("aiohttp") and not_for_domain("asyncio") and not_for_domain("os.path")
    assert not not_for_domain("collections.abc") and not not_for_domain("nerbot.domain.facts")


def test_the_allowed_leaf_modules_are_pure_themselves() -> None:
    for name in ("ids", "errors"):
        path = PACKAGE / f"{name}.py"
        assert [m for m in module_imports(path) if not_for_domain(m)] == [], name
        assert clock_and_file_reads(path.read_text(encoding="utf-8")) == [], name


def test_relative_imports_are_seen() -> None:
    domain = PACKAGE / "domain" / "x.py"
    tree = ast.parse("from ..store import db\nfrom . import facts\nfrom .facts import A")
    found = {absolute(domain, n) for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert found == {"nerbot.store", "nerbot.domain", "nerbot.domain.facts"}


def clock_and_file_reads(source: str) -> list[str]:
    offences = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else \
                func.id if isinstance(func, ast.Name) else ""
            owner = func.value if isinstance(func, ast.Attribute) else None
            if isinstance(owner, ast.Call):  # asyncio.get_running_loop().time()
                owner = owner.func
            owner_name = owner.attr if isinstance(owner, ast.Attribute) else \
                owner.id if isinstance(owner, ast.Name) else ""
            if (owner_name, name) in CLOCK_READS or name in FILE_CALLS:
                offences.append(f"{node.lineno} {owner_name}.{name}()")
    return offences


def test_the_clock_and_file_check_sees_what_it_should() -> None:
    source = ("a = datetime.now(UTC)\nb = time.time()\nc = asyncio.get_running_loop().time()\n"
              "d = date.today()\ne = Path('x').read_text()\nf = open('y')\ng = now_ms - 1")
    assert len(clock_and_file_reads(source)) == 6


def test_domain_reads_neither_clock_nor_files() -> None:
    offenders = []
    for path in modules("domain"):
        offenders += [f"{path.name}:{o}"
                      for o in clock_and_file_reads(path.read_text(encoding="utf-8"))]
        bad = imports_of(path) & FILE_MODULES
        if bad:
            offenders.append(f"{path.name}: imports {sorted(bad)}")
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
