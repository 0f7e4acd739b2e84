"""common.rights: parsing and formatting Unix-style modes, and the XWHEP spellings."""

from __future__ import annotations

import itertools

import pytest

from common.rights import (
    GROUP,
    MAX_MODE,
    PRIVATE,
    PUBLIC,
    STICKY,
    Perm,
    Scope,
    format_mode,
    has,
    parse_mode,
)


def test_constants() -> None:
    assert (PRIVATE, GROUP, PUBLIC) == (0o700, 0o750, 0o755)
    assert STICKY == 0o1000 == 512
    assert MAX_MODE == 0o1777 == 1023


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("755", 0o755),
        ("0755", 0o755),
        ("0o755", 0o755),
        ("0O755", 0o755),
        ("0x755", 0o755),
        ("0X755", 0o755),
        ("1755", 0o1755),
        ("01755", 0o1755),
        ("0x1755", 0o1755),
        ("0o1755", 0o1755),
        ("700", 0o700),
        ("0x700", 0o700),
        ("750", 0o750),
        ("711", 0o711),
        ("0704", 0o704),
        ("070", 0o070),
        ("7", 0o007),
        ("0", 0),
        ("0000", 0),
        ("1000", STICKY),
        ("1777", MAX_MODE),
        ("  0x644\n", 0o644),
    ],
)
def test_parse_numeric(text: str, expected: int) -> None:
    assert parse_mode(text) == expected


@pytest.mark.parametrize("text", ["755", "0755", "0o755", "0x755", "0X755"])
def test_xwhep_decimal_bug_not_reproduced(text: str) -> None:
    """XWHEP read '0x755' as hex or the digits as decimal; here they are always octal digits."""
    mode = parse_mode(text)
    assert mode == 0o755 == 493
    assert mode != 755  # decimal reading
    assert mode != 0x755  # hexadecimal reading (1877)


@pytest.mark.parametrize(
    ("text", "current", "expected"),
    [
        ("go+rx", 0o700, 0o755),
        ("go+rx", 0, 0o055),
        ("u=rwx,go=rx", 0, 0o755),
        ("u=rwx,g=rx,o=", 0o777, 0o750),
        ("a+r", 0, 0o444),
        ("+x", 0, 0o111),  # no 'who' means all
        ("a=rwx", 0, 0o777),
        ("ugo+w", 0o444, 0o666),
        ("o-r", 0o755, 0o751),
        ("go-rwx", 0o777, 0o700),
        ("-w", 0o777, 0o555),
        ("u-x", 0, 0),
        ("g=r", 0o777, 0o747),
        ("o=", 0o757, 0o750),
        ("u+", 0o640, 0o640),
        ("+t", 0o755, 0o1755),
        ("o+t", 0o700, 0o1700),
        ("a-t", 0o1755, 0o755),
        ("u=rwx,+t", 0, 0o1700),
        ("u=rwx", 0o1055, 0o1755),  # '=' on the owner keeps the sticky bit
        ("go+rx,o-x", 0o700, 0o754),  # clauses apply left to right
        ("ug+rw,ug-w", 0, 0o440),
        ("ug=x,a+r", 0o007, 0o557),
        (" go+rx ", 0o700, 0o755),
    ],
)
def test_parse_symbolic(text: str, current: int, expected: int) -> None:
    assert parse_mode(text, current) == expected


def test_symbolic_default_current_is_zero() -> None:
    assert parse_mode("u+rwx") == 0o700
    assert parse_mode("go+rx") == 0o055


def test_numeric_ignores_current() -> None:
    assert parse_mode("700", current=0o1777) == 0o700


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "999",
        "8",
        "0x758",
        "0o8",
        "0x",
        "0o",
        "zz",
        "u+q",
        "12345",
        "0x12345",
        "ug",
        "rwx",
        "u+r,,g+r",
        "u+r,",
        "x+r",
        "u*r",
        "-755",
        "7.5",
    ],
)
def test_parse_invalid(text: str) -> None:
    with pytest.raises(ValueError):
        parse_mode(text)


@pytest.mark.parametrize("text", ["2755", "4755", "7777", "0x2755", "0o4000", "06000"])
def test_numeric_mode_never_exceeds_max(text: str) -> None:
    """Only rwx triplets and the sticky bit exist: a mode above MAX_MODE must be refused or masked."""
    try:
        mode = parse_mode(text)
    except ValueError:
        return
    assert mode & ~MAX_MODE == 0, f"parse_mode({text!r}) = {mode:o} has bits outside MAX_MODE"


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        (0o755, "0755"),
        (0o1755, "1755"),
        (0o700, "0700"),
        (0o7, "0007"),
        (0, "0000"),
        (STICKY, "1000"),
        (MAX_MODE, "1777"),
        (0o2755, "0755"),  # bits outside MAX_MODE are not shown
        (493, "0755"),
    ],
)
def test_format_mode(mode: int, expected: str) -> None:
    assert format_mode(mode) == expected


def test_format_parse_round_trip_every_mode() -> None:
    for mode in range(MAX_MODE + 1):
        text = format_mode(mode)
        assert len(text) == 4
        assert parse_mode(text) == mode
        assert parse_mode("0x" + text) == mode
        assert parse_mode("0o" + text) == mode
        assert format_mode(parse_mode(text)) == text


def test_symbolic_matches_numeric_for_every_triplet() -> None:
    letters = {4: "r", 2: "w", 1: "x"}
    for u, g, o in itertools.product(range(8), repeat=3):
        spell = ",".join(
            f"{who}=" + "".join(ch for bit, ch in letters.items() if digit & bit)
            for who, digit in (("u", u), ("g", g), ("o", o))
        )
        assert parse_mode(spell, current=0o777) == u * 64 + g * 8 + o, spell


def test_has_every_mode_scope_perm() -> None:
    """has() against an oracle that reads the octal digits of the mode as text."""
    digit_index = {Scope.OWNER: 1, Scope.GROUP: 2, Scope.OTHER: 3}
    for mode in range(MAX_MODE + 1):
        digits = f"{mode:04o}"
        for scope, perm in itertools.product(Scope, Perm):
            expected = bool(int(digits[digit_index[scope]]) & int(perm))
            assert has(mode, scope, perm) is expected, (oct(mode), scope, perm)


@pytest.mark.parametrize(
    ("mode", "scope", "perm", "expected"),
    [
        (0o750, Scope.GROUP, Perm.READ, True),
        (0o750, Scope.GROUP, Perm.WRITE, False),
        (0o750, Scope.OTHER, Perm.READ, False),
        (0o704, Scope.OTHER, Perm.READ, True),
        (0o704, Scope.GROUP, Perm.READ, False),
        (0o070, Scope.OWNER, Perm.READ, False),
        (0o1000, Scope.OTHER, Perm.EXECUTE, False),
        (0o100, Scope.OWNER, Perm.EXECUTE, True),
    ],
)
def test_has_examples(mode: int, scope: Scope, perm: Perm, expected: bool) -> None:
    assert has(mode, scope, perm) is expected
