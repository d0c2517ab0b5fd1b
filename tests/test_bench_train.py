"""scripts/bench_train.py runs end to end on tiny sizes (both models, table with every column)."""

from __future__ import annotations

import importlib.util
import sys

import pytest

from tests.conftest import ROOT, needs_shared


@pytest.mark.slow
def test_bench_train_smoke(capsys):
    pytest.importorskip("pytorch_forecasting")  # the bench extra
    needs_shared("stallion.parquet")
    spec = importlib.util.spec_from_file_location("bench_train", ROOT / "scripts" / "bench_train.py")
    bench = importlib.util.module_from_spec(spec)
    sys.modules["bench_train"] = bench  # its dataclass looks itself up there
    spec.loader.exec_module(bench)
    rows = bench.main(["--tiny", "--steps", "2", "--warmup", "1", "--device", "cpu"])
    assert [model for _, model, _ in rows] == ["fusioncast", "pytorch-forecasting"]
    for _, _, r in rows:
        assert r["samples_per_s"] > 0 and r["flops_per_sample"] > 0 and r["params"] > 0
    out = capsys.readouterr().out
    assert "| a: stallion | fusioncast |" in out and "x |" in out  # the ratio column
