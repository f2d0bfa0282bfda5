"""The causal transformer of the authors' code, written as pure functions with a KV cache.

Architecture (protocols §2.2): token embedding + learned absolute positions, ``L`` pre-norm
blocks (LayerNorm → causal multi-head self-attention → residual; LayerNorm → Dense(4d) →
GELU(tanh) → Dense(d) → residual), final LayerNorm → Dense(V) → log-softmax. Parameter
shapes and initialisations follow Flax's defaults exactly (so optax's Muon splits them the
same way: q/k/v kernels ``(d, heads, d/heads)`` and the output kernel ``(heads, d/heads, d)``
are 3-D and go to AdamW, their 2-D biases ``(heads, d/heads)`` to Muon).

Three ways to run it, all sharing the same layer code:

* ``forward(params, tokens)``: full causal pass, log-probs at every position (reference).
* ``answer_logprobs(params, prompt, answers)``: teacher-forced log-probs of K answers per
  prompt, with the shared prompt encoded **once per group** (its keys/values are broadcast to
  the K candidates) and without running the last answer token, which predicts nothing.
* ``prefill`` + ``decode``: a KV-cached group sampler (one token-forward per generated
  token; the prompt is encoded and stored once for all of its candidates).

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


@jax.custom_vjp
def dense(x: Array, w: Array, b: Array) -> Array:
    """``x @ w + b`` for ``x [..., din]``, ``w [din, dout]``, with a backward pass built for
    XLA:CPU: the weight and bias gradients come from one GEMM over ``[x | 1]``, transposing
    whichever of ``x`` and the output gradient is smaller (autodiff's default transposes
    the left operand whatever its size and sums the bias gradient separately)."""
    return x @ w + b


def _dense_fwd(x, w, b):
    return x @ w + b, (x, w)


def _dense_bwd(res, dy):
    x, w = res
    x2, dy2 = x.reshape(-1, x.shape[-1]), dy.reshape(-1, dy.shape[-1])
    dx = (dy2 @ w.T).reshape(x.shape)
    xa = jnp.concatenate([x2, jnp.ones((x2.shape[0], 1), x2.dtype)], axis=1)
    if x2.shape[1] <= dy2.shape[1]:
        g = xa.T @ dy2  # [din + 1, dout]
        dw, db = g[:-1], g[-1]
    else:
        g = dy2.T @ xa  # [dout, din + 1]
        dw, db = g[:, :-1].T, g[:, -1]
    return dx, dw, db


dense.defvjp(_dense_fwd, _dense_bwd)


@jax.custom_vjp
def normalize(x: Array) -> Array:
    """LayerNorm without its affine part: ``(x - mean) / sqrt(var + eps)`` over the last
    axis, with a row-wise backward pass (no broadcast residuals kept)."""
    return _normalize_fwd(x)[0]


def _row_mean(x: Array) -> Array:
    """Mean over the last axis, ``[..., 1]``, as a matrix-vector product: XLA:CPU hands
    a reduce over 64 floats to a library kernel that is several times slower than a GEMV."""
    return x @ jnp.full((x.shape[-1], 1), 1.0 / x.shape[-1], x.dtype)


def _normalize_fwd(x):
    xc = x - _row_mean(x)
    r = jax.lax.rsqrt(_row_mean(jnp.square(xc)) + LN_EPS)
    xh = xc * r
    return xh, (xh, r)


def _normalize_bwd(res, g):
    xh, r = res
    return (r * (g - _row_mean(g) - xh * _row_mean(g * xh)),)


normalize.defvjp(_normalize_fwd, _normalize_bwd)


def _ln_dense(ln: dict, x: Array, w: Array, b: Array) -> Array:
    """``Dense(LayerNorm(x))`` with the LayerNorm's scale and bias folded into the dense
    weights: ``norm(x) @ (scale·w) + (bias @ w + b)``. The same function (up to float
    rounding); the scale/bias gradients then come out of the weight GEMM instead of two
    column sums over every token. ``w [din, ...]`` and ``b [...]`` may be multi-axis."""
    w2 = w.reshape(w.shape[0], -1)
    y = dense(normalize(x), ln["scale"][:, None] * w2, ln["bias"] @ w2 + b.reshape(-1))
    return y.reshape(x.shape[:-1] + w.shape[1:])


def _qkv(p: dict, x: Array) -> tuple[Array, Array, Array]:
    """q, k, v ``[..., heads, hd]`` of ``LayerNorm(x)``, from one matmul over the three
    stacked kernels."""
    w = jnp.stack([p["q"]["kernel"], p["k"]["kernel"], p["v"]["kernel"]], axis=1)
    b = jnp.stack([p["q"]["bias"], p["k"]["bias"], p["v"]["bias"]], axis=0)
    qkv = _ln_dense(p["ln1"], x, w, b)
    return qkv[..., 0, :, :], qkv[..., 1, :, :], qkv[..., 2, :, :]


def _attend(q: Array, k: Array, v: Array, mask: Array) -> Array:
    """q ``[..., Tq, h, hd]``, k/v ``[..., Tk, h, hd]``, mask ``[Tq, Tk]`` (or broadcastable).

    One head at a time: a head's q/k/v are contiguous ``[..., T, hd]`` slices, so its two
    dots batch over the leading axes as they are; a multi-head einsum makes XLA:CPU
    transpose q, k, v and the output around every dot (measured ~20% slower)."""
    heads = [
        _attend_head(q[..., i, :], k[..., i, :], v[..., i, :], mask) for i in range(q.shape[-2])
    ]
    return jnp.stack(heads, axis=-2)


def _attend_head(q: Array, k: Array, v: Array, mask: Array) -> Array:
    scores = jnp.einsum("...qd,...td->...qt", q, k) / math.sqrt(q.shape[-1])
    scores = jnp.where(mask, scores, NEG_INF)
    return jnp.einsum("...qt,...td->...qd", jax.nn.softmax(scores, axis=-1), v)


def _attn_out(p: dict, o: Array) -> Array:  # [..., h, hd] -> [..., d]
    w = p["out"]["kernel"]
    return dense(o.reshape(o.shape[:-2] + (-1,)), w.reshape(-1, w.shape[-1]), p["out"]["bias"])


def _ffn(p: dict, x: Array) -> Array:
    h = jax.nn.gelu(_ln_dense(p["ln2"], x, p["ffn_in"]["kernel"], p["ffn_in"]["bias"]), True)
    return x + dense(h, p["ffn_out"]["kernel"], p["ffn_out"]["bias"])


def _head(params: dict, x: Array) -> Array:
    logits = _ln_dense(params["ln_f"], x, params["head"]["kernel"], params["head"]["bias"])
    return jax.nn.log_softmax(logits, axis=-1)


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
        q, k, v = _qkv(p, x)
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
        qp, kp, vp = _qkv(p, xp)
        qa, ka, va = _qkv(p, xa)
        op = _attend(qp, kp, vp, mask_p)
        oa = jnp.stack(
            [
                _attend_head(
                    qa[..., j, :], _with_prompt(kp, ka, j), _with_prompt(vp, va, j), mask_a
                )
                for j in range(qa.shape[-2])
            ],
            axis=-2,
        )
        xp = _ffn(p, xp + _attn_out(p, op))
        xa = _ffn(p, xa + _attn_out(p, oa))
    first = _head(params, xp[:, -1])  # [B, V]: answer token 0, shared by the group
    rest = _head(params, xa)  # [B, K, H-1, V]
    first = jnp.broadcast_to(first[:, None, None], (B, K, 1, first.shape[-1]))
    return jnp.concatenate([first, rest], axis=2)


def _with_prompt(xp: Array, xa: Array, head: int) -> Array:
    """One head's keys (or values) for the answer streams: the group's shared prompt
    ``xp [B, H, h, hd]`` broadcast to each of the K answers ``xa [B, K, T, h, hd]`` and put
    in front of them, ``[B, K, H + T, hd]``."""
    B, K = xa.shape[:2]
    shared = jnp.broadcast_to(xp[:, None, :, head], (B, K) + xp.shape[1:2] + xp.shape[3:])
    return jnp.concatenate([shared, xa[..., head, :]], axis=2)


def answer_token_logp(params: dict, prompt: Array, answers: Array) -> Array:
    """Log-probs ``[B, K, H]`` of the answer tokens themselves (teacher-forced)."""
    lp = answer_logprobs(params, prompt, answers)
    return jnp.take_along_axis(lp, answers[..., None], axis=-1)[..., 0]


# --------------------------------------------------------------------------------------------
# KV-cached sampling
# --------------------------------------------------------------------------------------------


class Cache(NamedTuple):
    """Keys/values of a group sampler, one tuple entry per layer.

    The prompt's keys/values are stored once per prompt (``kp [B, h, hd, H]``, keys
    transposed, and ``vp [B, h, H, hd]``), not once per candidate; each of the ``k``
    candidates of a prompt has its own answer slots (``ka [B·k, h, hd, H]``,
    ``va [B·k, h, H, hd]``). Both layouts are the ones the attention dots read directly,
    so a decode step never transposes the cache, and it is updated in place.
    """

    kp: tuple[Array, ...]
    vp: tuple[Array, ...]
    ka: tuple[Array, ...]
    va: tuple[Array, ...]


def prefill(params: dict, prompt: Array, k: int = 1) -> tuple[Cache, Array]:
    """Encode ``prompt [B, H]`` once; return a cache with room for ``k`` candidates of
    ``H`` answer tokens per prompt, and the log-probs ``[B, V]`` of the first answer token
    (shared by the prompt's candidates)."""
    B, H = prompt.shape
    x = _embed(params, prompt)
    mask = _causal(H)
    kp, vp, ka, va = [], [], [], []
    for i in range(num_layers(params)):
        p = params[f"block_{i}"]
        q, kk, v = _qkv(p, x)
        x = _ffn(p, x + _attn_out(p, _attend(q, kk, v, mask)))
        heads, hd = kk.shape[-2:]
        kp.append(jnp.transpose(kk, (0, 2, 3, 1)))
        vp.append(jnp.transpose(v, (0, 2, 1, 3)))
        ka.append(jnp.zeros((B * k, heads, hd, H), kk.dtype))
        va.append(jnp.zeros((B * k, heads, H, hd), v.dtype))
    return Cache(tuple(kp), tuple(vp), tuple(ka), tuple(va)), _head(params, x[:, -1])


def decode(params: dict, cache: Cache, token: Array, t: Array) -> tuple[Cache, Array]:
    """Feed answer token ``t`` (``token [B·k]``, candidates of a prompt adjacent); return
    the updated cache and the log-probs ``[B·k, V]`` of answer token ``t + 1``. One
    token-forward per row; the shared prompt keys are read once per prompt."""
    B, H = cache.kp[0].shape[0], cache.kp[0].shape[-1]
    N = token.shape[0]
    k = N // B
    x = _embed(params, token[:, None], start=H + t)[:, 0]  # [N, d]
    seen = (jnp.arange(H) <= t)[None, None, :]
    for i in range(num_layers(params)):
        p = params[f"block_{i}"]
        q, kk, v = _qkv(p, x)  # [N, h, hd]
        heads, hd = q.shape[-2:]
        ka = jax.lax.dynamic_update_slice_in_dim(cache.ka[i], kk[..., None], t, axis=3)
        va = jax.lax.dynamic_update_slice_in_dim(cache.va[i], v[:, :, None], t, axis=2)
        cache = cache._replace(ka=_set(cache.ka, i, ka), va=_set(cache.va, i, va))
        scale = 1.0 / math.sqrt(hd)
        # prompt part: one [k, hd] x [hd, H] product per prompt and head
        qg = jnp.transpose(q.reshape(B, k, heads, hd), (0, 2, 1, 3))  # [B, h, k, hd]
        sp = jnp.einsum("bhkd,bhdt->bhkt", qg, cache.kp[i]) * scale
        sp = jnp.transpose(sp, (0, 2, 1, 3)).reshape(N, heads, H)
        sa = jnp.where(seen, jnp.einsum("nhd,nhdt->nht", q, ka) * scale, NEG_INF)
        w = jax.nn.softmax(jnp.concatenate([sp, sa], axis=-1), axis=-1)  # [N, h, 2H]
        wp = jnp.transpose(w[..., :H].reshape(B, k, heads, H), (0, 2, 1, 3))
        op = jnp.einsum("bhkt,bhtd->bhkd", wp, cache.vp[i])
        o = jnp.transpose(op, (0, 2, 1, 3)).reshape(N, heads, hd)
        o = o + jnp.einsum("nht,nhtd->nhd", w[..., H:], va)
        x = _ffn(p, x + _attn_out(p, o))
    return cache, _head(params, x)


def _set(xs: tuple, i: int, x: Array) -> tuple:
    return xs[:i] + (x,) + xs[i + 1 :]
