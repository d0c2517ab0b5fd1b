"""The store a server configuration names (`--store`): 'none', a file path (or sqlite:///path),
postgresql://... or redis://..."""

from __future__ import annotations

from pathlib import Path

from fusioncast.serve.store import Store
from fusioncast.serve.store_sql import SqlStore


def open_store(url: str | None, default_path: Path) -> Store | None:
    """The store a ServeConfig names: None for 'none'; SQLite at `default_path` for 'sqlite' (or no url)."""
    url = (url or "sqlite").strip()
    if url == "none":
        return None
    if url == "sqlite":
        url = str(default_path)
    if url.startswith(("redis://", "rediss://", "unix://")):
        from fusioncast.serve.store_redis import RedisStore

        return RedisStore(url)
    return SqlStore(url)
