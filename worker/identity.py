"""The host's own credential, kept in the work directory so a restarted worker is the same host.

An account (the shared worker login, or a volunteer's own) only enrols; the server then answers a
credential for this host alone, which the worker stores here (0600) and speaks with from then on.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from common.config import write_private

logger = logging.getLogger(__name__)

FILE_NAME = "host.json"


@dataclass(frozen=True)
class SavedHost:
    """What a previous enrolment left: which host this is, on which server, and its credential."""

    host_uid: str
    credential: str
    server: str


def path_in(work_dir: Path) -> Path:
    return work_dir / FILE_NAME


def load(work_dir: Path) -> SavedHost | None:
    """The saved credential, or None (absent or unreadable: the worker then enrols as a new host)."""
    path = path_in(work_dir)
    try:
        doc = json.loads(path.read_text())
        return SavedHost(str(doc["host"]), str(doc["credential"]), str(doc.get("server", "")))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        logger.warning("ignoring unreadable host credential file %s: %s", path, exc)
        return None


def save(work_dir: Path, saved: SavedHost) -> None:
    """Store the credential (0600, written atomically)."""
    doc = {"host": saved.host_uid, "credential": saved.credential, "server": saved.server}
    write_private(path_in(work_dir), json.dumps(doc, indent=2) + "\n")
