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


# Route modules are thin and independent: each may use the shared helpers of server.routes.base, never
# another route module (a rule two routes share belongs in a domain module such as server/removal.py).
ROUTES = "server.routes"
ROUTES_MAY_IMPORT = {"server.routes.base"}


def _route_modules_imported(path: Path, package: str) -> set[str]:
    """The server.routes modules (and the package itself) that the module at ``path``, which lives in
    ``package``, imports: ``import x``, ``from x import y`` and relative imports alike."""
    tree = ast.parse(path.read_text(), filename=str(path))
    targets: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = parts[: len(parts) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if module == ROUTES:  # from server.routes import apps: the names are modules
                targets.update(f"{module}.{alias.name}" for alias in node.names)
            else:
                targets.add(module)
    return {t for t in targets if t == ROUTES or t.startswith(ROUTES + ".")}


def test_route_modules_do_not_import_each_other() -> None:
    files = sorted((ROOT / "server" / "routes").rglob("*.py"))
    assert len(files) > 2, "server/routes/ has no route modules"
    bad = {}
    for f in files:
        rel = f.relative_to(ROOT)
        package = ".".join(rel.parent.parts)
        bad[rel.as_posix()] = sorted(_route_modules_imported(f, package) - ROUTES_MAY_IMPORT)
    assert {k: v for k, v in bad.items() if v} == {}


def test_route_checker_sees_every_form(tmp_path: Path) -> None:
    mod = tmp_path / "m.py"
    mod.write_text(
        "import server.routes.apps\n"
        "from server.routes.data import collect_now\n"
        "from server.routes import hosts, base\n"
        "from . import jobs\n"
        "from .users import delete_user_in\n"
        "from .base import load\n"
        "from ..routes.tunnels import routes\n"
        "from server.routes.base import path_uid\n"
        "import server.state\n"
        "from server.removal import delete_app_in\n"
        "from .. import removal\n"
    )
    assert _route_modules_imported(mod, ROUTES) - ROUTES_MAY_IMPORT == {
        "server.routes.apps",
        "server.routes.data",
        "server.routes.hosts",
        "server.routes.jobs",
        "server.routes.users",
        "server.routes.tunnels",
    }
