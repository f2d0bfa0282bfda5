"""MNIST contextual bandit (paper §3.3, Figs 1a, 5a, 5b; protocols §4.3, §4.4).

Each step draws B training images uniformly with replacement, samples one class per image
from the policy ``π = softmax(MLP(x))`` and gets reward ``r = 1{a = y}``; the label itself is
never shown to the RL methods (the CE oracle is the exception). One Adam step per batch.

How the batch is laid out by the algorithm's family (``bandit_batch``):

* ``single`` (PG, DG, batch-standardised PG = the paper's MNIST "GRPO", PPO): rows = the B
  images, one candidate = the sampled class, ``A = r - b`` with the task's baseline, by
  default the expected reward ``b = Σ_a π(a)²`` (given to the algorithm as the row's
  ``expected_baseline``).
* ``target`` (TPO): rows = the B images, candidates = all 10 classes, scores = ``A·e_a`` (one
  non-zero entry at the sampled class). Z-scored over the 10 classes that entry becomes
  ``±3`` and every other class ``∓1/3`` (only the sign of A matters), and
  ``q ∝ π_old·exp(u/η)``.
* ``group`` (Group PG, MNIST form §1.7): the same 10-class standardised scores, used as the
  scalar weight ``u[a]`` of ``log π(a)`` only (candidate weight = one-hot of the sampled class).
* ``supervised`` (CE): the one-hot label.

The test error on the full test set is computed after every ``eval_every`` steps; the logged
step is the true number of steps taken, ``(i + 1)·eval_every``. The authors' plots put
evaluation ``i`` at ``i·eval_every`` (protocols D15): the analysis offers that relabelling.

With ``task.mechanism`` each evaluation also logs the Fig 5b diagnostic (``mechanism_gains``):
the exact first-order gain in ``p_y`` of the method's expected logit update versus the gain
of its one-vs-rest (symmetric) surrogate, by wrong-class concentration bin, on the
misclassified test images.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from tpo_sweeps import algorithms as A
from tpo_sweeps import config as C
from tpo_sweeps import data as D
from tpo_sweeps import losses as L
from tpo_sweeps import optim
from tpo_sweeps.flax_models import MLP
from tpo_sweeps.sampling import categorical_rows
from tpo_sweeps.train import Program, fit_batch

Array = jax.Array

NUM_CLASSES = 10
PIXELS = 28 * 28
BIN_EDGES = (0.0, 0.25, 0.5, 0.75, 1.01)  # wrong-class concentration bins (App. C code)
NUM_BINS = len(BIN_EDGES) - 1
PROB_FLOOR = 1e-8  # probabilities are clipped here inside logs and denominators (code)
MECHANISM_METRICS = tuple(
    f"{kind}_bin{k}"
    for kind in ("gain", "scalar_gain", "surplus", "count")
    for k in range(NUM_BINS)
)


# --------------------------------------------------------------------------------------------
# Policy network
# --------------------------------------------------------------------------------------------


def init_mlp(key: Array, hidden: int, in_dim: int = PIXELS, out_dim: int = NUM_CLASSES) -> dict:
    """784-h-h-10 parameters of ``flax_models.MLP`` with Flax ``nn.Dense`` defaults: kernels
    lecun_normal (truncated normal, fan-in scaling), biases zero (protocols §2.1). Drawn
    here, one key per layer, so the draws stay those of every stored MNIST run."""
    init = jax.nn.initializers.lecun_normal()
    keys = jax.random.split(key, 3)
    dims = [(in_dim, hidden), (hidden, hidden), (hidden, out_dim)]
    return {
        f"dense_{i}": {
            "kernel": init(k, (n_in, n_out), jnp.float32),
            "bias": jnp.zeros(n_out, jnp.float32),
        }
        for i, (k, (n_in, n_out)) in enumerate(zip(keys, dims, strict=True))
    }


def mlp_logits(params: dict, x: Array) -> Array:
    """Dense → ReLU → Dense → ReLU → Dense (``flax_models.MLP``): class logits ``[..., 10]``."""
    widths = tuple(params[f"dense_{i}"]["bias"].shape[0] for i in range(len(params)))
    return MLP(widths).apply({"params": params}, x)


def pixels(images_u8: Array) -> Array:
    """uint8 images → float32 ``/255``, no mean/std normalisation (the authors' scaling)."""
    return images_u8.astype(jnp.float32) / 255.0


# --------------------------------------------------------------------------------------------
# Batch layout per algorithm family
# --------------------------------------------------------------------------------------------


def _check_algorithm(algo: A.Algorithm, hp: C.AlgorithmConfig) -> None:
    if algo.family == "group" and not isinstance(hp, C.GroupPGConfig):
        raise C.ConfigError(
            f"algorithm '{hp.name}' samples K rollouts per context, but the MNIST bandit has one "
            f"sample per image; the paper's MNIST 'GRPO' is algorithm=batch_std_pg"
        )


def bandit_batch(
    algo: A.Algorithm,
    task: C.MnistConfig,
    logp: Array,
    actions: Array,
    labels: Array,
):
    """One step's batch for the algorithm's family (module docstring).

    Args:
      logp: ``[B, 10]`` rollout-time log-probabilities over the classes.
      actions: ``[B]`` sampled classes; labels: ``[B]`` true classes.
    Returns:
      ``(rows, batch)``: ``rows(logp_new [B, 10])`` gives the ``[B, K]`` log-probs the loss
      sees, and ``batch`` the ``tpo_sweeps.algorithms.Batch``.
    """
    logp = L.sg(logp)
    onehot_a = jax.nn.one_hot(actions, NUM_CLASSES, dtype=logp.dtype)
    r = (actions == labels).astype(logp.dtype)
    b = jnp.sum(jnp.exp(2.0 * logp), axis=-1)  # Σ π², the expected reward under π
    if algo.family == "single":

        def rows(lp):
            return jnp.take_along_axis(lp, actions[:, None], axis=-1)

        return rows, A.make_batch(rows(logp), r[:, None], expected_baseline=b[:, None])
    if algo.family == "supervised":
        return (lambda lp: lp), A.make_batch(logp, jax.nn.one_hot(labels, NUM_CLASSES))
    adv = L.baseline_advantage(r, baseline=task.baseline, value=task.baseline_value, expected=b)
    scores = adv[:, None] * onehot_a
    if algo.family == "target":
        return (lambda lp: lp), A.make_batch(logp, scores)
    # group (Group PG): scalar weight u[a] on log π(a) only
    return (lambda lp: lp), A.make_batch(logp, scores, weight=onehot_a)


def expected_logit_update(hp: C.AlgorithmConfig, task: C.MnistConfig, logits: Array, y: int):
    """``E_{a~π}[-∇_ℓ L(a)]`` for one context with logits ``[10]`` and label ``y``: the
    algorithm's actual loss (``bandit_batch`` + the registry), one sampled class at a time,
    averaged under π. The reference the Fig 5b closed forms are tested against."""
    algo = A.get(hp)
    _check_algorithm(algo, hp)
    pi = jax.nn.softmax(logits)

    def update(a):
        logp = jax.nn.log_softmax(logits)[None]
        rows, batch = bandit_batch(algo, task, logp, a[None], jnp.array([y]))
        signal = algo.signal(batch, hp)

        def loss(l):
            return A.batch_loss(algo, hp, rows(jax.nn.log_softmax(l)[None]), batch, signal)

        return -jax.grad(loss)(logits)

    updates = jax.vmap(update)(jnp.arange(NUM_CLASSES))
    return jnp.sum(pi[:, None] * updates, axis=0)


# --------------------------------------------------------------------------------------------
# Fig 5b: exact vs one-vs-rest first-order gain (App. C; protocols §4.4)
# --------------------------------------------------------------------------------------------


def _z_scores(k: int = NUM_CLASSES) -> tuple[float, float]:
    """Z-score of a one-hot vector over k entries: (sampled entry, every other entry)."""
    return math.sqrt(k - 1), -1.0 / math.sqrt(k - 1)


def update_coefficients(hp: C.AlgorithmConfig, pi: Array, p: Array, q_sym: Array):
    """The method's expected logit update written as ``c·v + Σ_{j≠y} α_j (π − e_j)`` with
    ``v = e_y − π``, and its one-vs-rest surrogate coefficient ``β_sym`` (the same method on the
    symmetric distribution with every wrong class at ``q = (1 − p)/9``, whose update is
    ``β_sym·v``).

    ``pi [..., 10]``, ``p [...]`` = π_y; returns ``(c [...], α [..., 10], β_sym [...])`` with
    α including ``j = y`` (callers mask it), or ``None`` for methods without a closed form
    here (batch-standardised PG, whose advantage couples the batch; PPO; TPO no-anchor).

    * PG: ``p·v`` (any baseline: Σ_a π_a(e_a − π) = 0); β_sym = p.
    * Group PG: weights ±3/η at the sampled class: ``(3/η)p·v + Σ (3/η)π_j(π − e_j)`` = 6p/η·v.
    * DG (η, b = Σπ²): ``c = p(1−b)σ((1−b)ℓ_y/η)``, ``α_j = π_j·b·σ(−b·ℓ_j/η)``, ℓ = −log π.
    * TPO (anchored, λ = exp((3 + 1/3)/η) = e^{10/3}): ``c = p·β₊``, β₊ = p(λ−1)/(1−p+λp);
      ``α_j = π_j·γ(π_j)``, γ(r) = r(λ−1)/(λ(1−r)+r); β_sym = pβ₊ + pγ(q).
    * CE: ``v`` itself; β_sym = 1.
    """
    zeros = jnp.zeros_like(pi)
    if isinstance(hp, C.TPOConfig):
        if not hp.anchor:
            return None
        up, down = _z_scores()
        lam = math.exp((up - down) / hp.eta)

        def gamma(r):
            return r * (lam - 1.0) / (lam * (1.0 - r) + r)

        beta_plus = p * (lam - 1.0) / (1.0 - p + lam * p)
        return p * beta_plus, pi * gamma(pi), p * beta_plus + p * gamma(q_sym)
    if isinstance(hp, C.DGConfig):
        if hp.baseline != "expected" or hp.surprisal_clip is not None:
            return None

        def surprisal(x):
            return -jnp.log(jnp.maximum(x, PROB_FLOOR))

        b = jnp.sum(pi * pi, axis=-1)
        c = p * (1.0 - b) * jax.nn.sigmoid((1.0 - b) * surprisal(p) / hp.eta)
        alpha = pi * b[..., None] * jax.nn.sigmoid(-b[..., None] * surprisal(pi) / hp.eta)
        b_sym = p * p + (NUM_CLASSES - 1) * q_sym * q_sym
        beta_sym = p * (1.0 - b_sym) * jax.nn.sigmoid((1.0 - b_sym) * surprisal(p) / hp.eta)
        beta_sym += p * b_sym * jax.nn.sigmoid(-b_sym * surprisal(q_sym) / hp.eta)
        return c, alpha, beta_sym
    if isinstance(hp, C.GroupPGConfig):
        w = _z_scores()[0] / hp.eta
        return w * p, w * pi, 2.0 * w * p
    if isinstance(hp, C.CEConfig):
        return jnp.ones_like(p), zeros, jnp.ones_like(p)
    if type(hp) is C.PGConfig:
        return p, zeros, p
    return None


def mechanism_gains(hp: C.AlgorithmConfig, pi: Array, labels: Array):
    """Per example: ``(exact, scalar)`` first-order gains in ``p_y`` (NaN without a closed form).

    The gain of a logit update ``g`` is ``dp_y = p_y·⟨v, g⟩``. With ``g = c·v + Σ_{j≠y} α_j
    (π − e_j)`` and ``⟨v, π − e_j⟩ = p − ‖π‖² + π_j`` (j ≠ y):
    exact = ``p·(c‖v‖² + Σ_{j≠y} α_j (p − ‖π‖² + π_j))``, scalar = ``p·β_sym·‖v‖²``.
    """
    onehot = jax.nn.one_hot(labels, NUM_CLASSES, dtype=pi.dtype)
    p = jnp.sum(pi * onehot, axis=-1)
    q_sym = (1.0 - p) / (NUM_CLASSES - 1)
    coef = update_coefficients(hp, pi, p, q_sym)
    if coef is None:
        nan = jnp.full_like(p, jnp.nan)
        return nan, nan
    c, alpha, beta_sym = coef
    sq = jnp.sum(pi * pi, axis=-1)
    vv = 1.0 - 2.0 * p + sq  # ‖e_y − π‖²
    cross = jnp.sum(alpha * (1.0 - onehot) * ((p - sq)[..., None] + pi), axis=-1)
    return p * (c * vv + cross), p * (beta_sym * vv)


def concentration(pi: Array, labels: Array) -> Array:
    """``max_{j≠y} π_j / max(1 − π_y, 1e-8)``: 1 when all wrong mass sits on one class."""
    onehot = jax.nn.one_hot(labels, NUM_CLASSES, dtype=pi.dtype)
    p = jnp.sum(pi * onehot, axis=-1)
    return jnp.max(jnp.where(onehot > 0, -jnp.inf, pi), axis=-1) / jnp.maximum(1.0 - p, PROB_FLOOR)


def binned_gains(
    exact: Array, scalar: Array, conc: Array, misclassified: Array
) -> dict[str, Array]:
    """Mean exact gain, mean scalar gain, their difference (surplus) and the count per
    concentration bin over the misclassified examples with finite gains; an empty bin is NaN
    (count 0). Bins: c < 0.25, [0.25, 0.5), [0.5, 0.75), ≥ 0.75."""
    keep = misclassified & jnp.isfinite(exact) & jnp.isfinite(scalar)
    idx = jnp.searchsorted(jnp.asarray(BIN_EDGES[1:-1], conc.dtype), conc, side="right")
    member = jax.nn.one_hot(idx, NUM_BINS, dtype=exact.dtype) * keep[:, None]
    count = jnp.sum(member, axis=0)
    safe = jnp.where(count > 0, count, 1.0)
    gain = jnp.where(count > 0, jnp.where(keep, exact, 0.0) @ member / safe, jnp.nan)
    scal = jnp.where(count > 0, jnp.where(keep, scalar, 0.0) @ member / safe, jnp.nan)
    out = {}
    for k in range(NUM_BINS):
        out[f"gain_bin{k}"] = gain[k]
        out[f"scalar_gain_bin{k}"] = scal[k]
        out[f"surplus_bin{k}"] = gain[k] - scal[k]
        out[f"count_bin{k}"] = count[k]
    return out


# --------------------------------------------------------------------------------------------
# The task
# --------------------------------------------------------------------------------------------


def load_data(task: C.MnistConfig) -> D.MnistArrays:
    try:
        return D.load_mnist(task.data_dir, check_md5=task.check_md5)
    except D.DataError as e:
        raise C.ConfigError(str(e)) from None


def mnist(cfg: C.Config) -> Program:
    """The MNIST bandit as a ``Program`` whose point = ``eval_every`` Adam steps + one
    evaluation on the full test set (nested ``lax.scan``).

    Metrics per point: ``test_error`` (1 − accuracy of the argmax class), ``train_reward``
    (mean reward of the block's sampled classes), and with ``task.mechanism`` the Fig 5b
    bins (``MECHANISM_METRICS``). All at the true step ``(i + 1)·eval_every``.
    """
    task: C.MnistConfig = cfg.task
    hp = cfg.algorithm
    algo = A.get(hp)
    _check_algorithm(algo, hp)
    if task.eval_every < 1 or task.steps % task.eval_every:
        raise C.ConfigError(
            f"task.steps={task.steps} must be a positive multiple of task.eval_every="
            f"{task.eval_every}"
        )
    if task.batch_size < 1 or task.hidden < 1:
        raise C.ConfigError("task.batch_size and task.hidden must be >= 1")
    opt = optim.build(cfg.optimizer)
    data = load_data(task)
    # uint8 on the device (a quarter of the float32 bytes); rows are converted after the gather
    x_train = jnp.asarray(data.train_images.reshape(-1, PIXELS))
    y_train = jnp.asarray(data.train_labels.astype(np.int32))
    x_test = jnp.asarray(data.test_images.reshape(-1, PIXELS))
    y_test = jnp.asarray(data.test_labels.astype(np.int32))
    n_train, B, every = x_train.shape[0], task.batch_size, task.eval_every
    points = task.steps // every

    def init(key):
        key, init_key = jax.random.split(key)
        params = init_mlp(init_key, task.hidden)
        return params, opt.init(params), key

    def train_step(carry, k):
        params, opt_state, key = carry
        batch_key, action_key = jax.random.split(jax.random.fold_in(key, k))
        idx = jax.random.randint(batch_key, (B,), 0, n_train)
        # indices from randint are in range: no bounds handling in the gather
        x = pixels(x_train.at[idx].get(mode="promise_in_bounds"))
        y = y_train.at[idx].get(mode="promise_in_bounds")
        logp = jax.nn.log_softmax(mlp_logits(params, x))
        actions = categorical_rows(action_key, logp)
        rows, batch = bandit_batch(algo, task, logp, actions, y)

        def logp_of(p):
            return rows(jax.nn.log_softmax(mlp_logits(p, x)))

        params, opt_state, _ = fit_batch(algo, hp, params, opt_state, opt, logp_of, batch)
        reward = jnp.mean((actions == y).astype(jnp.float32))
        return (params, opt_state, key), reward

    def step(carry, t):
        carry, rewards = jax.lax.scan(train_step, carry, t * every + jnp.arange(every))
        logits = mlp_logits(carry[0], pixels(x_test))
        predicted = jnp.argmax(logits, axis=-1)
        wrong = predicted != y_test
        metrics = {
            "test_error": jnp.mean(wrong.astype(jnp.float32)),
            "train_reward": rewards.mean(),
        }
        if task.mechanism:
            pi = jax.nn.softmax(logits)
            exact, scalar = mechanism_gains(hp, pi, y_test)
            metrics.update(binned_gains(exact, scalar, concentration(pi, y_test), wrong))
        return carry, metrics

    true_steps = (np.arange(points) + 1) * every
    names = ["test_error", "train_reward", *(MECHANISM_METRICS if task.mechanism else ())]
    # a bin without misclassified examples, or a method without a closed form: NaN by design
    undefined = frozenset(m for m in MECHANISM_METRICS if not m.startswith("count_"))
    return Program(init, step, points, {n: true_steps for n in names}, undefined)
