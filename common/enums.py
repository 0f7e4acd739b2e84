"""Enumerations shared by server, client and worker (XWHEP names kept)."""

from __future__ import annotations

from enum import StrEnum


class UserRights(StrEnum):
    """A user's rights level, lowest to highest as XWHEP orders them."""

    WORKER_USER = "WORKER_USER"
    STANDARD_USER = "STANDARD_USER"
    ADVANCED_USER = "ADVANCED_USER"
    SUPER_USER = "SUPER_USER"


class JobStatus(StrEnum):
    """States of a job (XWHEP's StatusEnum subset that xwhep uses)."""

    UNAVAILABLE = "UNAVAILABLE"
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    WAITING = "WAITING"
    DATAREQUEST = "DATAREQUEST"
    REPLICATING = "REPLICATING"  # a validated job: its replicas run, no result is in yet
    VALIDATING = "VALIDATING"  # results are in and agree so far; waiting for the quorum
    INCONCLUSIVE = "INCONCLUSIVE"  # results are in but disagree: more replicas were started
    COMPLETED = "COMPLETED"
    ERROR = "ERROR"


class AttemptState(StrEnum):
    """How one run of a job on one host stands (a job can have had several)."""

    RUNNING = "RUNNING"  # claimed, running on its host
    UPLOADING = "UPLOADING"  # finished, its result upload pending (the job is DATAREQUEST)
    COMPLETED = "COMPLETED"  # its result was accepted
    FAILED = "FAILED"  # the host reported it failed
    LOST = "LOST"  # its host went silent, restarted, forgot it or was revoked
    ABORTED = "ABORTED"  # its host gave it back
    CANCELLED = "CANCELLED"  # the job was held, deleted or failed by someone else while it ran


class DataStatus(StrEnum):
    """Whether a data object's content has been uploaded."""

    UNAVAILABLE = "UNAVAILABLE"
    AVAILABLE = "AVAILABLE"


class AppType(StrEnum):
    """How an application runs: a per-platform binary or a portable script."""

    BINARY = "binary"
    SCRIPT = "script"

    @classmethod
    def parse(cls, text: str) -> AppType:
        """Parse a type name, accepting XWHEP's DEPLOYABLE as binary."""
        low = text.strip().lower()
        if low in ("deployable", "binary", "bin"):
            return cls.BINARY
        if low in ("script", "shared"):
            return cls.SCRIPT
        raise ValueError(f"unknown application type {text!r} (expected binary or script)")


class OS(StrEnum):
    """Operating systems a binary may target."""

    LINUX = "LINUX"
    MACOSX = "MACOSX"
    WIN32 = "WIN32"
    ANY = "ANY"

    @classmethod
    def parse(cls, text: str) -> OS:
        """Parse an OS name case-insensitively (macosx, linux, win32, any)."""
        up = text.strip().upper()
        aliases = {"MAC": "MACOSX", "DARWIN": "MACOSX", "WINDOWS": "WIN32", "WIN64": "WIN32"}
        up = aliases.get(up, up)
        try:
            return cls(up)
        except ValueError:
            raise ValueError(
                f"unknown OS {text!r} (expected one of {', '.join(o.value for o in cls)})"
            ) from None


class CPU(StrEnum):
    """CPU architectures a binary may target."""

    AMD64 = "AMD64"
    IX86 = "IX86"
    ARM64 = "ARM64"
    ARM = "ARM"
    PPC = "PPC"
    ANY = "ANY"

    @classmethod
    def parse(cls, text: str) -> CPU:
        """Parse a CPU name, accepting common spellings such as x86_64 and aarch64."""
        up = text.strip().upper()
        aliases = {
            "X86_64": "AMD64",
            "X86-64": "AMD64",
            "I386": "IX86",
            "I686": "IX86",
            "X86": "IX86",
            "AARCH64": "ARM64",
            "ARMV7L": "ARM",
            "PPC64": "PPC",
        }
        up = aliases.get(up, up)
        try:
            return cls(up)
        except ValueError:
            raise ValueError(
                f"unknown CPU {text!r} (expected one of {', '.join(c.value for c in cls)})"
            ) from None


class ObjectKind(StrEnum):
    """Kinds of stored objects; also the element names of the XML output format."""

    USER = "user"
    USERGROUP = "usergroup"
    APP = "app"
    DATA = "data"
    JOB = "work"
    HOST = "host"
