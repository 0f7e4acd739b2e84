"""The dependency rules between our packages hold (checked on the import statements of every module)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
OURS = {"common", "server", "client", "worker", "proxy"}
ALLOWED = {
    "common": set(),
    "server": {"common"},
    "client": {"common"},
    "proxy": {"common"},
    "worker": {"common", "client", "proxy"},
}
# Single modules allowed more than their package: worker and xwproxy use proxy's tunnel endpoints.
EXCEPTIONS = {
    "client/proxycmd.py": {"proxy"},
}


def _imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found & OURS


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_package_imports_only_what_it_may(package: str) -> None:
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, f"{package}/ has no modules"
    bad = {}
    for f in files:
        rel = f.relative_to(ROOT).as_posix()
        bad[rel] = sorted(_imported_packages(f) - ALLOWED[package] - EXCEPTIONS.get(rel, set()) - {package})
    assert {k: v for k, v in bad.items() if v} == {}


def test_exceptions_name_existing_modules_that_need_them() -> None:
    for rel, extra in EXCEPTIONS.items():
        path = ROOT / rel
        assert path.is_file(), f"{rel} is gone: drop its exception"
        package = rel.split("/", 1)[0]
        assert extra <= _imported_packages(path) - ALLOWED[package], f"{rel} no longer needs {extra}"


def test_checker_sees_a_violation(tmp_path: Path) -> None:
    bad = tmp_path / "m.py"
    bad.write_text("from server.app import create_app\nimport client.api\n")
    assert _imported_packages(bad) == {"server", "client"}
