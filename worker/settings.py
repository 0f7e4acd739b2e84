"""The worker settings file (``xwworker --settings FILE``): a commented TOML file the volunteer edits.

Command-line options override it; what neither gives takes the defaults named here. Every mistake is
one line naming the file and the setting.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.config import read_toml

DEFAULT_CACHE_SIZE = 2 << 30
DEFAULT_MEMORY_LIMIT = 4 << 30
DEFAULT_BUSY_AFTER = 10.0  # seconds the owner's load must stay high before jobs are suspended
DEFAULT_CALM_AFTER = 60.0  # seconds it must stay low before they go on
SANDBOXES = ("auto", "bwrap", "none")

_SIZE = re.compile(r"^(\d+(?:\.\d+)?)\s*([KMGT]?)(i?B)?$", re.IGNORECASE)
_WINDOW = re.compile(r"^(?:\*\s+)?(\d{1,2})-(\d{1,2})$")
_UNITS = "KMGT"


class SettingsError(Exception):
    """A settings file that cannot be used (the message is one line)."""


def parse_size(text: str) -> int:
    """``512M``, ``2GiB``, ``1000`` (bytes) -> bytes; ValueError otherwise."""
    m = _SIZE.match(text.strip())
    if not m:
        raise ValueError(f"{text!r} is not a size such as 512M or 2G")
    factor = 1024 ** " KMGT".index(m.group(2).upper() or " ")
    return int(float(m.group(1)) * factor)


def format_size(size: int) -> str:
    """Bytes -> the shortest exact form parse_size reads back (``2G``, ``1536M``, ``1000``)."""
    text = str(size)
    for power, unit in enumerate(_UNITS, start=1):
        if size and size % (1024**power) == 0:
            text = f"{size // 1024**power}{unit}"
    return text


def parse_window(text: str) -> tuple[int, int]:
    """XWHEP's activation window ``* 20-7`` (or ``20-7``): work from 20:00 to 07:00; ValueError otherwise."""
    m = _WINDOW.match(text.strip())
    if not m or not all(0 <= int(h) <= 24 for h in m.groups()):
        raise ValueError(f"{text!r} is not an hour window such as '* 20-7'")
    return int(m.group(1)) % 24, int(m.group(2)) % 24


def format_window(window: tuple[int, int] | None) -> str:
    return "" if window is None else f"* {window[0]}-{window[1]}"


@dataclass(frozen=True)
class WorkerSettings:
    """What a volunteer decides about this worker; None: the built-in choice (see xwworker --help)."""

    credentials: Path | None = None  # a client config: server, ca, login, password
    name: str | None = None  # default: this machine's name
    work_dir: Path | None = None
    slots: int | None = None  # default: the cores
    memory_limit: int = DEFAULT_MEMORY_LIMIT
    cache_size: int = DEFAULT_CACHE_SIZE
    activation: tuple[int, int] | None = None
    sandbox: str = "auto"
    allow_unsandboxed_jobs: bool = False
    busy_threshold: float = 0.0  # percent of all cores; 0: never pause for the owner
    busy_after: float = DEFAULT_BUSY_AFTER
    calm_after: float = DEFAULT_CALM_AFTER
    project: str | None = None

    def override(self, **values: Any) -> WorkerSettings:
        """These settings with the values that are not None replacing theirs (command-line options)."""
        return dataclasses.replace(self, **{k: v for k, v in values.items() if v is not None})


# key -> (converter from the TOML value, what it must be, for the error)
def _path(v: object) -> Path:
    if not isinstance(v, str) or not v:
        raise TypeError
    return Path(v)


def _text(v: object) -> str | None:
    if not isinstance(v, str):
        raise TypeError
    return v.strip() or None


def _slots(v: object) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 1024:
        raise TypeError
    return v


def _size(v: object) -> int:
    if isinstance(v, bool) or not isinstance(v, int | str):
        raise TypeError
    size = v if isinstance(v, int) else parse_size(v)
    if size <= 0:
        raise TypeError
    return size


def _window(v: object) -> tuple[int, int] | None:
    if not isinstance(v, str):
        raise TypeError
    return parse_window(v) if v.strip() else None


def _sandbox(v: object) -> str:
    if v not in SANDBOXES:
        raise TypeError
    return str(v)


def _flag(v: object) -> bool:
    if not isinstance(v, bool):
        raise TypeError
    return v


def _percent(v: object) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or not 0 <= v <= 100:
        raise TypeError
    return float(v)


def _seconds(v: object) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or not 0 < v <= 86400:
        raise TypeError
    return float(v)


_KEYS: dict[str, tuple[Any, str]] = {
    "credentials": (_path, "the path of a client config"),
    "name": (_text, "a host name"),
    "work_dir": (_path, "a directory path"),
    "slots": (_slots, "a whole number from 1 to 1024"),
    "memory_limit": (_size, "a size such as 512M or 4G"),
    "cache_size": (_size, "a size such as 512M or 2G"),
    "activation": (_window, "an hour window such as '* 20-7', or '' for always"),
    "sandbox": (_sandbox, "one of " + ", ".join(SANDBOXES)),
    "allow_unsandboxed_jobs": (_flag, "true or false"),
    "busy_threshold": (_percent, "a percentage from 0 (never pause) to 100"),
    "busy_after": (_seconds, "a number of seconds (0 < s <= 86400)"),
    "calm_after": (_seconds, "a number of seconds (0 < s <= 86400)"),
    "project": (_text, "a usergroup name, or '' for any"),
}


def load_settings(path: Path) -> WorkerSettings:
    """Read and check a settings file; SettingsError (one line) on any mistake."""
    try:
        values = read_toml(path)
    except FileNotFoundError:
        raise SettingsError(f"settings file {path} does not exist") from None
    except ValueError as exc:  # a TOML syntax error, which names the file
        raise SettingsError(f"cannot read settings {' '.join(str(exc).split())}") from None
    except OSError as exc:
        raise SettingsError(f"cannot read settings {path}: {exc.strerror}") from None
    parsed: dict[str, Any] = {}
    for key, value in values.items():
        if key not in _KEYS:
            raise SettingsError(f"{path}: unknown setting {key!r} (known: {', '.join(_KEYS)})")
        convert, expected = _KEYS[key]
        try:
            parsed[key] = convert(value)
        except (TypeError, ValueError):
            raise SettingsError(f"{path}: {key} = {json.dumps(value)}: expected {expected}") from None
    for key in ("credentials", "work_dir"):  # relative paths are relative to the settings file
        if key in parsed:
            parsed[key] = (path.parent / parsed[key]).expanduser()
    return WorkerSettings(**parsed)


def _q(value: object) -> str:
    return json.dumps(str(value))  # JSON string escapes are valid TOML basic strings


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def render_settings(s: WorkerSettings, *, restart_hint: str = "") -> str:
    """The settings file, every setting present and explained (load_settings reads it back equal)."""

    def off(value: object) -> str:
        return "" if value is not None else "# "  # a setting left to its default is shown commented out

    lines = [
        "# xwhep volunteer worker settings, read by `xwworker --settings THIS-FILE` at start.",
        f"# Edit, then restart the worker{f': {restart_hint}' if restart_hint else ''}.",
        "# Command-line options of xwworker override what is written here.",
        "",
        "# The grid account this machine enrols with (a client config: server, ca, login, password).",
        f"{off(s.credentials)}credentials = {_q(s.credentials or 'client.conf')}",
        "",
        "# The name this machine shows on the grid (commented out: this machine's host name).",
        f"{off(s.name)}name = {_q(s.name or '')}",
        "",
        "# Jobs, the cache and the host's own credential (host.json) live here.",
        f"{off(s.work_dir)}work_dir = {_q(s.work_dir or '')}",
        "",
        "# How many jobs run at once: the cores the grid may use (commented out: all of them).",
        f"{off(s.slots)}slots = {s.slots or 1}",
        "",
        "# The most memory (address space) a job that does not say what it needs may take.",
        f"memory_limit = {_q(format_size(s.memory_limit))}",
        "",
        "# Disk for the cache of applications and input files (least recently used go first).",
        f"cache_size = {_q(format_size(s.cache_size))}",
        "",
        '# Take new jobs only in this hour window, e.g. "* 20-7" = 20:00 to 07:00; "" = always.',
        f"activation = {_q(format_window(s.activation))}",
        "",
        '# Job sandbox: "auto" (bubblewrap if it works here), "bwrap" (never without it), "none".',
        f"sandbox = {_q(s.sandbox)}",
        "# Without a working bubblewrap, run jobs anyway with rlimits only (they then see this machine's",
        "# network and whatever its files let everyone read). false: the worker refuses to start.",
        f"allow_unsandboxed_jobs = {'true' if s.allow_unsandboxed_jobs else 'false'}",
        "",
        "# Step aside when the machine's owner is busy: when programs other than the grid's jobs use more",
        "# than busy_threshold percent of all cores for busy_after seconds, the jobs are suspended and no",
        "# new ones are taken; they go on once that load has stayed at or below it for calm_after seconds.",
        "# Time spent suspended does not count against a job's wallclock limit. 0 = never pause.",
        f"busy_threshold = {_num(s.busy_threshold)}",
        f"busy_after = {_num(s.busy_after)}",
        f"calm_after = {_num(s.calm_after)}",
        "",
        '# Run only the jobs of this usergroup ("" = any).',
        f"project = {_q(s.project or '')}",
    ]
    return "\n".join(lines) + "\n"
