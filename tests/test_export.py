"""Export: ONNX parity with PyTorch on every shared real set, the bundle's contents, failure on
disagreement, the int8 variant, and the export at the end of training."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from fusioncast import export as export_mod
from fusioncast.data.inference import INPUT_NAMES, INTERPRETATION_NAMES
from fusioncast.export import (
    ExportError,
    _Graph,
    check_parity,
    quantize_int8,
    real_windows,
    relative_difference,
)
from fusioncast.postfit.calibration import Calibration
from fusioncast.serve.bundle import Bundle, Model, sha256_file, write_meta
from fusioncast.train import train
from tests.conftest import TINY, compose_config, needs_shared


@pytest.mark.parametrize("name", ["nyc_taxi", "stallion", "etth1"])
def test_onnx_matches_pytorch_on_real_validation_windows(real_bundle, name):
    rb = real_bundle(name)
    meta = json.loads((rb.path / "bundle.json").read_text())
    assert meta["parity"]["max_rel_diff"] <= 1e-4 and meta["parity"]["split"] == "val"
    # measured again here, independently: the serving session against the PyTorch module, batch 1 and many
    model = Model(Bundle.load(rb.path), cache=False)
    batch, split = real_windows(rb.dm, 100, "val")
    assert split == "val"
    inputs = {n: t.numpy() for n, t in zip(INPUT_NAMES, batch.inputs())}
    with torch.inference_mode():
        want = rb.module(*batch.inputs(), return_interpretation=True)
    got = model(inputs, interpretation=True)
    assert relative_difference(got[0], want[0].double().numpy(), inputs["target_scale"]) <= 1e-4
    for g, w in zip(got[1:], want[1:]):
        np.testing.assert_allclose(g, w.numpy(), atol=1e-4)
    one = model({k: v[-1:] for k, v in inputs.items()})[0]
    assert one.shape == (1, *want[0].shape[1:])
    assert relative_difference(one, want[0][-1:].double().numpy(), inputs["target_scale"][-1:]) <= 1e-4
    # and the forecasts are not trivially equal (e.g. constant): parity means something
    assert np.ptp(got[0][..., 1]) > 0


def test_bundle_is_self_contained_and_described(real_bundle):
    rb = real_bundle("stallion")
    meta = json.loads((rb.path / "bundle.json").read_text())
    assert meta["format"] == "fusioncast-bundle" and meta["version"]
    assert meta["model"]["sha256"] == sha256_file(rb.path / "model.onnx")
    assert meta["freq"] == "MS" and meta["max_encoder_length"] == 36 and meta["quantiles"] == [0.1, 0.5, 0.9]
    assert meta["schema"]["group_ids"] == ["agency", "sku"]
    assert "Agency_01" in meta["vocabularies"]["agency"] and len(meta["scalers"]["target_scales"]) > 300
    # dynamic batch axis; interpretation outputs present
    assert [i["shape"][0] for i in meta["model"]["inputs"]] == ["batch"] * len(meta["model"]["inputs"])
    assert [o["name"] for o in meta["model"]["outputs"]] == ["quantiles", *INTERPRETATION_NAMES]
    onnx.checker.check_model(str(rb.path / "model.onnx"))
    # a bundle whose model changed is refused
    copy = rb.path.parent / "tampered"
    shutil.copytree(rb.path, copy)
    with open(copy / "model.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(Exception, match="sha256"):
        Bundle.load(copy)


@pytest.mark.parametrize("method", ["conformal", "adaptive"])
def test_served_quantiles_carry_the_training_calibration(real_bundle, tmp_path, method):
    rb = real_bundle("stallion")
    copy = tmp_path / "bundle"
    shutil.copytree(rb.path, copy)
    meta = json.loads((copy / "bundle.json").read_text())
    offsets = np.tile([[-0.5, 0.0, 0.5]], (6, 1))
    # adaptive's tracking step travels along; the server, which sees no actuals, applies the offsets alone
    step = np.full(6, 0.01) if method == "adaptive" else None
    meta["calibration"] = Calibration([0.1, 0.5, 0.9], offsets, method, {}, step).to_dict()
    write_meta(copy, meta, list(meta["integrity"]["files"]))  # sealed again: an edit alone is refused
    batch, _ = real_windows(rb.dm, 16)
    inputs = {n: t.numpy() for n, t in zip(INPUT_NAMES, batch.inputs())}
    raw = Model(Bundle.load(rb.path), cache=False)(inputs)[0]
    got = Model(Bundle.load(copy), cache=False)(inputs)[0]
    scale = inputs["target_scale"][:, 1, None, None]
    np.testing.assert_allclose(got, np.sort(raw + offsets * scale, axis=-1), rtol=1e-6, atol=1e-3)


def test_served_graph_is_optimised_once_without_the_slow_fusions(real_bundle, tmp_path):
    rb = real_bundle("stallion")
    batch, _ = real_windows(rb.dm, 8)
    inputs = {n: t.numpy() for n, t in zip(INPUT_NAMES, batch.inputs())}
    first = Model(Bundle.load(rb.path), cache_dir=str(tmp_path))
    (cached,) = tmp_path.glob("*.onnx")
    ops = {n.op_type for n in onnx.load(str(cached)).graph.node}
    assert "SkipLayerNormalization" not in ops and "LayerNormalization" in ops
    again = Model(Bundle.load(rb.path), cache_dir=str(tmp_path))
    assert again.loaded_from == str(cached) and first.loaded_from != str(cached)
    np.testing.assert_array_equal(again(inputs)[0], first(inputs)[0])


def test_export_fails_when_onnxruntime_disagrees(real_bundle, tmp_path):
    rb = real_bundle("stallion")
    proto = onnx.load(str(rb.path / "model.onnx"))
    # nudge the quantile head's bias by 1e-3 (normalised units): the graph still runs, a little off
    init = next(t for t in proto.graph.initializer if t.name == "net.output.bias")
    w = numpy_helper.to_array(init).copy() + 1e-3
    init.CopyFrom(numpy_helper.from_array(w, init.name))
    bad = tmp_path / "model.onnx"
    onnx.save(proto, str(bad))
    batch, _ = real_windows(rb.dm, 32)
    graph = _Graph(rb.module.net, interpretation=True).eval()
    with pytest.raises(ExportError, match="max relative difference"):
        check_parity(bad, graph, batch, tolerance=1e-4)
    assert check_parity(rb.path / "model.onnx", graph, batch, tolerance=1e-4)["max_rel_diff"] <= 1e-4


def test_int8_variant_is_kept_only_within_tolerance(real_bundle, tmp_path):
    rb = real_bundle("stallion")
    batch, _ = real_windows(rb.dm, 64)
    shutil.copy(rb.path / "model.onnx", tmp_path / "model.onnx")
    kept = quantize_int8(tmp_path, batch, [0.1, 0.5, 0.9], tolerance=10.0)
    assert kept["kept"] and (tmp_path / "model.int8.onnx").exists()
    assert kept["sha256"] == sha256_file(tmp_path / "model.int8.onnx")
    assert kept["max_rel_diff_vs_fp32"] > 0 and kept["mae_int8"] > 0  # measured, not assumed
    dropped = quantize_int8(tmp_path, batch, [0.1, 0.5, 0.9], tolerance=-1.0)
    assert not dropped["kept"] and dropped["file"] is None and not (tmp_path / "model.int8.onnx").exists()


def test_train_exports_when_asked(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(export_mod, "export_bundle", lambda module, dm, out, **kw: calls.append((out, kw)) or out)
    cfg = compose_config("train.yaml", tmp_path, TINY + ["export=true", "trainer.max_epochs=1",
                                                         "trainer.limit_train_batches=2"])
    metrics = train(cfg)
    assert len(calls) == 1
    out, kw = calls[0]
    assert out == tmp_path / "bundle" and kw["metrics"] is metrics and kw["checkpoint"] == metrics["best_checkpoint"]


@pytest.mark.slow
def test_train_then_export_end_to_end(tmp_path):
    """The real thing: fusioncast-train's config with export on (the default) writes a checked bundle."""
    cfg = compose_config("train.yaml", tmp_path, [t for t in TINY if t != "export=false"])
    assert cfg.export is True
    metrics = train(cfg)
    bundle = Bundle.load(tmp_path / "bundle")
    assert bundle.meta["metrics"]["test"]["mae"] == pytest.approx(metrics["test"]["mae"])
    assert bundle.meta["parity"]["max_rel_diff"] <= 1e-4
    assert (tmp_path / "bundle" / "example_request.json").exists()


@pytest.mark.slow
def test_console_scripts_export_and_predict(real_bundle, tmp_path):
    """fusioncast-export and fusioncast-predict as a user runs them (Hydra apps, key=value overrides)."""
    import subprocess

    import pandas as pd

    rb = real_bundle("nyc_taxi")
    out = tmp_path / "exported"
    subprocess.run(["fusioncast-export", f"ckpt_path={rb.checkpoint}", f"output_dir={out}", "parity.windows=32",
                    f"hydra.run.dir={tmp_path / 'run'}"], check=True)
    meta = json.loads((out / "bundle.json").read_text())
    # the checkpoint by name only: a bundle holds no path of the training machine
    assert meta["parity"]["max_rel_diff"] <= 1e-4 and meta["checkpoint"] == Path(rb.checkpoint).name
    table = pd.read_csv(needs_shared("nyc_taxi.csv"))
    table.iloc[:3000].to_csv(tmp_path / "input.csv", index=False)
    subprocess.run(["fusioncast-predict", f"bundle={out}", f"input={tmp_path / 'input.csv'}",
                    f"output={tmp_path / 'forecasts.csv'}", f"hydra.run.dir={tmp_path / 'run2'}"], check=True)
    forecasts = pd.read_csv(tmp_path / "forecasts.csv")
    assert list(forecasts.columns) == ["timestamp", "q0.1", "q0.5", "q0.9"]
    assert len(forecasts) == meta["max_prediction_length"]


def test_linear_on_3d_inputs_exports_as_gemm_with_the_same_values(tmp_path):
    import onnxruntime as ort

    from fusioncast.models.layers import Linear

    torch.manual_seed(0)
    layer = Linear(16, 24).eval()
    x = torch.randn(5, 7, 16)
    path = tmp_path / "linear.onnx"
    torch.onnx.export(layer, (x,), str(path), dynamo=True, external_data=False,
                      dynamic_shapes={"x": {0: torch.export.Dim("batch")}})
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    # the bias inside a Gemm (onnxruntime fuses nothing into a 3-D MatMul: it would add it in a pass of its own)
    assert "Gemm" in ops and "Add" not in ops and "MatMul" not in ops
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (5, 2):  # the batch axis stays dynamic through the reshapes
        xb = torch.randn(batch, 7, 16)
        got = session.run(None, {session.get_inputs()[0].name: xb.numpy()})[0]
        with torch.no_grad():
            np.testing.assert_allclose(got, layer(xb).numpy(), rtol=1e-5, atol=1e-6)
    assert layer.state_dict().keys() == torch.nn.Linear(16, 24).state_dict().keys()  # checkpoints load as before


def test_elu_exports_as_vectorised_ops_with_the_same_values(tmp_path):
    import onnxruntime as ort

    from fusioncast.models.layers import elu

    class Elu(torch.nn.Module):
        def forward(self, x):
            return elu(x)

    values = torch.cat([torch.linspace(-30, 30, 4001), torch.tensor([0.0, -0.0, 1e-30, -1e-30, -1e-7, 88.0])])
    for x, fused in ((values.reshape(1, 1, -1), False), (values.reshape(1, -1), True)):
        path = tmp_path / f"elu{x.dim()}.onnx"
        torch.onnx.export(Elu(), (x,), str(path), dynamo=True, external_data=False)
        # onnxruntime's Elu is the slow one; only 2-D inputs (Gemm outputs, fused with it) keep it
        assert ("Elu" in {n.op_type for n in onnx.load(str(path)).graph.node}) == fused
        got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x.numpy()})[0]
        want = torch.nn.functional.elu(x).numpy()
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
        assert torch.equal(elu(x), torch.nn.functional.elu(x))  # eager: the fused kernel itself
