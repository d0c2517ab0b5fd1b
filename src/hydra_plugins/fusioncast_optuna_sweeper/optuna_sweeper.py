"""The Hydra Sweeper plugin class; the work is in _impl.py (imported only when a sweep runs)."""

from __future__ import annotations

import importlib.util
from typing import Any

from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


class OptunaSweeper(Sweeper):
    def __init__(self, sampler: DictConfig, pruner: DictConfig, direction: Any, storage: Any,
                 study_name: str | None, n_trials: int, n_jobs: int, max_failure_rate: float,
                 params: DictConfig | None, heartbeat_interval: int | None, grace_period: int | None,
                 max_retry: int | None, trial: int | None = None) -> None:
        if importlib.util.find_spec("hydra_plugins.hydra_optuna_sweeper") is not None:
            # it registers the same sampler configs (hydra/sweeper/sampler=tpe, ...) with other defaults
            raise RuntimeError("hydra-optuna-sweeper is installed next to fusioncast's sweeper; it needs optuna<3 "
                               "and shadows our sampler configs: pip uninstall hydra-optuna-sweeper")
        from ._impl import OptunaSweeperImpl

        self.impl = OptunaSweeperImpl(sampler, pruner, direction, storage, study_name, n_trials, n_jobs,
                                      max_failure_rate, params, heartbeat_interval, grace_period, max_retry)

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.impl.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> None:
        self.impl.sweep(arguments)
