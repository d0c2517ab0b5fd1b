"""Structured configs: `hydra/sweeper=fusioncast_optuna`, its samplers (`hydra/sweeper/sampler=tpe|random|...`)
and pruners (`hydra/sweeper/pruner=none|median|successive_halving|hyperband`).

The keys are those of hydra-optuna-sweeper (direction, study_name, storage, n_trials, n_jobs,
max_failure_rate, params, sampler.*), plus pruner, heartbeat_interval, grace_period, max_retry and trial.
"""

# no `from __future__ import annotations`: Hydra execs this module unregistered, and dataclasses then
# cannot resolve string annotations
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


@dataclass
class TPESamplerConfig:
    _target_: str = "optuna.samplers.TPESampler"
    seed: Optional[int] = None
    n_startup_trials: int = 10
    n_ei_candidates: int = 24
    # one joint model of all parameters rather than one per parameter
    multivariate: bool = True
    # parameters that only exist together (conditional spaces) modelled as groups
    group: bool = False
    # running trials count as if they had the worst value, so parallel workers do not draw the same point
    constant_liar: bool = True


@dataclass
class RandomSamplerConfig:
    _target_: str = "optuna.samplers.RandomSampler"
    seed: Optional[int] = None


@dataclass
class QMCSamplerConfig:
    _target_: str = "optuna.samplers.QMCSampler"
    seed: Optional[int] = None
    qmc_type: str = "sobol"
    scramble: bool = True


@dataclass
class CmaEsSamplerConfig:
    _target_: str = "optuna.samplers.CmaEsSampler"
    seed: Optional[int] = None
    n_startup_trials: int = 1
    sigma0: Optional[float] = None
    restart_strategy: Optional[str] = None
    consider_pruned_trials: bool = False


@dataclass
class GPSamplerConfig:
    _target_: str = "optuna.samplers.GPSampler"
    seed: Optional[int] = None
    n_startup_trials: int = 10


@dataclass
class NSGAIISamplerConfig:
    _target_: str = "optuna.samplers.NSGAIISampler"
    seed: Optional[int] = None
    population_size: int = 50
    mutation_prob: Optional[float] = None
    crossover_prob: float = 0.9
    swapping_prob: float = 0.5


@dataclass
class GridSamplerConfig:
    # the grid is the search space (choice/range values), filled in by the sweeper
    _target_: str = "optuna.samplers.GridSampler"
    _partial_: bool = True
    seed: Optional[int] = None


@dataclass
class NopPrunerConfig:
    _target_: str = "optuna.pruners.NopPruner"


@dataclass
class MedianPrunerConfig:
    """Stops a trial whose value at an epoch is worse than the median of earlier trials at that epoch."""

    _target_: str = "optuna.pruners.MedianPruner"
    # trials that always run to the end, to have a median to compare with
    n_startup_trials: int = 5
    # epochs every trial runs before it can be pruned
    n_warmup_steps: int = 1
    interval_steps: int = 1
    n_min_trials: int = 1


@dataclass
class SuccessiveHalvingPrunerConfig:
    """Asynchronous successive halving: at epochs min_resource * reduction_factor^k only the best
    1/reduction_factor of the trials that got there go on."""

    _target_: str = "optuna.pruners.SuccessiveHalvingPruner"
    min_resource: Any = "auto"
    reduction_factor: int = 3
    min_early_stopping_rate: int = 0
    bootstrap_count: int = 0


@dataclass
class HyperbandPrunerConfig:
    """Several successive-halving brackets with different minimum budgets; max_resource = max epochs."""

    _target_: str = "optuna.pruners.HyperbandPruner"
    min_resource: int = 1
    max_resource: Any = "auto"
    reduction_factor: int = 3
    bootstrap_count: int = 0


@dataclass
class OptunaSweeperConf:
    _target_: str = "hydra_plugins.fusioncast_optuna_sweeper.optuna_sweeper.OptunaSweeper"
    # the sampler and pruner stay configs: the sweeper builds them (a seeded sampler once per trial)
    _recursive_: bool = False
    defaults: List[Any] = field(default_factory=lambda: [{"sampler": "tpe"}, {"pruner": "none"}])

    sampler: Any = MISSING
    pruner: Any = MISSING
    # minimize | maximize, or a list of them for several objectives
    direction: Any = "minimize"
    # see _storage.py: null (memory), an SQLAlchemy URL, a journal file path, or a _target_ mapping
    storage: Any = None
    study_name: Optional[str] = None
    # trials the study holds when done: counts the trials of earlier runs and of other workers
    n_trials: int = 20
    # trials launched at once by this worker (the launcher runs them; hydra/launcher=joblib for processes)
    n_jobs: int = 1
    # share of failed trials in one launch above which the sweep stops
    max_failure_rate: float = 0.0
    # search space: key -> sweep expression, e.g. model.dropout: interval(0.0, 0.3)
    params: Optional[Dict[str, str]] = None
    # RDB storages: running trials beat every heartbeat_interval seconds; a trial silent for grace_period
    # (default 2 x interval) is failed and queued again with its parameters, at most max_retry times
    heartbeat_interval: Optional[int] = 60
    grace_period: Optional[int] = None
    max_retry: Optional[int] = 3
    # set by the sweeper in each job it launches: the Optuna trial number the job runs
    trial: Optional[int] = None


def _store() -> None:
    cs = ConfigStore.instance()
    cs.store(group="hydra/sweeper", name="fusioncast_optuna", node=OptunaSweeperConf, provider="fusioncast")
    for name, node in [("tpe", TPESamplerConfig), ("random", RandomSamplerConfig), ("qmc", QMCSamplerConfig),
                       ("cmaes", CmaEsSamplerConfig), ("gp", GPSamplerConfig), ("nsgaii", NSGAIISamplerConfig),
                       ("grid", GridSamplerConfig)]:
        cs.store(group="hydra/sweeper/sampler", name=name, node=node, provider="fusioncast")
    for name, node in [("none", NopPrunerConfig), ("median", MedianPrunerConfig),
                       ("successive_halving", SuccessiveHalvingPrunerConfig), ("hyperband", HyperbandPrunerConfig)]:
        cs.store(group="hydra/sweeper/pruner", name=name, node=node, provider="fusioncast")


_store()
