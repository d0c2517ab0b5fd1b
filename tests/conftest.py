"""Shared fixtures: the real Hydra config with tiny overrides (lightning-hydra-template style)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = str(ROOT / "src" / "fusioncast" / "configs")
SHARED_DATA = ROOT.parent / "shared" / "data"

# tests read the shared real sets; they never download
if SHARED_DATA.exists():
    os.environ.setdefault("FUSIONCAST_DATA_DIR", str(SHARED_DATA))
os.environ.setdefault("WANDB_MODE", "offline")
torch.set_num_threads(min(2, torch.get_num_threads()))


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def needs_shared(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"{path} not present")
    return path


# tiny synthetic set and model: a whole training takes a few seconds
TINY = [
    "data.synthetic.n_zones=3",
    "data.synthetic.days=21",
    "data.max_encoder_length=24",
    "data.max_prediction_length=12",
    "data.batch_size=64",
    "model.hidden_size=16",
    "trainer.max_epochs=2",
    "trainer.limit_train_batches=8",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "export=false",  # tests that need a bundle ask for one (tests/test_export.py)
]


def compose_config(config_name: str, tmp_path: Path, overrides: list[str]) -> DictConfig:
    """Compose a config exactly as the console scripts do, writing into tmp_path."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=CONFIG_DIR):
        cfg = compose(config_name=config_name, return_hydra_config=True, overrides=overrides)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path)
        cfg.paths.log_dir = str(tmp_path)
        del cfg.hydra  # as in a real run: the task function never sees the hydra node
    GlobalHydra.instance().clear()
    return cfg


@pytest.fixture
def cfg_train(tmp_path) -> DictConfig:
    return compose_config("train.yaml", tmp_path, TINY)


@pytest.fixture(scope="session")
def real_bundle(tmp_path_factory):
    """name -> a tiny model briefly trained on that shared real set and exported (tests/bundles.py)."""
    from tests.bundles import BundleFactory

    return BundleFactory(tmp_path_factory)


@pytest.fixture(scope="session")
def synthetic_bundle(tmp_path_factory) -> Path:
    """A tiny model of the synthetic zones trained with calibration=adaptive and exported by training
    (its bundle directory): the bundle of the actuals, online calibration and dashboard tests."""
    from fusioncast.train import train

    out = tmp_path_factory.mktemp("synthetic")
    overrides = [o for o in TINY if o != "export=false"] + ["export=true", "calibration=adaptive",
                                                             "data.synthetic.n_zones=6", "seed=0"]
    train(compose_config("train.yaml", out, overrides))
    return out / "bundle"


def _server_url(module, what: str):
    """The server .ci/run started (its URL in the environment), else one of our own for this session."""
    if os.environ.get(module.URL_ENV):
        yield os.environ[module.URL_ENV]
        return
    try:
        server = module.start()
    except (FileNotFoundError, RuntimeError) as e:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the {what} tests: {e}")
        pytest.skip(f"no {what} server to test against: {e}")
    yield server.url
    server.stop()


@pytest.fixture(scope="session")
def postgres_url():
    """A real PostgreSQL server on loopback (tests/postgres.py), as a SQLAlchemy URL."""
    from tests import postgres

    yield from _server_url(postgres, "PostgreSQL")


@pytest.fixture(scope="session")
def redis_url():
    """A real Redis server on loopback (tests/redis_server.py)."""
    from tests import redis_server

    yield from _server_url(redis_server, "Redis")
