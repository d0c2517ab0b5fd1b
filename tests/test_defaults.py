"""One source of defaults: what the Python API builds when given nothing equals what the YAML configs
(the documented defaults) build, so a user of `TFTModule(...)` gets the model the docs describe."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
from omegaconf import OmegaConf

import fusioncast
from fusioncast.data.datamodule import TimeSeriesDataModule
from fusioncast.models.module import TFTModule
from fusioncast.models.tft import TemporalFusionTransformer
from fusioncast.postfit.calibration import Calibration

CONFIGS = Path(fusioncast.__file__).parent / "configs"


def literal_keys(node) -> dict:
    """The YAML's keys with literal values (interpolations, `???`, Hydra's own keys and defaults lists left out)."""
    raw = OmegaConf.to_container(node, resolve=False)
    return {k: v for k, v in raw.items() if not str(k).startswith("_") and k != "defaults"
            and not (isinstance(v, str) and ("${" in v or v == "???"))}


def python_defaults(fn) -> dict:
    return {name: p.default for name, p in inspect.signature(fn).parameters.items()
            if p.default is not inspect.Parameter.empty}


def normalised(value):
    return list(value) if isinstance(value, tuple) else value


def same(key: str, python, yaml) -> bool:
    """Equal, where None for a column list means none, and no level_shift means its prob 0 (off)."""
    python = normalised(python)
    if python is None and yaml == []:
        return True
    if key == "level_shift" and python is None:
        return not yaml or yaml.get("prob") == 0
    return python == yaml


@pytest.mark.parametrize(("config", "target"), [
    ("model/tft.yaml", TFTModule.__init__),
    ("data/default.yaml", TimeSeriesDataModule.__init__),
])
def test_python_defaults_equal_the_yaml(config, target):
    yaml = literal_keys(OmegaConf.load(CONFIGS / config))
    ours = python_defaults(target)
    shared = sorted(set(yaml) & set(ours))
    assert len(shared) >= 5, f"{config}: too few keys in common with {target.__qualname__} ({shared})"
    differ = {k: (normalised(ours[k]), yaml[k]) for k in shared if not same(k, ours[k], yaml[k])}
    assert not differ, f"Python defaults differ from {config} (python, yaml): {differ}"


def test_the_network_defaults_equal_the_module_defaults():
    module, net = python_defaults(TFTModule.__init__), python_defaults(TemporalFusionTransformer.__init__)
    shared = sorted(set(module) & set(net))
    assert {"hidden_size", "dropout", "quantiles"} <= set(shared)
    # the module resolves linear_skip=None (the whole encoder, as the YAML) before building the network
    differ = {k: (normalised(module[k]), normalised(net[k])) for k in shared
              if normalised(module[k]) != normalised(net[k]) and k != "linear_skip"}
    assert not differ, f"TFTModule and TemporalFusionTransformer defaults differ (module, net): {differ}"


@pytest.mark.parametrize("method", ["conformal", "adaptive"])
def test_calibration_defaults_equal_the_yaml(method):
    yaml = literal_keys(OmegaConf.merge(*(OmegaConf.load(CONFIGS / "calibration" / f"{m}.yaml")
                                          for m in (["conformal"] if method == "conformal" else ["conformal", "adaptive"]))))
    ours = python_defaults(Calibration.fit)
    shared = sorted((set(yaml) & set(ours)) - {"method"})
    assert shared, f"calibration/{method}.yaml shares no key with Calibration.fit"
    if method == "conformal":  # its yaml leaves the tracking steps to adaptive
        shared = [k for k in shared if k not in ("step", "width_step")]
    differ = {k: (ours[k], yaml[k]) for k in shared if ours[k] != yaml[k]}
    assert not differ, f"Calibration.fit defaults differ from calibration/{method}.yaml (python, yaml): {differ}"


def test_the_module_with_no_arguments_has_the_documented_skip_and_scheduler():
    from tests.models.test_tft import RICH

    data = {**RICH, "max_encoder_length": 12, "max_prediction_length": 4}
    module = TFTModule(data)
    assert module.net.linear_skip == 12  # tft.yaml: ${data.max_encoder_length}
    assert module.hparams.scheduler["_target_"].endswith("ReduceLROnPlateau")
    module.hparams.optimizer["lr"] = 1.0  # a module's hparams are its own
    assert TFTModule(data).hparams.optimizer["lr"] == 0.003
