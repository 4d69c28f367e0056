"""open_store picks the engine from a path or URL, and refuses what names none."""

from __future__ import annotations

from pathlib import Path

import pytest

from aegis.errors import ConfigurationError
from aegis.stores import open_store, sqlite_path
from aegis.stores.memory import MemoryStore
from aegis.stores.sqlite.audit import SQLiteAuditStore


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("audit.db", "audit.db"),
        ("sqlite:///audit.db", "audit.db"),
        ("sqlite:////var/lib/aegis/audit.db", "/var/lib/aegis/audit.db"),
        ("sqlite:///", ":memory:"),
        (":memory:", ":memory:"),
    ],
)
def test_paths_and_sqlite_urls_give_the_file(url: str, path: str) -> None:
    """A plain path and sqlite:/// URLs name the same SQLite file."""
    assert sqlite_path(url) == path
    store = open_store(url)
    assert isinstance(store, SQLiteAuditStore)
    assert store.url == path


def test_a_path_object_opens_sqlite(tmp_path: Path) -> None:
    """A pathlib.Path is a SQLite file, created on first use."""
    store = open_store(tmp_path / "a.db")
    store.check()
    assert (tmp_path / "a.db").exists()
    store.close()


def test_memory_gives_the_memory_store() -> None:
    """memory:// is the in-memory store, a fresh one each time."""
    first, second = open_store("memory://"), open_store("memory://")
    assert isinstance(first, MemoryStore)
    assert first is not second


@pytest.mark.parametrize("url", ["mysql://db/aegis", "sqlite:/audit.db", "sqlite://host/a.db", 42])
def test_a_url_naming_no_engine_is_a_configuration_error(url: object) -> None:
    """Another scheme, a malformed sqlite URL or a non-path is refused with the forms to use."""
    with pytest.raises(ConfigurationError):
        open_store(url)  # type: ignore[arg-type]  # the point of the test
