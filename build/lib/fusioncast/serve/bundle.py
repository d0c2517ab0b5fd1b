"""A bundle on disk (model.onnx + bundle.json) and the onnxruntime session that runs it. No torch.

onnxruntime is tuned for a small model answering small batches: one intra-op thread by default
(a thread pool costs more than it saves on a (1, 36, 20) input), sequential execution, and the
graph optimised once (without the fusions in DISABLED_OPTIMIZERS) and cached on disk, keyed by the
model's sha256, onnxruntime's version and those settings.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fusioncast.calibration import Calibration
from fusioncast.data.inference import INTERPRETATION_NAMES, OUTPUT_NAMES
from fusioncast.data.preprocess import Preprocessor

log = logging.getLogger(__name__)

BUNDLE_FORMAT = "fusioncast-bundle"
FORMAT_VERSION = 1
META_FILE = "bundle.json"
MODEL_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"
EXAMPLE_FILE = "example_request.json"
# onnxruntime's graph fusions that make this model slower. SkipLayerNormFusion turns every
# LayerNorm(x + skip) into one SkipLayerNormalization op whose CPU kernel is slower than the two ops
# it replaces: 830 us against 230 us for Add + LayerNormalization on a (64, 42, 64) input
# (onnxruntime 1.32, one thread), 12 % of a batch-64 call of the stallion model.
DISABLED_OPTIMIZERS = ("SkipLayerNormFusion",)


class BundleError(RuntimeError):
    """A bundle directory is missing, malformed or its model does not match its recorded sha256."""


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def preprocessing_meta(pp: Preprocessor) -> dict:
    """The bundle.json keys that rebuild a Preprocessor (schema, freq, vocabularies, scalers)."""
    d = pp.to_dict()
    return {"schema": d["schema"], "freq": d["freq"], "vocabularies": d["vocab"],
            "scalers": {k: d[k] for k in ("real_center", "real_scale", "target_scales")}}


@dataclass
class Bundle:
    """bundle.json's content and the fitted preprocessing, for the files in `path`."""

    path: Path
    meta: dict
    pp: Preprocessor

    @classmethod
    def load(cls, path: str | os.PathLike, verify: bool = True) -> "Bundle":
        path = Path(path)
        meta_file = path / META_FILE
        if not meta_file.is_file():
            raise BundleError(f"{path} is not a bundle: {META_FILE} not found")
        meta = json.loads(meta_file.read_text())
        if meta.get("format") != BUNDLE_FORMAT or meta.get("format_version", 0) > FORMAT_VERSION:
            raise BundleError(f"{meta_file}: not a {BUNDLE_FORMAT} v{FORMAT_VERSION} file")
        pp = Preprocessor.from_dict({"schema": meta["schema"], "freq": meta["freq"], "vocab": meta["vocabularies"],
                                     **meta["scalers"]})
        bundle = cls(path, meta, pp)
        if verify:
            for variant in ("fp32", "int8") if bundle.has_int8 else ("fp32",):
                info = bundle.model_info(variant)
                got = sha256_file(path / info["file"])
                if got != info["sha256"]:
                    raise BundleError(f"{path / info['file']} has sha256 {got}, bundle.json says {info['sha256']}")
        return bundle

    @property
    def has_int8(self) -> bool:
        return bool((self.meta.get("int8") or {}).get("kept"))

    def model_info(self, variant: str = "fp32") -> dict:
        if variant == "fp32":
            return self.meta["model"]
        if variant == "int8":
            if not self.has_int8:
                raise BundleError(f"{self.path} has no int8 model (export with int8.enabled=true)")
            return self.meta["int8"]
        raise BundleError(f"unknown model variant {variant!r} (fp32 or int8)")

    def model_path(self, variant: str = "fp32") -> Path:
        return self.path / self.model_info(variant)["file"]

    @property
    def quantiles(self) -> list[float]:
        return list(self.meta["quantiles"])

    def summary(self) -> dict:
        """What a client needs to know about the model (GET /v1/model)."""
        s = self.pp.schema
        return {
            "name": self.meta.get("name"), "version": self.meta.get("version"),
            "sha256": self.meta["model"]["sha256"], "created_at": self.meta.get("created_at"),
            "freq": self.pp.freq, "max_encoder_length": s.max_encoder_length,
            "max_prediction_length": s.max_prediction_length, "quantiles": self.quantiles,
            "schema": s.to_dict(), "vocabularies": self.pp.vocab,
            "series": sorted(self.pp.target_scales), "metrics": self.meta.get("metrics"),
            "parity": self.meta.get("parity"), "variables": self.meta.get("variables"),
            "calibration": self.meta.get("calibration"),
        }


# in the cache key: a graph cached with other fusions is not reused
_OPTIMIZER_TAG = hashlib.sha256(",".join(DISABLED_OPTIMIZERS).encode()).hexdigest()[:8]


def _cache_dir(cache_dir: str | os.PathLike | None) -> Path:
    if cache_dir:
        return Path(cache_dir)
    root = os.environ.get("FUSIONCAST_CACHE", Path.home() / ".cache" / "fusioncast")
    return Path(root) / "ort"


class Model:
    """onnxruntime session of a bundle's model: inputs by name in, [quantiles (+ interpretation)] out.

    When training calibrated the quantiles (calibration=conformal), bundle.json holds the offsets and
    they are applied here, with the same numpy code as in evaluation, so every client gets them.
    """

    def __init__(self, bundle: Bundle, variant: str = "fp32", threads: int = 1, cache_dir: str | None = None,
                 cache: bool = True):
        import onnxruntime as ort  # here, so that importing this module stays cheap

        self.bundle = bundle
        model_path = bundle.model_path(variant)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.log_severity_level = 3
        # no spinning: idle intra-op threads would burn the cores the HTTP event loop needs
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        load_from = model_path
        if cache:
            sha = bundle.model_info(variant)["sha256"][:16]
            cached = _cache_dir(cache_dir) / f"{sha}-ort{ort.__version__}-{platform.machine()}-{_OPTIMIZER_TAG}.onnx"
            if cached.is_file():
                load_from = cached
                opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # optimised already
            else:
                try:
                    cached.parent.mkdir(parents=True, exist_ok=True)
                    tmp = cached.with_suffix(f".{os.getpid()}.tmp")
                    opts.optimized_model_filepath = str(tmp)
                except OSError as e:  # a read-only home in a container: just optimise in memory
                    log.info("not caching the optimised graph: %s", e)
        self.session = ort.InferenceSession(str(load_from), opts, providers=["CPUExecutionProvider"],
                                            disabled_optimizers=list(DISABLED_OPTIMIZERS))
        if opts.optimized_model_filepath:
            try:
                os.replace(opts.optimized_model_filepath, cached)  # atomic: several workers may race here
            except OSError as e:
                log.info("not caching the optimised graph: %s", e)
        self.input_names = [i.name for i in self.session.get_inputs()]
        outputs = [o.name for o in self.session.get_outputs()]
        self.has_interpretation = all(n in outputs for n in INTERPRETATION_NAMES)
        self.loaded_from = str(load_from)
        self.calibration = Calibration.from_dict(bundle.meta.get("calibration"))

    def __call__(self, inputs: dict[str, np.ndarray], interpretation: bool = False) -> list[np.ndarray]:
        """Run on a batch; graph inputs the exporter dropped (zero-width groups) are simply not fed."""
        names = list(OUTPUT_NAMES) + (list(INTERPRETATION_NAMES) if interpretation and self.has_interpretation else [])
        outputs = self.session.run(names, {n: inputs[n] for n in self.input_names})
        if self.calibration is not None:
            outputs[0] = self.calibration.apply(outputs[0], inputs["target_scale"])
        return outputs
