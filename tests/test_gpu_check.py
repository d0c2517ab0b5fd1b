"""scripts/gpu_check.py in its CPU mode: it runs, and prints its table with every CUDA row skipped."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from tests.conftest import ROOT


def test_gpu_check_prints_its_table_with_the_cuda_rows_skipped(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("with CUDA the check runs for minutes: run scripts/gpu_check.py itself")
    run = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_check.py"), "--log-dir", str(tmp_path)],
                         capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    rows = [line.split("|")[1:-1] for line in run.stdout.splitlines() if line.startswith("| ")]
    table = {cells[0].strip(): [c.strip() for c in cells[1:]] for cells in rows[2:]}
    assert list(table) == ["environment", "gpu-marked tests", "bench_train b: fusioncast bf16",
                           "bench_train b: fusioncast bf16 + model.compile", "bench_train b: pytorch-forecasting bf16",
                           "train trainer=gpu, export, parity"]
    assert table["environment"][0] == "ok" and f"torch {torch.__version__}" in table["environment"][1]
    assert all(status == "skipped" and result == "no CUDA device" for status, result, _ in list(table.values())[1:])
