"""Result validation without a server (server/validation): a result's content and canonical digest, the
built-in comparators, and plug-in comparators found through entry points (the shipped one and one of a
distribution written here)."""

from __future__ import annotations

import io
import logging
import sys
import textwrap
import zipfile
from collections.abc import Iterator
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from common.schemas import Validation
from server.validation import comparators, examples
from server.validation import digest as digest_module
from server.validation.comparators import Verdict, bitwise, compare, load, tolerance
from server.validation.digest import ResultContent, canonical_digest, read_result

OPTIONS = Validation()  # rel_tol 1e-6, abs_tol 1e-9
FILES = {"stdout": b"hello\n", "out/data.csv": b"x,y\n1,2.5\n", "empty": b"", "bin": bytes(range(256))}


@pytest.fixture(autouse=True)
def _fresh_plugins() -> Iterator[None]:
    comparators.clear_cache()
    yield
    comparators.clear_cache()
    for name in [m for m in sys.modules if m.startswith("acme_")]:
        del sys.modules[name]


def make_zip(
    members: list[tuple[str, bytes]],
    *,
    compression: int = zipfile.ZIP_DEFLATED,
    date_time: tuple[int, int, int, int, int, int] = (2024, 1, 2, 3, 4, 6),
    mode: int = 0o644,
) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members:
            info = zipfile.ZipInfo(name, date_time=date_time)
            info.compress_type = compression
            info.external_attr = ((0o040000 if name.endswith("/") else 0o100000) | mode) << 16
            zf.writestr(info, data)
    return buf.getvalue()


def content(files: dict[str, bytes], return_code: int | None = 0) -> ResultContent:
    return ResultContent(files, return_code)


def text(body: str, return_code: int | None = 0, name: str = "out.txt") -> ResultContent:
    return ResultContent({name: body.encode()}, return_code)


# --- reading a result and its digest -----------------------------------------------------------------


def test_the_digest_ignores_how_the_files_were_zipped() -> None:
    one = make_zip(list(FILES.items()))
    other = make_zip(
        [("out/", b""), *reversed(FILES.items())],
        compression=zipfile.ZIP_STORED,
        date_time=(1999, 12, 31, 23, 59, 58),
        mode=0o755,
    )
    assert one != other
    a, b = read_result(one), read_result(other)
    assert a == b == FILES
    assert ResultContent(a, 0).digest == ResultContent(b, 0).digest == canonical_digest(FILES, 0)


@pytest.mark.parametrize(
    "changed",
    [
        {**FILES, "stdout": b"hellp\n"},  # one byte
        {**FILES, "stdout": b"hello\n\n"},  # one byte more
        {("STDOUT" if k == "stdout" else k): v for k, v in FILES.items()},  # a name
        {**FILES, "empty2": b""},  # an extra empty file
        {k: v for k, v in FILES.items() if k != "empty"},  # an empty file less
    ],
)
def test_any_change_of_the_files_changes_the_digest(changed: dict[str, bytes]) -> None:
    assert canonical_digest(changed, 0) != canonical_digest(FILES, 0)


def test_the_return_code_is_part_of_the_digest() -> None:
    digests = {canonical_digest(FILES, rc) for rc in (0, 1, -1, 255, None)}
    assert len(digests) == 5


def test_the_digest_encoding_is_unambiguous() -> None:
    assert canonical_digest({"a": b"bc"}, 0) != canonical_digest({"ab": b"c"}, 0)
    assert canonical_digest({"a": b"", "b": b""}, 0) != canonical_digest({"a": b"b"}, 0)
    assert canonical_digest({}, 0) != canonical_digest({"": b""}, 0)


def test_result_content_is_a_read_only_copy_with_a_cached_digest() -> None:
    files = dict(FILES)
    result = ResultContent(files, 0)
    digest = result.digest
    files["stdout"] = b"changed"
    assert result.files["stdout"] == b"hello\n" and result.digest == digest
    with pytest.raises(TypeError):
        result.files["stdout"] = b"changed"  # type: ignore[index]


def test_names_are_normalised_and_directories_skipped() -> None:
    raw = make_zip([("out/", b""), ("out\\a.txt", b"a"), ("./b.txt", b"b"), ("c//d.txt", b"d")])
    assert read_result(raw) == {"out/a.txt": b"a", "b.txt": b"b", "c/d.txt": b"d"}


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"", "not a valid result zip"),
        (b"PK\x03\x04 certainly not a zip", "not a valid result zip"),
        (make_zip([("../x", b"x")]), "'..'"),
        (make_zip([("out/../../x", b"x")]), "'..'"),
        (make_zip([("/etc/passwd", b"x")]), "absolute"),
        (make_zip([("C:/x", b"x")]), "absolute"),
        (make_zip([("a", b"1"), ("./a", b"2")]), "twice"),
    ],
)
def test_unsafe_or_broken_results_are_refused(raw: bytes, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        read_result(raw)


def test_a_symbolic_link_is_refused() -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        info = zipfile.ZipInfo("link")
        info.external_attr = (0o120000 | 0o777) << 16
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(ValueError, match="symbolic link"):
        read_result(buf.getvalue())


def test_too_many_members_are_refused() -> None:
    raw = make_zip([(f"f{i}", b"") for i in range(4)])
    assert len(read_result(raw, max_members=4)) == 4
    with pytest.raises(ValueError, match="too many members"):
        read_result(raw, max_members=3)


def test_a_declared_size_over_the_limit_is_refused_before_reading() -> None:
    raw = make_zip([("a", b"\0" * 600), ("b", b"\0" * 600)])
    assert len(read_result(raw, max_bytes=1200)) == 2
    with pytest.raises(ValueError, match="unpacks to 1200 bytes"):
        read_result(raw, max_bytes=1199)


def test_a_member_unpacking_past_its_declared_size_is_refused() -> None:
    raw = bytearray(make_zip([("bomb", b"\0" * 1_000_000)]))
    central = raw.index(b"PK\x01\x02")
    raw[central + 24 : central + 28] = (10).to_bytes(4, "little")  # declares 10 bytes unpacked
    with pytest.raises(ValueError, match="not a valid result zip"):
        read_result(bytes(raw), max_bytes=1000)


def test_bytes_are_counted_while_reading_whatever_is_declared() -> None:
    with zipfile.ZipFile(io.BytesIO(make_zip([("a", b"x" * 5000)]))) as zf:
        (info,) = zf.infolist()
        assert digest_module._read_member(zf, info, 5000) == b"x" * 5000
        with pytest.raises(ValueError, match="past the size limit"):
            digest_module._read_member(zf, info, 4999)


# --- bitwise -----------------------------------------------------------------------------------------


def test_bitwise() -> None:
    same = content(read_result(make_zip(list(FILES.items()), compression=zipfile.ZIP_STORED)))
    assert bitwise(content(FILES), same, OPTIONS) is Verdict.VALID
    assert bitwise(content(FILES), content(FILES, 1), OPTIONS) is Verdict.INVALID
    assert bitwise(content(FILES), content({**FILES, "stdout": b"hello \n"}), OPTIONS) is Verdict.INVALID
    assert bitwise(text("1.0"), text("1.000000001"), OPTIONS) is Verdict.INVALID


# --- tolerance ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("1.0\n", "1.000000001\n"),
        ("x,y,z\n1.0,2.5e-3,-3.5E+02\n", "x,y,z\n1.000000001,2.5000000025e-3,-3.50000000035E+02\n"),
        ("energy = 3.14159 eV\n", "energy = 3.14159000314 eV\n"),
        (".5 +7 1e-9", "0.5000000005 7.000000007 1.000000001e-9"),
        ("1.0   2.0\t3.0\n", "1.0 2.0  3.0\n"),  # columns with other spacing
        ("a 1.0\r\nb 2.0\r\n", "a 1.0\nb 2.0\n"),  # line endings
        ("x = 0.0", "x = 1e-12"),  # near zero: abs_tol
        ("nan inf -inf", "-nan inf -inf"),
        ("version 2024-01-05", "version 2024-01-05"),
    ],
)
def test_tolerance_accepts_noise_within_the_tolerances(a: str, b: str) -> None:
    assert tolerance(text(a), text(b), OPTIONS) is Verdict.VALID


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("1.0\n", "1.001\n"),
        ("x,y\n1.0,2.5e-3\n", "x,y\n1.0,2.5025e-3\n"),
        ("energy = 3.14159 eV\n", "energy = 3.14473 eV\n"),
        ("energy = 3.14159 eV\n", "energy = 3.14159 keV\n"),  # a changed word
        ("energy = 3.14159 eV\n", "Energy = 3.14159 eV\n"),
        ("a 1 2\n", "a 1\n"),  # a missing number
        ("a 1 2\n", "a 1 b\n"),
        ("a 1\n", "a1\n"),  # space against none
        ("1,2\n", "1;2\n"),
        ("x = 0.0", "x = 1e-6"),  # beyond abs_tol, and relatively far
        ("nan", "1.0"),
        ("inf", "-inf"),
        ("inf", "1e308"),
        ("1e400", "2e400"),  # overflowing literals are not both infinity
        ("version 2024-01-05", "version 2024-01-06"),
    ],
)
def test_tolerance_refuses_real_differences(a: str, b: str) -> None:
    assert tolerance(text(a), text(b), OPTIONS) is Verdict.INVALID


def test_tolerance_settings_come_from_the_options() -> None:
    assert tolerance(text("0.0"), text("1e-12"), Validation(abs_tol=0)) is Verdict.INVALID
    assert tolerance(text("1.0"), text("1.001"), Validation(rel_tol=1e-2)) is Verdict.VALID
    assert tolerance(text("100"), text("100.5"), Validation(rel_tol=0, abs_tol=1)) is Verdict.VALID


def test_tolerance_compares_json_structurally() -> None:
    a = b'{"a": 1.0, "b": [1, 2.5, {"c": "s", "d": null, "e": true}]}'
    noisy = b'{"b": [1, 2.5000000025, {"e": true, "d": null, "c": "s"}], "a": 1.000000001}'
    assert tolerance(content({"r.json": a}), content({"r.json": noisy}), OPTIONS) is Verdict.VALID
    for other in [
        b'{"a": 1.001, "b": [1, 2.5, {"c": "s", "d": null, "e": true}]}',  # 1e-3 noise
        b'{"a": 1.0, "b": [1, 2.5, {"c": "t", "d": null, "e": true}]}',  # a string
        b'{"a": 1.0, "b": [1, 2.5, {"c": "s", "d": null, "e": 1}]}',  # a bool is not a number
        b'{"a": 1.0, "b": [1, 2.5, {"c": "s", "d": null}]}',  # a key less
        b'{"a": 1.0, "b": [1, 2.5, {"c": "s", "d": null, "e": true}, 3]}',  # an item more
        b'{"a": 1.0, "b": [1, 2.5, {"c": "s", "d": 0, "e": true}]}',  # null against a number
    ]:
        assert tolerance(content({"r.json": a}), content({"r.json": other}), OPTIONS) is Verdict.INVALID


def test_json_edge_cases() -> None:
    def verdict(x: bytes, y: bytes) -> Verdict:
        return tolerance(content({"r.json": x}), content({"r.json": y}), OPTIONS)

    big = str(10**300).encode()
    assert verdict(b"[" + big + b"]", b"[" + big + b"]") is Verdict.VALID
    assert verdict(b"[1e400]", b"[2e400]") is Verdict.INVALID
    assert verdict(b"[NaN, Infinity]", b"[NaN, Infinity]") is Verdict.VALID
    assert verdict(b"[NaN]", b"[0]") is Verdict.INVALID
    deep = b"[" * 5000 + b"1.0" + b"]" * 5000  # too deep for json: compared as text
    assert verdict(deep, deep.replace(b"1.0", b"1.000000001")) is Verdict.VALID
    nested = b"[" * 500 + b"1.0" + b"]" * 500  # parsed, compared without recursion
    assert verdict(nested, nested.replace(b"1.0", b"1.000000001")) is Verdict.VALID
    assert verdict(b'{"a": 1.0}', b'{"a": 1.0') is Verdict.INVALID  # one side is not JSON


def test_tolerance_needs_the_same_return_code_and_files() -> None:
    files = {"a.txt": b"1.0", "b.txt": b"2.0"}
    assert tolerance(content(files), content(files), OPTIONS) is Verdict.VALID
    assert tolerance(content(files, 0), content(files, 1), OPTIONS) is Verdict.INVALID
    assert tolerance(content(files, 0), content(files, None), OPTIONS) is Verdict.INVALID
    assert tolerance(content(files), content({"a.txt": b"1.0"}), OPTIONS) is Verdict.INVALID
    assert tolerance(content(files), content({**files, "c.txt": b""}), OPTIONS) is Verdict.INVALID


def test_tolerance_compares_binary_files_bytewise() -> None:
    blob = b"\xff\xfe\x00" + b"1.0"
    assert tolerance(content({"f": blob}), content({"f": blob}), OPTIONS) is Verdict.VALID
    noisy = b"\xff\xfe\x00" + b"1.000000001"
    assert tolerance(content({"f": blob}), content({"f": noisy}), OPTIONS) is Verdict.INVALID
    assert tolerance(content({"f": b"1.0"}), content({"f": blob}), OPTIONS) is Verdict.INVALID


def test_differing_files_too_large_to_compare_are_invalid(monkeypatch: pytest.MonkeyPatch) -> None:
    """Padding a file past the limit must not buy an undecided verdict (and keep a liar's trust)."""
    monkeypatch.setattr(comparators, "MAX_TEXT_BYTES", 16)
    big, noisy = b"x = 1.0 " * 4, b"x = 1.000000001 " * 4
    assert tolerance(content({"f": big}), content({"f": big}), OPTIONS) is Verdict.VALID  # identical
    assert tolerance(content({"f": big}), content({"f": noisy}), OPTIONS) is Verdict.INVALID
    assert tolerance(content({"f": big + b"\xff"}), content({"f": noisy}), OPTIONS) is Verdict.INVALID


# --- loading comparators -----------------------------------------------------------------------------


def test_built_ins() -> None:
    assert load("bitwise") is bitwise
    assert load("tolerance") is tolerance
    assert comparators.available()[:2] == ["bitwise", "tolerance"]


def test_the_shipped_example_is_an_installed_entry_point() -> None:
    (ep,) = [ep for ep in entry_points(group=comparators.GROUP) if ep.name == "sorted-lines"]
    assert ep.value == "server.validation.examples:sorted_lines"
    assert ep.dist is not None and ep.dist.name == "xwhep"
    assert "sorted-lines" in comparators.available()
    cmp = load("sorted-lines")
    assert cmp is examples.sorted_lines and load("sorted-lines") is cmp
    a = content({"out.txt": b"b 2\na 1\nc 3\n", "bin": b"\x00\xff"})
    assert compare(cmp, a, content({"out.txt": b"a 1\nc 3\nb 2\n", "bin": b"\x00\xff"}), OPTIONS) == "valid"
    assert compare(cmp, a, content({"out.txt": b"a 1\nc 3\nb 2\nb 2\n", "bin": b"\x00\xff"}), OPTIONS) == (
        "invalid"
    )
    assert compare(cmp, a, content({"out.txt": b"b 2\na 1\nc 3\n", "bin": b"\xff\x00"}), OPTIONS) == "invalid"
    assert compare(cmp, a, content(dict(a.files), 1), OPTIONS) == "invalid"
    assert compare(cmp, a, content({"out.txt": b"b 2\na 1\nc 3\n"}), OPTIONS) == "invalid"


def install_distribution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, entries: str, module: str) -> None:
    """A distribution acme-cmp on sys.path: its metadata, entry points ``entries`` and module acme_cmp."""
    dist = tmp_path / "acme_cmp-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-cmp\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(f"[xwhep.comparators]\n{textwrap.dedent(entries)}")
    (tmp_path / "acme_cmp.py").write_text(textwrap.dedent(module))
    monkeypatch.syspath_prepend(str(tmp_path))
    comparators.clear_cache()


ACME = """
    from server.validation.comparators import Verdict

    calls = []


    def compare(a, b, options):
        calls.append((a, b, options))
        if a.return_code != b.return_code:
            return "invalid"
        return a.files.keys() == b.files.keys()

    NOT_CALLABLE = 42
"""


def test_a_comparator_from_another_distribution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    install_distribution(tmp_path, monkeypatch, "acme = acme_cmp:compare\n", ACME)
    assert "acme" in comparators.available()
    cmp = load("acme")
    module = sys.modules["acme_cmp"]
    assert cmp is module.compare
    assert load("acme") is cmp  # cached
    a, b = content({"x": b"1"}), content({"x": b"2"})
    assert compare(cmp, a, b, OPTIONS) is Verdict.VALID  # True
    assert compare(cmp, a, content({"y": b"1"}), OPTIONS) is Verdict.INVALID  # False
    assert compare(cmp, a, content({"x": b"1"}, 3), OPTIONS) is Verdict.INVALID  # "invalid"
    assert module.calls[0] == (a, b, OPTIONS)
    monkeypatch.undo()  # the distribution is gone, the loaded comparator stays until the cache is cleared
    assert load("acme") is cmp
    comparators.clear_cache()
    with pytest.raises(ValueError, match="unknown comparator 'acme'"):
        load("acme")


def test_an_unknown_name_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match="unknown comparator 'nope'") as err:
        load("nope")
    assert "bitwise" in str(err.value) and "tolerance" in str(err.value) and "sorted-lines" in str(err.value)


@pytest.mark.parametrize(
    ("entry", "reason"),
    [
        ("acme = acme_missing:compare", "cannot be loaded: ModuleNotFoundError"),
        ("acme = acme_cmp:absent", "cannot be loaded: AttributeError"),
        ("acme = acme_cmp:NOT_CALLABLE", "is not callable"),
    ],
)
def test_a_broken_entry_point_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, entry: str, reason: str
) -> None:
    install_distribution(tmp_path, monkeypatch, entry + "\n", ACME)
    with pytest.raises(ValueError, match=reason):
        load("acme")


def test_a_plugin_failing_on_import_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    install_distribution(tmp_path, monkeypatch, "acme = acme_cmp:compare\n", "raise RuntimeError('boom')\n")
    with pytest.raises(ValueError, match="cannot be loaded: RuntimeError: boom"):
        load("acme")


# --- calling comparators -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("outcome", "expected"),
    [
        (Verdict.VALID, Verdict.VALID),
        (Verdict.INCONCLUSIVE, Verdict.INCONCLUSIVE),
        ("valid", Verdict.VALID),
        ("invalid", Verdict.INVALID),
        ("inconclusive", Verdict.INCONCLUSIVE),
        (True, Verdict.VALID),
        (False, Verdict.INVALID),
    ],
)
def test_compare_maps_what_a_plugin_returns(outcome: object, expected: Verdict) -> None:
    verdict = compare(lambda a, b, o: outcome, text("1"), text("1"), OPTIONS)  # type: ignore[arg-type]
    assert verdict is expected


@pytest.mark.parametrize("outcome", [None, 1, 0, "VALID", "yes", b"valid", 1.0, [Verdict.VALID]])
def test_compare_makes_anything_else_inconclusive(outcome: object, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger=comparators.__name__):
        verdict = compare(lambda a, b, o: outcome, text("1"), text("1"), OPTIONS)  # type: ignore[arg-type]
    assert verdict is Verdict.INCONCLUSIVE
    assert any("not a verdict" in r.getMessage() for r in caplog.records)


def test_compare_turns_an_exception_into_inconclusive(caplog: pytest.LogCaptureFixture) -> None:
    def broken(a: ResultContent, b: ResultContent, options: Validation) -> Verdict:
        raise ZeroDivisionError("oops")

    with caplog.at_level(logging.WARNING, logger=comparators.__name__):
        assert compare(broken, text("1"), text("1"), OPTIONS) is Verdict.INCONCLUSIVE
    (record,) = [r for r in caplog.records if r.name == comparators.__name__]
    assert "broken" in record.getMessage() and record.exc_info is not None


def test_compare_with_the_built_ins() -> None:
    assert compare(load("tolerance"), text("1.0"), text("1.000000001"), OPTIONS) is Verdict.VALID
    assert compare(load("bitwise"), text("1.0"), text("1.000000001"), OPTIONS) is Verdict.INVALID
