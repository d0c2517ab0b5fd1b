"""Tests for the Temporal Fusion Transformer: shapes, masking, causality, low precision, ONNX."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fusioncast.models import TemporalFusionTransformer
from fusioncast.models.layers import (
    Dropout,
    InterpretableMultiHeadAttention,
    VariableSelectionNetwork,
)

L, H = 8, 4
RICH = dict(  # every input kind present
    static_categorical_cardinalities=[3, 5],
    encoder_categorical_cardinalities=[4, 6, 3],
    num_known_categoricals=2,
    num_static_reals=2,
    num_known_reals=2,
    num_unknown_reals=1,
    real_center=[1.0, -2.0, 100.0, 0.5, 3.0],
    real_scale=[2.0, 0.5, 10.0, 1.0, 4.0],
)
UNIVARIATE = dict(  # the target alone: empty static, categorical and decoder groups
    static_categorical_cardinalities=[],
    encoder_categorical_cardinalities=[],
    num_known_categoricals=0,
    num_static_reals=0,
    num_known_reals=0,
    num_unknown_reals=0,
)


def make_model(config: dict, **overrides) -> TemporalFusionTransformer:
    torch.manual_seed(0)
    kwargs = dict(max_encoder_length=L, max_prediction_length=H, hidden_size=16, attention_heads=4, dropout=0.1)
    return TemporalFusionTransformer(**{**config, **kwargs, **overrides})


def make_batch(model: TemporalFusionTransformer, batch: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random raw-unit inputs; row 0 has its first 3 encoder steps unobserved (target filler 0)."""
    g = torch.Generator().manual_seed(seed)
    cards = model.cat_cardinalities.tolist()
    static_cards = cards[: model.num_static_categoricals]
    encoder_cards = cards[model.num_static_categoricals :]

    def codes(shape: tuple[int, ...], cardinalities: list[int]) -> torch.Tensor:
        columns = [torch.randint(0, c, shape, generator=g) for c in cardinalities]
        return torch.stack(columns, -1) if columns else torch.zeros(*shape, 0, dtype=torch.long)

    n_encoder_reals = 1 + model.num_known_reals + model.num_unknown_reals
    center = 50 + 20 * torch.randn(batch, generator=g)
    scale = 5 + torch.rand(batch, generator=g)
    encoder_real = 10 * torch.randn(batch, L, n_encoder_reals, generator=g)
    encoder_real[..., 0] = center[:, None] + scale[:, None] * torch.randn(batch, L, generator=g)
    mask = torch.ones(batch, L, dtype=torch.bool)
    mask[0, :3] = False
    encoder_real[..., 0] = encoder_real[..., 0].masked_fill(~mask, 0.0)
    return dict(
        static_cat=codes((batch,), static_cards),
        static_real=10 * torch.randn(batch, model.num_static_reals, generator=g),
        encoder_cat=codes((batch, L), encoder_cards),
        encoder_real=encoder_real,
        decoder_cat=codes((batch, H), encoder_cards[: model.num_known_categoricals]),
        decoder_real=10 * torch.randn(batch, H, model.num_known_reals, generator=g),
        encoder_mask=mask,
        target_scale=torch.stack([center, scale], -1),
    )


@pytest.mark.parametrize("config", [RICH, UNIVARIATE], ids=["rich", "univariate"])
@pytest.mark.parametrize("quantiles", [(0.5,), (0.1, 0.5, 0.9), (0.02, 0.1, 0.25, 0.5, 0.75, 0.9, 0.98)])
def test_output_shape_and_dtype(config, quantiles):
    model = make_model(config, quantiles=quantiles).eval()
    out = model(**make_batch(model, 5))
    assert out.shape == (5, H, len(quantiles))
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()


# static: categoricals + reals + the 2 target-scale features; encoder: categoricals + target +
# known + unknown reals; decoder: known categoricals + known reals.
@pytest.mark.parametrize("config, n_static, n_encoder, n_decoder", [(RICH, 6, 7, 4), (UNIVARIATE, 2, 1, 0)],
                         ids=["rich", "univariate"])
def test_interpretation_shapes_and_weights(config, n_static, n_encoder, n_decoder):
    model = make_model(config, lstm_layers=2).eval()
    _, static_w, encoder_w, decoder_w, attention = model(**make_batch(model, 3), return_interpretation=True)
    assert (model.num_static_vars, model.num_encoder_vars, model.num_decoder_vars) == (n_static, n_encoder, n_decoder)
    assert static_w.shape == (3, n_static)
    assert encoder_w.shape == (3, L, n_encoder)
    assert decoder_w.shape == (3, H, n_decoder)
    assert attention.shape == (3, H, L + H)
    for weights in (static_w, encoder_w, decoder_w, attention):
        if weights.shape[-1]:
            torch.testing.assert_close(weights.sum(-1), torch.ones(weights.shape[:-1]))
    # Unobserved encoder steps and future decoder steps get exactly zero attention.
    assert (attention[0, :, :3] == 0).all()
    assert (attention[:, :, L:].triu(diagonal=1) == 0).all()


def test_masked_target_values_do_not_change_output():
    model = make_model(RICH).eval()
    batch = make_batch(model, 4)
    mask = batch["encoder_mask"]
    mask[2, :5] = False
    reference = model(**batch, return_interpretation=True)

    filled = batch["encoder_real"].clone()
    filled[..., 0] = torch.where(mask, filled[..., 0], 1e6 * torch.randn(filled.shape[:2]))
    for got, want in zip(model(**{**batch, "encoder_real": filled}, return_interpretation=True), reference):
        torch.testing.assert_close(got, want, rtol=0, atol=0)

    # The same change at an observed step must move the forecast, or the check above is vacuous.
    observed = batch["encoder_real"].clone()
    observed[2, 6, 0] += 10.0
    assert not torch.allclose(model(**{**batch, "encoder_real": observed})[2], reference[0][2])


def test_decoder_is_causal():
    model = make_model(RICH).eval()
    batch = make_batch(model, 4)
    reference = model(**batch)
    step = 2
    changed = dict(batch, decoder_real=batch["decoder_real"].clone(), decoder_cat=batch["decoder_cat"].clone())
    changed["decoder_real"][:, step:] += 5.0
    changed["decoder_cat"][:, step:] = (changed["decoder_cat"][:, step:] + 1) % 4  # valid for cardinalities 4, 6
    out = model(**changed)
    torch.testing.assert_close(out[:, :step], reference[:, :step], rtol=0, atol=0)
    assert not torch.allclose(out[:, step:], reference[:, step:])


def test_output_is_in_target_units():
    """A head that always says q (in normalised units) must forecast center + q * scale."""
    model = make_model(RICH, quantiles=(0.1, 0.5, 0.9)).eval()
    head = torch.tensor([-1.0, 0.0, 2.0])
    with torch.no_grad():
        model.output.weight.zero_()
        model.output.bias.copy_(head)
    batch = make_batch(model, 3)
    center, scale = batch["target_scale"].unbind(-1)
    want = center[:, None, None] + scale[:, None, None] * head
    torch.testing.assert_close(model(**batch), want.expand(3, H, 3))


def test_out_of_range_categories_use_unknown_bucket():
    model = make_model(RICH).eval()
    batch = make_batch(model, 3)
    zeroed = dict(batch, static_cat=torch.zeros_like(batch["static_cat"]))
    wild = dict(batch, static_cat=torch.tensor([[3, 5], [-1, 99], [7, -3]]))
    torch.testing.assert_close(model(**wild), model(**zeroed), rtol=0, atol=0)


def test_bf16_autocast_is_finite():
    model = make_model(RICH).eval()
    batch = make_batch(model, 4)
    batch["encoder_mask"][1, ::2] = False
    batch["encoder_mask"][3] = False  # a series with no observed history at all
    with torch.autocast("cpu", dtype=torch.bfloat16):
        outputs = model(**batch, return_interpretation=True)
    for out in outputs:
        assert torch.isfinite(out).all()
    assert (outputs[-1][3, :, :L] == 0).all()


def test_fp16_attention_survives_fully_masked_rows():
    # Pure fp16 on the layer: CPU autocast cannot run nn.LSTM in fp16 (oneDNN), CUDA can.
    torch.manual_seed(0)
    attention = InterpretableMultiHeadAttention(16, 4, dropout=0.0).half().eval()
    memory = torch.randn(2, 6, 16, dtype=torch.float16)
    mask = torch.rand(2, 3, 6) > 0.5
    mask[0, 1] = False  # a query that may attend to nothing
    out, weights = attention(memory[:, :3], memory, mask)
    assert torch.isfinite(out).all() and torch.isfinite(weights).all()
    assert (weights[mask.logical_not() & mask.any(-1, keepdim=True)] == 0).all()


@pytest.mark.parametrize("variable_size", [4, None], ids=["narrow", "full"])
@pytest.mark.parametrize("config", [RICH, UNIVARIATE], ids=["rich", "univariate"])
def test_training_step_reaches_every_parameter(config, variable_size):
    model = make_model(config, lstm_layers=2, variable_size=variable_size).train()
    batch = make_batch(model, 6)
    target = torch.randn(6, H, 1) * 5 + 50
    quantiles = torch.tensor(model.quantiles)
    error = target - model(**batch)
    loss = torch.maximum(quantiles * error, (quantiles - 1) * error).mean()
    loss.backward()
    # DDP (find_unused_parameters=False) needs every parameter in the graph.
    missing = [name for name, p in model.named_parameters() if p.grad is None]
    assert not missing
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    if config is RICH:  # with more than one variable per group every weight matters
        dead = [name for name, p in model.named_parameters() if not p.grad.any()]
        assert not dead


def test_variable_width_and_full_width_layouts():
    narrow, full = make_model(RICH, variable_size=4), make_model(RICH, variable_size=None)
    assert narrow.variable_size == 4 and full.variable_size == 16 == make_model(RICH, variable_size=64).variable_size
    assert narrow.encoder_vsn.project is not None and full.encoder_vsn.project is None
    assert sum(p.numel() for p in narrow.parameters()) < sum(p.numel() for p in full.parameters())


def test_projection_is_a_per_variable_linear_layer_then_mixing():
    """The fused (N, V e) x (V e, d) matmul equals mapping each variable to d, then the weighted sum."""
    torch.manual_seed(0)
    vsn = VariableSelectionNetwork(5, 16, dropout=0.0, context_size=16, input_size=4).eval()
    x, context = torch.randn(3, 7, 5, 4), torch.randn(3, 1, 16)
    mixed, weights = vsn(x, context)
    z = vsn.var_grns(x.reshape(-1, 5, 4).transpose(0, 1).contiguous())  # (V, N, e)
    per_var = torch.stack([z[v] @ vsn.project.weight[v] + vsn.project.bias[v] for v in range(5)])  # (V, N, d)
    want = (per_var * weights.reshape(-1, 5).T.unsqueeze(-1)).sum(0).reshape(3, 7, 16)
    torch.testing.assert_close(mixed, want, rtol=1e-5, atol=1e-5)


# known inputs all categorical (calendar only): the decoder's selection group has no real variable
CALENDAR_ONLY = {**RICH, "num_known_reals": 0, "real_center": [1.0, -2.0, 3.0], "real_scale": [2.0, 0.5, 4.0]}


@pytest.mark.parametrize("config", [RICH, CALENDAR_ONLY], ids=["rich", "calendar-only"])
def test_categoricals_per_category_equal_per_step(config):
    """The selection GRNs of categoricals run once per category and are gathered: same outputs."""
    model = make_model(config).eval()
    batch = make_batch(model, 4)
    assert model.vocab_tables
    want = model(**batch, return_interpretation=True)
    model.vocab_tables = False
    for got, expected in zip(model(**batch, return_interpretation=True), want):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_cpu_dropout_mask_is_bernoulli_and_eval_is_identity():
    torch.manual_seed(0)
    drop = Dropout(0.25)
    x = torch.ones(200_000)
    y = drop.train()(x)
    kept = y != 0
    assert abs(kept.float().mean().item() - 0.75) < 0.005
    torch.testing.assert_close(y[kept], torch.full_like(y[kept], 1 / 0.75))
    assert torch.equal(drop.eval()(x), x)
    assert torch.equal(Dropout(0.0).train()(x), x)


class _WithInterpretation(torch.nn.Module):
    """Export wrapper: a graph has fixed outputs, so fix return_interpretation=True."""

    def __init__(self, model: TemporalFusionTransformer):
        super().__init__()
        self.model = model

    def forward(
        self, static_cat, static_real, encoder_cat, encoder_real, decoder_cat, decoder_real, encoder_mask, target_scale
    ):
        inputs = (static_cat, static_real, encoder_cat, encoder_real, decoder_cat, decoder_real, encoder_mask)
        return self.model(*inputs, target_scale, return_interpretation=True)


# Each export costs several CPU seconds, so the empty-groups variant only runs with the slow tests.
@pytest.mark.parametrize(
    "config, variable_size",
    [(RICH, 4), pytest.param(RICH, None, marks=pytest.mark.slow), pytest.param(UNIVARIATE, 4, marks=pytest.mark.slow)],
    ids=["rich-narrow", "rich-full", "univariate"],
)
def test_onnx_export_matches_torch(config, variable_size, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    model = make_model(config, variable_size=variable_size).eval()
    wrapper = _WithInterpretation(model)
    example = make_batch(model, 3)
    batch_dim = torch.export.Dim("batch")
    path = tmp_path / "tft.onnx"
    torch.onnx.export(
        wrapper,
        tuple(example.values()),
        str(path),
        dynamo=True,
        input_names=list(example),
        output_names=["quantiles", "static_weights", "encoder_weights", "decoder_weights", "attention"],
        dynamic_shapes={name: {0: batch_dim} for name in example},
    )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch_size, seed in [(3, 1), (5, 2), (1, 3)]:
        batch = make_batch(model, batch_size, seed)
        got = session.run(None, {name: t.numpy() for name, t in batch.items()})
        with torch.no_grad():
            want = wrapper(**batch)
        for g, w in zip(got, want):
            assert g.shape == tuple(w.shape)
            np.testing.assert_allclose(g, w.numpy(), rtol=1e-4, atol=1e-6)
