"""Quantiles never cross, on every path that produces them: the model sorts its forecasts last (eager and
exported graph alike), and every step after it keeps the order (shrinkage factors, seed ensembles,
conformal and adaptive calibration, the int8 variant, the server over HTTP, batch scoring).

The property tests draw random tiny models (with output layers and shrinkage factors that reorder the
quantiles before the sort), random inputs and random calibrations."""

from __future__ import annotations

import copy

import numpy as np
import orjson
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fusioncast.data.inference import INPUT_NAMES
from fusioncast.evaluation.backtest import backtest_forecasts
from fusioncast.export import _Graph, _session, export_onnx
from fusioncast.models.ensemble import TFTEnsemble
from fusioncast.postfit.calibration import Calibration
from fusioncast.postfit.shrinkage import _unsorted
from fusioncast.serve.bundle import MODEL_FILE
from fusioncast.serve.requests import series_payload
from tests.models.test_tft import RICH, UNIVARIATE, make_batch, make_model
from tests.serve.cases import random_bodies
from tests.serve.test_server import Server

# the shrinkage factors of issue 17's ETTh1-layout run, whose served P90 fell below its median
ISSUE_FACTORS = [0.8, 0.1, 0.5]
FAST = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def ordered(q: np.ndarray, axis: int = -1) -> bool:
    return bool((np.diff(np.asarray(q, np.float64), axis=axis) >= 0).all())


def crossing_model(config: dict, seed: int, factors: list[float], spread: float = 3.0, **kwargs):
    """A random tiny TFT with a linear skip whose output layer (the quantiles' input-dependent part) is
    large and whose correction is scaled per quantile by `factors`: before the sort its quantiles cross."""
    model = make_model(config, linear_skip=4, **kwargs)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        model.output.weight.copy_(spread * torch.randn(model.output.weight.shape, generator=g))
        model.skip.weight.copy_(0.3 * torch.randn(model.skip.weight.shape, generator=g))
        model.correction_scale.copy_(torch.tensor(factors, dtype=torch.float))
    return model.eval()


def _unsorted_forecast(model, batch) -> np.ndarray:
    with torch.no_grad(), _unsorted(model):
        return model(**batch).numpy()


# ---- the model: eager, ensembles, exported graph, int8 -------------------------------------------------
@FAST
@given(seed=st.integers(0, 2**16), config=st.sampled_from([RICH, UNIVARIATE]),
       factors=st.lists(st.floats(0.0, 1.0), min_size=3, max_size=3), batch=st.integers(1, 9))
def test_eager_forecasts_are_the_sorted_unsorted_ones(seed, config, factors, batch):
    model = crossing_model(config, seed, factors)
    inputs = make_batch(model, batch, seed=seed)
    with torch.no_grad():
        got = model(**inputs).numpy()
        with_interpretation = model(**inputs, return_interpretation=True)[0].numpy()
    assert ordered(got) and ordered(with_interpretation)
    np.testing.assert_array_equal(got, np.sort(_unsorted_forecast(model, inputs), axis=-1))


def test_the_random_models_do_cross_before_the_sort():
    """The property tests above are not vacuous: their models' quantiles cross before the final sort."""
    crossed = [not ordered(_unsorted_forecast(m, make_batch(m, 8, seed=s)))
               for s in range(5) for m in [crossing_model(RICH, s, ISSUE_FACTORS)]]
    assert sum(crossed) >= 4


@FAST
@given(seed=st.integers(0, 2**16), members=st.integers(2, 3),
       factors=st.lists(st.floats(0.0, 1.0), min_size=3, max_size=3))
def test_seed_ensembles_average_sorted_members(seed, members, factors):
    nets = [crossing_model(RICH, seed + i, factors) for i in range(members)]
    ensemble = TFTEnsemble(nets).eval()
    inputs = make_batch(nets[0], 6, seed=seed)
    with torch.no_grad():
        got = ensemble(*inputs.values()).numpy()
    assert ordered(got)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """One crossing model and a 2-member ensemble of such, exported with the project's exporter, and the
    model's int8 variant."""
    out = tmp_path_factory.mktemp("order-onnx")
    small = {"hidden_size": 8, "attention_heads": 2}  # export time grows with the graph: keep it small
    single = crossing_model(RICH, 1, ISSUE_FACTORS, **small)
    ensemble = TFTEnsemble([crossing_model(UNIVARIATE, 2, ISSUE_FACTORS, **small),
                            crossing_model(UNIVARIATE, 3, [0.0, 1.0, 0.2], **small)]).eval()
    paths = {}
    for name, net, config in (("single", single, single), ("ensemble", ensemble, ensemble.members[0])):
        (out / name).mkdir()
        paths[name] = out / name / MODEL_FILE
        export_onnx(_Graph(net, interpretation=False).eval(), tuple(make_batch(config, 3).values()), paths[name])
    from onnxruntime.quantization import QuantType, quantize_dynamic

    paths["int8"] = out / "single" / "model.int8.onnx"
    quantize_dynamic(paths["single"], paths["int8"], weight_type=QuantType.QInt8)
    return {"single": single, "ensemble": ensemble, "paths": paths}


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**16), batch=st.integers(1, 17))
def test_exported_graphs_sort_as_the_eager_model_does(exported, seed, batch):
    for name, net in (("single", exported["single"]), ("ensemble", exported["ensemble"])):
        inputs = make_batch(net if name == "single" else net.members[0], batch, seed=seed)
        feed = {n: inputs[n].numpy() for n in INPUT_NAMES}
        session = _session(exported["paths"][name])
        got = session.run(None, {i.name: feed[i.name] for i in session.get_inputs()})[0]
        with torch.no_grad():
            want = net(*inputs.values()).numpy()
        assert ordered(got), name
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
    inputs = make_batch(exported["single"], batch, seed=seed)
    feed = {n: inputs[n].numpy() for n in INPUT_NAMES}
    int8 = _session(exported["paths"]["int8"])
    assert ordered(int8.run(None, {i.name: feed[i.name] for i in int8.get_inputs()})[0])


# ---- calibration: conformal offsets, adaptive tracking ---------------------------------------------------
QUANTILE_SETS = [[0.1, 0.5, 0.9], [0.05, 0.25, 0.5, 0.75, 0.95], [0.1, 0.9], [0.2, 0.4, 0.6, 0.8]]


@st.composite
def calibration_case(draw):
    quantiles = draw(st.sampled_from(QUANTILE_SETS))
    n, h, Q = draw(st.integers(1, 12)), draw(st.integers(1, 6)), len(quantiles)
    floats = st.floats(-1e3, 1e3, allow_nan=False, width=32)
    pred = np.sort(draw(hnp.arrays(np.float32, (n, h, Q), elements=floats)), axis=-1)  # as the model gives them
    offsets = draw(hnp.arrays(np.float64, (h, Q), elements=st.floats(-50, 50)))
    scale = draw(hnp.arrays(np.float64, (n,), elements=st.floats(1e-3, 1e3)))
    target = draw(hnp.arrays(np.float64, (n, h), elements=st.floats(-1e3, 1e3)))
    mask = draw(hnp.arrays(bool, (n, h)))
    adjust_median = draw(st.booleans())
    if not adjust_median:  # as Calibration.fit leaves it
        offsets[:, np.isclose(quantiles, 0.5)] = 0.0
    step = draw(hnp.arrays(np.float64, (h,), elements=st.floats(0, 5)))
    cal = Calibration(quantiles, offsets, "adaptive", {"adjust_median": adjust_median}, step,
                      draw(st.floats(0, 0.5)))
    series = draw(hnp.arrays(np.int64, (n,), elements=st.integers(0, 2)))
    starts = draw(hnp.arrays(np.int64, (n,), elements=st.integers(0, 30), unique=True))
    return cal, pred, target, mask, scale, series, starts


@settings(max_examples=60, deadline=None)
@given(case=calibration_case())
def test_calibration_keeps_quantiles_ordered_and_the_median_in_place(case):
    cal, pred, target, mask, scale, series, starts = case
    median = np.flatnonzero(np.isclose(cal.quantiles, 0.5))
    applied = cal.apply(pred, scale)
    assert ordered(applied)
    tracked = cal.track(applied, target, mask, scale, series, starts)
    assert ordered(tracked)
    if len(median) and not cal.fitted_on["adjust_median"]:  # the point forecast is not calibrated
        np.testing.assert_array_equal(applied[..., median], pred[..., median])
        np.testing.assert_allclose(tracked[..., median], pred[..., median], rtol=1e-6)
    # conformal offsets fitted on crossed forecasts (any model's) still give ordered quantiles
    fitted = Calibration.fit(pred[..., ::-1].copy(), target, mask, scale, cal.quantiles)
    assert ordered(fitted.apply(pred[..., ::-1].copy(), scale))


# ---- a real bundle with the issue's shrinkage factors, served over HTTP and scored in batch -------------------
@pytest.fixture(scope="module")
def crossing_bundle(real_bundle, tmp_path_factory):
    """The tiny ETTh1 model (six loads observed, as in issue 17) with the shrinkage factors 0.8 / 0.1 / 0.5
    written into it, exported (with an int8 variant) with the project's exporter."""
    from fusioncast.export import export_bundle

    rb = real_bundle("etth1")
    module = copy.deepcopy(rb.module).eval()
    module.net.correction_scale.copy_(torch.tensor(ISSUE_FACTORS))
    path = export_bundle(module, rb.dm, tmp_path_factory.mktemp("crossing") / "bundle", windows=64, int8=True,
                         int8_tolerance=10.0)
    return rb, module, path


def window_requests(rb, n: int) -> list[dict]:
    """n request bodies for validation windows of the single-series set, spread over the split."""
    dm, s = rb.dm, rb.dm.schema
    L, H = s.max_encoder_length, s.max_prediction_length
    _, starts = dm.windows("val")
    picks = starts[np.linspace(0, len(starts) - 1, n).round().astype(int)]
    return [{"series": [series_payload(dm.frame.iloc[d - L : d + H], s, H)]} for d in picks]


def served_quantiles(answer: dict) -> np.ndarray:
    """(series, Q, H) from a forecast answer, in the bundle's quantile order."""
    return np.array([[f["quantiles"][k] for k in ("0.1", "0.5", "0.9")] for f in answer["forecasts"]])


def test_served_forecasts_never_cross_with_shrinkage_factors_that_reorder_quantiles(crossing_bundle, tmp_path):
    rb, module, path = crossing_bundle
    requests = window_requests(rb, 24)
    # the factors do reorder this model's quantiles before its sort: on main they reached the client
    batch = rb.dm.tensors("cpu").gather(*(torch.as_tensor(a) for a in rb.dm.windows("val")))
    with torch.no_grad(), _unsorted(module.net):
        raw = module(*batch.inputs()).numpy()
    assert not ordered(raw)
    # the bundle as exported (fp32, int8), and with an adaptive calibration whose offsets reorder P10 and P90
    calibrated = calibrated_copy(path, tmp_path / "nasty", nasty(rb.dm.schema.max_prediction_length))
    for bundle, variant in ((path, []), (path, ["--int8"]), (calibrated, [])):
        server = Server(bundle, tmp_path, *variant)
        try:
            for body in requests:
                answer = server.post(orjson.dumps(body))
                assert answer.status_code == 200, answer.text
                q = served_quantiles(answer.json())
                assert ordered(q, axis=1), (variant, q)
            # random edits of valid requests: whatever is answered 200 is ordered too
            for body in random_bodies(requests[0], 30, seed=1):
                answer = server.post(body)
                assert answer.status_code < 500, answer.text
                if answer.status_code == 200:
                    assert ordered(served_quantiles(answer.json()), axis=1)
        finally:
            assert server.stop(), server.log.read_text()


def test_batch_scoring_never_crosses_on_either_backend(crossing_bundle, tmp_path):
    import shutil

    import pandas as pd

    from fusioncast.postfit.shrinkage import write_correction_scale
    from fusioncast.predict import predict
    from tests.conftest import compose_config, needs_shared

    rb, _, path = crossing_bundle
    checkpoint = tmp_path / "crossing.ckpt"  # the same weights and factors, for backend=torch
    shutil.copy(rb.checkpoint, checkpoint)
    write_correction_scale(str(checkpoint), ISSUE_FACTORS)
    df = pd.read_csv(needs_shared("ETTh1.csv"))
    q = ["q0.1", "q0.5", "q0.9"]
    for end in np.linspace(9000, 11500, 6).astype(int):  # origins in validation
        df.iloc[:end].to_csv(tmp_path / "input.csv", index=False)
        for backend in (f"bundle={path}", f"ckpt_path={checkpoint}"):
            extra = ["backend=torch"] if backend.startswith("ckpt_path") else []
            out = predict(compose_config("predict.yaml", tmp_path, [backend, *extra, f"input={tmp_path / 'input.csv'}",
                                                                   "output=null"]))
            assert ordered(out[q].to_numpy()), (end, backend)


# ---- calibrations applied after the model's sort: server (app and HTTP), batch scoring, backtests ----------
# offsets in units of the window's target scale that reorder P10 and P90 when simply added: the check
# that the one place applying a calibration (Calibration.apply / track) sorts after it is not vacuous
NASTY_OFFSETS = [4.0, 0.0, -4.0]


@st.composite
def served_calibration(draw, H: int):
    """A random calibration of a 12-step P10/P50/P90 model: conformal or adaptive, offsets up to 4 target
    scales either way (often reordering), the median calibrated or not."""
    method = draw(st.sampled_from(["conformal", "adaptive"]))
    adjust_median = draw(st.booleans())
    offsets = draw(hnp.arrays(np.float64, (H, 3), elements=st.floats(-4, 4)))
    if not adjust_median:
        offsets[:, 1] = 0.0
    step = draw(hnp.arrays(np.float64, (H,), elements=st.floats(0, 2))) if method == "adaptive" else None
    width = draw(st.floats(0, 0.2)) if method == "adaptive" else 0.0
    return Calibration([0.1, 0.5, 0.9], offsets, method, {"adjust_median": adjust_median}, step, width)


def calibrated_copy(bundle, out, cal: Calibration):
    """The bundle with `cal` as its calibration (bundle.json sealed again, as an export would)."""
    import json
    import shutil

    from fusioncast.serve.bundle import write_meta

    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(bundle, out)
    meta = json.loads((out / "bundle.json").read_text())
    meta["calibration"] = cal.to_dict()
    write_meta(out, meta, list(meta["integrity"]["files"]))
    return out


def nasty(H: int, method: str = "adaptive") -> Calibration:
    return Calibration([0.1, 0.5, 0.9], np.tile(NASTY_OFFSETS, (H, 1)), method, {},
                       np.full(H, 0.5) if method == "adaptive" else None, 0.05 if method == "adaptive" else 0.0)


def test_the_nasty_offsets_do_reorder_the_quantiles_before_the_calibration_sorts(crossing_bundle):
    rb, module, _ = crossing_bundle
    p, _, _ = backtest_forecasts(module, rb.dm, 8)
    H = rb.dm.schema.max_prediction_length
    added = p["pred"] + np.tile(NASTY_OFFSETS, (H, 1))[None] * p["scale"][:, None, None]
    assert not ordered(added)
    assert ordered(nasty(H).apply(p["pred"], p["scale"]))


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_the_app_and_batch_scoring_never_cross_whatever_the_calibration(crossing_bundle, tmp_path, data):
    """The real app (in process, FastAPI's TestClient) and fusioncast-predict on both backends, with random
    calibrations in the bundle (and in the run's metrics.json for backend=torch), replay included."""
    import json
    import shutil

    import pandas as pd
    from fastapi.testclient import TestClient

    from fusioncast.postfit.shrinkage import write_correction_scale
    from fusioncast.predict import predict
    from fusioncast.serve.app import ServeConfig, create_app
    from tests.conftest import compose_config, needs_shared

    rb, _, path = crossing_bundle
    H = rb.dm.schema.max_prediction_length
    cal = data.draw(served_calibration(H))
    bundle = calibrated_copy(path, tmp_path / "bundle", cal)
    app = create_app(ServeConfig(bundle=str(bundle), cache_dir=str(tmp_path / "ort")))
    with TestClient(app, base_url="http://127.0.0.1") as client:
        for body in window_requests(rb, 4):
            answer = client.post("/v1/forecast", content=orjson.dumps(body), headers={"content-type": "application/json"})
            assert answer.status_code == 200, answer.text
            assert ordered(served_quantiles(answer.json()), axis=1)
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True, exist_ok=True)
    checkpoint = run / "checkpoints" / "crossing.ckpt"  # the same weights and factors, for backend=torch
    if not checkpoint.exists():
        shutil.copy(rb.checkpoint, checkpoint)
        write_correction_scale(str(checkpoint), ISSUE_FACTORS)
    (run / "metrics.json").write_text(json.dumps({"calibration": cal.to_dict()}))
    end = data.draw(st.integers(9000, 11500), label="table end")
    pd.read_csv(needs_shared("ETTh1.csv")).iloc[:end].to_csv(tmp_path / "input.csv", index=False)
    replay = [f"replay={data.draw(st.integers(1, 30), label='replay')}"] if cal.step is not None else []
    q = ["q0.1", "q0.5", "q0.9"]
    for backend in ([f"bundle={bundle}"], [f"ckpt_path={checkpoint}", "backend=torch"]):
        out = predict(compose_config("predict.yaml", tmp_path, [*backend, f"input={tmp_path / 'input.csv'}",
                                                                "output=null", *replay]))
        assert ordered(out[q].to_numpy()), backend


@settings(max_examples=12, deadline=None)
@given(data=st.data())
def test_backtests_never_cross_whatever_the_calibration(crossing_bundle, data):
    rb, module, _ = crossing_bundle
    cal = data.draw(served_calibration(rb.dm.schema.max_prediction_length))
    origins = data.draw(st.integers(1, 12), label="origins")
    split = data.draw(st.sampled_from(["val", "test"]), label="split")
    p, times, _ = backtest_forecasts(module, rb.dm, origins, split, calibration=cal)
    assert len(p["pred"]) == len(times) > 0 and ordered(p["pred"])
