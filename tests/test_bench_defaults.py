"""scripts/bench_defaults.py: one real cell trains and scores against seasonal naive; the table ranks
candidates by the geometric mean over seeds and sets."""

from __future__ import annotations

import importlib.util
import sys

import pytest

from tests.conftest import ROOT, needs_shared


def load_bench():
    sys.path.insert(0, str(ROOT / "scripts"))
    spec = importlib.util.spec_from_file_location("bench_defaults", ROOT / "scripts" / "bench_defaults.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def test_table_ranks_by_geometric_mean_over_seeds_and_sets():
    bench = load_bench()
    rows = [  # "linear skip" wins on the geometric mean although "no linear skip" has the best single cell
        {"candidate": "no linear skip", "set": "stallion", "ratio": 0.5},
        {"candidate": "no linear skip", "set": "stallion", "seed": 7, "ratio": 0.5},
        {"candidate": "no linear skip", "set": "etth1", "ratio": 1.0},
        {"candidate": "linear skip", "set": "stallion", "ratio": 0.7},
        {"candidate": "linear skip", "set": "etth1", "ratio": 0.6},
        {"candidate": "hidden 64", "set": "stallion", "ratio": 0.1},  # no etth1 cell: not ranked
    ]
    table = bench.table(rows, ["stallion", "etth1"]).splitlines()[2:]
    lines = {line.split(":")[0].strip("| "): line for line in table}
    assert lines["linear skip"].endswith(f"| {(0.7 * 0.6) ** 0.5:.3f} | 1 |")
    assert lines["no linear skip"].endswith(f"| {(0.5 * 1.0) ** 0.5:.3f} | 2 |")
    assert "0.500 (0.500, 0.500)" in lines["no linear skip"]  # both seeds shown
    assert lines["hidden 64"].endswith("| - | - |")


@pytest.mark.slow
def test_one_cell_trains_on_the_real_set_and_scores_against_naive(tmp_path):
    needs_shared("stallion.parquet")
    bench = load_bench()
    r = bench.run("linear skip", "stallion", 42, tmp_path, extra=(
        "trainer.max_epochs=1", "trainer.limit_train_batches=3", "model.hidden_size=8"))
    assert r["candidate"] == "linear skip" and r["set"] == "stallion" and r["seed"] == 42
    assert r["ratio"] == pytest.approx(r["val_mae"] / r["naive_val_mae"]) and r["naive_val_mae"] > 0
    assert (tmp_path / "metrics.json").exists()
