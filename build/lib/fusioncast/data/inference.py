"""One forecast window per series, in numpy: the model inputs that serving and batch scoring share.

A forecast starts right after a series' history: its encoder is the last `max_encoder_length` steps
of the history (left-padded and masked when the history is shorter), its decoder the next
`max_prediction_length` steps, whose known inputs the caller supplies. Both the HTTP server (from
JSON) and `fusioncast-predict` (from a table) encode the raw values with the fitted Preprocessor and
then call `assemble_window`, so equal raw inputs give bit-identical model inputs.
"""

from __future__ import annotations

import numpy as np

from fusioncast.data.preprocess import Preprocessor

# The ONNX graph's inputs, in the model's argument order (the first eight fields of windows.Batch).
INPUT_NAMES = ("static_cat", "static_real", "encoder_cat", "encoder_real", "decoder_cat", "decoder_real",
               "encoder_mask", "target_scale")
OUTPUT_NAMES = ("quantiles",)
INTERPRETATION_NAMES = ("static_weights", "encoder_weights", "decoder_weights", "attention")


def assemble_window(pp: Preprocessor, key: str, static_cat: np.ndarray, static_real: np.ndarray,
                    encoder_cat: np.ndarray, encoder_real: np.ndarray, observed: np.ndarray,
                    decoder_cat: np.ndarray, decoder_real: np.ndarray) -> tuple[np.ndarray, ...]:
    """The eight model inputs of one series (no batch axis), from its encoded history and future.

    encoder_cat (n, n_tv_cat) int64 codes, encoder_real (n, 1 + n_known_real + n_unknown_real) raw
    with the target in column 0, observed (n,) bool; decoder_cat (H, n_known_cat), decoder_real
    (H, n_known_real). Only the last L history steps are used. A shorter history is left-padded as
    training pads short windows (windows.SeriesTensors.gather): the first step's inputs repeated,
    the target masked. The target scale is the fitted one of `key`; a series unseen in training is
    scaled by the observed targets of its window.
    """
    L = pp.schema.max_encoder_length
    encoder_cat, encoder_real, observed = encoder_cat[-L:], encoder_real[-L:], observed[-L:]
    n = len(observed)
    if n < L:
        pad = np.r_[np.zeros(L - n, np.int64), np.arange(n)]
        encoder_cat, encoder_real = encoder_cat[pad], encoder_real[pad]
        observed = np.r_[np.zeros(L - n, bool), observed]
    target_scale = np.asarray(pp.target_scale(key, encoder_real[observed, 0].astype(np.float64)), np.float32)
    real = np.array(encoder_real, np.float32)
    real[:, 0] = np.where(observed, real[:, 0], 0.0)
    return (np.asarray(static_cat, np.int64), np.asarray(static_real, np.float32), np.asarray(encoder_cat, np.int64),
            real, np.asarray(decoder_cat, np.int64), np.asarray(decoder_real, np.float32),
            np.asarray(observed, bool), target_scale)


def stack_windows(pp: Preprocessor, windows: list[tuple[np.ndarray, ...]]) -> dict[str, np.ndarray]:
    """Batch windows from `assemble_window` into the model's named inputs (a batch of 0 keeps its shapes)."""
    if len(windows) == 1:  # the common single-series request: a view, no copy
        return {name: part[None] for name, part in zip(INPUT_NAMES, windows[0])}
    if windows:
        return {name: np.stack(parts) for name, parts in zip(INPUT_NAMES, zip(*windows))}
    return empty_inputs(pp, 0)


def empty_inputs(pp: Preprocessor, batch: int) -> dict[str, np.ndarray]:
    """Zero-filled inputs of the right shapes and dtypes (warm-up, examples)."""
    s = pp.schema
    L, H = s.max_encoder_length, s.max_prediction_length
    n_tv_cat, n_known_cat = len(pp.time_varying_categoricals), len(s.known_categoricals)
    n_real = len(pp.time_varying_reals)
    return {
        "static_cat": np.zeros((batch, len(s.static_categoricals)), np.int64),
        "static_real": np.zeros((batch, len(s.static_reals)), np.float32),
        "encoder_cat": np.zeros((batch, L, n_tv_cat), np.int64),
        "encoder_real": np.zeros((batch, L, n_real), np.float32),
        "decoder_cat": np.zeros((batch, H, n_known_cat), np.int64),
        "decoder_real": np.zeros((batch, H, len(s.time_varying_known_reals)), np.float32),
        "encoder_mask": np.ones((batch, L), bool),
        "target_scale": np.tile(np.array([0.0, 1.0], np.float32), (batch, 1)),
    }


def variable_names(pp: Preprocessor) -> dict[str, list[str]]:
    """Names of the variables the interpretation weights refer to (order as in models/tft.py)."""
    s = pp.schema
    return {
        "static": s.static_categoricals + s.static_reals + [f"{s.target}_level", f"{s.target}_scale"],
        "encoder": pp.time_varying_categoricals + pp.time_varying_reals,
        "decoder": s.known_categoricals + s.time_varying_known_reals,
    }
