"""Resuming a training run: `fusioncast-train ckpt_path=<run>/checkpoints/last.ckpt` continues that run.

The run continues in its own directory (checkpoints, metrics.json, bundle/, a new CSV log version for
the resumed epochs), with the overrides it was started with (its `.hydra/overrides.yaml`) under the
ones given now, so that the command needs nothing but the checkpoint. The checkpoint must then fit
the config: the same data, preprocessing and model, or the resume is refused naming what differs.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

log = logging.getLogger(__name__)

# keys that may differ between the run and its resume without changing what is trained
MAY_DIFFER = {"data": {"path"}, "model": {"compile", "compile_mode"}}


def run_dir(ckpt_path: str | Path) -> Path | None:
    """The run directory a checkpoint belongs to (the parent of the `checkpoints/` folder holding it)."""
    for parent in Path(ckpt_path).resolve().parents:
        if parent.name == "checkpoints":
            return parent.parent
    return None


def merged_overrides(original: list[str], given: list[str]) -> list[str]:
    """The run's overrides, less those of a key given now, then the ones given now."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    key = lambda o: (o.key_or_group, o.package)  # noqa: E731
    now = {key(o) for o in parser.parse_overrides(given)}
    kept = [text for text, o in zip(original, parser.parse_overrides(original)) if key(o) not in now]
    return kept + list(given)


def resumed_config(cfg: DictConfig) -> DictConfig:
    """Within `fusioncast-train`: with a `ckpt_path` inside a run directory, that run's config (its
    overrides, then this command's) writing into that directory; any other config as it is."""
    from hydra import compose
    from hydra.core.hydra_config import HydraConfig

    run = run_dir(cfg.ckpt_path) if cfg.get("ckpt_path") else None
    if run is None:
        return cfg
    recorded = run / ".hydra" / "overrides.yaml"
    given = list(HydraConfig.get().overrides.task)
    if recorded.is_file():
        overrides = merged_overrides(list(OmegaConf.load(recorded) or []), given)
        cfg = compose(config_name=HydraConfig.get().job.config_name, overrides=overrides)
        log.info("resuming %s with its overrides: %s", run, " ".join(overrides))
    with open_dict(cfg):
        cfg.paths.output_dir = str(run)
    return cfg


def check_fits(ckpt: dict, ckpt_path: str, data_hparams: dict, model_hparams: dict) -> None:
    """Refuse to resume from a checkpoint of another data set, preprocessing or model than the config's."""
    from fusioncast.training.checkpoint import data_state

    theirs = {"data": data_state(ckpt, ckpt_path)["hparams"], "model": ckpt.get("hyper_parameters") or {}}
    ours = {"data": data_hparams, "model": model_hparams}
    differ = []
    for group in ("data", "model"):
        for k in sorted(set(theirs[group]) | set(ours[group])):
            a, b = (json.dumps(d.get(k), sort_keys=True, default=str) for d in (theirs[group], ours[group]))
            if k not in MAY_DIFFER[group] and a != b:
                what = "its fitted preprocessing" if k == "data_kwargs" else f"{group}.{k}"
                differ.append(f"{what}: {_short(a)} in the checkpoint, {_short(b)} now")
    if differ:
        run = run_dir(ckpt_path)
        hint = (f"; the run's overrides are in {run / '.hydra' / 'overrides.yaml'}"
                if run is not None and (run / ".hydra" / "overrides.yaml").is_file() else "")
        raise ValueError(f"{ckpt_path} was trained with another config than this one, so it cannot be resumed "
                         f"with it: {'; '.join(differ)}{hint}")


def _short(text: str, n: int = 80) -> str:
    return text if len(text) <= n else text[: n - 3] + "..."
