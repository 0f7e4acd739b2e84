"""The sign-in cache file: private modes, atomic writes, refusal of an open or corrupt cache."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from client.tokencache import CachedLogin, TokenCache, TokenCacheError

A, B = "https://a.grid.test:4321", "https://b.grid.test:4321"


def entry(login: str = "alice", token: str = "xw-token", refresh: str | None = "rt-1") -> CachedLogin:
    return CachedLogin(
        provider="idp",
        issuer="https://idp.test",
        client_id="xwhep-cli",
        scopes=("openid", "offline_access"),
        login=login,
        refresh_token=refresh,
        access_token=token,
        expires_at=1_900_000_000.0,
    )


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_new_cache_is_0600_in_a_0700_directory(tmp_path: Path) -> None:
    cache = TokenCache(tmp_path / "deep" / "xwhep" / "tokens.json")
    cache.put(A, entry())
    assert mode(cache.path) == 0o600
    assert mode(cache.path.parent) == 0o700
    assert cache.get(A) == entry()


def test_entries_are_kept_per_server(tmp_path: Path) -> None:
    cache = TokenCache(tmp_path / "tokens.json")
    cache.put(A, entry("alice", "token-a"))
    cache.put(B, entry("bob", "token-b", refresh=None))
    assert cache.get(A) == entry("alice", "token-a")
    assert cache.get(B) == entry("bob", "token-b", refresh=None)
    assert cache.get("https://c.grid.test") is None
    assert cache.remove(A) == entry("alice", "token-a")
    assert cache.remove(A) is None
    assert cache.get(A) is None and cache.get(B) is not None


def test_a_write_replaces_the_file_whole_or_not_at_all(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = TokenCache(tmp_path / "tokens.json")
    cache.put(A, entry(token="old"))
    before = cache.path.read_bytes()
    inode = cache.path.stat().st_ino

    def broken_dump(doc: object, fh: object, **kwargs: object) -> None:
        fh.write('{"version": 1, "logins": {"half')  # type: ignore[attr-defined]
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(json, "dump", broken_dump)
    with pytest.raises(OSError, match="No space"):
        cache.put(A, entry(token="new"))
    monkeypatch.undo()
    assert cache.path.read_bytes() == before and cache.path.stat().st_ino == inode
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tokens.json", "tokens.json.lock"]  # no leftovers
    cache.put(A, entry(token="new"))
    assert cache.path.stat().st_ino != inode  # a new file renamed over the old one
    assert cache.get(A) == entry(token="new")


@pytest.mark.parametrize("loose", [0o640, 0o604, 0o660])
def test_a_cache_others_can_read_is_refused(tmp_path: Path, loose: int) -> None:
    cache = TokenCache(tmp_path / "tokens.json")
    cache.put(A, entry())
    cache.path.chmod(loose)
    with pytest.raises(TokenCacheError) as caught:
        cache.get(A)
    assert f"chmod 600 {cache.path}" in caught.value.args[0]
    with pytest.raises(TokenCacheError):
        cache.put(B, entry())  # not overwritten either
    assert mode(cache.path) == loose


def test_a_cache_in_a_directory_others_may_write_is_refused(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(TokenCacheError, match="writable by other users"):
        TokenCache(shared / "tokens.json").put(A, entry())
    assert not (shared / "tokens.json").exists()


def test_a_symlinked_cache_is_not_followed(tmp_path: Path) -> None:
    target = TokenCache(tmp_path / "real.json")
    target.put(A, entry())
    (tmp_path / "tokens.json").symlink_to(target.path)
    with pytest.raises(TokenCacheError, match="cannot open"):
        TokenCache(tmp_path / "tokens.json").get(A)


@pytest.mark.parametrize(
    "content",
    [
        b"{not json",
        b"[]",
        b'{"version": 99, "logins": {}}',
        b'{"version": 1, "logins": {"https://a": {"login": "alice"}}}',
        b'{"version": 1, "logins": {"https://a": 7}}',
    ],
)
def test_a_corrupt_cache_says_so_and_how_to_recover(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "tokens.json"
    path.write_bytes(content)
    path.chmod(0o600)
    with pytest.raises(TokenCacheError) as caught:
        TokenCache(path).get(A)
    message = caught.value.args[0]
    assert f"token cache {path} is corrupt" in message and "remove it and run xwlogin" in message
    assert "\n" not in message


def test_the_default_location(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XW_TOKEN_CACHE", str(tmp_path / "mine.json"))
    assert TokenCache.default().path == tmp_path / "mine.json"
    monkeypatch.delenv("XW_TOKEN_CACHE")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    assert TokenCache.default().path == tmp_path / "cfg" / "xwhep" / "tokens.json"
    monkeypatch.delenv("XDG_CONFIG_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert TokenCache.default().path == tmp_path / "home" / ".config" / "xwhep" / "tokens.json"


def test_freshness_is_measured_against_the_margin() -> None:
    e = entry()
    assert e.fresh(30, now=e.expires_at - 31)
    assert not e.fresh(30, now=e.expires_at - 29)
