"""``xwworker install`` and ``uninstall`` carried out: the account, directories, files, enrolment, systemd.

Every step is recorded in the manifest (written again after each one), so that a failed install is
rolled back exactly and ``uninstall`` removes exactly what was created, however the install ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import pwd
import shutil
import socket
import stat
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from client.api import XWClient
from client.config import ConfigError, load_config
from common.config import dump_flat_toml, write_private
from common.errors import TransportError, XWError
from worker import install as plan
from worker.daemon import Worker, WorkerOptions
from worker.sandbox import detect
from worker.settings import WorkerSettings, render_settings

Say = Callable[[str], None]
PROBE_TIMEOUT = 120.0  # importing the worker on a loaded machine
NOLOGIN = ("/usr/sbin/nologin", "/sbin/nologin", "/bin/false")
_FACTS = "import sys, worker.cli; print(sys.base_prefix); print(sys.prefix); print(worker.cli.__file__)"


@dataclass(frozen=True)
class Request:
    """What the volunteer asked for."""

    layout: plan.Layout
    settings: WorkerSettings  # credentials and work_dir are set by the install
    credentials: Path | None  # the client config to copy (None: $XW_CONFIG or ~/.xwhep/client.conf)
    python: Path
    enrol: bool = True
    start: bool = True


def systemd_running(layout: plan.Layout) -> bool:
    """Whether systemd manages this machine (for a user unit: this user's manager runs)."""
    if layout.root != Path("/"):
        return False
    if layout.mode == "system":
        return Path("/run/systemd/system").is_dir()
    runtime = os.environ.get("XDG_RUNTIME_DIR") or f"/run/user/{os.getuid()}"
    return (Path(runtime) / "systemd").is_dir()


def read_manifest(layout: plan.Layout) -> plan.Manifest | None:
    path = layout.on_disk(layout.manifest)
    try:
        return plan.Manifest.from_json(path.read_text(), path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise plan.InstallError(f"cannot read {path}: {exc.strerror}") from None


class _Run:
    """One install in progress: creates things and records each in the manifest at once."""

    def __init__(self, req: Request, say: Say) -> None:
        self.req = req
        self.lay = req.layout
        self.say = say
        s = req.settings
        self.m = plan.Manifest(
            service=self.lay.service,
            mode=self.lay.mode,
            root=str(self.lay.root),
            unit=str(self.lay.unit),
            settings=str(self.lay.settings),
            work_dir=str(self.lay.work_dir),
        )
        self.settings = dataclasses.replace(s, credentials=self.lay.credentials, work_dir=self.lay.work_dir)
        self.uid: int | None = None  # the account's, once it exists (never under --root)
        self.gid: int | None = None

    @property
    def run_as(self) -> tuple[int, int] | None:
        """The account's (uid, gid), once created (never under --root, nor for a user unit)."""
        return (self.uid, self.gid) if self.uid is not None and self.gid is not None else None

    def save(self) -> None:
        path = self.lay.on_disk(self.lay.manifest)
        write_private(path, self.m.to_json(), mode=0o644)
        path.chmod(0o644)

    def mkdir(self, path: Path, mode: int, owned: bool = False) -> None:
        """Create ``path`` with ``mode`` and the missing directories above it (each recorded); one that
        exists already is left as it is."""
        disk = self.lay.on_disk(path)
        missing = [p for p in (path, *path.parents) if not self.lay.on_disk(p).exists()]
        for p in reversed(missing):
            self.lay.on_disk(p).mkdir(mode=0o755)
            self.m.dirs.append(str(p))
            if self.lay.on_disk(self.lay.config_dir).is_dir():
                self.save()
        if path in missing:
            disk.chmod(mode)
            if owned:
                self.chown(disk)

    def chown(self, disk: Path, group_only: bool = False) -> None:
        if self.uid is not None and self.gid is not None:
            os.chown(disk, -1 if group_only else self.uid, self.gid, follow_symlinks=False)

    def write(self, path: Path, text: str, mode: int, group: bool = False) -> None:
        """Write a new file (mode exact; ``group``: root-owned, readable by the account's group)."""
        disk = self.lay.on_disk(path)
        if disk.exists() or disk.is_symlink():
            raise plan.InstallError(f"{disk} exists already (not written by this install): move it away")
        self.m.files.append(str(path))
        self.save()
        write_private(disk, text, mode=mode)
        disk.chmod(mode)
        if group:
            self.chown(disk, group_only=True)

    # --- steps ----------------------------------------------------------------------------------------

    def account(self) -> None:
        name = self.lay.account
        assert name is not None
        try:
            entry = pwd.getpwnam(name)
            self.say(f"using the existing account {name} (uid {entry.pw_uid})")
        except KeyError:
            shell = next((s for s in NOLOGIN if Path(s).exists()), "/bin/false")
            cmd = ["useradd", "--system", "--user-group", "--no-create-home"]
            cmd += ["--home-dir", str(self.lay.work_dir), "--shell", shell]
            cmd += ["--comment", "xwhep volunteer worker", name]
            self.m.account = name
            self.save()
            _run(cmd, f"cannot create the account {name}")
            entry = pwd.getpwnam(name)
            self.say(f"created the system account {name} (uid {entry.pw_uid}, no login)")
        self.uid, self.gid = entry.pw_uid, entry.pw_gid

    def credentials(self) -> None:
        """Copy the client config and the files it names into the config dir (the account may read them)."""
        try:
            cfg = load_config(self.req.credentials)
        except ConfigError as exc:
            raise plan.InstallError(str(exc)) from None
        system = self.lay.mode == "system"
        secret = 0o640 if system else 0o600
        values: dict[str, object] = {"server": cfg.server, "login": cfg.login, "password": cfg.password}
        for key, src, name, mode in (
            ("ca", cfg.ca, "ca.crt", 0o644),
            ("cert", cfg.cert, "client.crt", 0o644),
            ("key", cfg.key, "client.key", secret),
        ):
            if src is not None:
                try:
                    content = src.read_text()
                except OSError as exc:
                    raise plan.InstallError(f"cannot read {src} ({key} of {cfg.source}): {exc}") from None
                self.write(self.lay.config_dir / name, content, mode, group=system and mode == secret)
                values[key] = name  # relative to the credentials file
        self.write(self.lay.credentials, dump_flat_toml(values), secret, group=system)
        self.say(f"credentials copied from {cfg.source or 'the environment'} to {self.lay.credentials}")

    def python(self) -> str:
        """Check the account can run the interpreter with xwhep; ProtectHome= accordingly."""
        python = self.req.python
        places = [Path(os.path.realpath(python))]
        if self.lay.root == Path("/"):  # under --root the files are for another machine: not run here
            mine = _python_facts(python, None)
            if self.run_as is not None and _python_facts(python, self.run_as) != mine:
                why = f"it finds another standard library or package than root does ({mine[0]})"
                raise plan.InstallError(plan.python_fix(python, self.lay.service, why))
            places += [Path(p) for p in mine]
        return "read-only" if any(p.is_relative_to("/home") for p in places) else "yes"

    def sandbox(self) -> None:
        """Try the sandbox as the service will run it: a job that cannot be confined is refused now."""
        try:
            box = detect(self.settings.sandbox, run_as=self.run_as)
        except RuntimeError as exc:
            raise plan.InstallError(str(exc)) from None
        if box.kind != "bwrap" and not self.settings.allow_unsandboxed_jobs:
            raise plan.InstallError(
                f"no working sandbox for the service: {box.unconfined_reason}. Install bubblewrap, or "
                "accept the risk with --allow-unsandboxed-jobs"
            )
        self.say(f"sandbox: {box.kind}")

    def enrol(self) -> None:
        try:
            cfg = load_config(self.lay.on_disk(self.lay.credentials))
        except ConfigError as exc:
            raise plan.InstallError(str(exc)) from None
        s = self.settings
        name = s.name or socket.gethostname()
        box = detect(s.sandbox, run_as=self.run_as)
        opts = WorkerOptions(
            name=name,
            work_dir=self.lay.on_disk(self.lay.work_dir),
            slots=s.slots or os.cpu_count() or 1,
            cache_bytes=s.cache_size,
            sandbox=box,
            project=s.project,
        )

        async def once() -> str:
            async with XWClient(cfg) as client:
                return await Worker(client, opts).enrol()

        try:
            host = asyncio.run(once())
        except TransportError as err:
            raise plan.InstallError(f"cannot enrol: the server cannot be reached: {err.reason}") from None
        except XWError as err:
            raise plan.InstallError(f"cannot enrol: the server refused: {err.reason}") from None
        for path in _tree(self.lay.on_disk(self.lay.work_dir)):
            self.chown(path)
        self.say(f"enrolled as {name}: host {host} on {cfg.server}")

    def start(self) -> None:
        lay = self.lay
        commands = [
            lay.systemctl("daemon-reload"),
            lay.systemctl("enable", "--now", f"{lay.service}.service"),
        ]
        if self.req.start and systemd_running(lay):
            for cmd in commands:
                _run(cmd, f"`{' '.join(cmd)}` failed")
            self.m.enabled = True
            self.save()
            self.say(f"started and enabled at boot: {lay.service}")
            return
        why = "--no-start" if not self.req.start else "systemd is not running here"
        sudo = "sudo " if lay.mode == "system" and os.geteuid() != 0 else ""
        self.say(f"not started ({why}); to start it and at every boot:")
        for cmd in commands:
            self.say(f"  {sudo}{' '.join(cmd)}")


def install(req: Request, say: Say) -> plan.Manifest:
    """Install the worker as a service (rolled back on any failure); the manifest of what was made."""
    lay = req.layout
    if lay.mode == "system" and lay.root == Path("/") and os.geteuid() != 0:
        raise plan.InstallError("a system-wide install needs root (sudo xwworker install), or use --user")
    if lay.mode == "user" and os.geteuid() == 0 and lay.root == Path("/"):
        raise plan.InstallError(
            "as root, install system-wide (leave out --user): the service then gets an account"
        )
    if read_manifest(lay) is not None:
        raise plan.InstallError(f"{lay.service} is installed already: `xwworker uninstall` first")
    for path in (lay.unit, lay.work_dir):
        if lay.on_disk(path).exists():
            raise plan.InstallError(f"{lay.on_disk(path)} exists and was not made by xwworker install")
    if lay.mode == "system" and (blocked := plan.blocked_for_others(req.python)) is not None:
        where, why = blocked
        real = Path(os.path.realpath(req.python))
        leads = f" (it leads to {real})" if real != req.python else ""
        raise plan.InstallError(plan.python_fix(req.python, lay.service, f"{where} {why}{leads}"))
    run = _Run(req, say)
    try:
        run.mkdir(lay.config_dir, 0o755)
        run.save()
        if lay.mode == "system" and lay.root == Path("/"):
            run.account()
        protect_home = run.python()
        if lay.root == Path("/"):
            run.sandbox()
        run.mkdir(lay.work_dir, 0o700, owned=True)
        run.credentials()
        hint = " ".join(lay.systemctl("restart", lay.service))
        run.write(lay.settings, render_settings(run.settings, restart_hint=hint), 0o644)
        unit = plan.UnitSpec(
            lay,
            (str(req.python), "-m", "worker", "--settings", str(lay.settings)),
            no_new_privileges=not _setuid_bwrap(),
            protect_home=protect_home,
        )
        run.mkdir(lay.unit_dir, 0o755)
        run.write(lay.unit, plan.render_unit(unit), 0o644)
        if req.enrol and lay.root == Path("/"):
            run.enrol()  # late: a refusal leaves no host behind on the server either
        run.start()
    except BaseException as exc:
        remove(run.m, lay, say=lambda _: None)
        if isinstance(exc, plan.InstallError | KeyboardInterrupt):
            raise
        if isinstance(exc, OSError):
            raise plan.InstallError(f"install failed: {exc}") from None
        raise
    say(f"settings: {lay.on_disk(lay.settings)} (edit, then restart the service)")
    user = pwd.getpwuid(os.getuid()).pw_name
    if lay.mode == "user" and not Path(f"/var/lib/systemd/linger/{user}").exists():
        say(f"to run it at boot without logging in: loginctl enable-linger {user}")
    return run.m


def remove(m: plan.Manifest, lay: plan.Layout, say: Say) -> list[str]:
    """Stop, disable and delete what the manifest lists (the manifest last); what could not go."""
    problems: list[str] = []
    if systemd_running(lay):
        unit = f"{m.service}.service"
        done = subprocess.run(lay.systemctl("disable", "--now", unit), capture_output=True, text=True)
        if done.returncode != 0 and m.enabled:
            problems.append(f"systemctl disable --now {unit}: {' '.join(done.stderr.split())}")
    for link in lay.on_disk(Path(m.unit).parent).glob("*.wants/" + Path(m.unit).name):
        if link.is_symlink():  # enabled by hand while systemd was not running
            link.unlink()
    for path in reversed(m.files):
        disk = lay.on_disk(Path(path))
        if disk.is_file() or disk.is_symlink():
            disk.unlink()
            say(f"removed {disk}")
    # the config dir (and what install created above it) holds the manifest: it goes last
    last = {str(p) for p in (lay.config_dir, *lay.config_dir.parents)}
    for path in reversed([d for d in m.dirs if d not in last]):
        problems += _remove_dir(lay.on_disk(Path(path)), whole=path == m.work_dir, say=say)
    if m.account is not None:
        done = subprocess.run(["userdel", m.account], capture_output=True, text=True)
        if done.returncode not in (0, 6):  # 6: no such user
            problems.append(f"userdel {m.account}: {' '.join(done.stderr.split())}")
        else:
            say(f"removed the account {m.account}")
    if systemd_running(lay):
        subprocess.run(lay.systemctl("daemon-reload"), capture_output=True)
    lay.on_disk(lay.manifest).unlink(missing_ok=True)
    for path in reversed([d for d in m.dirs if d in last]):
        left = _remove_dir(lay.on_disk(Path(path)), whole=False, say=say)
        problems += left if path == str(lay.config_dir) else []
    return problems


def _remove_dir(disk: Path, *, whole: bool, say: Say) -> list[str]:
    """Remove a directory install created: the work dir with its content (the worker's own: jobs,
    cache, host.json), any other only if empty; what is left, if anything."""
    if whole:
        shutil.rmtree(disk, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            disk.rmdir()
    if disk.exists():
        return [f"left {disk}: not empty ({', '.join(sorted(os.listdir(disk))[:5])})"]
    say(f"removed {disk}/")
    return []


def _run(cmd: list[str], what: str) -> None:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=PROBE_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise plan.InstallError(f"{what}: {exc}") from None
    if done.returncode != 0:
        raise plan.InstallError(f"{what}: {' '.join((done.stderr or done.stdout).split())}")


def _python_facts(python: Path, run_as: tuple[int, int] | None) -> tuple[str, ...]:
    """(base prefix, prefix, worker package) as ``python`` sees them, run as root or as the account."""
    kwargs: dict[str, object] = {}
    if run_as is not None:
        kwargs = {"user": run_as[0], "group": run_as[1], "extra_groups": []}
    try:
        done = subprocess.run(
            [str(python), "-c", _FACTS],
            capture_output=True,
            text=True,
            cwd="/",
            env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
            timeout=PROBE_TIMEOUT,
            **kwargs,  # type: ignore[call-overload]
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise plan.InstallError(f"cannot run {python}: {exc}") from None
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        who = "the service account" if run_as else "it"
        raise plan.InstallError(f"{python} cannot import xwhep's worker as {who}: {last}")
    base, prefix, module = done.stdout.split("\n")[:3]
    return base, prefix, str(Path(module).parent)


def _setuid_bwrap() -> bool:
    found = shutil.which("bwrap")
    return found is not None and bool(os.stat(found).st_mode & stat.S_ISUID)


def _tree(top: Path) -> Iterator[Path]:
    yield top
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            yield Path(dirpath) / name
