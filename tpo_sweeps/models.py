"""The causal transformer of the authors' code, written as pure functions with a KV cache.

Architecture (protocols §2.2): token embedding + learned absolute positions, ``L`` pre-norm
blocks (LayerNorm → causal multi-head self-attention → residual; LayerNorm → Dense(4d) →
GELU(tanh) → Dense(d) → residual), final LayerNorm → Dense(V) → log-softmax. Parameter
shapes and initialisations follow Flax's defaults exactly (so optax's Muon splits them the
same way: q/k/v kernels ``(d, heads, d/heads)`` and the output kernel ``(heads, d/heads, d)``
are 3-D and go to AdamW, their 2-D biases ``(heads, d/heads)`` to Muon).

Three ways to run it, all sharing the same layer code:

* ``forward(params, tokens)``: full causal pass, log-probs at every position (reference).
* ``sequence_logp(params, prompt, answers)``: teacher-forced log-probs of K answers per
  prompt, with the shared prompt encoded **once per group** (its keys/values are broadcast to
  the K candidates) and without running the last answer token, which predicts nothing.
* ``prefill`` + ``decode``: a KV-cached sampler (one token-forward per generated token).

Sequence layout: positions ``0..H-1`` hold the prompt, ``H..2H-1`` the answer; answer token
``t`` is predicted from the output at position ``H + t - 1``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

Array = jax.Array

LN_EPS = 1e-6  # Flax LayerNorm default
NEG_INF = -1e9


class Shape(NamedTuple):
    vocab: int  # V
    max_len: int  # 2H
    d_model: int = 64
    num_heads: int = 2
    num_layers: int = 2
    ffn_mult: int = 4

    @property
    def head_dim(self) -> int:
        return self.d_model // self.num_heads


# --------------------------------------------------------------------------------------------
# Parameters
# --------------------------------------------------------------------------------------------


def _lecun(key: Array, shape: tuple[int, ...], fan_in_dims: int) -> Array:
    """Flax's lecun_normal on the flattened (fan_in, fan_out) matrix, reshaped."""
    fan_in = math.prod(shape[:fan_in_dims])
    flat = (fan_in, math.prod(shape[fan_in_dims:]))
    return jax.nn.initializers.lecun_normal()(key, flat, jnp.float32).reshape(shape)


def init_params(key: Array, s: Shape) -> dict:
    d, h, hd, f = s.d_model, s.num_heads, s.head_dim, s.d_model * s.ffn_mult
    keys = iter(jax.random.split(key, 3 + 6 * s.num_layers))
    params = {
        # Flax nn.Embed default: variance_scaling(1, fan_in, normal, out_axis=0) → N(0, 1/d)
        "tok_emb": jax.random.normal(next(keys), (s.vocab, d)) / math.sqrt(d),
        "pos_emb": 0.02 * jax.random.normal(next(keys), (s.max_len, d)),
        "ln_f": {"scale": jnp.ones(d), "bias": jnp.zeros(d)},
        "head": {"kernel": _lecun(next(keys), (d, s.vocab), 1), "bias": jnp.zeros(s.vocab)},
    }
    for i in range(s.num_layers):
        params[f"block_{i}"] = {
            "ln1": {"scale": jnp.ones(d), "bias": jnp.zeros(d)},
            "q": {"kernel": _lecun(next(keys), (d, h, hd), 1), "bias": jnp.zeros((h, hd))},
            "k": {"kernel": _lecun(next(keys), (d, h, hd), 1), "bias": jnp.zeros((h, hd))},
            "v": {"kernel": _lecun(next(keys), (d, h, hd), 1), "bias": jnp.zeros((h, hd))},
            "out": {"kernel": _lecun(next(keys), (h, hd, d), 2), "bias": jnp.zeros(d)},
            "ln2": {"scale": jnp.ones(d), "bias": jnp.zeros(d)},
            "ffn_in": {"kernel": _lecun(next(keys), (d, f), 1), "bias": jnp.zeros(f)},
            "ffn_out": {"kernel": _lecun(next(keys), (f, d), 1), "bias": jnp.zeros(d)},
        }
    return params


def num_layers(params: dict) -> int:
    return sum(1 for k in params if k.startswith("block_"))


# --------------------------------------------------------------------------------------------
# Layer pieces
# --------------------------------------------------------------------------------------------


def _layer_norm(p: dict, x: Array) -> Array:
    mean = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + LN_EPS) * p["scale"] + p["bias"]


def _qkv(p: dict, x: Array) -> tuple[Array, Array, Array]:
    """q, k, v ``[..., heads, hd]`` from one matmul over the three stacked kernels."""
    w = jnp.stack([p["q"]["kernel"], p["k"]["kernel"], p["v"]["kernel"]], axis=1)
    b = jnp.stack([p["q"]["bias"], p["k"]["bias"], p["v"]["bias"]], axis=0)
    qkv = jnp.einsum("...d,dshk->...shk", x, w) + b
    return qkv[..., 0, :, :], qkv[..., 1, :, :], qkv[..., 2, :, :]


def _attend(q: Array, k: Array, v: Array, mask: Array) -> Array:
    """q ``[..., Tq, h, hd]``, k/v ``[..., Tk, h, hd]``, mask ``[Tq, Tk]`` (or broadcastable)."""
    scores = jnp.einsum("...qhk,...thk->...hqt", q, k) / math.sqrt(q.shape[-1])
    scores = jnp.where(mask, scores, NEG_INF)
    return jnp.einsum("...hqt,...thk->...qhk", jax.nn.softmax(scores, axis=-1), v)


def _attn_out(p: dict, o: Array) -> Array:  # [..., h, hd] -> [..., d]
    return jnp.einsum("...hk,hkd->...d", o, p["out"]["kernel"]) + p["out"]["bias"]


def _ffn(p: dict, x: Array) -> Array:
    h = _layer_norm(p["ln2"], x)
    h = jax.nn.gelu(h @ p["ffn_in"]["kernel"] + p["ffn_in"]["bias"], approximate=True)
    return x + h @ p["ffn_out"]["kernel"] + p["ffn_out"]["bias"]


def _head(params: dict, x: Array) -> Array:
    h = _layer_norm(params["ln_f"], x)
    return jax.nn.log_softmax(h @ params["head"]["kernel"] + params["head"]["bias"], axis=-1)


def _embed(params: dict, tokens: Array, start: int | Array = 0) -> Array:
    T = tokens.shape[-1]
    pos = jax.lax.dynamic_slice_in_dim(params["pos_emb"], start, T, axis=0)
    return params["tok_emb"][tokens] + pos


def _causal(T: int) -> Array:
    return jnp.tril(jnp.ones((T, T), bool))


# --------------------------------------------------------------------------------------------
# Full pass and grouped teacher forcing
# --------------------------------------------------------------------------------------------


def forward(params: dict, tokens: Array) -> Array:
    """Log-probs ``[..., T, V]`` of a full causal pass over ``tokens [..., T]``."""
    x = _embed(params, tokens)
    mask = _causal(tokens.shape[-1])
    for i in range(num_layers(params)):
        p = params[f"block_{i}"]
        q, k, v = _qkv(p, _layer_norm(p["ln1"], x))
        o = _attend(q, k, v, mask)
        x = _ffn(p, x + _attn_out(p, o))
    return _head(params, x)


def answer_logprobs(params: dict, prompt: Array, answers: Array) -> Array:
    """Teacher-forced next-token log-probs for K answers per prompt, ``[B, K, H, V]``.

    ``prompt [B, H]``, ``answers [B, K, H]``. Row ``t`` is the distribution of answer token
    ``t`` given the prompt and answer tokens ``< t``. The prompt stream runs once per group;
    each answer stream attends to the shared prompt keys/values and to its own causal past.
    The last answer token is not run (it predicts nothing). Equal to slicing ``forward`` on
    ``prompt ‖ answer`` at positions ``H-1 .. 2H-2``.
    """
    B, H = prompt.shape
    K = answers.shape[1]
    xp = _embed(params, prompt)  # [B, H, d]
    xa = _embed(params, answers[:, :, : H - 1], start=H)  # [B, K, H-1, d]
    mask_p = _causal(H)
    # answer j (position H + j) sees all H prompt positions and answer positions <= j
    mask_a = jnp.concatenate([jnp.ones((H - 1, H), bool), _causal(H - 1)], axis=1)
    for i in range(num_layers(params)):
        p = params[f"block_{i}"]
        hp_, ha = _layer_norm(p["ln1"], xp), _layer_norm(p["ln1"], xa)
        qp, kp, vp = _qkv(p, hp_)
        qa, ka, va = _qkv(p, ha)
        op = _attend(qp, kp, vp, mask_p)
        k_all = jnp.concatenate([jnp.broadcast_to(kp[:, None], (B, K) + kp.shape[1:]), ka], 2)
        v_all = jnp.concatenate([jnp.broadcast_to(vp[:, None], (B, K) + vp.shape[1:]), va], 2)
        oa = _attend(qa, k_all, v_all, mask_a)
        xp = _ffn(p, xp + _attn_out(p, op))
        xa = _ffn(p, xa + _attn_out(p, oa))
    first = _head(params, xp[:, -1])  # [B, V]: answer token 0, shared by the group
    rest = _head(params, xa)  # [B, K, H-1, V]
    first = jnp.broadcast_to(first[:, None, None], (B, K, 1, first.shape[-1]))
    return jnp.concatenate([first, rest], axis=2)


def answer_token_logp(params: dict, prompt: Array, answers: Array) -> Array:
    """Log-probs ``[B, K, H]`` of the answer tokens themselves (teacher-forced)."""
    lp = answer_logprobs(params, prompt, answers)
    return jnp.take_along_axis(lp, answers[..., None], axis=-1)[..., 0]


# --------------------------------------------------------------------------------------------
# KV-cached sampling
# --------------------------------------------------------------------------------------------


class Cache(NamedTuple):
    k: tuple[Array, ...]  # per layer [N, T, h, hd]; a tuple, not a stacked array, so a
    v: tuple[Array, ...]  # decode step updates each layer in place instead of copying all


def prefill(params: dict, prompt: Array, max_len: int) -> tuple[Cache, Array]:
    """Encode ``prompt [N, H]`` once; return the cache (room for ``max_len`` positions)
    and the log-probs ``[N, V]`` of the first answer token."""
    N, H = prompt.shape
    x = _embed(params, prompt)
    mask = _causal(H)
    ks, vs = [], []
    for i in range(num_layers(params)):
        p = params[f"block_{i}"]
        q, k, v = _qkv(p, _layer_norm(p["ln1"], x))
        x = _ffn(p, x + _attn_out(p, _attend(q, k, v, mask)))
        pad = ((0, 0), (0, max_len - H), (0, 0), (0, 0))
        ks.append(jnp.pad(k, pad))
        vs.append(jnp.pad(v, pad))
    return Cache(tuple(ks), tuple(vs)), _head(params, x[:, -1])


def decode(params: dict, cache: Cache, token: Array, pos: Array) -> tuple[Cache, Array]:
    """Feed ``token [N]`` at position ``pos``; return the updated cache and the log-probs
    ``[N, V]`` of the next token. One token-forward per row."""
    x = _embed(params, token[:, None], start=pos)  # [N, 1, d]
    T = cache.k[0].shape[1]
    mask = (jnp.arange(T) <= pos)[None, :]  # [1, T]
    ks, vs = [], []
    for i in range(num_layers(params)):
        p = params[f"block_{i}"]
        q, k, v = _qkv(p, _layer_norm(p["ln1"], x))
        kc = jax.lax.dynamic_update_slice_in_dim(cache.k[i], k, pos, axis=1)
        vc = jax.lax.dynamic_update_slice_in_dim(cache.v[i], v, pos, axis=1)
        ks.append(kc)
        vs.append(vc)
        x = _ffn(p, x + _attn_out(p, _attend(q, kc, vc, mask)))
    return Cache(tuple(ks), tuple(vs)), _head(params, x[:, 0])


def repeat_cache(cache: Cache, k: int) -> Cache:
    """Give each of N cached prompts ``k`` candidate rows: ``[N, ...] -> [N·k, ...]``."""
    rep = lambda xs: tuple(jnp.repeat(x, k, axis=0) for x in xs)  # noqa: E731
    return Cache(rep(cache.k), rep(cache.v))
