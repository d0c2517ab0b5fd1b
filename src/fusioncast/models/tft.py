"""Temporal Fusion Transformer (Lim et al. 2021, https://arxiv.org/abs/1912.09363).

Windows have fixed length: L encoder steps (the history, left-padded and masked) and H decoder
steps (the horizon). Inputs come in raw units and outputs leave in target units: normalisation
lives inside the model so that an exported ONNX graph is self-contained.

Variable order, as used by the interpretation weights:
  static:  static categoricals, static reals, target center/scale, target log-scale
  encoder: encoder categoricals (known, then unknown), target, known reals, unknown reals
  decoder: known categoricals, known reals
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .layers import (
    GateAddNorm,
    GatedResidualNetwork,
    InterpretableMultiHeadAttention,
    Linear,
    VariableSelectionNetwork,
    linear,
)

# Floor for the per-series target scale: a constant series has scale 0.
MIN_TARGET_SCALE = 1e-6
# Time-varying categoricals with at most this many categories run their variable selection GRNs once
# per category (then gathered) rather than once per time step; larger vocabularies stay per step.
MAX_VOCAB_TABLE = 1024


class TemporalFusionTransformer(nn.Module):
    """Quantile forecaster over fixed (L, H) windows; see the module docstring for variable order.

    Categorical cardinalities count every code including the unknown bucket 0. The encoder's
    categoricals list the known ones first (``num_known_categoricals`` of them; ``decoder_cat``
    holds exactly these), then the observed-only ones. ``num_unknown_reals`` excludes the
    target. ``real_center``/``real_scale`` normalise the reals (order: static, known, unknown)
    and are saved as buffers; the target is normalised per series by ``target_scale``, whose
    center/scale and log-scale also enter the static variable selection.

    ``variable_size`` is the width of each variable's embedding and of its GRN inside the variable
    selection networks (pytorch-forecasting's ``hidden_continuous_size``), capped at
    ``hidden_size``; None gives every variable the full ``hidden_size`` (the paper's, and NVIDIA's,
    layout). The per-variable GRNs are most of the model's cost, so a small width is what makes
    wide inputs cheap.
    """

    def __init__(
        self,
        *,
        static_categorical_cardinalities: list[int],
        encoder_categorical_cardinalities: list[int],
        num_known_categoricals: int,
        num_static_reals: int,
        num_known_reals: int,
        num_unknown_reals: int,
        max_encoder_length: int,
        max_prediction_length: int,
        quantiles: Sequence[float] = (0.1, 0.5, 0.9),
        hidden_size: int = 32,
        attention_heads: int = 4,
        dropout: float = 0.1,
        lstm_layers: int = 1,
        real_center: list[float] | None = None,
        real_scale: list[float] | None = None,
        variable_size: int | None = 8,
        linear_skip: int = 0,
    ):
        super().__init__()
        assert 0 <= num_known_categoricals <= len(encoder_categorical_cardinalities)
        self.max_encoder_length = max_encoder_length
        self.max_prediction_length = max_prediction_length
        self.quantiles = [float(q) for q in quantiles]
        if not self.quantiles or any(not 0 < q < 1 for q in self.quantiles) or any(
                a >= b for a, b in zip(self.quantiles, self.quantiles[1:])):
            raise ValueError("quantiles (model.quantiles) must be strictly increasing levels in (0, 1), "
                             f"got {list(quantiles)}")
        self.num_static_categoricals = len(static_categorical_cardinalities)
        self.num_encoder_categoricals = len(encoder_categorical_cardinalities)
        self.num_known_categoricals = num_known_categoricals
        self.num_static_reals = num_static_reals
        self.num_known_reals = num_known_reals
        self.num_unknown_reals = num_unknown_reals
        # +2 static: the target's center/scale and log-scale (pytorch-forecasting's add_target_scales),
        # so one model can serve series of very different levels.
        self.num_static_vars = self.num_static_categoricals + num_static_reals + 2
        self.num_encoder_vars = self.num_encoder_categoricals + 1 + num_known_reals + num_unknown_reals
        self.num_decoder_vars = num_known_categoricals + num_known_reals
        d = hidden_size
        e = min(variable_size, d) if variable_size else d
        self.variable_size = e

        self._build_embeddings(e, real_center, real_scale, static_categorical_cardinalities,
                               encoder_categorical_cardinalities)
        self._build_selection(d, e, dropout)
        self._build_temporal(d, dropout, lstm_layers, attention_heads)
        self._build_output(d, linear_skip)

    def _build_embeddings(self, e: int, real_center: list[float] | None, real_scale: list[float] | None,
                          static_categorical_cardinalities: list[int],
                          encoder_categorical_cardinalities: list[int]) -> None:
        """The input side: scalers of the reals, the categoricals' embedding table and the reals' per-variable
        linear embeddings, each of width e."""
        num_static_reals, num_known_reals = self.num_static_reals, self.num_known_reals
        num_unknown_reals, num_known_categoricals = self.num_unknown_reals, self.num_known_categoricals
        # Raw -> normalised reals, order: static, known, unknown. Buffers, so they ship with the weights.
        num_reals = num_static_reals + num_known_reals + num_unknown_reals
        center = torch.zeros(num_reals) if real_center is None else torch.tensor(real_center, dtype=torch.float)
        scale = torch.ones(num_reals) if real_scale is None else torch.tensor(real_scale, dtype=torch.float)
        assert center.shape == scale.shape == (num_reals,), "real_center/real_scale need one entry per real"
        scale = torch.where(scale > 0, scale, 1.0)  # a constant feature has scale 0; leave it centred only
        self.register_buffer("real_center", center)
        self.register_buffer("real_scale", scale)

        # Categoricals: one embedding table, each variable offset into its own block of rows.
        # Variables: static categoricals, then encoder ones; the decoder reuses the known ones.
        cards = [*static_categorical_cardinalities, *encoder_categorical_cardinalities]
        self.cat_embedding = nn.Embedding(sum(cards), e) if cards else None
        self.register_buffer("cat_cardinalities", torch.tensor(cards, dtype=torch.long), persistent=False)
        self.register_buffer("cat_offsets", torch.tensor([0, *cards]).cumsum(0)[:-1], persistent=False)
        n_sc = self.num_static_categoricals
        self.static_cat_vars = slice(0, n_sc)
        self.encoder_cat_vars = slice(n_sc, None)
        self.known_cat_vars = slice(n_sc, n_sc + num_known_categoricals)
        # Every encoder categorical's embedding rows, padded to the largest cardinality with its row 0
        # (never gathered): the vocabulary that the encoder/decoder selection GRNs run on.
        encoder_cards = encoder_categorical_cardinalities
        width = max(encoder_cards, default=0)
        self.vocab_tables = 0 < width <= MAX_VOCAB_TABLE
        offsets = self.cat_offsets[self.encoder_cat_vars].tolist()
        vocab_rows = [[o + min(i, c - 1) * (i < c) for i in range(width)] for o, c in zip(offsets, encoder_cards)]
        self.register_buffer("vocab_rows", torch.tensor(vocab_rows, dtype=torch.long).reshape(len(offsets), width),
                             persistent=False)

        # Reals: a Linear(1, e) per variable, stacked into rows: static reals, the 2 target-scale
        # features, target, known reals, unknown reals. The decoder reuses the known rows.
        t = num_static_reals + 2
        self.static_real_rows = slice(0, t)
        self.target_rows = slice(t, t + 1)
        self.covariate_rows = slice(t + 1, None)
        self.known_real_rows = slice(t + 1, t + 1 + num_known_reals)
        num_real_vars = t + 1 + num_known_reals + num_unknown_reals
        self.real_weight = nn.Parameter(torch.empty(num_real_vars, e).uniform_(-1, 1))  # nn.Linear(1, e) init
        self.real_bias = nn.Parameter(torch.empty(num_real_vars, e).uniform_(-1, 1))
        # Stands in for the target's embedding where it is unobserved, so a gap differs from a 0.
        self.target_missing = nn.Parameter(torch.randn(e))

    def _build_selection(self, d: int, e: int, dropout: float) -> None:
        """The variable selection networks: static, encoder and (with future inputs) decoder."""
        max_prediction_length = self.max_prediction_length
        self.static_vsn = VariableSelectionNetwork(self.num_static_vars, d, dropout, input_size=e)
        self.encoder_vsn = VariableSelectionNetwork(self.num_encoder_vars, d, dropout, context_size=d, input_size=e)
        # With no future inputs at all, the decoder still needs a (B, H, d) sequence to unroll the
        # LSTM over: a learned per-horizon-step embedding.
        if self.num_decoder_vars:
            self.decoder_vsn = VariableSelectionNetwork(self.num_decoder_vars, d, dropout, context_size=d,
                                                        input_size=e)
            self.decoder_no_input = None
        else:
            self.decoder_vsn = None
            self.decoder_no_input = nn.Parameter(torch.randn(max_prediction_length, d))

    def _build_temporal(self, d: int, dropout: float, lstm_layers: int, attention_heads: int) -> None:
        """The static context encoders, the LSTM encoder-decoder and the attention block of the paper."""
        # Static covariate encoders: the four contexts of section 4.3.
        self.context_selection = GatedResidualNetwork(d, d, d, dropout)
        self.context_enrichment = GatedResidualNetwork(d, d, d, dropout)
        self.context_state_h = GatedResidualNetwork(d, d, d, dropout)
        self.context_state_c = GatedResidualNetwork(d, d, d, dropout)

        # nn.LSTM (cuDNN in training) exports as an ONNX LSTM op with the dynamo exporter.
        lstm_dropout = dropout if lstm_layers > 1 else 0.0
        self.lstm_encoder = nn.LSTM(d, d, lstm_layers, batch_first=True, dropout=lstm_dropout)
        self.lstm_decoder = nn.LSTM(d, d, lstm_layers, batch_first=True, dropout=lstm_dropout)
        self.post_lstm_gate = GateAddNorm(d, d, dropout)

        self.static_enrichment = GatedResidualNetwork(d, d, d, dropout, context_size=d)
        self.attention = InterpretableMultiHeadAttention(d, attention_heads, dropout)
        self.post_attention_gate = GateAddNorm(d, d, dropout)
        self.positionwise_grn = GatedResidualNetwork(d, d, d, dropout)
        self.pre_output_gate = GateAddNorm(d, d, dropout=0.0)  # skip over the whole temporal block

    def _build_output(self, d: int, linear_skip: int | None) -> None:
        """The quantile head, the optional linear skip and its correction scale, and the fixed masks."""
        max_encoder_length, max_prediction_length = self.max_encoder_length, self.max_prediction_length
        self.output = Linear(d, len(self.quantiles))
        # Linear autoregressive skip (LSTNet's highway; NLinear): the last `linear_skip` normalised targets,
        # relative to the last observed one, map linearly to the horizon; the TFT's quantiles are added to
        # it. Zero-initialised, so training starts from the last-value forecast. Helps where the level
        # drifts away from the training data's (ETTh1) and a linear map of the recent past is strong.
        self.linear_skip = min(int(linear_skip or 0), max_encoder_length)
        self.skip = nn.Linear(self.linear_skip, max_prediction_length) if self.linear_skip else None
        if self.skip is not None:
            nn.init.zeros_(self.skip.weight)
            nn.init.zeros_(self.skip.bias)
        # With a skip, the TFT's input-dependent output (output.weight @ x; its bias, the quantile offsets,
        # stays) is scaled by a factor per quantile: 1 in training, then possibly shrunk towards the skip
        # alone on validation (fusioncast/postfit/shrinkage.py). A buffer, so checkpoints and the ONNX graph carry it.
        self.register_buffer("correction_scale", torch.ones(len(self.quantiles)))
        # Outside training, forecasts leave sorted over the quantile axis, so no path downstream (evaluation,
        # the exported graph, serving) sees crossed quantiles: a per-quantile correction_scale, or heads
        # trained apart, can reorder them, and swapping two crossed quantiles only lowers the pinball loss
        # (rearrangement, Chernozhukov et al. 2010). Training sees the heads as they are (sorting there too
        # was no better on validation). False only inside fusioncast/postfit/shrinkage.py, whose search needs the
        # forecasts affine in the factors.
        self.sort_quantiles = True
        self._register_load_state_dict_pre_hook(self._default_correction_scale)
        self.register_buffer("positions", torch.arange(max_encoder_length), persistent=False)

        # Decoder step i sees decoder steps <= i (plus every observed encoder step).
        causal = torch.ones(max_prediction_length, max_prediction_length, dtype=torch.bool).tril()
        self.register_buffer("causal_mask", causal, persistent=False)

    def _default_correction_scale(self, state_dict, prefix, *args) -> None:
        """Checkpoints from before correction_scale existed load with the factors 1 they were trained with."""
        state_dict.setdefault(prefix + "correction_scale", torch.ones_like(self.correction_scale))

    def _embed_categoricals(self, codes: Tensor, variables: slice) -> tuple[Tensor, Tensor]:
        """Codes (..., n) -> the valid codes (..., n) and their embeddings (..., n, e).

        Out-of-range codes fall back to the unknown bucket 0.
        """
        cards = self.cat_cardinalities[variables]
        codes = torch.where((codes >= 0) & (codes < cards), codes, 0)
        return codes, self.cat_embedding(codes + self.cat_offsets[variables])

    def skip_inputs(self, target: Tensor, encoder_mask: Tensor) -> tuple[Tensor, Tensor]:
        """The linear skip's inputs from the normalised encoder target (B, L): the last observed value (B, 1)
        and the `linear_skip` most recent ones relative to it (B, k), unobserved ones as 0."""
        k = self.linear_skip
        last_step = torch.where(encoder_mask, self.positions, 0).amax(dim=-1, keepdim=True)  # 0 if none observed
        last = target.gather(1, last_step)
        return last, torch.where(encoder_mask[:, -k:], target[:, -k:] - last, 0.0)

    def _linear_skip(self, target: Tensor, encoder_mask: Tensor) -> Tensor:
        """(B, H): last observed normalised target + a linear map of the recent ones relative to it."""
        last, recent = self.skip_inputs(target, encoder_mask)
        return last + self.skip(recent)

    def _embed_reals(self, x: Tensor, rows: slice) -> Tensor:
        """Normalised reals (..., n) -> (..., n, e): x * W[v] + b[v] per variable v."""
        return x.unsqueeze(-1) * self.real_weight[rows] + self.real_bias[rows]

    def forward(
        self,
        static_cat: Tensor,
        static_real: Tensor,
        encoder_cat: Tensor,
        encoder_real: Tensor,
        decoder_cat: Tensor,
        decoder_real: Tensor,
        encoder_mask: Tensor,
        target_scale: Tensor,
        return_interpretation: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """Quantile forecasts (B, H, Q) in target units, non-decreasing over Q (in eval mode).

        Shapes: static_cat (B, n_static_cat) int64, static_real (B, n_static_real),
        encoder_cat (B, L, n_encoder_cat) int64, encoder_real (B, L, 1 + n_known_real +
        n_unknown_real) with the target in column 0, decoder_cat (B, H, n_known_cat) int64,
        decoder_real (B, H, n_known_real), encoder_mask (B, L) bool (True = target observed),
        target_scale (B, 2) = (center, scale). Reals are in raw units.

        With ``return_interpretation`` also returns the static (B, n_static_vars), encoder
        (B, L, n_encoder_vars) and decoder (B, H, n_decoder_vars) selection weights and the
        head-averaged attention (B, H, L + H).
        """
        center = target_scale[:, 0:1]
        scale = target_scale[:, 1:2].clamp_min(MIN_TARGET_SCALE)
        # Normalise. Unobserved target steps become 0 so that no filler value (not even inf/NaN)
        # reaches the embedding or its gradient; their embedding is swapped out in _embed anyway.
        target = torch.where(encoder_mask, (encoder_real[..., 0] - center) / scale, 0.0)
        static_x, encoder_x, decoder_x, codes = self._embed(static_cat, static_real, encoder_cat, encoder_real,
                                                             decoder_cat, decoder_real, encoder_mask, target,
                                                             center, scale)
        # Static covariate encoders: the contexts of section 4.3 (the LSTM's state ones in _temporal).
        static_embedding, static_weights = self.static_vsn(torch.cat(static_x, dim=-2))
        context_selection = self.context_selection(static_embedding).unsqueeze(1)
        context_enrichment = self.context_enrichment(static_embedding).unsqueeze(1)
        encoder_embedding, encoder_weights, decoder_embedding, decoder_weights = self._select(
            context_selection, encoder_x, decoder_x, *codes)
        x, attention = self._temporal(static_embedding, context_enrichment, encoder_embedding, decoder_embedding,
                                      encoder_mask)

        if self.skip is None:
            out = self.output(x)
        else:
            out = linear(x, self.output.weight * self.correction_scale.unsqueeze(-1), self.output.bias)
            out = out + self._linear_skip(target, encoder_mask).unsqueeze(-1)
        quantiles = out * scale.unsqueeze(-1) + center.unsqueeze(-1)
        if self.sort_quantiles and not self.training:
            quantiles = quantiles.sort(dim=-1).values  # ONNX TopK (largest=0): the graph sorts as well
        if not return_interpretation:
            return quantiles
        return quantiles, static_weights, encoder_weights, decoder_weights, attention

    def _embed(self, static_cat: Tensor, static_real: Tensor, encoder_cat: Tensor, encoder_real: Tensor,
               decoder_cat: Tensor, decoder_real: Tensor, encoder_mask: Tensor, target: Tensor, center: Tensor,
               scale: Tensor) -> tuple[list[Tensor], list[Tensor], list[Tensor], tuple]:
        """Every variable embedded to (..., n_vars, e), grouped by the network that selects among them
        (static, encoder, decoder), and the (encoder codes, decoder codes, vocabulary) the selection GRNs
        run their categoricals on (None where they do not). Where the target is unobserved its embedding is
        a learned "missing" vector instead."""
        ns, nk = self.num_static_reals, self.num_known_reals
        encoder_covariates = (encoder_real[..., 1:] - self.real_center[ns:]) / self.real_scale[ns:]
        known = slice(ns, ns + nk)
        decoder_real = (decoder_real - self.real_center[known]) / self.real_scale[known]
        static_real = (static_real - self.real_center[:ns]) / self.real_scale[:ns]
        # asinh keeps huge center/scale ratios (stable series far from 0) in a sane range.
        target_level = torch.cat([torch.asinh(center / scale), scale.log()], dim=-1)

        target_x = self._embed_reals(target.unsqueeze(-1), self.target_rows)
        static_x = [self._embed_reals(torch.cat([static_real, target_level], dim=-1), self.static_real_rows)]
        encoder_x = [
            torch.where(encoder_mask[..., None, None], target_x, self.target_missing),
            self._embed_reals(encoder_covariates, self.covariate_rows),
        ]
        decoder_x = [self._embed_reals(decoder_real, self.known_real_rows)]
        encoder_codes = decoder_codes = vocab = None
        if self.cat_embedding is not None:
            static_x.insert(0, self._embed_categoricals(static_cat, self.static_cat_vars)[1])
            encoder_codes, embedded = self._embed_categoricals(encoder_cat, self.encoder_cat_vars)
            encoder_x.insert(0, embedded)
            decoder_codes, embedded = self._embed_categoricals(decoder_cat, self.known_cat_vars)
            decoder_x.insert(0, embedded)
        if self.vocab_tables:  # (n_encoder_cat, width, e); the decoder's known ones come first
            vocab = self.cat_embedding(self.vocab_rows)
            decoder_codes = decoder_codes if self.num_known_categoricals else None
        else:
            encoder_codes = decoder_codes = None
        return static_x, encoder_x, decoder_x, (encoder_codes, decoder_codes, vocab)

    def _select(self, context_selection: Tensor, encoder_x: list[Tensor], decoder_x: list[Tensor],
                encoder_codes: Tensor | None, decoder_codes: Tensor | None,
                vocab: Tensor | None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Temporal variable selection conditioned on the static context: the encoder's and decoder's
        embeddings (B, L|H, d) and selection weights."""
        encoder_embedding, encoder_weights = self.encoder_vsn(
            torch.cat(encoder_x, dim=-2), context_selection, encoder_codes, vocab)
        if self.decoder_vsn is not None:
            decoder_embedding, decoder_weights = self.decoder_vsn(
                torch.cat(decoder_x, dim=-2), context_selection, decoder_codes,
                None if decoder_codes is None else vocab[: self.num_known_categoricals])
        else:
            batch = context_selection.shape[0]
            decoder_embedding = self.decoder_no_input.expand(batch, -1, -1)
            decoder_weights = context_selection.new_zeros(batch, self.max_prediction_length, 0)
        return encoder_embedding, encoder_weights, decoder_embedding, decoder_weights

    def _temporal(self, static_embedding: Tensor, context_enrichment: Tensor, encoder_embedding: Tensor,
                  decoder_embedding: Tensor, encoder_mask: Tensor) -> tuple[Tensor, Tensor]:
        """The decoder steps' features (B, H, d) before the quantile head, and the attention (B, H, L + H):
        an LSTM encoder-decoder seeded with the static state (the same for every layer) and gated around,
        static enrichment, then attention from the decoder steps over the whole window."""
        L, H = self.max_encoder_length, self.max_prediction_length
        layers = self.lstm_encoder.num_layers
        state = tuple(
            grn(static_embedding).unsqueeze(0).expand(layers, -1, -1).contiguous()
            for grn in (self.context_state_h, self.context_state_c)
        )
        encoder_output, state = self.lstm_encoder(encoder_embedding, state)
        decoder_output, _ = self.lstm_decoder(decoder_embedding, state)
        temporal = self.post_lstm_gate(
            torch.cat([encoder_output, decoder_output], dim=1),
            torch.cat([encoder_embedding, decoder_embedding], dim=1),
        )
        enriched = self.static_enrichment(temporal, context_enrichment)
        batch_mask = encoder_mask.unsqueeze(1).expand(-1, H, -1)
        mask = torch.cat([batch_mask, self.causal_mask.expand(batch_mask.shape[0], -1, -1)], dim=-1)
        attended, attention = self.attention(enriched[:, L:], enriched, mask)
        x = self.post_attention_gate(attended, enriched[:, L:])
        x = self.positionwise_grn(x)
        return self.pre_output_gate(x, temporal[:, L:]), attention
