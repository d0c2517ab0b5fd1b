"""Hydra callback for Optuna sweeps (`hparams_search=optuna`): the best experiment.

After the sweep it turns the sweeper's `optimization_results.yaml` into `best_experiment.yaml`: a
`# @package _global_` experiment config holding the sweep's own overrides (data set, budgets, ...) and the best trial's parameters, to copy into configs/experiment/ and re-run.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from hydra_plugins.fusioncast_optuna_sweeper._storage import describe

log = logging.getLogger(__name__)


def _skipped(key: str) -> bool:
    """Overrides that configure the sweep itself or this machine's folders rather than the model run."""
    return key.split(".")[0].split("/")[0] in ("hparams_search", "hydra", "paths")


def best_experiment(best_params: dict[str, Any], task_overrides: list[str], group_choices: dict[str, str],
                    header: str = "") -> str:
    """YAML text of an experiment config reproducing one trial.

    `task_overrides` are the sweep's command-line overrides (key=value strings; sweep expressions are
    left out, their value comes from `best_params`); keys that name a config group (`group_choices`,
    Hydra's runtime choices) become `override /group: option` defaults, others nested values.
    """
    parser = OverridesParser.create()
    groups: dict[str, str] = {}
    values = OmegaConf.create({})
    fixed = [o for o in parser.parse_overrides(task_overrides) if not o.is_sweep_override()]
    best = parser.parse_overrides([f"{k}={v}" for k, v in best_params.items()])
    for o in [*fixed, *best]:
        key = o.key_or_group
        if _skipped(key):
            continue
        if key in group_choices:
            groups[key] = o.get_value_element_as_str()
        else:
            OmegaConf.update(values, key, o.value(), force_add=True)
    if "data" in group_choices:
        groups.setdefault("data", group_choices["data"])  # the best values only hold for this data set
    lines = ["# @package _global_", *[f"# {h}" for h in header.splitlines()]]
    if groups:
        lines += ["defaults:", *[f"  - override /{g}: {c}" for g, c in groups.items()]]
    body = OmegaConf.to_yaml(values) if len(values) else ""
    return "\n".join(lines) + "\n" + body


class OptunaSweepFiles(Callback):
    """Wired in configs/hparams_search/optuna.yaml as a Hydra callback."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        results_path = sweep_dir / "optimization_results.yaml"
        if not results_path.exists():
            return
        results = OmegaConf.load(results_path)
        if "best_params" not in results:  # a multi-objective study has a Pareto front, no single best
            return
        sweeper = config.hydra.sweeper
        header = (f"Best trial of Optuna study '{sweeper.study_name}' ({describe(sweeper.storage)}):\n"
                  f"{config.get('optimized_metric')} = {results.best_value}.\n"
                  "Re-run: cp this file configs/experiment/<name>.yaml && fusioncast-train experiment=<name>")
        text = best_experiment(OmegaConf.to_container(results.best_params), list(config.hydra.overrides.task),
                               dict(config.hydra.runtime.choices), header)
        path = sweep_dir / "best_experiment.yaml"
        path.write_text(text)
        log.info("best trial's config: %s", path)
