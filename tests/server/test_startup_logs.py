"""Starting a server says what it did, not alembic's routine notes on every start."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from server.db.engine import upgrade_sync


def test_alembic_logs_only_the_migrations_it_runs(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'fresh.db'}"
    with caplog.at_level(logging.INFO):
        upgrade_sync(url)
    first = [r.getMessage() for r in caplog.records if r.name.startswith("alembic")]
    assert any(m.startswith("Running upgrade") for m in first), first
    assert not any("Context impl" in m or "Will assume" in m for m in first), first

    caplog.clear()
    with caplog.at_level(logging.INFO):
        upgrade_sync(url)  # already at head: a second start is silent
    assert [r.getMessage() for r in caplog.records if r.name.startswith("alembic")] == []
