"""``xwworker install | uninstall | status``: the worker as a systemd service, for volunteers."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import click
from click.decorators import FC

from worker import identity, installer
from worker import install as plan
from worker import settings as ws
from worker.busy import load_status

DEFAULT_BUSY_THRESHOLD = 50.0  # percent of all cores; an installed worker steps aside for its owner


def _layout(service: str, system: bool | None, root: Path | None) -> plan.Layout:
    """--system/--user, else system-wide as root and a user unit otherwise."""
    mode: plan.Mode = "system" if system or (system is None and os.geteuid() == 0) else "user"
    try:
        return plan.layout_for(mode, service, root=(root or Path("/")).absolute())
    except plan.InstallError as exc:
        raise click.ClickException(str(exc)) from None


def _size(text: str, option: str) -> int:
    try:
        return ws.parse_size(text)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint=option) from None


_service = click.option(
    "--service",
    default=plan.DEFAULT_SERVICE,
    show_default=True,
    help="Names the unit, its directories and (system-wide) its account.",
)


def _system(help_text: str) -> Callable[[FC], FC]:
    return click.option("--system/--user", "system", default=None, help=help_text)


_root = click.option(
    "--root",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Write every file under this directory instead of / (like DESTDIR): no account, no systemctl.",
)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--xwconfig", "config", type=click.Path(path_type=Path), help="Credentials to copy (a client config)."
)
@click.option("--name", default=None, help="Host name to enrol as (default: this machine's name).")
@click.option("--slots", type=click.IntRange(1, 1024), default=None, help="Jobs at once (default: cores).")
@click.option("--cache-size", default="2G", show_default=True, help="Disk for the cache.")
@click.option("--memory-limit", default="4G", show_default=True, help="Memory cap of a job that asks none.")
@click.option("--activation", default=None, help="Take work only in this hour window, e.g. '* 20-7'.")
@click.option(
    "--sandbox",
    type=click.Choice(ws.SANDBOXES),
    default="auto",
    show_default=True,
    help="Checked now, as the service will run it.",
)
@click.option("--allow-unsandboxed-jobs", "allow_unsandboxed", is_flag=True, help="See xwworker --help.")
@click.option(
    "--busy-threshold",
    type=click.FloatRange(0, 100),
    default=DEFAULT_BUSY_THRESHOLD,
    show_default=True,
    help="Suspend jobs while others use more than this % of all cores (0: never).",
)
@click.option(
    "--busy-after",
    type=click.FloatRange(0, 86400, min_open=True),
    default=ws.DEFAULT_BUSY_AFTER,
    show_default=True,
    help="...on average over this long (s).",
)
@click.option(
    "--calm-after",
    type=click.FloatRange(0, 86400, min_open=True),
    default=ws.DEFAULT_CALM_AFTER,
    show_default=True,
    help="Resume once it has stayed at or below the threshold this long (s).",
)
@click.option("--project", default=None, help="Run only this usergroup's jobs.")
@_service
@_system("Default: system-wide as root, a user unit otherwise.")
@click.option(
    "--python",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="The interpreter the service runs (default: this one); the service account must be able to run it.",
)
@_root
@click.option("--no-start", is_flag=True, help="Write everything; do not start or enable the service.")
@click.option("--no-enrol", is_flag=True, help="Do not enrol now (the service enrols at its first start).")
def install(
    config: Path | None,
    name: str | None,
    slots: int | None,
    cache_size: str,
    memory_limit: str,
    activation: str | None,
    sandbox: str,
    allow_unsandboxed: bool,
    busy_threshold: float,
    busy_after: float,
    calm_after: float,
    project: str | None,
    service: str,
    system: bool | None,
    python: Path | None,
    root: Path | None,
    no_start: bool,
    no_enrol: bool,
) -> None:
    """Install this worker as a service that starts at boot: enrol, write settings and a systemd unit."""
    try:
        window = ws.parse_window(activation) if activation else None
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--activation") from None
    settings = ws.WorkerSettings(
        name=name,
        slots=slots,
        memory_limit=_size(memory_limit, "--memory-limit"),
        cache_size=_size(cache_size, "--cache-size"),
        activation=window,
        sandbox=sandbox,
        allow_unsandboxed_jobs=allow_unsandboxed,
        busy_threshold=busy_threshold,
        busy_after=busy_after,
        calm_after=calm_after,
        project=project,
    )
    layout = _layout(service, system, root)
    request = installer.Request(
        layout=layout,
        settings=settings,
        credentials=config,
        python=(python or Path(sys.executable)).absolute(),
        enrol=not no_enrol,
        start=not no_start,
    )
    try:
        installer.install(request, say=click.echo)
    except plan.InstallError as exc:
        raise click.ClickException(f"{exc} (nothing was installed)") from None


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@_service
@_system("Default: system-wide as root, a user unit otherwise.")
@_root
def uninstall(service: str, system: bool | None, root: Path | None) -> None:
    """Stop the service and remove everything `xwworker install` created (exit 1 if nothing was)."""
    layout = _layout(service, system, root)
    try:
        manifest = installer.read_manifest(layout)
    except plan.InstallError as exc:
        raise click.ClickException(str(exc)) from None
    if manifest is None:
        click.echo(f"xwworker: {service} is not installed here ({layout.on_disk(layout.manifest)} not found)")
        if layout.mode == "user" and system is None and (Path("/etc") / service / "install.json").exists():
            click.echo(f"xwworker: it is installed system-wide: sudo xwworker uninstall --service {service}")
        sys.exit(1)
    problems = installer.remove(manifest, layout, say=click.echo)
    if problems:
        raise click.ClickException("; ".join(problems))
    click.echo(f"uninstalled {service}")


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@_service
@_system("Default: a user unit if there is one, else the system-wide one.")
@_root
def status(service: str, system: bool | None, root: Path | None) -> None:
    """Show the service's state, its settings, the host it enrolled as, and whether it is paused."""
    layout = _layout(service, system, root)
    manifest = installer.read_manifest(layout)
    if manifest is None and system is None and layout.mode == "user":
        layout = _layout(service, True, root)  # a volunteer looking at the machine's service
        manifest = installer.read_manifest(layout)
    if manifest is None:
        click.echo(f"xwworker: {service} is not installed here")
        sys.exit(1)
    for key, value in _facts(layout, manifest):
        click.echo(f"{key + ':':10} {value}")


def _facts(layout: plan.Layout, m: plan.Manifest) -> list[tuple[str, str]]:
    work = layout.on_disk(Path(m.work_dir))
    rows = [("service", f"{m.service} ({'system-wide' if m.mode == 'system' else 'user unit'})")]
    rows.append(("unit", f"{layout.on_disk(Path(m.unit))} ({_unit_state(layout)})"))
    rows.append(("settings", str(layout.on_disk(Path(m.settings)))))
    rows.append(("work dir", str(work)))
    if layout.account:
        rows.append(("account", layout.account))
    try:
        saved = identity.load(work)
        host = f"{saved.host_uid} on {saved.server}" if saved else "not enrolled yet (at its first start)"
    except PermissionError:
        host = f"unknown: {work} is not readable by you (try sudo)"
    rows.append(("host", host))
    try:
        threshold = ws.load_settings(layout.on_disk(Path(m.settings))).busy_threshold
    except ws.SettingsError as exc:
        return [*rows, ("settings", f"unusable: {exc}")]
    if threshold <= 0:
        rows.append(("paused", "never (busy_threshold = 0)"))
    else:
        st = load_status(work)
        rows.append(
            ("paused", st.describe() if st else "unknown: no worker runs (or you may not read its status)")
        )
    return rows


def _unit_state(layout: plan.Layout) -> str:
    if not installer.systemd_running(layout):
        return "systemd is not running here"
    unit = f"{layout.service}.service"
    states = []
    for verb in ("is-active", "is-enabled"):
        done = subprocess.run(layout.systemctl(verb, unit), capture_output=True, text=True)
        states.append(done.stdout.strip() or done.stderr.strip() or "unknown")
    return ", ".join(states)
