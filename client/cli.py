"""Plumbing shared by the xw* commands: common options, the runner that turns errors into one line, progress
bars, argument parsers, and staging of local files as data objects."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import re
import sys
import tempfile
import zipfile
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click
import pydantic
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pydantic import BaseModel
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from client.api import XWClient
from client.config import ConfigError, load_config
from client.output import FORMATS, render
from client.transport import Transport
from common.enums import CPU, OS, JobStatus, UserRights
from common.errors import NotFound, ValidationFailed, XWError
from common.schemas import DataOut, ForwardAddress, JobIn, JobOut, ObjectRef
from common.uri import XWUri, is_uid

STAGED_RIGHTS = "1700"  # private + sticky: the owner's jobs can fetch it on any worker, nobody else sees it
USER_ERRORS = (XWError, ConfigError, OSError, ValueError)
MAX_IN_FLIGHT = 16  # concurrent reads of the jobs an --xwargfile created (formats other than short)
NAMED_KINDS = ("app", "data", "work")  # kinds whose names xwrm/xwchmod/xwevents accept

FC = TypeVar("FC", bound=Callable[..., Any])
Body = Callable[[XWClient], Awaitable[None]]


def xw_options(fn: FC) -> FC:
    """Add --xwconfig and --xwformat, which every command takes."""
    fn = click.option(
        "--xwformat",
        "fmt",
        type=click.Choice(FORMATS, case_sensitive=False),
        default="short",
        show_default=True,
        help="Output format.",
    )(fn)
    fn = click.option(
        "--xwconfig",
        "config",
        type=click.Path(path_type=Path, dir_okay=False),
        default=None,
        help="Client config file (default: $XW_CONFIG, then ~/.xwhep/client.conf).",
    )(fn)
    return fn


def prog() -> str:
    """The running command's name, for error lines."""
    ctx = click.get_current_context(silent=True)
    return (ctx.info_name if ctx and ctx.info_name else None) or Path(sys.argv[0]).name


def reason(exc: BaseException) -> str:
    """A one-line, human explanation of a user-facing error."""
    if isinstance(exc, XWError):
        return exc.reason
    if isinstance(exc, pydantic.ValidationError):
        return "; ".join(_pydantic_line(err) for err in exc.errors())
    if isinstance(exc, OSError) and exc.filename is not None:
        return f"{exc.filename}: {exc.strerror or exc}"
    return " ".join(str(exc).split()) or type(exc).__name__


def _pydantic_line(err: Any) -> str:
    where = ".".join(str(part) for part in err.get("loc", ()))
    msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
    return f"{where}: {msg}" if where else msg


def complain(message: str) -> None:
    """Print ``prog: error: message`` on stderr (and carry on, for a command handling several objects)."""
    click.echo(f"{prog()}: error: {' '.join(message.split())}", err=True)


def fail(message: str, code: int = 1) -> NoReturn:
    """Print ``prog: error: message`` on stderr and exit."""
    complain(message)
    raise click.exceptions.Exit(code)


def run(config: Path | None, body: Body) -> None:
    """Run a command's async body with a client for the configured server; errors become one line, exit 1.

    A command invoked with a ``Transport`` as click's context object talks through it instead of the
    network: ``CliRunner().invoke(xwping, args, obj=MockTransport(handler))``.
    """
    ctx = click.get_current_context(silent=True)
    transport = ctx.obj if ctx is not None and isinstance(ctx.obj, Transport) else None
    try:
        asyncio.run(_session(config, body, transport))
    except KeyboardInterrupt:
        fail("interrupted", 130)
    except USER_ERRORS as exc:
        fail(reason(exc))


async def _session(config: Path | None, body: Body, transport: Transport | None = None) -> None:
    cfg = load_config(config)
    async with XWClient(cfg, transport) as xw:
        await body(xw)


def echo_objects(kind: str, items: Sequence[BaseModel], fmt: str) -> None:
    """Print objects in the chosen format; a table is as wide as its cells (never a path split in two:
    a narrow terminal soft-wraps whole lines)."""
    text = render(kind, items, fmt)
    if text:
        click.echo(text)


def echo_record(fmt: str, text: str, record: dict[str, Any]) -> None:
    """Print a single result: its text, or the record as JSON."""
    click.echo(json.dumps(record, indent=2) if fmt == "json" else text)


def echo_created(xw: XWClient, kind: str, items: Sequence[BaseModel], fmt: str) -> None:
    """Print new objects: their xw:// URIs (XWHEP's output) in short format, else the objects."""
    if fmt.lower() == "short":
        for obj in items:
            click.echo(str(xw.uri(obj.model_dump(include={"uid"})["uid"])))
    else:
        echo_objects(kind, items, fmt)


@contextlib.contextmanager
def transfer(label: str, total: int | None) -> Iterator[Callable[[int], None]]:
    """A transient progress bar on stderr (silent when stderr is not a terminal); yields the byte counter."""
    console = Console(stderr=True)
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=True, disable=not console.is_terminal) as bar:
        task = bar.add_task(label, total=total)
        yield lambda n: bar.advance(task, n)


# --- argument parsers (pure) ---------------------------------------------------------------------


def parse_listen_ports(text: str) -> list[int]:
    """``"8080,8081"`` -> [8080, 8081]."""
    ports = []
    for part in (p.strip() for p in text.split(",")):
        if not part.isdigit() or not 1 <= int(part) <= 65535:
            raise ValueError(f"bad --xwlistenport {text!r}: expected ports 1-65535 separated by commas")
        ports.append(int(part))
    return ports


def parse_forward_addresses(text: str) -> list[ForwardAddress]:
    """``"addr,port;addr2,port2"`` -> forward addresses (the address itself may hold commas)."""
    out = []
    for part in (p.strip() for p in text.split(";")):
        if not part:
            continue
        address, sep, port = part.rpartition(",")
        if not sep or not address.strip() or not port.strip().isdigit() or not 1 <= int(port) <= 65535:
            raise ValueError(f'bad --xwforwardaddresses {text!r}: expected "address,port;address2,port2"')
        out.append(ForwardAddress(address=address.strip(), port=int(port)))
    if not out:
        raise ValueError('empty --xwforwardaddresses: expected "address,port;address2,port2"')
    return out


def parse_platform(cpu: str, os_name: str) -> tuple[CPU, OS]:
    """CPU and OS in XWHEP's order, also accepting them swapped (``macosx x86_64``)."""
    try:
        return CPU.parse(cpu), OS.parse(os_name)
    except ValueError as first:
        try:
            return CPU.parse(os_name), OS.parse(cpu)
        except ValueError:
            raise first from None


def parse_job_status(text: str) -> JobStatus:
    """A job status, case-insensitively."""
    try:
        return JobStatus(text.strip().upper())
    except ValueError:
        raise ValueError(f"unknown status {text!r} (expected one of {', '.join(JobStatus)})") from None


def parse_user_rights(text: str) -> UserRights:
    """A user rights level, case-insensitively."""
    try:
        return UserRights(text.strip().upper())
    except ValueError:
        raise ValueError(f"unknown user rights {text!r} (expected one of {', '.join(UserRights)})") from None


def safe_name(text: str) -> str:
    """A valid object name made from a file name (spaces and the like become '_')."""
    name = re.sub(r"[^A-Za-z0-9_.+@=:-]", "_", text)
    while ".." in name:
        name = name.replace("..", ".")
    if not name or not (name[0].isalnum() or name[0] == "_"):
        name = "_" + name
    return name[:128]


# --- references and staging ----------------------------------------------------------------------


def _is_ref(text: str) -> bool:
    return text.startswith("xw://") or is_uid(text.lower())


async def find_any(xw: XWClient, ref: str) -> ObjectRef:
    """The object a uid, an xw:// URI, or the unique name of an app, data or job (label) designates."""
    if _is_ref(ref):
        return await xw.find(ref)
    found = []
    for kind in NAMED_KINDS:
        try:
            found.append(await xw.resolve(kind, ref))
        except NotFound:
            continue
    if not found:
        raise NotFound(f"{ref!r} is not a uid, an xw:// URI, or the name of an app, data or job you can see")
    if len(found) > 1:
        raise ValidationFailed(f"several objects are named {ref!r}; use a uid")
    return await xw.find(found[0])


def zip_dir(src: Path, dest: Path) -> None:
    """Zip a directory tree (paths relative to it)."""
    with zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(src.rglob("*")):
            zf.write(path, path.relative_to(src).as_posix())


async def upload(xw: XWClient, path: Path, name: str | None = None, **fields: Any) -> DataOut:
    """Upload a file, or a directory as a zip, with a progress bar."""
    if path.is_dir():
        with tempfile.TemporaryDirectory(prefix="xwzip") as tmp:
            archive = Path(tmp) / f"{safe_name(path.resolve().name)}.zip"
            await asyncio.to_thread(zip_dir, path, archive)
            fields.setdefault("type", "ZIP")
            return await upload(xw, archive, name or archive.name, **fields)
    size = path.stat().st_size
    with transfer(path.name, size) as progress:
        return await xw.send_file(path, name=name or safe_name(path.name), progress=progress, **fields)


async def stage(xw: XWClient, ref: str, **fields: Any) -> tuple[str, bool]:
    """The data uid of a local file/dir (uploaded private + sticky) or of a data ref; and if uploaded."""
    path = Path(ref).expanduser()
    if not _is_ref(ref) and path.exists():
        fields.setdefault("access_rights", STAGED_RIGHTS)
        return (await upload(xw, path, **fields)).uid, True
    if not _is_ref(ref) and (os.sep in ref or "/" in ref):
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), ref)
    return await xw.resolve("data", ref), False


# --- jobs ---------------------------------------------------------------------------------------


class JobArgsCommand(click.Command):
    """Notes how many job arguments follow ``--``, so only the others are checked for --xw typos."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        ctx.meta["xw.literal"] = len(args) - args.index("--") - 1 if "--" in args else 0
        return super().parse_args(ctx, args)


def check_job_args(ctx: click.Context, args: tuple[str, ...]) -> None:
    """Refuse an unknown --xw option among job arguments (a typo), unless it follows ``--``."""
    literal = ctx.meta.get("xw.literal", 0)
    for arg in args[: len(args) - literal]:
        if arg.startswith("--xw"):
            raise click.NoSuchOption(arg.split("=", 1)[0], ctx=ctx)


def job_of_line(fields: dict[str, Any], argfile: Path | None, number: int, text: str) -> JobIn:
    """The job of one line of an --xwargfile; a bad line is an error naming it."""
    try:
        if "\x00" in text:  # refused by the server (PostgreSQL cannot store it): say so before sending
            raise ValueError("args: NUL characters are not allowed")
        return JobIn(**fields, args=text)
    except ValueError as exc:  # pydantic's ValidationError is one
        raise ValueError(f"{argfile}, line {number}: {reason(exc)}") from None


async def submit_all(xw: XWClient, jobs: Sequence[JobIn], fmt: str, where: Sequence[str]) -> None:
    """Submit jobs in batches (``XWClient.submit_many``) and print them in order: their URIs, or the jobs
    in ``fmt``. ``where`` names each job for errors (``FILE, line N``).

    The caller has checked every job first, so a batch is refused only for what the server alone knows
    (rights, data) or when the server goes away; the error then names the job, and says how many jobs
    other batches stored (their URIs are printed): a refused batch stores nothing, the others stay.
    """
    try:
        uids = await xw.submit_many(jobs)
    except XWError as err:
        stored: list[str] = err.extra.get("submitted") or []
        await _echo_jobs(xw, stored, fmt)
        index = err.extra.get("index")
        why = err.reason
        if isinstance(index, int) and 0 <= index < len(where):
            for prefix in (f"jobs[{index}]: ", f"jobs.{index}.", f"jobs.{index}: "):  # refusal, field, job
                why = why.removeprefix(prefix)
            why = f"{where[index]}: {why}"
        if stored:  # the batches before (or beside) the refused one
            why += f" ({len(stored):,} of {len(jobs):,} jobs are known to be submitted: those printed above)"
        raise type(err)(why) from None
    await _echo_jobs(xw, uids, fmt)


async def _echo_jobs(xw: XWClient, uids: Sequence[str], fmt: str) -> None:
    """Print new jobs: their xw:// URIs in one write, or (other formats) the jobs as the server has them."""
    if fmt.lower() == "short":
        if uids:
            server = xw.uri("").server  # once: 100,000 lines would parse the configuration 100,000 times
            click.echo("\n".join(str(XWUri(server, uid)) for uid in uids))
        return
    limit = asyncio.Semaphore(MAX_IN_FLIGHT)

    async def one(uid: str) -> JobOut:
        async with limit:
            return await xw.get_job(uid)

    echo_objects("work", await asyncio.gather(*(one(uid) for uid in uids)), fmt)


def new_key_and_csr(common_name: str) -> tuple[str, str]:
    """A fresh P-256 private key (PKCS#8 PEM) and a CSR for it (PEM); the server decides the subject."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    csr = x509.CertificateSigningRequestBuilder().subject_name(name).sign(key, hashes.SHA256())
    pem = serialization.Encoding.PEM
    key_pem = key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return key_pem.decode(), csr.public_bytes(pem).decode()
