"""The worker settings file (worker.settings): it reads back what it writes, and mistakes are one line."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from worker.cli import main
from worker.settings import (
    SettingsError,
    WorkerSettings,
    format_size,
    load_settings,
    parse_size,
    render_settings,
)

FULL = WorkerSettings(
    credentials=Path("/etc/xwhep-worker/credentials.conf"),
    name="lab-pc-12",
    work_dir=Path("/var/lib/xwhep-worker"),
    slots=3,
    memory_limit=1536 << 20,
    cache_size=5 << 30,
    activation=(20, 7),
    sandbox="bwrap",
    allow_unsandboxed_jobs=True,
    busy_threshold=37.5,
    busy_after=15,
    calm_after=120,
    project="physics",
)


@pytest.mark.parametrize("settings", [FULL, WorkerSettings()], ids=["every-setting", "defaults"])
def test_settings_round_trip(tmp_path: Path, settings: WorkerSettings) -> None:
    path = tmp_path / "worker.toml"
    path.write_text(render_settings(settings, restart_hint="systemctl restart xwhep-worker"))
    assert load_settings(path) == settings


def test_rendered_file_explains_itself(tmp_path: Path) -> None:
    text = render_settings(FULL, restart_hint="systemctl restart xwhep-worker")
    assert "systemctl restart xwhep-worker" in text
    settings_lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    comments = [line for line in text.splitlines() if line.startswith("#")]
    assert len(settings_lines) == 13 and len(comments) > len(settings_lines)
    assert 'memory_limit = "1536M"' in text and 'activation = "* 20-7"' in text


def test_relative_paths_are_relative_to_the_file(tmp_path: Path) -> None:
    path = tmp_path / "conf" / "worker.toml"
    path.parent.mkdir()
    path.write_text('credentials = "client.conf"\nwork_dir = "../work"\n')
    loaded = load_settings(path)
    assert loaded.credentials == tmp_path / "conf" / "client.conf"
    assert loaded.work_dir == tmp_path / "conf" / ".." / "work"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("slots = 0", "slots = 0: expected a whole number from 1 to 1024"),
        ('slots = "4"', 'slots = "4": expected a whole number'),
        ('cache_size = "lots"', 'cache_size = "lots": expected a size such as 512M or 2G'),
        ("memory_limit = -5", "memory_limit = -5: expected a size"),
        ('activation = "evenings"', "activation = \"evenings\": expected an hour window such as '* 20-7'"),
        ('sandbox = "docker"', 'sandbox = "docker": expected one of auto, bwrap, none'),
        ('allow_unsandboxed_jobs = "yes"', 'allow_unsandboxed_jobs = "yes": expected true or false'),
        ("busy_threshold = 150", "busy_threshold = 150: expected a percentage from 0 (never pause) to 100"),
        ("calm_after = 0", "calm_after = 0: expected a number of seconds"),
        ("colour = 'blue'", "unknown setting 'colour' (known: credentials, name,"),
        ("slots = ", "cannot read settings"),
    ],
)
def test_bad_values_are_one_line_errors(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "worker.toml"
    path.write_text(text + "\n")
    with pytest.raises(SettingsError) as info:
        load_settings(path)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="does not exist"):
        load_settings(tmp_path / "nope.toml")


@pytest.mark.parametrize("size", [1, 1000, 1 << 10, 1536 << 20, 2 << 30, 3 << 40, (5 << 30) + 1])
def test_sizes_round_trip(size: int) -> None:
    assert parse_size(format_size(size)) == size


def test_xwworker_reads_the_file_and_options_win(tmp_path: Path) -> None:
    settings = tmp_path / "worker.toml"
    settings.write_text('credentials = "from-file.conf"\n')
    runner = CliRunner()
    from_file = runner.invoke(main, ["--settings", str(settings)])
    assert from_file.exit_code == 1
    assert f"config file {tmp_path / 'from-file.conf'} does not exist" in from_file.output
    overridden = runner.invoke(main, ["--settings", str(settings), "--xwconfig", str(tmp_path / "cli.conf")])
    assert overridden.exit_code == 1
    assert f"config file {tmp_path / 'cli.conf'} does not exist" in overridden.output


def test_xwworker_with_a_bad_settings_file_says_so_in_one_line(tmp_path: Path) -> None:
    settings = tmp_path / "worker.toml"
    settings.write_text("slots = 0\n")
    result = CliRunner().invoke(main, ["--settings", str(settings)])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        f"Error: {settings}: slots = 0: expected a whole number from 1 to 1024"
    ]
