"""Building blocks of the Temporal Fusion Transformer (Lim et al. 2021).

The per-variable GRNs of a variable selection network hold each of the V variables' weights as
one (V, in, out) tensor and lay activations out variable-major, (V, N, features), so that each
layer is one batched matmul (baddbmm) on contiguous memory: a few batched matmuls instead of a
Python loop of V GRNs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class Dropout(nn.Dropout):
    """nn.Dropout with a cheaper mask on CPU.

    PyTorch draws CPU dropout masks with bernoulli_, which only has a fast (MKL) path on Intel
    CPUs (docs/benchmarks/training-speed.md). A uniform draw compared with p gives the same
    Bernoulli(1 - p) mask. CUDA keeps the fused kernel.
    """

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0 or x.device.type != "cpu":
            return super().forward(x)
        keep = torch.rand_like(x).ge_(self.p).mul_(1 / (1 - self.p))  # 0 or 1/(1-p), in x's dtype
        return x * keep


def elu(x: Tensor) -> Tensor:
    """F.elu; in an ONNX export of a 3-D or larger input written as max(x, exp(min(x, 0)) - 1), the same
    function (e^x - 1 >= x with equality at 0). onnxruntime's CPU Elu kernel is not vectorised: on a
    (64, 42, 64) input it took 238 us against 114 us for these four ops (34.6 against 15.4 us at
    (8, 42, 64)). A 2-D input (the static GRNs, (batch, d)) stays Elu: there onnxruntime fuses the
    Gemm before it and the Elu into one FusedGemm. Eager PyTorch keeps the single fused kernel."""
    if torch.onnx.is_in_onnx_export() and x.dim() > 2:
        return torch.maximum(x, torch.exp(x.clamp(max=0.0)) - 1.0)
    return F.elu(x)


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """F.linear; in an ONNX export of a 3-D or larger input, applied to the input flattened to 2-D and
    reshaped back (the same values), because onnxruntime fuses a 2-D MatMul and its bias into one Gemm but
    leaves a 3-D one as MatMul + a broadcast Add (docs/benchmarks/serving.md). Eager PyTorch keeps F.linear."""
    if torch.onnx.is_in_onnx_export() and x.dim() > 2:
        return F.linear(x.reshape(-1, x.shape[-1]), weight, bias).reshape(*x.shape[:-1], weight.shape[0])
    return F.linear(x, weight, bias)


class Linear(nn.Linear):
    """nn.Linear (same parameters, init and state dict) through `linear`, for its exported form."""

    def forward(self, x: Tensor) -> Tensor:
        return linear(x, self.weight, self.bias)


class VarLinear(nn.Module):
    """Independent linear maps, one per variable, variable-major: (V, N, in) -> (V, N, out).

    ``variables`` picks a contiguous subset of the variables (x then holds only those).
    """

    def __init__(self, num_vars: int, in_features: int, out_features: int):
        super().__init__()
        # nn.Linear's default init (uniform in +-1/sqrt(fan_in)), so shared and per-variable
        # blocks start from the same scale.
        bound = 1 / math.sqrt(in_features)
        self.weight = nn.Parameter(torch.empty(num_vars, in_features, out_features).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(num_vars, out_features).uniform_(-bound, bound))

    def forward(self, x: Tensor, variables: slice = slice(None)) -> Tensor:
        # bias added inside the matmul: one kernel, no extra pass over the output
        return torch.baddbmm(self.bias[variables].unsqueeze(1), x, self.weight[variables])


class VarLayerNorm(nn.Module):
    """LayerNorm over the last axis with separate affine parameters per variable: (V, N, d).

    ``affine=False`` leaves the affine out, for when a per-variable linear layer follows and
    would absorb it anyway.
    """

    def __init__(self, num_vars: int, size: int, affine: bool = True):
        super().__init__()
        self.size = size
        self.weight = nn.Parameter(torch.ones(num_vars, size)) if affine else None
        self.bias = nn.Parameter(torch.zeros(num_vars, size)) if affine else None

    def forward(self, x: Tensor, variables: slice = slice(None)) -> Tensor:
        x = F.layer_norm(x, (self.size,))
        if self.weight is None:
            return x
        return torch.addcmul(self.bias[variables].unsqueeze(1), x, self.weight[variables].unsqueeze(1))


class GateAddNorm(nn.Module):
    """LayerNorm(skip + GLU(dropout(x))): TFT's gated residual connection.

    The GLU gate lets the network switch a whole block off (gate -> 0, leaving only the skip)
    where the data does not need it.
    """

    def __init__(self, input_size: int, output_size: int, dropout: float):
        super().__init__()
        self.dropout = Dropout(dropout)
        self.glu = Linear(input_size, 2 * output_size)
        self.norm = nn.LayerNorm(output_size)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        value, gate = self.glu(self.dropout(x)).chunk(2, dim=-1)
        return self.norm(torch.addcmul(skip, value, gate.sigmoid()))  # skip + GLU in one pass


class GatedResidualNetwork(nn.Module):
    """GRN(a, c) = LayerNorm(skip(a) + GLU(W1 ELU(W2 a + W3 c + b2) + b1)), eqs. (2)-(5).

    ``context`` (the static context c) is optional and broadcast against ``a``.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        output_size: int,
        dropout: float,
        context_size: int | None = None,
    ):
        super().__init__()
        self.skip = Linear(input_size, output_size) if input_size != output_size else None
        self.fc1 = Linear(input_size, hidden_size)
        self.context = Linear(context_size, hidden_size, bias=False) if context_size else None
        self.fc2 = Linear(hidden_size, hidden_size)
        self.gate = GateAddNorm(hidden_size, output_size, dropout)

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        if self.skip is None:
            skip, h = x, self.fc1(x)
        else:  # skip and fc1 read the same input: one matmul for both
            fc1, sk = self.fc1, self.skip
            both = linear(x, torch.cat([fc1.weight, sk.weight]), torch.cat([fc1.bias, sk.bias]))
            h, skip = both.split([fc1.out_features, sk.out_features], dim=-1)
        if self.context is not None:
            h = h + self.context(context)
        return self.gate(self.fc2(elu(h)), skip)


class VariableGRNs(nn.Module):
    """V independent GRNs of width e without context (the per-variable GRNs of eq. 7).

    Weights are stacked (V, in, out) and activations are variable-major (V, N, e), so each layer
    is one baddbmm over all variables; ``variables`` runs a contiguous subset of them. Input and
    output have the same width, so the skip is the identity. ``norm_affine=False`` drops the
    final LayerNorm's affine, for when a per-variable linear layer follows and absorbs it.
    """

    def __init__(self, num_vars: int, size: int, dropout: float, norm_affine: bool = True):
        super().__init__()
        self.fc1 = VarLinear(num_vars, size, size)
        self.fc2 = VarLinear(num_vars, size, size)
        self.dropout = Dropout(dropout)
        self.glu = VarLinear(num_vars, size, 2 * size)
        self.norm = VarLayerNorm(num_vars, size, norm_affine)

    def forward(self, x: Tensor, variables: slice = slice(None)) -> Tensor:
        h = self.fc2(elu(self.fc1(x, variables)), variables)
        value, gate = self.glu(self.dropout(h), variables).chunk(2, dim=-1)
        return self.norm(torch.addcmul(x, value, gate.sigmoid()), variables)


class VariableSelectionNetwork(nn.Module):
    """Per-variable GRNs mixed with learned softmax weights, eqs. (6)-(8).

    Input: embeddings (..., V, e) and an optional context broadcastable to (..., d).
    Returns the mixed embedding (..., d) and the selection weights (..., V), which sum to 1.

    Each variable's GRN works at its embedding width e (``input_size``, default d), as
    pytorch-forecasting's ``hidden_continuous_size`` does. With e < d its output is mapped to d by a
    linear layer of its own, which the weighted sum absorbs:
    sum_v w_v (z_v P_v + b_v) = [w_1 z_1, ..., w_V z_V] @ [P_1; ...; P_V] + w @ b, one
    (N, V e) x (V e, d) matmul. So no (V, N, d) activation is ever formed: the per-variable part,
    which dominates the model's cost at full width, shrinks by about d / e in memory traffic and
    (d / e)^2 in FLOPs. The projection also absorbs the GRNs' LayerNorm affine (diag(g) P and
    beta P + b are just another P and b), so those GRNs have none. With e = d (the paper's layout)
    the GRNs output d and are mixed directly.

    Categorical variables (the first k) may come as ``codes`` (..., k) with their embedding rows
    ``vocab`` (k, C, e): a categorical's GRN output depends on its category alone, so it is computed
    once per category and gathered, not once per time step (calendar and holiday features have a
    handful of values but fill most of a window). Outputs are identical; in training, dropout inside
    those GRNs then draws one mask per category per step (as embedding dropout does), not per step
    of every window.
    """

    def __init__(self, num_vars: int, hidden_size: int, dropout: float, context_size: int | None = None,
                 input_size: int | None = None):
        super().__init__()
        d, e = hidden_size, input_size or hidden_size
        # the weights GRN maps V e inputs to V logits; a hidden layer wider than V buys little (as in
        # pytorch-forecasting)
        self.weights_grn = GatedResidualNetwork(num_vars * e, min(d, num_vars), num_vars, dropout, context_size)
        self.var_grns = VariableGRNs(num_vars, e, dropout, norm_affine=e == d)
        self.project = VarLinear(num_vars, e, d) if e != d else None

    def forward(self, x: Tensor, context: Tensor | None = None, codes: Tensor | None = None,
                vocab: Tensor | None = None) -> tuple[Tensor, Tensor]:
        weights = self.weights_grn(x.flatten(-2), context).softmax(dim=-1)
        lead, (num_vars, e) = x.shape[:-2], x.shape[-2:]
        flat_weights = weights.reshape(-1, num_vars)  # (N, V)
        k = 0 if codes is None else codes.shape[-1]
        # explicit N: with every variable categorical, (N, 0, e) has no elements to infer -1 from
        per_var = x[..., k:, :].reshape(flat_weights.shape[0], num_vars - k, e)
        per_var = per_var.transpose(0, 1).contiguous()  # (V - k, N, e): variable-major
        transformed = self.var_grns(per_var, slice(k, None))
        if torch.onnx.is_in_onnx_export():
            weighted = self._weighted_for_export(transformed, flat_weights, codes, vocab, k, e)
        else:
            if k:
                transformed = torch.cat([self._categorical_outputs(codes, vocab, k, e), transformed])  # (V, N, e)
            # weights first in the product: the result comes out token-major (N, V, e), contiguous, as the
            # projection's (N, V e) x (V e, d) matmul wants it (no separate transpose copy)
            weighted = flat_weights.unsqueeze(-1) * transformed.transpose(0, 1)
        if self.project is None:
            mixed = weighted.sum(1)
        else:
            mixed = weighted.flatten(1) @ self.project.weight.flatten(0, 1) + flat_weights @ self.project.bias
        return mixed.reshape(*lead, -1), weights

    def _categorical_outputs(self, codes: Tensor, vocab: Tensor, k: int, e: int, token_major: bool = False) -> Tensor:
        """The first k variables' GRN outputs, gathered from their per-category table: (k, N, e), or
        (N, k, e) with `token_major`."""
        table = self.var_grns(vocab, slice(0, k))  # (k, C, e): every category of each variable
        rows = codes.reshape(-1, k) + torch.arange(k, device=codes.device) * vocab.shape[1]  # (N, k)
        if not token_major:
            rows = rows.T
        # index_select: its CPU backward is deterministic (indexing's is not) and 3x cheaper than embedding's
        picked = table.reshape(-1, e).index_select(0, rows.reshape(-1))
        return picked.reshape(-1, k, e) if token_major else picked.reshape(k, -1, e)

    def _weighted_for_export(self, transformed: Tensor, flat_weights: Tensor, codes: Tensor | None,
                             vocab: Tensor | None, k: int, e: int) -> Tensor:
        """The weighted embeddings (N, V, e) as in forward, laid out for onnxruntime: the categoricals'
        rows are gathered token-major (no transpose of them), and each weight is repeated over its e
        features by a matmul with a 0/1 matrix (exact: one product by 1 plus zeros), so the product is a
        same-shape multiply. onnxruntime's transpose of (V, N, e) and its multiply broadcasting (N, V, 1)
        over an inner axis of e move e values at a time (50 + 55 us at batch 8 of the stallion model)."""
        n, num_vars = flat_weights.shape
        parts = [transformed.transpose(0, 1)]  # (N, V - k, e)
        if k:
            parts.insert(0, self._categorical_outputs(codes, vocab, k, e, token_major=True))
        embedded = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
        repeat = torch.eye(num_vars, dtype=flat_weights.dtype, device=flat_weights.device).repeat_interleave(e, dim=1)
        return (embedded.reshape(n, num_vars * e) * (flat_weights @ repeat)).reshape(n, num_vars, e)


class InterpretableMultiHeadAttention(nn.Module):
    """Multi-head attention whose heads share one value projection and are averaged, eqs. (13)-(16).

    Each head keeps its own query/key projections, but since all heads read the same values,
    their average attention is one matrix that explains which time steps the forecast used.
    """

    def __init__(self, hidden_size: int, num_heads: int, dropout: float):
        super().__init__()
        assert hidden_size % num_heads == 0, "hidden_size must be divisible by attention_heads"
        self.num_heads = num_heads
        self.head_size = hidden_size // num_heads
        self.query = Linear(hidden_size, hidden_size)  # all heads' query projections side by side
        self.key = Linear(hidden_size, hidden_size)
        self.value = Linear(hidden_size, self.head_size)  # shared by every head
        self.out = Linear(self.head_size, hidden_size)
        self.dropout = Dropout(dropout)

    def forward(self, query: Tensor, memory: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """query (B, Tq, d), memory (B, Tk, d), mask (B, Tq, Tk) bool, True = may attend.

        Returns the output (B, Tq, d) and the head-averaged attention (B, Tq, Tk).
        """
        heads = (self.num_heads, self.head_size)
        q = self.query(query).unflatten(-1, heads).transpose(1, 2)  # (B, nh, Tq, hs)
        k = self.key(memory).unflatten(-1, heads).transpose(1, 2)  # (B, nh, Tk, hs)
        scores = (q * self.head_size**-0.5) @ k.transpose(-2, -1)
        # The dtype's own minimum rather than a literal like -1e9: that overflows to -inf in fp16,
        # and a row of only -inf softmaxes to NaN, while a row of equal finite minima is uniform.
        scores = scores.masked_fill(~mask.unsqueeze(1), torch.finfo(scores.dtype).min)
        attention = scores.softmax(dim=-1).mean(dim=1)
        return self.out(self.dropout(attention @ self.value(memory))), attention
