"""``xwworker install`` planned and written under --root: the units verify, modes are right, the manifest
lists what was made and uninstall removes exactly that. (Real installs: test_install_system.py.)"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from worker import install as plan
from worker.cli import main
from worker.settings import load_settings

FORBIDDEN = (
    "RestrictNamespaces",
    "PrivateUsers",
    "ProtectKernelTunables",
    "ProtectKernelLogs",
    "ProtectProc",
)


def readable_python() -> Path:
    """An interpreter every account may run (the unit must name one that exists for verify)."""
    for candidate in (Path(sys.executable), Path("/usr/bin/python3")):
        if candidate.exists() and plan.blocked_for_others(candidate) is None:
            return candidate
    pytest.skip("no Python here that other accounts may run")


def verify(unit: Path, *, user: bool, tmp: Path) -> None:
    """``systemd-analyze verify`` accepts the unit: exit 0 and not one word about it."""
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    runtime = tmp / "runtime"
    runtime.mkdir(mode=0o700, exist_ok=True)
    env = dict(os.environ, XDG_RUNTIME_DIR=str(runtime))
    cmd = [tool, *(["--user"] if user else []), "verify", str(unit)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    about = [line for line in (done.stdout + done.stderr).splitlines() if unit.name in line]
    assert done.returncode == 0 and not about, done.stdout + done.stderr


def unit_for(mode: plan.Mode, tmp: Path, **kw: object) -> Path:
    lay = plan.layout_for(mode, "xwt-demo", env={"HOME": "/home/vol"})
    spec = plan.UnitSpec(lay, (str(readable_python()), "-m", "worker", "--settings", str(lay.settings)), **kw)  # type: ignore[arg-type]
    path = tmp / lay.unit.name
    path.write_text(plan.render_unit(spec))
    return path


def test_system_unit_verifies_and_keeps_bubblewrap_working(tmp_path: Path) -> None:
    unit = unit_for("system", tmp_path)
    verify(unit, user=False, tmp=tmp_path)
    text = unit.read_text()
    for line in (
        "User=xwt-demo",
        "Group=xwt-demo",
        "Restart=on-failure",
        "WantedBy=multi-user.target",
        "After=network-online.target",
        "KillMode=mixed",
        "ProtectSystem=strict",
        "ReadWritePaths=/var/lib/xwt-demo",
        "NoNewPrivileges=yes",
        "ExecStart=",
    ):
        assert line in text
    assert "--settings /etc/xwt-demo/worker.toml" in text
    assert not [k for k in FORBIDDEN if f"\n{k}=" in text]


def test_user_unit_verifies(tmp_path: Path) -> None:
    unit = unit_for("user", tmp_path)
    verify(unit, user=True, tmp=tmp_path)
    text = unit.read_text()
    assert "WantedBy=default.target" in text and "User=" not in text and "network-online" not in text
    assert "--settings /home/vol/.config/xwt-demo/worker.toml" in text


def test_setuid_bubblewrap_gets_no_no_new_privileges(tmp_path: Path) -> None:
    text = unit_for("system", tmp_path, no_new_privileges=False).read_text()
    assert "NoNewPrivileges" not in text and "CapabilityBoundingSet" not in text
    assert "ProtectSystem=strict" in text
    verify(tmp_path / "xwt-demo.service", user=False, tmp=tmp_path)


@pytest.mark.parametrize(
    ("arg", "quoted"),
    [
        ("/usr/bin/python3", "/usr/bin/python3"),
        ("/opt/my venv/bin/python", '"/opt/my venv/bin/python"'),
        ("100%", '"100%%"'),
        ("$HOME", '"$$HOME"'),
        ('a"b', '"a\\"b"'),
    ],
)
def test_exec_start_quoting(arg: str, quoted: str) -> None:
    assert plan.systemd_quote(arg) == quoted


def test_bad_service_names_are_refused() -> None:
    for name in ("", "Upper", "-dash", "a b", "x" * 40, "../etc"):
        with pytest.raises(plan.InstallError):
            plan.layout_for("system", name)


def test_blocked_for_others() -> None:
    base = Path(tempfile.mkdtemp(prefix="xwt-", dir="/var/tmp"))  # pytest's tmp_path is private (0700)
    try:
        base.chmod(0o755)
        private = base / "private"
        (private / "bin").mkdir(parents=True)
        exe = private / "bin" / "python"
        exe.write_text("#!/bin/sh\n")
        exe.chmod(0o755)
        private.chmod(0o700)
        link = base / "link"
        link.symlink_to(exe)
        no_search = (private, "is not searchable by other accounts (needs o+x)")
        assert plan.blocked_for_others(exe) == no_search
        assert plan.blocked_for_others(link) == no_search  # the link is followed
        private.chmod(0o711)
        assert plan.blocked_for_others(link) is None
        exe.chmod(0o750)
        assert plan.blocked_for_others(link) == (exe, "is not executable by other accounts (needs o+x)")
        assert plan.blocked_for_others(base / "gone")[1] == "does not exist"  # type: ignore[index]
    finally:
        shutil.rmtree(base)


def test_manifest_round_trip_and_refusals(tmp_path: Path) -> None:
    m = plan.Manifest("s", "system", "/", "/etc/systemd/system/s.service", "/etc/s/worker.toml", "/var/lib/s")
    m.files.append("/etc/s/worker.toml")
    assert plan.Manifest.from_json(m.to_json(), tmp_path) == m
    for bad in ("{", '{"version": 99}', json.dumps({**json.loads(m.to_json()), "files": ["relative"]})):
        with pytest.raises(plan.InstallError, match="unusable"):
            plan.Manifest.from_json(bad, tmp_path)


def client_conf(tmp: Path) -> Path:
    (tmp / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\n")
    conf = tmp / "volunteer.conf"
    conf.write_text(
        'server = "https://grid.example.org:4321"\nca = "ca.pem"\nlogin = "w"\npassword = "s3cret"\n'
    )
    return conf


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def test_system_install_under_root_then_uninstall(tmp_path: Path) -> None:
    root = tmp_path / "image"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "keep.conf").write_text("not ours\n")
    args = ["--root", str(root), "--system", "--python", str(readable_python()), "--service", "xwt-demo"]
    runner = CliRunner()
    done = runner.invoke(main, ["install", *args, "--xwconfig", str(client_conf(tmp_path)), "--slots", "2"])
    assert done.exit_code == 0, done.output
    assert "systemctl enable --now xwt-demo.service" in done.output  # told what to run
    etc, lib = root / "etc" / "xwt-demo", root / "var" / "lib" / "xwt-demo"
    unit = root / "etc" / "systemd" / "system" / "xwt-demo.service"
    assert {p.name: mode_of(p) for p in etc.iterdir()} == {
        "worker.toml": 0o644,
        "credentials.conf": 0o640,  # holds the password: root and the account's group
        "ca.crt": 0o644,
        "install.json": 0o644,
    }
    assert (mode_of(etc), mode_of(lib), mode_of(unit)) == (0o755, 0o700, 0o644)
    verify(unit, user=False, tmp=tmp_path)
    settings = load_settings(etc / "worker.toml")
    assert settings.credentials == Path("/etc/xwt-demo/credentials.conf")  # the path on the target
    assert settings.work_dir == Path("/var/lib/xwt-demo") and settings.slots == 2
    assert settings.busy_threshold == 50
    creds = (etc / "credentials.conf").read_text()
    assert 'ca = "ca.crt"' in creds and "s3cret" in creds

    status = runner.invoke(main, ["status", "--root", str(root), "--system", "--service", "xwt-demo"])
    assert status.exit_code == 0, status.output
    assert "not enrolled yet" in status.output and "systemd is not running here" in status.output

    again = runner.invoke(main, ["install", *args, "--xwconfig", str(client_conf(tmp_path))])
    assert again.exit_code == 1 and "installed already" in again.output

    gone = runner.invoke(main, ["uninstall", "--root", str(root), "--system", "--service", "xwt-demo"])
    assert gone.exit_code == 0, gone.output
    left = sorted(str(p.relative_to(root)) for p in root.rglob("*"))
    assert left == ["etc", "etc/keep.conf"]  # what was there before, and nothing else

    nothing = runner.invoke(main, ["uninstall", "--root", str(root), "--system", "--service", "xwt-demo"])
    assert nothing.exit_code == 1 and "not installed" in nothing.output


def test_user_install_under_root(tmp_path: Path) -> None:
    root = tmp_path / "image"
    env = {"HOME": "/home/vol", "XDG_CONFIG_HOME": "", "XDG_DATA_HOME": ""}
    args = ["--root", str(root), "--user", "--python", str(readable_python())]
    done = CliRunner(env=env).invoke(main, ["install", *args, "--xwconfig", str(client_conf(tmp_path))])
    assert done.exit_code == 0, done.output
    home = root / "home" / "vol"
    unit = home / ".config" / "systemd" / "user" / "xwhep-worker.service"
    assert mode_of(home / ".config" / "xwhep-worker" / "credentials.conf") == 0o600
    assert mode_of(home / ".local" / "share" / "xwhep-worker") == 0o700
    verify(unit, user=True, tmp=tmp_path)
    assert "systemctl --user enable --now xwhep-worker.service" in done.output
    assert "loginctl enable-linger" in done.output
    gone = CliRunner(env=env).invoke(main, ["uninstall", "--root", str(root), "--user"])
    assert gone.exit_code == 0, gone.output
    assert not root.exists()  # install made all of it


def test_a_python_other_accounts_cannot_run_is_refused_with_the_fix(tmp_path: Path) -> None:
    private = tmp_path / "private"
    (private / "bin").mkdir(parents=True)
    python = private / "bin" / "python"
    python.symlink_to(readable_python())
    private.chmod(0o700)
    root = tmp_path / "image"
    args = ["install", "--root", str(root), "--system", "--python", str(python)]
    done = CliRunner().invoke(main, [*args, "--xwconfig", str(client_conf(tmp_path))])
    assert done.exit_code == 1
    out = done.output.strip()
    assert "\n" not in out
    assert "could not run" in out and "pipx install" in out and "--python PATH" in out
    assert not root.exists()


def test_missing_credentials_leave_nothing(tmp_path: Path) -> None:
    root = tmp_path / "image"
    args = ["install", "--root", str(root), "--system", "--python", str(readable_python())]
    done = CliRunner().invoke(main, [*args, "--xwconfig", str(tmp_path / "none.conf")])
    assert done.exit_code == 1
    assert "does not exist (nothing was installed)" in done.output
    assert not root.exists()
