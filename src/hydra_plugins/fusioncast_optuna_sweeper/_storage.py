"""Optuna storages from the sweeper's `storage` key, shared by the sweeper and the trials it launches.

- null: in memory (one process; lost at exit)
- an SQLAlchemy URL (`sqlite:///path.db`, `postgresql+psycopg://user:pw@host/db`, `mysql+pymysql://...`): an
  RDB storage, with heartbeats so that trials of a worker that died are failed and queued again
- any other string: a journal file (`JournalStorage` + `JournalFileBackend`: append-only, safe on NFS, no server)
- a mapping with `_target_`: instantiated as is (any `optuna.storages` class)
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import optuna
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

SQLITE = "sqlite:///"

# one storage object per configuration in a process: jobs run by the sweeper's own process (basic launcher)
# then see the same study, in-memory storage included
_opened: dict[str, optuna.storages.BaseStorage | None] = {}


def _stale_callback(max_retry: int | None):
    storages = optuna.storages
    if hasattr(storages, "RetryHeartbeatStaleTrialCallback"):  # its name from Optuna 5 on
        return "heartbeat_stale_trial_callback", storages.RetryHeartbeatStaleTrialCallback(max_retry=max_retry)
    return "failed_trial_callback", storages.RetryFailedTrialCallback(max_retry=max_retry)


def open_storage(storage: Any, heartbeat_interval: int | None = None, grace_period: int | None = None,
                 max_retry: int | None = 3) -> optuna.storages.BaseStorage | None:
    """The storage configured by `storage` (see the module docstring), opened once per process."""
    if isinstance(storage, DictConfig):
        storage = OmegaConf.to_container(storage, resolve=True)
    key = repr((storage, heartbeat_interval, grace_period, max_retry))
    if key in _opened:
        return _opened[key]
    if storage is None:
        opened = optuna.storages.InMemoryStorage()
    elif isinstance(storage, dict):
        opened = instantiate(storage)
    elif not isinstance(storage, str):
        raise ValueError(f"hydra.sweeper.storage: expected null, a URL, a journal file path or a _target_ mapping, "
                         f"got {storage!r}")
    elif "://" in storage:
        engine_kwargs: dict[str, Any] = {}
        if storage.startswith(SQLITE):
            path = storage[len(SQLITE):]
            if path and path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            # several processes write one file: wait for its lock rather than fail at SQLite's 5 s default
            engine_kwargs["connect_args"] = {"timeout": 60}
        kwargs: dict[str, Any] = {}
        if heartbeat_interval:
            name, callback = _stale_callback(max_retry)
            kwargs = {"heartbeat_interval": heartbeat_interval, "grace_period": grace_period, name: callback}
        opened = _rdb_storage(storage, engine_kwargs, kwargs)
    else:
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        Path(storage).parent.mkdir(parents=True, exist_ok=True)
        opened = JournalStorage(JournalFileBackend(storage))
    _opened[key] = opened
    return opened


def _rdb_storage(url: str, engine_kwargs: dict, kwargs: dict, attempts: int = 5):
    """Optuna's RDBStorage, retried when another worker creates the same tables at the same moment: Optuna
    creates its schema without a lock, so of two workers starting together on a new PostgreSQL database one
    can fail on a duplicate type or table that the other has just made (the retry then finds them)."""
    import sqlalchemy.exc

    for attempt in range(attempts - 1):
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, **kwargs)
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError):
            time.sleep(0.5 * (attempt + 1))
    return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, **kwargs)


def describe(storage: Any) -> str:
    """The storage for logs and files: its URL with any password hidden."""
    if storage is None:
        return "memory"
    if isinstance(storage, (dict, DictConfig)):
        return str(storage.get("_target_"))
    if "://" in str(storage):
        from sqlalchemy.engine import make_url

        return make_url(str(storage)).render_as_string(hide_password=True)
    return str(storage)


class Heartbeat:
    """Records the heartbeat of running trials every `interval` seconds while the launcher runs them.

    Optuna beats only inside Study.optimize (its thread helper is private); the sweeper runs trials through
    Hydra's launcher instead, so it beats for them here.
    """

    def __init__(self, storage: Any, trial_ids: list[int]):
        self.storage = storage
        self.trial_ids = trial_ids
        self.interval = storage.get_heartbeat_interval() if isinstance(storage, optuna.storages.RDBStorage) else None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="optuna-heartbeat")

    def _run(self) -> None:
        while True:
            for trial_id in self.trial_ids:
                self.storage.record_heartbeat(trial_id)
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> "Heartbeat":
        if self.interval:
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
