"""The sweep: a study in the configured storage, trials drawn ask-and-tell style and run by Hydra's launcher.

The study's trial budget is a queue: whoever creates the study enqueues `n_trials` empty trials (WAITING);
every worker (this process, or others on other machines with the same storage) takes one with the storage's
atomic WAITING -> RUNNING change, samples its parameters, launches it with `hydra.sweeper.trial=<number>` (the
job reports its epochs to the same trial, see trial.py) and tells the result. So several workers started at
once run exactly `n_trials` trials between them, and re-running an interrupted sweep runs what is left.
Optuna has the queue and the atomic change, but runs trials only through Study.optimize (objective functions),
not through a launcher: this loop is what is ours.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from typing import Any

import optuna
from hydra.core.plugins import Plugins
from hydra.types import HydraContext, TaskFunction
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from optuna.trial import TrialState

from ._search_space import grid, parse, suggest
from ._storage import Heartbeat, describe, open_storage

log = logging.getLogger(__name__)

BUDGET_ATTR = "sweeper:n_trials"
# optuna-integration's Lightning callback marks a trial it stopped under DDP with this system attribute
DDP_PRUNED_ATTR = "ddp_pl:pruned"
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def _fail_stale_trials(study: optuna.Study) -> None:
    with warnings.catch_warnings():  # experimental since Optuna 2.9, and the way to recover crashed trials
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def _tell(study: optuna.Study, trial: optuna.Trial, *args: Any, **kwargs: Any) -> optuna.trial.FrozenTrial:
    """study.tell, where the grid sampler's study.stop() once its grid is done is no error (the queue ends the
    sweep; the trial is recorded before the sampler's after_trial raises)."""
    try:
        return study.tell(trial, *args, **kwargs)
    except RuntimeError as e:
        if "Study.stop" not in str(e):
            raise
        return next(t for t in study.get_trials(deepcopy=False) if t.number == trial.number)


def _directions(direction: Any) -> list[str]:
    if isinstance(direction, str):
        return [direction]
    return [str(d) for d in direction]


class OptunaSweeperImpl:
    def __init__(self, sampler: DictConfig, pruner: DictConfig, direction: Any, storage: Any, study_name: str | None,
                 n_trials: int, n_jobs: int, max_failure_rate: float, params: DictConfig | None,
                 heartbeat_interval: int | None, grace_period: int | None, max_retry: int | None) -> None:
        if not 0.0 <= max_failure_rate <= 1.0:
            raise ValueError(f"hydra.sweeper.max_failure_rate must be in [0, 1], got {max_failure_rate}")
        if n_trials < 1 or n_jobs < 1:
            raise ValueError(f"hydra.sweeper.n_trials and n_jobs must be >= 1, got {n_trials} and {n_jobs}")
        self.sampler_cfg = sampler
        self.pruner_cfg = pruner
        self.directions = _directions(direction)
        self.storage_cfg = storage
        self.study_name = study_name
        self.n_trials = n_trials
        self.n_jobs = n_jobs
        self.max_failure_rate = max_failure_rate
        self.params = params
        self.heartbeat = (heartbeat_interval, grace_period, max_retry)
        self.job_idx = 0

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            config=config, hydra_context=hydra_context, task_function=task_function)

    # -- sampler ---------------------------------------------------------------------------------------
    def _is_grid(self) -> bool:
        return str(self.sampler_cfg.get("_target_", "")).endswith("GridSampler")

    def _make_sampler(self, number: int | None, space: dict) -> optuna.samplers.BaseSampler:
        kwargs: dict[str, Any] = {}
        seed = self.sampler_cfg.get("seed")
        if seed is not None and number is not None:
            # seeded by trial number: workers started together draw different points, a resumed study does not
            # replay its first trials, and one trial's draw does not depend on which worker took it
            kwargs["seed"] = int(seed) + number
        if self._is_grid():
            kwargs.update(search_space=grid(space), _partial_=False)
        return instantiate(self.sampler_cfg, **kwargs)

    # -- study -----------------------------------------------------------------------------------------
    def _open_study(self, storage: Any, space: dict, n_trials: int) -> optuna.Study:
        pruner = instantiate(self.pruner_cfg)
        sampler = self._make_sampler(None, space)
        try:
            study = optuna.create_study(storage=storage, study_name=self.study_name, sampler=sampler, pruner=pruner,
                                        directions=self.directions)
            created = True
        except optuna.exceptions.DuplicatedStudyError:
            study = optuna.load_study(study_name=self.study_name, storage=storage, sampler=sampler, pruner=pruner)
            created = False
        if [d.name.lower() for d in study.directions] != [d.lower() for d in self.directions]:
            raise ValueError(f"study '{study.study_name}' optimises {[d.name.lower() for d in study.directions]}, "
                             f"the sweep asks for {self.directions}: use another hydra.sweeper.study_name")
        if created:
            self._enqueue(study, n_trials)
            study.set_user_attr(BUDGET_ATTR, n_trials)
            return study
        # a worker that created the study a moment ago may still be filling the queue (a study where something
        # has run already is not being created)
        deadline = time.monotonic() + 60
        while (BUDGET_ATTR not in study.user_attrs and time.monotonic() < deadline
               and all(t.state == TrialState.WAITING for t in study.get_trials(deepcopy=False))):
            time.sleep(0.5)
        _fail_stale_trials(study)
        live = len(study.get_trials(deepcopy=False, states=(*FINISHED, TrialState.RUNNING, TrialState.WAITING)))
        if live < n_trials:
            log.info("study '%s' has %d trials (failed ones not counted): adding %d to reach n_trials=%d",
                     study.study_name, live, n_trials - live, n_trials)
            self._enqueue(study, n_trials - live)
            study.set_user_attr(BUDGET_ATTR, n_trials)
        return study

    @staticmethod
    def _enqueue(study: optuna.Study, n: int) -> None:
        # empty trials, not enqueue_trial({}): that one marks parameters as fixed, which the grid sampler then
        # leaves alone; these are sampled when a worker takes them
        study.add_trials([optuna.trial.create_trial(state=TrialState.WAITING) for _ in range(n)])

    def _take(self, study: optuna.Study, storage: Any, space: dict, fixed: dict) -> optuna.Trial | None:
        """A WAITING trial of the study made RUNNING by this worker (None when the queue is empty), sampled."""
        for frozen in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
            try:
                if not storage.set_trial_state_values(frozen._trial_id, state=TrialState.RUNNING):
                    continue  # another worker took it first
            except optuna.exceptions.UpdateFinishedTrialError:
                continue
            if Heartbeat(storage, []).interval:  # from now on a crash of this worker is detected
                storage.record_heartbeat(frozen._trial_id)
            study.sampler = self._make_sampler(frozen.number, space)
            trial = optuna.Trial(study, frozen._trial_id)
            try:
                for name, dist in space.items():
                    suggest(trial, name, dist)
                for name, value in fixed.items():
                    trial.set_user_attr(name, value)
            except BaseException:  # e.g. a retried trial whose parameters no longer fit the space: not left running
                _tell(study, trial, state=TrialState.FAIL, skip_if_finished=True)
                raise
            return trial
        return None

    def _requeue(self, study: optuna.Study, trials: list[optuna.Trial]) -> None:
        """Trials stopped by an interrupt: failed, and queued again with their parameters (like a stale trial)."""
        for t in trials:
            frozen = _tell(study, t, state=TrialState.FAIL, skip_if_finished=True)
            study.enqueue_trial(frozen.params, user_attrs={**frozen.user_attrs, "retry_of": frozen.number})
            log.warning("trial %d interrupted: queued again with its parameters", frozen.number)

    # -- sweep -----------------------------------------------------------------------------------------
    def _check(self) -> None:
        pruning = not str(self.pruner_cfg.get("_target_", "")).endswith("NopPruner")
        if pruning and len(self.directions) > 1:
            raise ValueError("Optuna prunes single-objective studies only: hydra/sweeper/pruner=none with several "
                             "directions")
        if self.storage_cfg is None and type(self.launcher).__name__ != "BasicLauncher":
            raise ValueError("hydra.sweeper.storage=null keeps the study in this process's memory, which trials run "
                             "by another launcher (here %s) cannot reach: give a storage (an SQLite file, say) or "
                             "use hydra/launcher=basic" % type(self.launcher).__name__)

    def sweep(self, arguments: list[str]) -> None:
        self._check()
        declared = [f"{k}={v}" for k, v in (self.params or {}).items()]
        space, fixed = parse(declared + list(arguments))
        n_trials = self.n_trials
        if self._is_grid():
            n_trials = min(n_trials, math.prod(len(v) for v in grid(space).values()))
        storage = open_storage(self.storage_cfg, *self.heartbeat)
        study = self._open_study(storage, space, n_trials)
        log.info("study '%s' in %s: %d trials to reach, %d at a time here; sampler %s, pruner %s",
                 study.study_name, describe(self.storage_cfg), n_trials, self.n_jobs,
                 self.sampler_cfg.get("_target_"), self.pruner_cfg.get("_target_"))
        heartbeat_on = bool(Heartbeat(storage, []).interval)
        waiting_logged = False
        while True:
            _fail_stale_trials(study)
            batch = []
            for _ in range(self.n_jobs):
                trial = self._take(study, storage, space, fixed)
                if trial is None:
                    break
                batch.append(trial)
            if not batch:
                # other workers' trials still running: stay until they end or their heartbeat stops (then
                # one of them comes back to the queue), so the study is done when this worker returns
                if heartbeat_on and study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                    if not waiting_logged:
                        log.info("queue empty: waiting for the running trials of other workers")
                        waiting_logged = True
                    time.sleep(min(5, Heartbeat(storage, []).interval))
                    continue
                break
            self._run(study, storage, batch, fixed)
        self._write_results(study)

    def _run(self, study: optuna.Study, storage: Any, batch: list[optuna.Trial], fixed: dict) -> None:
        overrides = []
        for t in batch:
            values = {**t.params, **fixed}  # the job config is composed anew: it needs the fixed overrides too
            job = (f"hydra.sweeper.trial={t.number}",)
            if self.study_name is None:  # a generated name: the job needs it to find its trial
                job += (f"hydra.sweeper.study_name={study.study_name}",)
            overrides.append(tuple(f"{k}={v}" for k, v in values.items()) + job)
        try:
            with Heartbeat(storage, [t._trial_id for t in batch]):
                returns = self.launcher.launch(overrides, initial_job_idx=self.job_idx)
        except BaseException:  # Ctrl-C or a launcher failure: nothing of this batch is lost
            self._requeue(study, batch)
            raise
        self.job_idx += len(returns)
        failures = []
        for trial, ret in zip(batch, returns):
            try:
                value = ret.return_value  # re-raises the job's exception
                if storage.get_trial_system_attrs(trial._trial_id).get(DDP_PRUNED_ATTR):
                    raise optuna.TrialPruned("pruned under DDP")
                values = [float(v) for v in (value if len(self.directions) > 1 else [value])]
                _tell(study, trial, values)
            except optuna.TrialPruned:
                frozen = _tell(study, trial, state=TrialState.PRUNED)
                log.info("trial %d pruned after %d epochs", frozen.number, len(frozen.intermediate_values))
            except Exception as e:
                _tell(study, trial, state=TrialState.FAIL, skip_if_finished=True)
                log.warning("trial %d failed: %s: %s", trial.number, type(e).__name__, e)
                failures.append((trial.number, e))
        if failures and len(failures) / len(returns) > self.max_failure_rate:
            number, error = failures[0]
            raise RuntimeError(f"{len(failures)} of {len(returns)} trials failed (hydra.sweeper.max_failure_rate="
                               f"{self.max_failure_rate}); trial {number}: {type(error).__name__}: {error}") from error

    def _write_results(self, study: optuna.Study) -> None:
        trials = study.get_trials(deepcopy=False)
        counts = {s.name.lower(): sum(t.state == s for t in trials) for s in TrialState}
        results: dict[str, Any] = {"name": "optuna", "study_name": study.study_name,
                                   "trials": {k: v for k, v in counts.items() if v}}
        complete = [t for t in trials if t.state == TrialState.COMPLETE]
        if not complete:
            log.warning("study '%s' has no complete trial", study.study_name)
        elif len(self.directions) == 1:
            best = study.best_trial
            results.update(best_params=best.params, best_value=best.value, best_trial=best.number)
            log.info("best trial %d: %s = %s", best.number, best.params, best.value)
        else:
            results["solutions"] = [{"params": t.params, "values": t.values, "trial": t.number}
                                    for t in study.best_trials]
            log.info("%d Pareto-optimal trials", len(results["solutions"]))
        OmegaConf.save(OmegaConf.create(results), f"{self.config.hydra.sweep.dir}/optimization_results.yaml")
