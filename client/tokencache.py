"""The sign-in cache: one JSON file (0600, in a 0700 directory) holding each server's OpenID Connect login.

Where: ``$XW_TOKEN_CACHE``, else ``$XDG_CONFIG_HOME/xwhep/tokens.json`` (``~/.config/xwhep/tokens.json``).
Entries are keyed by the server's URL (a config's first one). A cache others may read, that belongs to
someone else, or that does not parse is refused with the reason, never silently trusted or overwritten.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import stat
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from client.config import ConfigError

ENV_PATH = "XW_TOKEN_CACHE"
DEFAULT_NAME = Path("xwhep") / "tokens.json"
FORMAT = 1  # the file's "version"
LOCK_WAIT = 60.0  # seconds to wait for another process renewing the same cache
LOCK_POLL = 0.05


class TokenCacheError(ConfigError):
    """The token cache cannot be used as it is (permissions, owner, content)."""


@dataclass(frozen=True)
class CachedLogin:
    """One server's sign-in: the provider it went through and the tokens that keep it alive."""

    provider: str  # the provider's name on the server
    issuer: str
    client_id: str
    scopes: tuple[str, ...]
    login: str
    refresh_token: str | None
    access_token: str  # the xwhep token
    expires_at: float  # when the xwhep token expires (seconds since the epoch)

    def fresh(self, margin: float, now: float | None = None) -> bool:
        """Whether the xwhep token has more than ``margin`` seconds left."""
        return self.expires_at - (time.time() if now is None else now) > margin

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "scopes": list(self.scopes)}

    @classmethod
    def from_json(cls, doc: object) -> CachedLogin:
        if not isinstance(doc, dict):
            raise ValueError("an entry is not an object")
        names = {f.name for f in fields(cls)}
        missing = names - {"refresh_token"} - doc.keys()
        if missing:
            raise ValueError(f"an entry lacks {', '.join(sorted(missing))}")
        for key in ("provider", "issuer", "client_id", "login", "access_token"):
            if not isinstance(doc[key], str):
                raise ValueError(f"{key} is not a string")
        scopes, refresh, expires = doc["scopes"], doc.get("refresh_token"), doc["expires_at"]
        if not isinstance(scopes, list) or not all(isinstance(s, str) for s in scopes):
            raise ValueError("scopes is not a list of strings")
        if refresh is not None and not isinstance(refresh, str):
            raise ValueError("refresh_token is not a string")
        if isinstance(expires, bool) or not isinstance(expires, int | float):
            raise ValueError("expires_at is not a number")
        values = {k: doc[k] for k in names if k in doc}
        return cls(**{**values, "scopes": tuple(scopes), "expires_at": float(expires)})


class TokenCache:
    """The cache file at ``path``; every call reads or rewrites the file (other processes share it)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def default(cls) -> TokenCache:
        """The cache this user's commands share (``$XW_TOKEN_CACHE``, else under the XDG config home)."""
        if os.environ.get(ENV_PATH):
            return cls(Path(os.environ[ENV_PATH]).expanduser())
        base = os.environ.get("XDG_CONFIG_HOME") or "~/.config"
        return cls(Path(base).expanduser() / DEFAULT_NAME)

    def get(self, server: str) -> CachedLogin | None:
        """The sign-in cached for ``server``, if any."""
        return self._read().get(server)

    def put(self, server: str, login: CachedLogin, *, locked: bool = False) -> None:
        """Store (replace) the sign-in for ``server`` atomically; ``locked``: the caller holds ``lock()``."""
        with contextlib.nullcontext() if locked else self.lock():
            entries = self._read()
            entries[server] = login
            self._write(entries)

    def remove(self, server: str) -> CachedLogin | None:
        """Forget the sign-in for ``server``; the one removed, or None when there was none."""
        with self.lock():
            entries = self._read()
            gone = entries.pop(server, None)
            if gone is not None:
                self._write(entries)
            return gone

    @contextlib.contextmanager
    def lock(self, wait: float = LOCK_WAIT) -> Iterator[None]:
        """Hold the cache's lock file (processes renewing one sign-in take turns); bounded by ``wait``."""
        self._ensure_dir()
        lock_path = self.path.with_name(self.path.name + ".lock")
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            deadline = time.monotonic() + wait
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise TokenCacheError(
                            f"token cache {self.path} stayed locked by another process for {wait:g} s"
                        ) from None
                    time.sleep(LOCK_POLL)
            yield
        finally:
            os.close(fd)  # releases the lock

    # --- the file ---------------------------------------------------------------------------------

    def _read(self) -> dict[str, CachedLogin]:
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise TokenCacheError(f"cannot open token cache {self.path}: {exc.strerror or exc}") from None
        with os.fdopen(fd, "rb") as fh:
            self._check_private(os.fstat(fh.fileno()))
            raw = fh.read()
        try:
            doc = json.loads(raw)
            if not isinstance(doc, dict) or doc.get("version") != FORMAT:
                raise ValueError(f"not a version {FORMAT} xwhep token cache")
            logins = doc.get("logins")
            if not isinstance(logins, dict):
                raise ValueError("no logins")
            return {str(server): CachedLogin.from_json(entry) for server, entry in logins.items()}
        except (ValueError, TypeError) as exc:
            raise TokenCacheError(
                f"token cache {self.path} is corrupt ({exc}): remove it and run xwlogin again"
            ) from None

    def _check_private(self, st: os.stat_result) -> None:
        if not stat.S_ISREG(st.st_mode):
            raise TokenCacheError(f"token cache {self.path} is not a regular file")
        if st.st_uid != os.getuid():
            raise TokenCacheError(f"token cache {self.path} belongs to another user (uid {st.st_uid})")
        if st.st_mode & 0o077:
            raise TokenCacheError(
                f"token cache {self.path} is open to other users (mode {stat.S_IMODE(st.st_mode):04o}): "
                f"chmod 600 {self.path}"
            )

    def _ensure_dir(self) -> None:
        parent = self.path.parent
        if not parent.exists():
            parent.mkdir(parents=True, exist_ok=True)
            parent.chmod(0o700)  # mkdir's mode goes through the umask
        st = parent.stat()
        if st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX:
            raise TokenCacheError(
                f"token cache directory {parent} is writable by other users: chmod 700 {parent}"
            )

    def _write(self, entries: dict[str, CachedLogin]) -> None:
        self._ensure_dir()
        doc = {"version": FORMAT, "logins": {s: e.to_json() for s, e in sorted(entries.items())}}
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
        try:  # mkstemp creates the file 0600: the tokens are never readable by others, even briefly
            with os.fdopen(fd, "w") as fh:
                json.dump(doc, fh, indent=1)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
