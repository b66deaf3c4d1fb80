"""Layering rules that keep the pure packages pure and the package tidy."""

from __future__ import annotations

import ast
import importlib
import pkgutil
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
