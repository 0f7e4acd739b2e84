"""``make run`` never starts a grid without the job sandbox: scripts/ensure-sandbox installs it or stops.

apt-get and id are stand-ins here (we do not uninstall and reinstall the machine's bubblewrap in a test);
the script itself runs for real under /bin/sh.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "ensure-sandbox"


def _bin(tmp: Path, *, uid: int, apt: bool, bwrap: bool) -> Path:
    """A PATH directory: the shell's tools, a fake id, and optionally a fake apt-get / bwrap."""
    path = tmp / "bin"
    path.mkdir()
    for tool in ("sh", "echo", "chmod"):
        found = shutil.which(tool)
        assert found
        (path / tool).symlink_to(found)
    (path / "id").write_text(f"#!/bin/sh\necho {uid}\n")
    if apt:  # installing drops a bwrap next to it and records the call
        (path / "apt-get").write_text(
            f'#!/bin/sh\necho "$@" >> {tmp}/apt.log\n'
            f'case "$*" in *install*) printf "#!/bin/sh\\n" > {path}/bwrap; chmod +x {path}/bwrap;; esac\n'
        )
    if bwrap:
        (path / "bwrap").write_text("#!/bin/sh\n")
    for f in path.iterdir():
        if not f.is_symlink():
            f.chmod(0o755)
    return path


def _run(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["/bin/sh", str(SCRIPT)], env={"PATH": str(path)}, capture_output=True, text=True, timeout=30
    )


def test_nothing_to_do_when_bubblewrap_is_there(tmp_path: Path) -> None:
    done = _run(_bin(tmp_path, uid=1000, apt=True, bwrap=True))
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
    assert not (tmp_path / "apt.log").exists()


def test_root_with_apt_installs_it(tmp_path: Path) -> None:
    path = _bin(tmp_path, uid=0, apt=True, bwrap=False)
    done = _run(path)
    assert done.returncode == 0, done.stderr
    assert "install -y -qq bubblewrap" in (tmp_path / "apt.log").read_text()
    assert (path / "bwrap").exists()


@pytest.mark.parametrize(("uid", "apt"), [(1000, True), (0, False)], ids=["not-root", "no-apt"])
def test_otherwise_it_stops_with_the_command(tmp_path: Path, uid: int, apt: bool) -> None:
    done = _run(_bin(tmp_path, uid=uid, apt=apt, bwrap=False))
    assert done.returncode == 1
    assert "sudo apt-get install bubblewrap" in done.stderr
    assert not (tmp_path / "apt.log").exists()
