"""The Optuna trial of the Hydra job that runs now, for code inside a sweep trial (e.g. a pruning callback).

The sweeper passes each job its trial number as `hydra.sweeper.trial`; the job opens the same storage and
reports to that trial, whichever process or machine it runs on.
"""

from __future__ import annotations

from typing import Any


def current_trial() -> Any:
    """The `optuna.Trial` this job runs, or None outside a trial of fusioncast's Optuna sweeper."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    sweeper = HydraConfig.get().sweeper
    number = sweeper.get("trial")
    if number is None:
        return None
    import optuna
    from hydra.utils import instantiate

    from ._storage import open_storage

    storage = open_storage(sweeper.storage, sweeper.heartbeat_interval, sweeper.grace_period, sweeper.max_retry)
    # a plain sampler: the parameters were drawn by the sweeper, the job only reports to the trial
    study = optuna.load_study(study_name=sweeper.study_name, storage=storage, sampler=optuna.samplers.RandomSampler(),
                              pruner=instantiate(sweeper.pruner))
    study_id = storage.get_study_id_from_name(study.study_name)
    return optuna.Trial(study, storage.get_trial_id_from_study_id_trial_number(study_id, int(number)))
