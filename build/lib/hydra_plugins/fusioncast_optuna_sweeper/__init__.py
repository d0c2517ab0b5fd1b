"""fusioncast's Hydra sweeper on Optuna >= 4 (`hydra/sweeper=fusioncast_optuna`, used by `hparams_search=optuna`).

Hydra finds it by scanning the `hydra_plugins` namespace package. Modules whose names start with `_`
are skipped by that scan, so Optuna is imported only when a sweep actually runs. See docs/sweeps.md.
"""
