"""The models as Flax Linen modules: the plain reference path, and the choice of kernels.

``Transformer`` is the authors' causal transformer written with Flax's own layers
(``nn.LayerNorm``, ``nn.DenseGeneral``, ``nn.Dense``, multi-head attention as two einsums)
and autodiff's gradients. Its parameter tree is the one ``models.init_params`` builds
(``tok_emb``, ``pos_emb``, ``block_<i>/{ln1,q,k,v,out,ln2,ffn_in,ffn_out}``, ``ln_f``,
``head``, Flax's shapes), so both paths share one initialisation and optax's Muon splits the
parameters the same way. Linen, not NNX: ``apply(params, ...)`` is a pure function of a
parameter pytree, which is what the trainer's ``jit(vmap(scan))`` over seeds carries; NNX
would need a split/merge around every step for the same result.

``tpo_sweeps.models`` holds the fast CPU path: the same functions with custom backward
passes built for XLA:CPU (LayerNorm folded into the next GEMM, attention one head at a time,
bias gradients from a ones column) and the prompt encoded once per group.
``hardware.model_kernels`` picks the path for the training update (``auto``: ``cpu_fused``
on a CPU, where these kernels bought most of the 3.5x speed-up over the authors' Flax code,
``flax`` elsewhere, for which they were never designed); the KV-cached
sampler is forward-only (no custom gradient is involved) and serves both. Same maths: the
tests hold the two paths' losses, gradients and Muon epochs equal to float32 rounding
(``tests/test_flax_models.py``).

``MLP`` is the MNIST policy (``tpo_sweeps.tasks.mnist``) as a Linen module.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from tpo_sweeps import models as M

Array = jax.Array


class Block(nn.Module):
    """Pre-norm block: LayerNorm → causal self-attention → residual; LayerNorm → Dense(4d)
    → GELU(tanh) → Dense(d) → residual."""

    num_heads: int
    head_dim: int
    ffn: int

    @nn.compact
    def __call__(self, x: Array, mask: Array) -> Array:
        d, h, hd = x.shape[-1], self.num_heads, self.head_dim
        y = nn.LayerNorm(epsilon=M.LN_EPS, name="ln1")(x)
        q = nn.DenseGeneral((h, hd), name="q")(y)
        k = nn.DenseGeneral((h, hd), name="k")(y)
        v = nn.DenseGeneral((h, hd), name="v")(y)
        scores = jnp.einsum("...qhd,...thd->...hqt", q, k) / math.sqrt(hd)
        scores = jnp.where(mask, scores, M.NEG_INF)
        o = jnp.einsum("...hqt,...thd->...qhd", jax.nn.softmax(scores, axis=-1), v)
        x = x + nn.DenseGeneral(d, axis=(-2, -1), name="out")(o)
        y = nn.LayerNorm(epsilon=M.LN_EPS, name="ln2")(x)
        y = nn.gelu(nn.Dense(self.ffn, name="ffn_in")(y), approximate=True)
        return x + nn.Dense(d, name="ffn_out")(y)


class Transformer(nn.Module):
    """Token + learned position embeddings, ``num_layers`` blocks, final LayerNorm →
    Dense(V) → log-softmax: log-probs ``[..., T, V]`` of a full causal pass."""

    vocab: int
    max_len: int
    d_model: int = 64
    num_heads: int = 2
    num_layers: int = 2
    ffn_mult: int = 4

    @nn.compact
    def __call__(self, tokens: Array) -> Array:
        d = self.d_model
        # Flax nn.Embed's default initialiser, as a bare array (models.init_params' layout)
        embed_init = nn.initializers.variance_scaling(1.0, "fan_in", "normal", out_axis=0)
        tok_emb = self.param("tok_emb", embed_init, (self.vocab, d))
        pos_emb = self.param("pos_emb", nn.initializers.normal(0.02), (self.max_len, d))
        T = tokens.shape[-1]
        x = tok_emb[tokens] + pos_emb[:T]
        mask = jnp.tril(jnp.ones((T, T), bool))
        for i in range(self.num_layers):
            block = Block(self.num_heads, d // self.num_heads, d * self.ffn_mult, name=f"block_{i}")
            x = block(x, mask)
        x = nn.LayerNorm(epsilon=M.LN_EPS, name="ln_f")(x)
        return jax.nn.log_softmax(nn.Dense(self.vocab, name="head")(x), axis=-1)


def transformer_of(params: dict) -> Transformer:
    """The module whose parameter tree ``params`` is."""
    vocab, d = params["tok_emb"].shape
    heads = params["block_0"]["q"]["kernel"].shape[1]
    ffn = params["block_0"]["ffn_in"]["kernel"].shape[1]
    return Transformer(vocab, params["pos_emb"].shape[0], d, heads, M.num_layers(params), ffn // d)


def forward(params: dict, tokens: Array) -> Array:
    """``models.forward`` through the Flax layers."""
    return transformer_of(params).apply({"params": params}, tokens)


def answer_logprobs(params: dict, prompt: Array, answers: Array) -> Array:
    """``models.answer_logprobs`` the plain way: each of the K candidates runs the full
    ``prompt ‖ answer`` sequence (its last token, which predicts nothing, left out), ``[B,
    K, H, V]``."""
    B, H = prompt.shape
    K = answers.shape[1]
    seq = jnp.concatenate([jnp.broadcast_to(prompt[:, None], (B, K, H)), answers], axis=-1)
    return forward(params, seq[..., : 2 * H - 1])[..., H - 1 :, :]


def answer_token_logp(params: dict, prompt: Array, answers: Array) -> Array:
    lp = answer_logprobs(params, prompt, answers)
    return jnp.take_along_axis(lp, answers[..., None], axis=-1)[..., 0]


class ModelFunctions(NamedTuple):
    """What the token-reversal update differentiates: ``[B, K, H, V]`` and ``[B, K, H]``."""

    answer_logprobs: Callable[[dict, Array, Array], Array]
    answer_token_logp: Callable[[dict, Array, Array], Array]


KERNELS = {
    "flax": ModelFunctions(answer_logprobs, answer_token_logp),
    "cpu_fused": ModelFunctions(M.answer_logprobs, M.answer_token_logp),
}


# --------------------------------------------------------------------------------------------
# MNIST
# --------------------------------------------------------------------------------------------


class MLP(nn.Module):
    """The MNIST policy: Dense layers with ReLU between them, logits over the classes."""

    widths: tuple[int, ...]

    @nn.compact
    def __call__(self, x: Array) -> Array:
        for i, width in enumerate(self.widths):
            x = nn.Dense(width, name=f"dense_{i}")(x)
            if i < len(self.widths) - 1:
                x = nn.relu(x)
        return x
