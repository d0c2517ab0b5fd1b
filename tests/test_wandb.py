"""W&B tracking offline: the run written by `logger=wandb` read back from wandb's own run file."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from fusioncast.reporting.tracking import has_credentials, resolve_mode
from fusioncast.train import train
from tests.conftest import TINY, compose_config

pb = pytest.importorskip("wandb.proto.wandb_internal_pb2")

BLOCK, HEADER = 32768, 7


def read_records(path: Path) -> list:
    """The protobuf records of an offline run file (`run-<id>.wandb`, what `wandb sync` uploads).

    The file is wandb's LevelDB-style log: a 7-byte header (":W&B", magic, version), then 32 KiB
    blocks of chunks (crc32 4 B, length 2 B, type 1 B: full / first / middle / last) holding Records.
    """
    data = path.read_bytes()
    assert data[:4] == b":W&B"
    records, pos, buf = [], HEADER, b""
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < HEADER:  # block trailer padding
            pos += left
            continue
        n, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        buf += data[pos + HEADER : pos + HEADER + n]
        pos += HEADER + n
        if kind in (1, 4):  # full or last chunk: a whole record
            records.append(pb.Record.FromString(buf))
            buf = b""
    return records


def read_finished_run(path: Path, timeout: float = 60.0) -> list:
    """The records of an offline run file once wandb's service has written all of it.

    `run.finish()` returns before the service process has necessarily flushed the file: on a loaded
    machine the test once read it with only its first records. Wait for the exit record and a size
    that stays put, then read it (the assertions below still check everything)."""
    deadline, size = time.monotonic() + timeout, -1
    while True:
        records = read_records(path)
        done = any(r.WhichOneof("record_type") == "exit" for r in records)
        if (done and path.stat().st_size == size) or time.monotonic() > deadline:
            return records
        size = path.stat().st_size if done else -1
        time.sleep(0.5)


def _by_type(records: list, kind: str) -> list:
    return [getattr(r, kind) for r in records if r.WhichOneof("record_type") == kind]


def _items(msg, field: str) -> dict:
    """{"a/b": value} of a history / summary / config record (nested keys joined by '.')."""
    out = {}
    for it in getattr(msg, field):
        key = it.key or ".".join(it.nested_key)
        out[key] = json.loads(it.value_json)
    return out


@pytest.fixture
def no_login(tmp_path, monkeypatch):
    for var in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_IDENTITY_TOKEN_FILE", "WANDB_RUN_GROUP", "WANDB_PROJECT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))


def test_mode_is_offline_without_login(tmp_path, monkeypatch, no_login):
    assert not has_credentials() and resolve_mode(None) == "offline"
    assert resolve_mode("disabled") == "disabled"
    (tmp_path / "no-netrc").write_text("machine api.wandb.ai\n  login user\n  password " + "x" * 40 + "\n")
    assert has_credentials() and resolve_mode(None) is None  # wandb decides: online, or `wandb offline`
    monkeypatch.setenv("NETRC", str(tmp_path / "none"))
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert resolve_mode(None) is None


def test_offline_run_holds_config_epochs_summary_images_and_model(tmp_path, no_login):
    out = tmp_path / "run"
    cfg = compose_config("train.yaml", out, TINY + ["logger=wandb", "tags=[pytest]", "trainer.max_epochs=2"])
    metrics = train(cfg)

    runs = list((out / "wandb").glob("offline-run-*"))  # offline, with no login and no WANDB_MODE
    assert len(runs) == 1
    records = read_finished_run(next(runs[0].glob("run-*.wandb")))

    run = _by_type(records, "run")[0]
    assert run.project == "fusioncast" and list(run.tags) == ["pytest"]
    config = _items(run.config, "update")
    for c in _by_type(records, "config"):
        config.update(_items(c, "update"))
    assert config["model"]["hidden_size"] == 16 and config["data"]["name"] == "synthetic"
    assert config["paths"]["output_dir"] == str(out)  # the resolved config, not interpolations

    history = [_items(h, "item") for h in _by_type(records, "history")]
    val = [h for h in history if "val/loss" in h]
    fit = [h for h in history if "train/loss" in h]
    assert [h["epoch"] for h in val] == [h["epoch"] for h in fit] == [0, 1]  # one row per epoch
    assert all("val/mae" in h for h in val)
    assert all(h["lr"] > 0 and h["train/samples_per_sec"] > 0 for h in fit)

    summary = {}
    for s in _by_type(records, "summary"):
        summary.update(_items(s, "update"))
    assert summary["test/mae"] == pytest.approx(metrics["test"]["mae"])
    assert summary["baseline/test/mae"] == pytest.approx(metrics["baseline"]["test"]["mae"])
    assert summary["val/coverage_p10_p90"] == pytest.approx(metrics["val"]["coverage_p10_p90"])

    images = next(h for h in history if "forecasts._type" in h)
    assert images["forecasts._type"] == "images/separated" and images["forecasts.count"] == 3
    media = [runs[0] / "files" / f for f in images["forecasts.filenames"]]
    assert all(p.exists() and p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in media)
    assert any(k.startswith("interpretation/attention") for h in history for k in h)

    artifact = _by_type(records, "artifact")[0]
    assert artifact.type == "model" and artifact.name == "fusioncast-synthetic" and "latest" in artifact.aliases
    files = [c.path for c in artifact.manifest.contents]
    bundle = out / "bundle"
    expected = sorted(p.relative_to(bundle).as_posix() for p in bundle.rglob("*") if p.is_file()) if bundle.is_dir() \
        else [Path(metrics["best_checkpoint"]).name]
    assert sorted(files) == expected
    assert json.loads(artifact.metadata)["test"]["mae"] == pytest.approx(metrics["test"]["mae"])
    assert _by_type(records, "exit")  # the run was finished
