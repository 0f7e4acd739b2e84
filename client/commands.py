"""The XWHEP-compatible xw* commands, one click command per console script."""

from __future__ import annotations

import asyncio
import errno
import shlex
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import click
import pydantic
from pydantic import BaseModel

from client.api import XWClient
from client.cli import (
    FC,
    JobArgsCommand,
    check_job_args,
    echo_created,
    echo_objects,
    echo_record,
    find_any,
    job_of_line,
    new_key_and_csr,
    parse_forward_addresses,
    parse_job_status,
    parse_listen_ports,
    parse_platform,
    parse_user_rights,
    run,
    safe_name,
    stage,
    submit_all,
    transfer,
    upload,
    xw_options,
)
from client.output import CERTIFICATE
from common import __version__
from common.config import dump_flat_toml, write_private
from common.enums import CPU, OS, AppType, ObjectKind, UserRights
from common.errors import XWError
from common.rights import parse_mode
from common.schemas import AppIn, Binary, JobIn, JobOut, UserGroupIn, UserIn, UserPatch, Validation
from common.uri import is_uid, parse_uri

APP, DATA, WORK = ObjectKind.APP.value, ObjectKind.DATA.value, ObjectKind.JOB.value
USER, USERGROUP = ObjectKind.USER.value, ObjectKind.USERGROUP.value
DEFAULT_CERT_PREFIX = "~/.xwhep/client"
Fetch = Callable[[XWClient], Awaitable[Sequence[BaseModel]]]


def _lister(name: str, kind: str, fetch: Fetch, doc: str) -> click.Command:
    """A command that prints the objects ``fetch`` returns."""

    @click.command(name, help=doc)
    @xw_options
    def command(config: Path | None, fmt: str) -> None:
        async def body(xw: XWClient) -> None:
            echo_objects(kind, await fetch(xw), fmt)

        run(config, body)

    return command


xwapps = _lister("xwapps", APP, lambda xw: xw.apps(), "List the applications you can see.")
xwdatas = _lister("xwdatas", DATA, lambda xw: xw.datas(), "List the data you can see.")
xwusers = _lister("xwusers", USER, lambda xw: xw.users(), "List the users you can see.")
xwusergroups = _lister(
    "xwusergroups", USERGROUP, lambda xw: xw.usergroups(), "List the usergroups you can see."
)


# --- misc -----------------------------------------------------------------------------------------


@click.command("xwversion")
@xw_options
def xwversion(config: Path | None, fmt: str) -> None:
    """Print the client and server versions."""

    async def body(xw: XWClient) -> None:
        server = await xw.version()
        text = f"client {__version__}\nserver {server.version} (api {server.api})"
        echo_record(fmt, text, {"client": __version__, "server": server.version, "api": server.api})

    run(config, body)


@click.command("xwping")
@xw_options
def xwping(config: Path | None, fmt: str) -> None:
    """Check the connection and credentials: who the server thinks we are."""

    async def body(xw: XWClient) -> None:
        pong = await xw.ping()
        text = f"pong: {pong.login} ({pong.rights.value}, via {pong.auth})"
        if pong.via:
            text += f"\nvia oidc: {pong.via}"
        echo_record(fmt, text, pong.model_dump(mode="json"))

    run(config, body)


@click.command("xwcert")
@click.option(
    "--xwout", "prefix", default=DEFAULT_CERT_PREFIX, show_default=True, help="Write PREFIX.crt/.key."
)
@click.option("--xwlist", "list_them", is_flag=True, help="List your certificates (everyone's for admins).")
@click.option(
    "--xwrevoke", "revoke", metavar="SERIAL", multiple=True, help="Revoke a certificate by serial (hex)."
)
@click.option("--reason", "--xwreason", "why", default="", help="Why it is revoked (recorded with it).")
@xw_options
def xwcert(
    prefix: str, list_them: bool, revoke: tuple[str, ...], why: str, config: Path | None, fmt: str
) -> None:
    """Make a key here, have the server certify it for us, and write PREFIX.crt and PREFIX.key (0600);
    or list (--xwlist) or revoke (--xwrevoke SERIAL) the certificates the grid CA issued."""

    async def manage(xw: XWClient) -> None:
        if revoke:
            echo_objects(CERTIFICATE, [await xw.revoke_certificate(s, why) for s in revoke], fmt)
        else:
            echo_objects(CERTIFICATE, await xw.certificates(), fmt)

    async def body(xw: XWClient) -> None:
        if list_them or revoke:
            await manage(xw)
            return
        base = Path(prefix).expanduser().absolute()
        crt, key = base.with_name(base.name + ".crt"), base.with_name(base.name + ".key")
        for path in (crt, key):
            if path.exists():
                raise FileExistsError(errno.EEXIST, "exists (remove it or choose another --xwout)", str(path))
        key_pem, csr_pem = new_key_and_csr(xw.cfg.login or "xwhep")
        signed = await xw.sign_csr(csr_pem)
        base.parent.mkdir(parents=True, exist_ok=True)
        write_private(key, key_pem)
        crt.write_text(signed.certificate)
        lines = dump_flat_toml({"cert": str(crt), "key": str(key)}).rstrip("\n")
        text = (
            f"certificate {signed.serial} for {signed.subject} written to {crt} (key {key}, mode 0600)\n"
            f"to log in with it, add to your client config (no login or password needed):\n{lines}"
        )
        record = {"subject": signed.subject, "serial": signed.serial, "cert": str(crt), "key": str(key)}
        echo_record(fmt, text, record)

    run(config, body)


# --- result validation (xwsendapp, xwsubmit) --------------------------------------------------------

POLICIES = ("none", "quorum", "adaptive")
# Validation's fields -> the options that set them (for errors in the user's words).
VALIDATION_OPTIONS = {
    "policy": "--xwvalidation",
    "quorum": "--xwquorum",
    "replicas": "--xwreplica",
    "max_attempts": "--xwmaxattempts",
    "comparator": "--xwcomparator",
    "rel_tol": "--xwreltol",
    "abs_tol": "--xwabstol",
    "homogeneous": "--xwhomogeneous",
    "spot_check": "--xwspotcheck",
    "trust_after": "--xwtrustafter",
}
ADAPTIVE_ONLY = ("spot_check", "trust_after")
TOLERANCES = ("rel_tol", "abs_tol")


def validation_options(replica_help: str) -> Callable[[FC], FC]:
    """The result validation options of xwsendapp and xwsubmit (values are parsed by ``parse_validation``,
    so that a bad one is a one-line error like any other)."""
    specs: list[tuple[str, str, str | None, str]] = [
        ("--xwreplica", "replica", "N", replica_help),
        (
            "--xwvalidation",
            "policy",
            "POLICY",
            "How results are validated: none, quorum (K agreeing runs on distinct hosts) or adaptive (one"
            " run on a host trusted for the app, spot-checked; two agreeing runs otherwise).",
        ),
        ("--xwquorum", "quorum", "K", "Agreeing results that validate a job (default 2)."),
        ("--xwmaxattempts", "max_attempts", "M", "Runs at most before the job fails (default 2K+1)."),
        (
            "--xwcomparator",
            "comparator",
            "NAME",
            "How results are compared: bitwise (default), tolerance, or a comparator the server installs.",
        ),
        ("--xwreltol", "rel_tol", "X", "Relative tolerance of the tolerance comparator (default 1e-6)."),
        ("--xwabstol", "abs_tol", "X", "Absolute tolerance of the tolerance comparator (default 1e-9)."),
        ("--xwhomogeneous", "homogeneous", None, "Run the copies only on hosts of the first one's OS/CPU."),
        ("--xwspotcheck", "spot_check", "RATE", "adaptive: share of trusted results re-run (0-1 or 10%)."),
        ("--xwtrustafter", "trust_after", "N", "adaptive: agreeing results before a host is trusted."),
    ]

    def decorate(fn: FC) -> FC:
        for flag, dest, metavar, text in reversed(specs):
            if metavar is None:
                fn = click.option(flag, dest, is_flag=True, default=None, help=text)(fn)
            else:
                fn = click.option(flag, dest, metavar=metavar, help=text)(fn)
        return fn

    return decorate


def _whole(option: str, text: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise ValueError(f"{option} {text!r}: expected a whole number") from None


def _real(option: str, text: str, percent: bool = False) -> float:
    raw = text.strip()
    scale = 1.0
    if percent and raw.endswith("%"):
        raw, scale = raw[:-1], 0.01
    try:
        return float(raw) * scale
    except ValueError:
        raise ValueError(f"{option} {text!r}: expected a number") from None


def parse_validation(replica: str | None, replica_sets: str, **given: Any) -> Validation | None:
    """The ``Validation`` the validation options describe, None if none is given; a ValueError naming the
    option for a bad or inconsistent value.

    ``--xwreplica N`` alone is XWHEP's: N copies at once, the result a majority agrees on
    (``Validation.copies``; N = 1 is no validation). With ``--xwvalidation``, ``replica_sets`` says what it
    means: "replicas" (the runs started at once: xwsendapp) or "" (refused with it: xwsubmit). The other
    options set the fields of either.
    """
    policy_text = given.pop("policy", None)
    fields: dict[str, Any] = {}
    for name in ("quorum", "max_attempts", "trust_after"):
        if given.get(name) is not None:
            fields[name] = _whole(VALIDATION_OPTIONS[name], given[name])
    for name in TOLERANCES:
        if given.get(name) is not None:
            fields[name] = _real(VALIDATION_OPTIONS[name], given[name])
    if given.get("spot_check") is not None:
        fields["spot_check"] = _real("--xwspotcheck", given["spot_check"], percent=True)
    if given.get("comparator") is not None:
        fields["comparator"] = given["comparator"].strip()
    if given.get("homogeneous"):
        fields["homogeneous"] = True
    copies = _whole("--xwreplica", replica) if replica is not None else None
    if copies is not None and copies < 1:
        raise ValueError(f"--xwreplica {replica}: N must be at least 1 (N copies of each job run at once)")
    if policy_text is None and copies is None:
        if fields:
            options = ", ".join(VALIDATION_OPTIONS[n] for n in fields)
            raise ValueError(f"{options}: give --xwvalidation quorum|adaptive (or --xwreplica N) too")
        return None
    if policy_text is not None:
        policy = policy_text.strip().lower()
        if policy not in POLICIES:
            raise ValueError(f"unknown --xwvalidation {policy_text!r} (expected none, quorum or adaptive)")
        if copies is not None:
            if not replica_sets:
                raise ValueError(
                    "give either --xwreplica N (N copies, a majority agreeing) or --xwvalidation POLICY,"
                    " not both"
                )
            if policy == "adaptive":
                raise ValueError("--xwreplica: an adaptive validation starts one run (a trusted host's)")
            fields[replica_sets] = copies
        base: dict[str, Any] = {"policy": policy}
        named = f"--xwvalidation {policy}"
    else:
        assert copies is not None
        named = f"--xwreplica {copies}"
        try:
            base = (
                Validation.copies(copies).model_dump(exclude_none=True) if copies > 1 else {"policy": "none"}
            )
        except pydantic.ValidationError as exc:
            too_many = [e for e in exc.errors() if e.get("loc") == ("replicas",)] or exc.errors()
            raise ValueError(_validation_error(named, {**too_many[0], "loc": ()})) from None
    policy = base["policy"]
    if policy == "none" and fields:
        options = ", ".join(VALIDATION_OPTIONS[n] for n in fields)
        raise ValueError(f"{options}: {named} validates nothing (give --xwvalidation quorum|adaptive)")
    if policy != "adaptive" and any(n in fields for n in ADAPTIVE_ONLY):
        options = ", ".join(VALIDATION_OPTIONS[n] for n in ADAPTIVE_ONLY if n in fields)
        raise ValueError(f"{options}: for --xwvalidation adaptive only")
    if fields.get("comparator", "bitwise") == "bitwise" and any(n in fields for n in TOLERANCES):
        options = ", ".join(VALIDATION_OPTIONS[n] for n in TOLERANCES if n in fields)
        raise ValueError(
            f"{options}: the bitwise comparator has no tolerance (give --xwcomparator tolerance)"
        )
    try:
        return Validation.model_validate({**base, **fields})
    except pydantic.ValidationError as exc:
        raise ValueError("; ".join(_validation_error(named, err) for err in exc.errors())) from None


def _validation_error(named: str, err: Any) -> str:
    """One of pydantic's errors about a Validation, in the options' words."""
    loc = err.get("loc", ())
    msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
    if loc and loc[0] in VALIDATION_OPTIONS:
        return f"{VALIDATION_OPTIONS[str(loc[0])]} {err.get('input')}: {msg}"
    return f"{named}: {msg}"


# --- apps and data --------------------------------------------------------------------------------


@click.command("xwsendapp")
@click.argument("name")
@click.argument("app_type", metavar="TYPE")
@click.argument("cpu")
@click.argument("os_name", metavar="OS")
@click.argument("file", metavar="FILE")
@click.argument("rights", required=False)
@validation_options(
    "Runs of each job started at once (with --xwvalidation quorum); alone, XWHEP's --xwreplica: N copies,"
    " a majority agreeing."
)
@xw_options
def xwsendapp(
    name: str,
    app_type: str,
    cpu: str,
    os_name: str,
    file: str,
    rights: str | None,
    config: Path | None,
    fmt: str,
    replica: str | None,
    **given: Any,
) -> None:
    """Register an application, or add a platform to yours: NAME TYPE CPU OS FILE|DATA [RIGHTS].

    The validation options say how its jobs' results are validated (default: they are not)."""

    async def body(xw: XWClient) -> None:
        validation = parse_validation(replica, "replicas", **given)
        kind = AppType.parse(app_type)
        the_cpu, the_os = parse_platform(cpu, os_name)
        # refuse a bad name, mode or validation before uploading
        AppIn(name=name, type=kind, access_rights=rights, validation=validation)
        # named after the app and platform, so that the app's name alone stays unambiguous for xwrm/xwchmod
        binary_name = f"{name[:100]}-{the_os.value}-{the_cpu.value}"
        data_uid, uploaded = await stage(xw, file, name=binary_name, os=the_os, cpu=the_cpu)
        binary = Binary(os=the_os, cpu=the_cpu, data=data_uid)
        try:
            app = await xw.send_app(
                AppIn(name=name, type=kind, access_rights=rights, binaries=[binary], validation=validation)
            )
        except XWError:
            if uploaded:
                await asyncio.shield(xw.remove(data_uid))
            raise
        echo_created(xw, APP, [app], fmt)

    run(config, body)


@click.command("xwsenddata")
@click.argument("name")
@click.argument("file", required=False)
@click.option("--xwtype", "data_type", help="Data type (default BINARY; ZIP for a directory).")
@click.option("--xwos", "os_name", help="OS the data is for (default ANY).")
@click.option("--xwcpu", "cpu", help="CPU the data is for (default ANY).")
@click.option("--xwrights", "rights", help="Access rights, e.g. 0700 or 0755.")
@xw_options
def xwsenddata(
    name: str,
    file: str | None,
    data_type: str | None,
    os_name: str | None,
    cpu: str | None,
    rights: str | None,
    config: Path | None,
    fmt: str,
) -> None:
    """Upload FILE (default: the path NAME; a directory is zipped) as a data object called NAME."""

    async def body(xw: XWClient) -> None:
        fields: dict[str, Any] = {
            "type": data_type,
            "access_rights": rights,
            "os": OS.parse(os_name) if os_name else None,
            "cpu": CPU.parse(cpu) if cpu else None,
        }
        path = Path(file or name).expanduser()
        data = await upload(xw, path, name, **{k: v for k, v in fields.items() if v is not None})
        echo_created(xw, DATA, [data], fmt)

    run(config, body)


@click.command("xwdownload")
@click.argument("refs", nargs=-1, required=True, metavar="REF...")
@click.option("--xwout", "out", type=click.Path(path_type=Path), help="Directory (or file, for one REF).")
@xw_options
def xwdownload(refs: tuple[str, ...], out: Path | None, config: Path | None, fmt: str) -> None:
    """Download data content (checked against its sha256); prints each file written."""

    async def body(xw: XWClient) -> None:
        many = len(refs) > 1
        target = out.expanduser() if out else None
        if target is not None and many:
            target.mkdir(parents=True, exist_ok=True)
        done = []
        for ref in refs:
            meta = await xw.get_data(await xw.resolve(DATA, ref))
            # the name comes from the server: never let it pick a path ('../x', '/etc/x') on this machine
            local = safe_name(meta.name)
            dest = Path.cwd() / local if target is None else target
            if target is not None and (many or target.is_dir()):
                dest = target / local
            with transfer(meta.name, meta.size) as progress:
                done.append(await xw.download(meta.uid, dest, progress))
            if fmt == "short":
                click.echo(str(dest))
        if fmt != "short":
            echo_objects(DATA, done, fmt)

    run(config, body)


# --- jobs -----------------------------------------------------------------------------------------


@click.command(
    "xwsubmit",
    cls=JobArgsCommand,
    context_settings={"ignore_unknown_options": True, "allow_interspersed_args": True},
)
@click.argument("app")
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@click.option(
    "--xwenv", "env", multiple=True, help="Input: local file/dir (uploaded) or data ref; repeatable."
)
@click.option("--xwstdin", "stdin", help="Standard input: a local file or a data ref.")
@click.option(
    "--xwlabel",
    "label",
    help="A label for the job, unique among your jobs (it names the job to other commands).",
)
@click.option("--xwgroup", "group", help="Job group (bag of tasks) name.")
@click.option("--xwexpectedhost", "expected_host", help="Run only on this worker host.")
@click.option(
    "--xwwallclocktime",
    "wallclock",
    type=click.IntRange(min=1),
    metavar="SECONDS",
    help="Kill the job after this many seconds.",
)
@click.option("--xwlistenport", "listen_ports", metavar="PORT[,PORT...]", help="Ports the job listens on.")
@click.option(
    "--xwforwardaddresses",
    "forward",
    metavar="ADDR,PORT[;...]",
    help="Tunnel the job's local PORT to ADDR (from xwproxy).",
)
@click.option("--xwrights", "rights", help="Access rights of the job (ANDed with the app's).")
@click.option(
    "--xwargfile",
    "argfile",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Submit one job per non-empty line of FILE (the line holds the arguments).",
)
@validation_options(
    "XWHEP's --xwreplica: run N copies at once, the result a majority of them agrees on (1: do not"
    " validate, whatever the app says)."
)
@xw_options
@click.pass_context
def xwsubmit(
    ctx: click.Context,
    /,
    app: str,
    args: tuple[str, ...],
    env: tuple[str, ...],
    stdin: str | None,
    argfile: Path | None,
    config: Path | None,
    fmt: str,
    **opts: Any,
) -> None:
    """Submit a job of APP with ARGS (options may come anywhere; `--` ends them); prints its URI.

    The validation options override the app's result validation for this job (default: the app's)."""
    check_job_args(ctx, args)
    replica = opts.pop("replica")
    given = {name: opts.pop(name) for name in VALIDATION_OPTIONS if name != "replicas"}

    async def body(xw: XWClient) -> None:
        validation = parse_validation(replica, "", **given)
        if validation is not None:
            opts["validation"] = validation
        if argfile is not None and args:
            raise ValueError("give job arguments either on the command line or in --xwargfile, not both")
        lines: list[tuple[int, str]] = []  # (line number, arguments)
        if argfile is not None:
            numbered = enumerate(argfile.read_text().splitlines(), 1)
            lines = [(n, text.strip()) for n, text in numbered if text.strip()]
            if not lines:
                raise ValueError(f"{argfile} holds no job (one line of arguments per job)")
            if opts["label"] is not None and len(lines) > 1:
                raise ValueError(
                    f"--xwlabel names one job and {argfile} holds {len(lines)}: a label is unique among your"
                    " jobs; name the batch with --xwgroup"
                )
        if opts["listen_ports"] is not None:
            opts["listen_ports"] = parse_listen_ports(opts["listen_ports"])
        if opts["forward"] is not None:
            opts["forward_addresses"] = parse_forward_addresses(opts["forward"])
        fields = {k: v for k, v in opts.items() if v is not None and k not in ("forward", "rights")}
        fields.update(access_rights=opts["rights"], app=await xw.resolve(APP, app))
        JobIn(**fields)  # refuse bad fields before uploading inputs
        # every line is checked before anything is uploaded or submitted: a bad line submits nothing
        jobs = [job_of_line(fields, argfile, n, text) for n, text in lines]
        fields["env"] = [(await stage(xw, ref))[0] for ref in env]
        if stdin:
            fields["stdin"] = (await stage(xw, stdin))[0]
        if argfile is None:
            echo_created(xw, WORK, [await xw.submit(JobIn(**fields, args=shlex.join(args)))], fmt)
            return
        staged: dict[str, Any] = {k: fields[k] for k in ("env", "stdin") if fields.get(k)}
        if staged:
            jobs = [job.model_copy(update=staged) for job in jobs]  # the same uids for all: no re-check
        await submit_all(xw, jobs, fmt, [f"{argfile}, line {n}" for n, _ in lines])

    run(config, body)


async def _jobs(
    xw: XWClient, refs: tuple[str, ...], status: str | None, label: str | None, group: str | None = None
) -> list[JobOut]:
    wanted = parse_job_status(status) if status else None
    if not refs:
        filters = {k: v for k, v in (("status", wanted), ("label", label), ("group", group)) if v}
        return await xw.jobs(**filters)
    jobs = [await xw.resolve_job(ref) for ref in refs]
    return [
        j
        for j in jobs
        if wanted in (None, j.status) and label in (None, j.label) and group in (None, j.job_group)
    ]


@click.command("xwworks")
@click.argument("refs", nargs=-1, metavar="[REF...]")
@click.option("--xwstatus", "status", help="Only jobs in this status (PENDING, RUNNING, COMPLETED...).")
@click.option("--xwlabel", "label", help="Only jobs with this label.")
@click.option("--xwgroup", "group", help="Only jobs of this job group (xwsubmit --xwgroup).")
@xw_options
def xwworks(
    refs: tuple[str, ...],
    status: str | None,
    label: str | None,
    group: str | None,
    config: Path | None,
    fmt: str,
) -> None:
    """List jobs: the named ones, or all you can see."""

    async def body(xw: XWClient) -> None:
        echo_objects(WORK, await _jobs(xw, refs, status, label, group), fmt)

    run(config, body)


@click.command("xwstatus")
@click.argument("refs", nargs=-1, required=True, metavar="REF...")
@xw_options
def xwstatus(refs: tuple[str, ...], config: Path | None, fmt: str) -> None:
    """Show the status of jobs."""

    async def body(xw: XWClient) -> None:
        echo_objects(WORK, await _jobs(xw, refs, None, None), fmt)

    run(config, body)


# --- any object -----------------------------------------------------------------------------------


@click.command("xwrm")
@click.argument("refs", nargs=-1, required=True, metavar="REF...")
@xw_options
def xwrm(refs: tuple[str, ...], config: Path | None, fmt: str) -> None:
    """Delete objects of any kind (uid, xw:// URI, or a unique app/data name or job label)."""

    async def body(xw: XWClient) -> None:
        for ref in refs:
            await xw.remove((await find_any(xw, ref)).uid)

    run(config, body)


@click.command("xwchmod")
@click.argument("mode")
@click.argument("refs", nargs=-1, required=True, metavar="REF...")
@xw_options
def xwchmod(mode: str, refs: tuple[str, ...], config: Path | None, fmt: str) -> None:
    """Change access rights: MODE is 755, 0755, 0x755 or symbolic like go+rx."""

    async def body(xw: XWClient) -> None:
        parse_mode(mode)  # a bad mode is refused before touching anything
        for ref in refs:
            await xw.chmod((await find_any(xw, ref)).uid, mode)

    run(config, body)


@click.command("xwevents")
@click.argument("ref", required=False)
@xw_options
def xwevents(ref: str | None, config: Path | None, fmt: str) -> None:
    """Show the event log of one object (a deleted one too, by uid), or all you can see."""

    async def body(xw: XWClient) -> None:
        uid = None
        if ref is not None:
            uri = parse_uri(ref)
            uid = uri.uid if uri else ref.lower() if is_uid(ref.lower()) else (await find_any(xw, ref)).uid
        echo_objects("event", await xw.events(object_uid=uid), fmt)

    run(config, body)


# --- users and groups -----------------------------------------------------------------------------


@click.command("xwsenduser")
@click.argument("login")
@click.argument("password")
@click.argument("email")
@click.argument("rights", required=False)
@click.argument("group", required=False)
@xw_options
def xwsenduser(
    login: str,
    password: str,
    email: str,
    rights: str | None,
    group: str | None,
    config: Path | None,
    fmt: str,
) -> None:
    """Create a user: LOGIN PASSWORD EMAIL [RIGHTS] [GROUP]; prints its URI and a client config for it."""

    async def body(xw: XWClient) -> None:
        level = parse_user_rights(rights) if rights else UserRights.STANDARD_USER
        group_uid = await xw.resolve(USERGROUP, group) if group else None
        new = UserIn(login=login, password=password, email=email, rights=level, usergroup=group_uid)
        echo_created(xw, USER, [await xw.create_user(new)], fmt)
        if fmt == "short":
            ca = str(xw.cfg.ca.absolute()) if xw.cfg.ca else None
            conf = {"server": xw.cfg.server, "ca": ca, "login": login, "password": password}
            click.echo(f"# client config for {login} (copy the CA file too; use with --xwconfig FILE)")
            click.echo(dump_flat_toml(conf), nl=False)

    run(config, body)


@click.command("xwpasswd")
@click.argument("login", required=False)
@click.option(
    "--current", "current", envvar="XW_CURRENT_PASSWORD", default=None, help="Current password (prompted)."
)
@click.option("--new", "new", envvar="XW_NEW_PASSWORD", default=None, help="New password (prompted).")
@xw_options
def xwpasswd(login: str | None, current: str | None, new: str | None, config: Path | None, fmt: str) -> None:
    """Change your password (asks for the current one), or, as an administrator over LOGIN, reset theirs.
    Every token issued before the change stops working."""

    async def body(xw: XWClient) -> None:
        me = await xw.ping()
        target = login or me.login
        own = target == me.login
        uid = await xw.resolve(USER, target)
        old = (current or click.prompt("current password", hide_input=True)) if own else None
        fresh = new or click.prompt("new password", hide_input=True, confirmation_prompt=True)
        user = await xw.patch_user(uid, UserPatch(password=fresh, current_password=old))
        echo_record(
            fmt, f"password of {user.login} changed: older tokens no longer work", {"login": user.login}
        )

    run(config, body)


@click.command("xwsendusergroup")
@click.argument("label")
@click.option("--xwproject", "project", is_flag=True, help="Workers of this group run only its jobs.")
@xw_options
def xwsendusergroup(label: str, project: bool, config: Path | None, fmt: str) -> None:
    """Create a usergroup (administrators)."""

    async def body(xw: XWClient) -> None:
        group = await xw.create_usergroup(UserGroupIn(label=label, project=project))
        echo_created(xw, USERGROUP, [group], fmt)

    run(config, body)
