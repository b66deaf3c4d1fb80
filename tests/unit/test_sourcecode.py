"""Layering rules that keep the pure packages pure and the package tidy."""

from __future__ import annotations

import ast
import importlib
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import wadm

ROOT = Path(wadm.__file__).parent
PURE = ["venues", "book", "analytics", "records.py", "store/codec.py"]
FORBIDDEN = {"asyncio", "socket", "pymongo", "picows", "httpx", "sqlite3", "uvloop", "granian", "falcon", "time"}


def _pure_files() -> list[Path]:
    files: list[Path] = []
    for entry in PURE:
        path = ROOT / entry
        files += sorted(path.rglob("*.py")) if path.is_dir() else [path] if path.exists() else []
    return files


@pytest.mark.parametrize("path", _pure_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_pure_modules_do_no_io(path: Path) -> None:
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name.split(".")[0] for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module.split(".")[0]]
        bad = FORBIDDEN.intersection(names)
        assert not bad, f"{path.relative_to(ROOT)} imports {bad}: pure modules take time and bytes as arguments"


def test_every_package_declares_all() -> None:
    for info in pkgutil.walk_packages([str(ROOT)], prefix="wadm."):
        if info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        assert hasattr(module, "__all__"), f"{info.name} has no __all__"
        for name in module.__all__:
            assert hasattr(module, name), f"{info.name}.__all__ names {name}, which does not exist"


def test_modules_stay_small() -> None:
    for path in ROOT.rglob("*.py"):
        lines = len(path.read_text().splitlines())
        assert lines <= 700, f"{path.relative_to(ROOT)} has {lines} lines; split it by stage"


# ---- layering: who may know whom -------------------------------------------------------------

NO_GETATTR = ["pipeline", "transport", "api"]  # typed code: attributes are named, never looked up by string
# Venue REST paths belong in wadm/venues (request specs) and wadm/emulator (the fake venue) only.
VENUE_PATHS = ("/api/v3/", "/fapi/v1/", "/fapi/v2/", "/v5/market/")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _files(*entries: str) -> list[Path]:
    files: list[Path] = []
    for entry in entries:
        files += sorted((ROOT / entry).rglob("*.py"))
    assert files, f"no modules under {entries}: the check would pass vacuously"
    return files


def _all_files() -> list[Path]:
    return sorted(ROOT.rglob("*.py"))


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT.parent))


def _imports(path: Path, tree: ast.AST) -> list[tuple[ast.Import | ast.ImportFrom, str]]:
    """Every import with the full name of what it imports (``from a.b import c`` -> ``a.b.c``)."""
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]
    found: list[tuple[ast.Import | ast.ImportFrom, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            found += [(node, f"{base}.{alias.name}") for alias in node.names]
    return found


def _within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def _lazy_imports(tree: ast.AST) -> set[int]:
    """Ids of the import nodes inside function bodies (run only when the function is called)."""
    lazy: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            lazy |= {id(n) for n in ast.walk(node) if isinstance(n, ast.Import | ast.ImportFrom)}
    return lazy


@pytest.mark.parametrize("path", _files(*NO_GETATTR), ids=_rel)
def test_pipeline_transport_and_api_do_not_use_getattr(path: Path) -> None:
    tree = ast.parse(path.read_text())
    lines = [node.lineno for node in ast.walk(tree)
             if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "getattr"]
    assert not lines, f"{_rel(path)} calls getattr( on lines {lines}: name the attribute, or give the type a method"


@pytest.mark.parametrize("path", _files("api"), ids=_rel)
def test_the_api_knows_the_live_view_not_the_pipeline(path: Path) -> None:
    bad = [(node.lineno, name) for node, name in _imports(path, ast.parse(path.read_text()))
           if _within(name, "wadm.pipeline")]
    assert not bad, f"{_rel(path)} imports the pipeline {bad}: the API reads wadm.live.LiveView only"


@pytest.mark.parametrize("path", [p for p in _all_files() if not _within(_module_name(p), "wadm.venues")
                                  and not _within(_module_name(p), "wadm.emulator")], ids=_rel)
def test_venue_rest_paths_live_in_the_venue_modules(path: Path) -> None:
    bad = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Constant) and isinstance(node.value, str | bytes):
            text = node.value if isinstance(node.value, str) else node.value.decode("latin-1")
            bad += [(node.lineno, p) for p in VENUE_PATHS if p in text]
    assert not bad, f"{_rel(path)} names venue REST paths {bad}: use the request specs of wadm.venues"


@pytest.mark.parametrize("path", _files("emulator"), ids=_rel)
def test_the_emulator_stands_alone(path: Path) -> None:
    bad = [(node.lineno, name) for node, name in _imports(path, ast.parse(path.read_text()))
           if _within(name, "wadm") and not _within(name, "wadm.emulator")]
    assert not bad, f"{_rel(path)} imports {bad}: the fake venue shares no code with what it tests"


@pytest.mark.parametrize("path", [p for p in _all_files() if not _within(_module_name(p), "wadm.emulator")],
                         ids=_rel)
def test_nothing_imports_the_emulator(path: Path) -> None:
    tree = ast.parse(path.read_text())
    # wadm/__main__.py may, inside the function of the ``emulate`` command (never at import time).
    allowed = _lazy_imports(tree) if _module_name(path) == "wadm.__main__" else set()
    bad = [(node.lineno, name) for node, name in _imports(path, tree)
           if _within(name, "wadm.emulator") and id(node) not in allowed]
    assert not bad, f"{_rel(path)} imports the emulator {bad}: only `wadm emulate` loads it, lazily"


def test_a_collecting_process_never_loads_the_emulator() -> None:
    # What `wadm run` and `wadm serve` import, in a fresh interpreter: the app factory's modules.
    code = ("import sys, wadm.__main__ as m, wadm.api.app, wadm.pipeline.service, wadm.store; "
            "m.build_parser().parse_args(['run']); "
            "print(sorted(n for n in sys.modules if n.startswith('wadm.emulator')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "[]", out.stdout


# ---- the MCP server travels alone ---------------------------------------------------------------

MCP_ALLOWED = {"mcp", "httpx", "pydantic", "uvicorn", "wadm"}  # uvicorn: the SDK's HTTP server, its dependency


@pytest.mark.parametrize("path", sorted((ROOT / "mcp").glob("*.py")), ids=lambda p: p.name)
def test_the_mcp_server_needs_only_the_sdk_and_httpx(path: Path) -> None:
    """``wadm-mcp`` ships wadm/mcp alone (deploy/mcp): it may import the standard library, the SDK,
    httpx, pydantic and itself, nothing of the collector."""
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        modules = [a.name for a in node.names] if isinstance(node, ast.Import) else \
            [node.module] if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 else []
        for module in modules:
            top = module.split(".")[0]
            if top == "wadm":
                assert module.startswith("wadm.mcp"), f"{path.name} imports {module}"
            else:
                assert top in MCP_ALLOWED or top in sys.stdlib_module_names, f"{path.name} imports {module}"
