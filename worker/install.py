"""A volunteer install, planned: where each file goes, the systemd unit, the manifest (no side effects).

``worker/installer.py`` carries the plan out. Everything is named after the service (default
``xwhep-worker``): system-wide, the account, ``/etc/NAME/``, ``/var/lib/NAME`` and
``/etc/systemd/system/NAME.service``; for one user, ``~/.config/NAME/``, ``~/.local/share/NAME`` and
``~/.config/systemd/user/NAME.service``.
"""

from __future__ import annotations

import json
import os
import re
import stat
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from common import __version__

DEFAULT_SERVICE = "xwhep-worker"
Mode = Literal["system", "user"]
MANIFEST_VERSION = 1
RESTART_SECONDS = 30
# The worker kills and hands back its jobs on SIGTERM within ~15 s (10 s grace, 5 s per report).
STOP_TIMEOUT_SECONDS = 60

_SERVICE = re.compile(r"^[a-z_][a-z0-9_-]{0,30}$")  # a valid account name and unit name
_NO_SEARCH = "is not searchable by other accounts (needs o+x)"
_SAFE_ARG = re.compile(r"^[A-Za-z0-9_./:@+=,-]+$")


class InstallError(Exception):
    """Install, uninstall or status cannot go on (the message is one line)."""


def check_service_name(name: str) -> str:
    if not _SERVICE.match(name):
        raise InstallError(
            f"service name {name!r}: use 1-31 lowercase letters, digits, '-' or '_', starting with a letter"
        )
    return name


@dataclass(frozen=True)
class Layout:
    """Where everything of one install lives (paths as the running system sees them)."""

    mode: Mode
    service: str
    config_dir: Path
    work_dir: Path
    unit_dir: Path
    root: Path = Path("/")  # --root: every file is written under it instead (like DESTDIR)

    @property
    def account(self) -> str | None:
        """The dedicated account the system service runs as (None: a user unit runs as its user)."""
        return self.service if self.mode == "system" else None

    @property
    def settings(self) -> Path:
        return self.config_dir / "worker.toml"

    @property
    def credentials(self) -> Path:
        return self.config_dir / "credentials.conf"

    @property
    def manifest(self) -> Path:
        # root-owned, outside the work dir: the account must not be able to choose what uninstall removes
        return self.config_dir / "install.json"

    @property
    def unit(self) -> Path:
        return self.unit_dir / f"{self.service}.service"

    def on_disk(self, path: Path) -> Path:
        """Where ``path`` is written (under --root when given)."""
        return path if self.root == Path("/") else self.root / path.relative_to("/")

    def systemctl(self, *args: str) -> list[str]:
        return ["systemctl", *(["--user"] if self.mode == "user" else []), *args]


def layout_for(
    mode: Mode, service: str, *, root: Path = Path("/"), env: dict[str, str] | None = None
) -> Layout:
    """The layout of a system-wide or a per-user install (XDG_CONFIG_HOME/XDG_DATA_HOME respected)."""
    check_service_name(service)
    if mode == "system":
        etc, lib = Path("/etc") / service, Path("/var/lib") / service
        return Layout(mode, service, etc, lib, Path("/etc/systemd/system"), root)
    env = dict(os.environ) if env is None else env
    home = Path(env.get("HOME") or Path.home())
    config = Path(env.get("XDG_CONFIG_HOME") or home / ".config")
    data = Path(env.get("XDG_DATA_HOME") or home / ".local" / "share")
    return Layout(mode, service, config / service, data / service, config / "systemd" / "user", root)


# --- the unit -------------------------------------------------------------------------------------


def systemd_quote(arg: str) -> str:
    """One ExecStart argument: quoted when it needs to be; % and $ escaped (systemd expands them)."""
    text = arg.replace("%", "%%").replace("$", "$$")
    if _SAFE_ARG.match(arg):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


@dataclass(frozen=True)
class UnitSpec:
    """What the unit says besides the layout."""

    layout: Layout
    exec_start: tuple[str, ...]
    # A setuid-root bubblewrap (old distributions) cannot work under no_new_privs, which most of the
    # seccomp-based hardening implies for a service with User=: then all of it is left out.
    no_new_privileges: bool = True
    protect_home: str = "yes"  # "read-only" when the interpreter lives under /home


# Hardening that leaves bubblewrap working. bwrap needs unprivileged user, mount, pid and network
# namespaces and must mount a fresh /proc: RestrictNamespaces=, PrivateUsers=, SystemCallFilter= (mount,
# pivot_root), and anything that over-mounts /proc (ProtectKernelTunables=, ProtectKernelLogs=,
# ProtectProc=) make it fail ("Can't mount proc on /newroot/proc: Operation not permitted").
_MOUNT_HARDENING = ("PrivateTmp=yes", "ProtectSystem=strict", "ProtectControlGroups=yes")
_NNP_HARDENING = (
    "NoNewPrivileges=yes",
    "CapabilityBoundingSet=",
    "ProtectKernelModules=yes",
    "RestrictSUIDSGID=yes",
    "RestrictRealtime=yes",
    "LockPersonality=yes",
    # AF_NETLINK: bwrap brings the job's loopback up through it; AF_UNIX: the port bridge.
    "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK",
)


def render_unit(spec: UnitSpec) -> str:
    """The systemd unit: starts at boot, restarts on failure, lowest priority, hardened for bwrap."""
    lay = spec.layout
    system = lay.mode == "system"
    restart = f"systemctl{'' if system else ' --user'} restart {lay.service}"
    lines = [
        f"# Written by `xwworker install` (xwhep {__version__}); `xwworker uninstall` removes it.",
        f"# Settings: {lay.settings} (edit it, then: {restart})",
        "[Unit]",
        "Description=xwhep volunteer worker (xwworker)",
    ]
    if system:  # a user manager has no network-online.target
        lines += ["Wants=network-online.target", "After=network-online.target"]
    lines += ["", "[Service]", "Type=exec"]
    if system:
        lines += [f"User={lay.account}", f"Group={lay.account}"]
    lines += [
        "ExecStart=" + " ".join(systemd_quote(a) for a in spec.exec_start),
        f"WorkingDirectory={lay.work_dir}",
        "Restart=on-failure",
        f"RestartSec={RESTART_SECONDS}",
        "# SIGTERM to the worker alone: it kills its jobs and hands them back; then the rest is killed.",
        "KillMode=mixed",
        f"TimeoutStopSec={STOP_TIMEOUT_SECONDS}",
        "# The machine is its owner's first: lowest CPU and I/O priority for the worker and its jobs.",
        "Nice=19",
        "IOSchedulingClass=idle",
    ]
    if system:
        lines += [
            "# Hardening that leaves bubblewrap working (it needs user namespaces and its own /proc).",
            *_MOUNT_HARDENING,
            f"ProtectHome={spec.protect_home}",
            f"ReadWritePaths={lay.work_dir}",
        ]
        if spec.no_new_privileges:
            lines += list(_NNP_HARDENING)
    elif spec.no_new_privileges:
        lines.append("NoNewPrivileges=yes")
    lines += ["", "[Install]", f"WantedBy={'multi-user.target' if system else 'default.target'}"]
    return "\n".join(lines) + "\n"


# --- the manifest ---------------------------------------------------------------------------------


@dataclass
class Manifest:
    """What an install created, so that uninstall removes exactly that."""

    service: str
    mode: Mode
    root: str
    unit: str
    settings: str
    work_dir: str
    account: str | None = None  # created by install (an account that existed before is not listed)
    files: list[str] = field(default_factory=list)  # in creation order
    dirs: list[str] = field(default_factory=list)  # in creation order; the work dir goes with its content
    enabled: bool = False
    version: int = MANIFEST_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str, where: Path) -> Manifest:
        try:
            doc = json.loads(text)
            if doc.get("version") != MANIFEST_VERSION:
                raise ValueError(f"version {doc.get('version')!r}, expected {MANIFEST_VERSION}")
            made = cls(**doc)
            if made.mode not in ("system", "user"):
                raise ValueError(f"mode {made.mode!r}")
            paths = [made.unit, made.settings, made.work_dir, *made.files, *made.dirs]
            if not all(isinstance(p, str) and p.startswith("/") for p in paths):
                raise ValueError("paths must be absolute")
            return made
        except (ValueError, TypeError, AttributeError) as exc:
            raise InstallError(f"install manifest {where} is unusable: {exc}") from None


# --- can another account run this? ------------------------------------------------------------------


def blocked_for_others(path: Path) -> tuple[Path, str] | None:
    """The first place on the way to ``path`` (symlinks followed) that an unrelated account cannot pass,
    and why; None if every directory on the way is o+x and the file itself is o+x."""
    pending = list(Path(os.path.abspath(path)).parts[1:])
    walked = Path("/")
    hops = 0
    try:
        while pending:
            if not walked.stat().st_mode & stat.S_IXOTH:
                return walked, _NO_SEARCH
            step = walked / pending.pop(0)
            if step.is_symlink():
                hops += 1
                if hops > 40:
                    return step, "is a symlink loop"
                target = Path(os.readlink(step))
                walked = Path("/") if target.is_absolute() else walked
                pending = [p for p in target.parts if p != "/"] + pending
                continue
            walked = step
        mode = walked.stat().st_mode
    except FileNotFoundError:
        return walked, "does not exist"
    if stat.S_ISREG(mode) and not mode & stat.S_IXOTH:
        return walked, "is not executable by other accounts (needs o+x)"
    return None


def python_fix(python: Path, account: str, why: str) -> str:
    """The refusal when the service account could not run ``python``: what blocks it, and the fix."""
    return (
        f"the service account {account} could not run {python}: {why} (a Python under /root or a "
        "private home is for its owner alone). Install xwhep where every account can read "
        "it, e.g. `sudo PIPX_HOME=/opt/pipx PIPX_BIN_DIR=/usr/local/bin pipx install xwhep` (or "
        "`python3 -m venv /opt/xwhep && /opt/xwhep/bin/pip install xwhep`), then run that "
        "`xwworker install` again; or pass --python PATH, an interpreter with xwhep that others can read"
    )
