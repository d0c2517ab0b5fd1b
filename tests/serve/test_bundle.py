"""A bundle is checked whole: every file and bundle.json's own content against its integrity record,
names confined to the bundle, malformed bundles stopped with one line, and a cached optimised graph
used only when it is the one made from the verified model."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from fusioncast.data.inference import empty_inputs
from fusioncast.serve.bundle import (
    Bundle,
    BundleError,
    Model,
    bundle_digest,
    sha256_file,
    write_meta,
)


@pytest.fixture(scope="module")
def stallion(real_bundle):
    return real_bundle("stallion")


@pytest.fixture
def copy(stallion, tmp_path):
    """A fresh copy of the stallion bundle and its bundle.json content."""
    path = tmp_path / "bundle"
    shutil.copytree(stallion.path, path)
    return path, json.loads((path / "bundle.json").read_text())


def sealed(path, meta) -> None:
    write_meta(path, meta, [f for f in meta["integrity"]["files"] if (path / f).is_file()])


def test_export_seals_the_bundle(stallion):
    meta = json.loads((stallion.path / "bundle.json").read_text())
    record = meta["integrity"]
    assert meta["format_version"] == 2 and record["algorithm"] == "sha256"
    assert set(record["files"]) == {"model.onnx", "example_request.json"}
    assert all(sha256_file(stallion.path / f) == h for f, h in record["files"].items())
    assert Bundle.load(stallion.path).digest == record["sha256"]
    assert meta["checkpoint"] == "tiny.ckpt"  # its name, not a path of the training machine


@pytest.mark.parametrize("edit", ["vocabulary", "scaler", "quantiles", "example"])
def test_an_edit_anywhere_in_the_bundle_is_refused(copy, edit):
    path, meta = copy
    if edit == "example":
        (path / "example_request.json").write_text('{"series": []}')
        match = "example_request.json has sha256"
    else:
        if edit == "vocabulary":
            meta["vocabularies"]["sku"][0] = "SKU_XX"
        elif edit == "scaler":
            key = next(iter(meta["scalers"]["target_scales"]))
            meta["scalers"]["target_scales"][key][1] *= 1.5  # the forecast moves, nothing else shows it
        else:
            meta["quantiles"] = [0.2, 0.5, 0.8]
        (path / "bundle.json").write_text(json.dumps(meta))
        match = "was changed after export"
    with pytest.raises(BundleError, match=match):
        Bundle.load(path)


def test_a_pinned_digest_is_checked(copy, stallion):
    path, meta = copy
    digest = meta["integrity"]["sha256"]
    assert Bundle.load(path, expect_sha256=digest.upper()).digest == digest
    meta["name"] = "another"
    sealed(path, meta)  # a consistent bundle, but not the one deployed
    with pytest.raises(BundleError, match=f"not the expected {digest}"):
        Bundle.load(path, expect_sha256=digest)


@pytest.mark.parametrize("name", ["../../model.onnx", "/etc/passwd", "sub/../../model.onnx", "link.onnx"])
def test_model_files_stay_inside_the_bundle(copy, name):
    path, meta = copy
    outside = path.parent / "model.onnx"
    shutil.copy(path / "model.onnx", outside)
    if name == "link.onnx":
        os.symlink(outside, path / name)
    meta["model"]["file"] = name
    files = {**meta["integrity"]["files"], name: meta["model"]["sha256"]}
    # a record consistent with it (as a forger would write): the names are checked, not only the hashes
    meta["integrity"] = {"algorithm": "sha256", "files": files, "sha256": bundle_digest(meta, files)}
    (path / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="inside the bundle directory|leads outside the bundle"):
        Bundle.load(path)


def _malform(path, meta, how: str) -> str:
    """Damage a bundle one way; the words its error must hold."""
    meta_file = path / "bundle.json"
    if how == "truncated":
        meta_file.write_text(meta_file.read_text()[:500])
        return "is not valid JSON"
    if how == "a list":
        meta_file.write_text("[1, 2, 3]")
        return "must hold a JSON object, it holds a list"
    if how == "no schema":
        del meta["schema"]
        sealed(path, meta)
        return "'schema' must be a JSON object, it is missing"
    if how == "schema of the wrong kind":
        meta["schema"] = {"time_col": "date", "target": "volume", "max_encoder_length": 0}
        sealed(path, meta)
        return "its preprocessing"
    if how == "garbage model, matching hash":
        (path / "model.onnx").write_bytes(os.urandom(4096))
        meta["model"]["sha256"] = sha256_file(path / "model.onnx")
        sealed(path, meta)
        return "onnxruntime cannot load it"
    if how == "old format":
        meta["format_version"] = 1
        del meta["integrity"]
        meta_file.write_text(json.dumps(meta))
        return "export the checkpoint again"
    if how == "not a bundle":
        meta_file.unlink()
        return "bundle.json not found"
    raise AssertionError(how)


MALFORMED = ["truncated", "a list", "no schema", "schema of the wrong kind", "garbage model, matching hash",
             "old format", "not a bundle"]


@pytest.mark.parametrize("how", MALFORMED)
def test_a_malformed_bundle_is_one_named_error(copy, how):
    path, meta = copy
    match = _malform(path, meta, how)
    with pytest.raises(BundleError, match=match):
        Model(Bundle.load(path), cache=False)


@pytest.mark.parametrize("how", ["truncated", "garbage model, matching hash"])
def test_the_commands_stop_on_a_malformed_bundle_with_one_line(copy, tmp_path, how):
    path, meta = copy
    match = _malform(path, meta, how)
    for cmd in ([sys.executable, "-m", "fusioncast.serve.cli", str(path), "--port", "0"],
                [sys.executable, "-m", "fusioncast.predict", f"bundle={path}", f"input={tmp_path / 'x.csv'}",
                 "output=null", f"hydra.run.dir={tmp_path / 'run'}"]):
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
        lines = run.stderr.strip().splitlines()
        assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr[-3000:]
        assert match in lines[-1] and lines[-1].startswith(("fusioncast-serve: ", "fusioncast-predict: ")), lines


def _tampered_graph(path, out) -> None:
    """The model with its quantile head's bias moved: a valid graph that forecasts something else."""
    proto = onnx.load(str(path))
    init = next(t for t in proto.graph.initializer if t.name == "net.output.bias")
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) + 5.0, init.name))
    onnx.save(proto, str(out))


def test_a_cached_graph_is_used_only_when_it_is_the_verified_models(stallion, tmp_path):
    bundle = Bundle.load(stallion.path)
    inputs = empty_inputs(bundle.pp, 4)
    want = Model(bundle, cache=False)(inputs)[0]
    cache = tmp_path / "cache"
    first = Model(bundle, cache_dir=str(cache))
    (cached,) = cache.glob("*.onnx")
    assert bundle.meta["model"]["sha256"] in cached.name and (cache / f"{cached.name}.json").is_file()
    assert Model(bundle, cache_dir=str(cache)).loaded_from == str(cached)  # the cache works
    np.testing.assert_allclose(first(inputs)[0], want, rtol=1e-6)
    # someone puts another graph in its place: never served, optimised again from the verified model
    _tampered_graph(cached, cached)
    session = ort.InferenceSession(str(cached), providers=["CPUExecutionProvider"])
    served_on_main = session.run(["quantiles"], {i.name: inputs[i.name] for i in session.get_inputs()})[0]
    assert np.abs(served_on_main - want).max() > 1.0  # what a server trusting the cache would answer
    again = Model(bundle, cache_dir=str(cache))
    assert again.loaded_from == str(bundle.model_path())
    np.testing.assert_allclose(again(inputs)[0], want, rtol=1e-6)
    assert Model(bundle, cache_dir=str(cache)).loaded_from == str(cached)  # and the cache is whole again
    # a directory others may write to is not used at all
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o777)
    os.chmod(shared, 0o777)
    assert Model(bundle, cache_dir=str(shared)).loaded_from == str(bundle.model_path())
    assert not list(shared.iterdir())
