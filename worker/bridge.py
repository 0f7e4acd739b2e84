"""A job's declared ports: the in-sandbox bridge helper, its socket directory, and the worker's ends."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib.resources
import os
import socket
import stat
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Literal

from worker.results import InputError
from worker.sandbox import Sandbox

HELPER_NAME = "xwbridge.py"
HELPER_RESOURCE = "xwbridge_helper.py"
HELPER_PYTHON = "/usr/bin/python3"
SOCK_DIR = "sock"
READY_NAME = "ready"  # the helper creates it once every bridge listens, just before starting the job
READY_POLL_SECONDS = 0.02
LOOPBACK = "127.0.0.1"

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
Endpoint = tuple[Literal["unix", "tcp"], Path | int]


@functools.cache
def helper_source() -> str:
    """The helper program (worker/xwbridge_helper.py: standard library only, run by the sandbox's python)."""
    return importlib.resources.files("worker").joinpath(HELPER_RESOURCE).read_text()


def _check_ports(listen: list[int], forward: list[int]) -> None:
    for port in listen + forward:
        if not 1 <= port <= 65535:
            raise InputError(f"port {port} is out of range")
    if both := sorted(set(listen) & set(forward)):
        raise InputError(f"port(s) {both} declared both to listen on and to forward")


class PortBridge:
    """The declared ports of one job, as the worker reaches them."""

    # Under bubblewrap the job has a loopback of its own: a helper (bin/xwbridge.py) runs the job command as
    # its child and bridges each listen port P to the Unix socket sock/listen-P.sock, and its own
    # 127.0.0.1:Q to sock/forward-Q.sock, which the worker serves. Without bubblewrap there is no helper:
    # the job listens on the host's 127.0.0.1:P and the worker on 127.0.0.1:Q.
    #
    # The job owns sock/ and may put anything there, a symlink to a host socket say: the worker connects
    # through an O_PATH descriptor it checked is a socket of the job uid, and chowns what it binds there
    # without following links.

    def __init__(self, job_dir: Path, listen: list[int], forward: list[int], sandbox: Sandbox) -> None:
        self.listen = list(dict.fromkeys(listen))
        self.forward = list(dict.fromkeys(forward))
        self.sandbox = sandbox
        self.sockdir = job_dir / SOCK_DIR
        self.helper = job_dir / "bin" / HELPER_NAME
        self.started = False  # the JobRun sets these two
        self.ended = False

    @property
    def helped(self) -> bool:
        """Whether the job runs behind the helper (bubblewrap and at least one declared port)."""
        return self.sandbox.kind == "bwrap" and bool(self.listen or self.forward)

    # --- preparation and the command (for JobRun) ----------------------------------------------------

    def prepare(self, exe_path: Path) -> None:
        """Check the ports; when helped, write the helper into bin/ and make sock/ (in a thread)."""
        _check_ports(self.listen, self.forward)
        if not self.helped:
            return
        if exe_path == self.helper:
            raise InputError(f"the executable may not be called {HELPER_NAME} in a job with ports")
        if not os.access(HELPER_PYTHON, os.X_OK):
            raise RuntimeError(f"jobs with ports need {HELPER_PYTHON} for the bridge helper")
        self.helper.write_text(helper_source())
        self.helper.chmod(0o555)
        self.sockdir.mkdir()
        self.sandbox.prepare_scratch(self.sockdir)  # the job uid's, 0o700: root and that uid get in

    def wrap(self, argv: list[str]) -> list[str]:
        """The command to run in the sandbox: ``argv`` itself, or the helper running it."""
        if not self.helped:
            return argv
        cmd = [HELPER_PYTHON, "-I", str(self.helper), "--sockdir", str(self.sockdir)]
        cmd += [a for port in self.listen for a in ("--listen", str(port))]
        cmd += [a for port in self.forward for a in ("--forward", str(port))]
        return [*cmd, "--", *argv]

    def rw_binds(self) -> list[tuple[Path, Path]]:
        """Directories the sandbox binds read-write at the same path: sock/ when helped."""
        return [(self.sockdir, self.sockdir)] if self.helped else []

    # --- the worker's ends ---------------------------------------------------------------------------

    async def wait_ready(self, timeout: float) -> bool:
        """True once the ports are bridged (helped: the helper listens; else: the job started)."""
        deadline = time.monotonic() + timeout
        while not self.ended:
            if self.started and (not self.helped or self._ready_marker()):
                return True
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(READY_POLL_SECONDS)
        return False

    def _ready_marker(self) -> bool:
        with contextlib.suppress(OSError):
            return stat.S_ISREG(os.lstat(self.sockdir / READY_NAME).st_mode)
        return False

    async def open_listen(self, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A connection to the job's listen port ``port``; ConnectionError if it is not (yet) there."""
        if port not in self.listen:
            raise ConnectionRefusedError(f"the job declared no listen port {port}")
        if not self.helped:
            return await asyncio.open_connection(LOOPBACK, port)
        path = self.sockdir / f"listen-{port}.sock"
        try:
            fd = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as exc:
            raise ConnectionRefusedError(f"port {port} of the job is not bridged (yet): {exc}") from exc
        try:
            st = os.fstat(fd)
            if not stat.S_ISSOCK(st.st_mode) or st.st_uid != self._job_uid():
                raise ConnectionRefusedError(f"{path} is not the bridge helper's socket")
            # Through the descriptor, so the job cannot swap in a symlink between the check and here.
            return await asyncio.open_unix_connection(f"/proc/self/fd/{fd}")
        except (FileNotFoundError, PermissionError) as exc:
            raise ConnectionRefusedError(f"port {port} of the job is not reachable: {exc}") from exc
        finally:
            os.close(fd)

    def forward_endpoint(self, port: int) -> Endpoint:
        """Where the job's connections to 127.0.0.1:``port`` arrive: a Unix socket path, or a host port."""
        if port not in self.forward:
            raise ValueError(f"the job declared no forward port {port}")
        if self.helped:
            return "unix", self.sockdir / f"forward-{port}.sock"
        return "tcp", port

    async def serve_forward(self, port: int, handler: Handler) -> asyncio.Server:
        """Listen on ``forward_endpoint(port)`` so that the job can connect; close the server when done."""
        if self.forward_endpoint(port)[0] == "tcp":
            return await asyncio.start_server(handler, LOOPBACK, port)
        return await asyncio.start_unix_server(handler, sock=self._bind_unix(f"forward-{port}.sock"))

    def _bind_unix(self, name: str) -> socket.socket:
        """A listening socket ``name`` in sock/, owned by the job uid so that the helper may connect."""
        dirfd = os.open(self.sockdir, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name, dir_fd=dirfd)  # a server of an earlier call (asyncio leaves the file)
            sock.bind(f"/proc/self/fd/{dirfd}/{name}")  # short, whatever the job directory's depth
            uid, gid = self.sandbox.job_uid, self.sandbox.job_gid
            if uid is not None:
                os.chown(name, uid, -1 if gid is None else gid, dir_fd=dirfd, follow_symlinks=False)
            sock.listen(socket.SOMAXCONN)
        except BaseException:
            sock.close()
            raise
        finally:
            os.close(dirfd)
        return sock

    def _job_uid(self) -> int:
        return self.sandbox.job_uid if self.sandbox.job_uid is not None else os.geteuid()


class JobPorts:
    """The port methods of JobRun, on its ``ports`` bridge."""

    ports: PortBridge

    async def wait_bridges(self, timeout: float) -> bool:
        """Whether the declared ports got bridged within ``timeout`` s (False if the job ended first)."""
        return await self.ports.wait_ready(timeout)

    async def open_listen(self, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A connection to the job's listen port ``port``; ConnectionError if it is not (yet) there."""
        return await self.ports.open_listen(port)

    def forward_endpoint(self, port: int) -> Endpoint:
        """Where the job's connections to its 127.0.0.1:``port`` arrive: ("unix", path) or ("tcp", port)."""
        return self.ports.forward_endpoint(port)

    async def serve_forward(self, port: int, handler: Handler) -> asyncio.Server:
        """Serve ``forward_endpoint(port)`` with ``handler``, reachable by the job; close it when done."""
        return await self.ports.serve_forward(port, handler)
