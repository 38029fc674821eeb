"""Property tests for `entrgi` (its module docstring states the math): the guidance math of EntRGi.

What this module proves, each against an independent float64 / plain-Python reference:
  * `reward_inputs` has forward value (1 - w) * soft + w * hard with w = H(softmax(phi)) / log V
    (entrgi), 1 (aps) or 0 (expectation), and for every method the gradient of the soft path;
    a `soft` handed in by the caller is the one it uses, and passing soft_embedding's changes nothing.
  * `soft_embedding` equals the plain relaxation softmax(phi / tau) @ E bitwise, value and
    gradient, and autograd keeps only the logits for its backward (the checkpoint);
    with a reward linear in the embeddings the three methods give bitwise identical gradients
    and identical `guide` results.
  * `entropy` / `entropy_weight` are exact at one-hot and uniform logits, bounded by [0, log V]
    (also with -inf entries and bfloat16 inputs), gradient-free (the weight), shift invariant.
  * `guide`: shift invariance, one Adam step moves every masked logit by ~lr in the direction of
    dR/dphi and leaves unmasked positions bit-identical, steps = 0 is a no-op that does not touch
    the generator, argument validation, vectorised calls with (B, L, d) / (B, L) inputs and
    argmax tokens at masked positions, rows independent of each other; its hard tokens are fresh
    draws from filter(softmax(phi / tau)) at every step (5-sigma frequencies, support, reproducible),
    the first of them from the caller's `first_probs` when given.
  * `filter_probs` keeps token j iff the mass strictly more probable than j is <= top_p * total
    (the token that crosses top_p is kept), then the tokens >= the k-th largest (top-p first, as
    Dream), ties together, kept probabilities unchanged and the rest 0, against an exact-sum
    reference on random rows (ties, zeros, bfloat16-rounded, near-uniform, V = 1, any leading
    shape and scale); exactly at the boundary, ties included, on dyadic probabilities (every
    partial sum exact in any order); no-op settings.
  * `sample_categorical` draws from the given distribution (5-sigma binomial bounds over 200k
    draws, zero-probability tokens never drawn), any leading shape, unnormalised weights, and
    is reproducible from the generator seed.

All randomness comes from explicit `torch.Generator`s seeded by Hypothesis; CPU, small shapes.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import entrgi
from entrgi import (
    METHODS,
    entropy,
    entropy_weight,
    filter_probs,
    guide,
    reward_inputs,
    sample_categorical,
    soft_embedding,
    tempered_softmax,
)

# --------------------------------------------------------------------------- shared helpers

FAST = settings(max_examples=15, deadline=None)
FEW = settings(max_examples=6, deadline=None)

seeds = st.integers(min_value=0, max_value=2**31 - 1)
methods = st.sampled_from(METHODS)
temperatures = st.sampled_from([0.5, 0.7, 1.0, 1.6])
logit_scales = st.sampled_from([0.3, 1.0, 3.0])


def gen(seed: int) -> torch.Generator:
    """A CPU generator with a fixed seed (tests never use the global RNG)."""
    return torch.Generator().manual_seed(seed)


@dataclass
class Problem:
    """One guidance problem: logits (B, L, V), E (V, d), tokens / hard (B, L), masked (B, L)."""

    logits: torch.Tensor
    embed: torch.Tensor
    tokens: torch.Tensor
    hard: torch.Tensor
    masked: torch.Tensor
    coef: torch.Tensor  # (B, L, d) reward coefficients
    temperature: float

    @property
    def shape(self) -> tuple[int, int, int, int]:
        b, l, v = self.logits.shape
        return b, l, v, self.embed.shape[-1]


@st.composite
def problems(draw, max_b: int = 3, max_l: int = 4, max_v: int = 12, max_d: int = 5) -> Problem:
    """Shapes and parameters from Hypothesis, values from a seeded torch.Generator."""
    b = draw(st.integers(1, max_b))
    l = draw(st.integers(1, max_l))
    v = draw(st.integers(2, max_v))
    d = draw(st.integers(1, max_d))
    scale = draw(logit_scales)
    tau = draw(temperatures)
    g = gen(draw(seeds))
    logits = torch.randn(b, l, v, generator=g) * scale
    embed = torch.randn(v, d, generator=g)
    tokens = torch.randint(0, v, (b, l), generator=g)
    hard = torch.randint(0, v, (b, l), generator=g)
    masked = torch.rand(b, l, generator=g) < 0.6
    masked[0, 0] = True  # at least one guided position
    if b * l > 1:
        masked[-1, -1] = False  # at least one fixed position
    coef = torch.randn(b, l, d, generator=g)
    return Problem(logits, embed, tokens, hard, masked, coef, tau)


def ref_softmax(logits64: torch.Tensor) -> torch.Tensor:
    """softmax in float64 from exp / sum (exp(-inf) = 0)."""
    z = logits64 - logits64.max(-1, keepdim=True).values
    p = z.exp()
    return p / p.sum(-1, keepdim=True)


def ref_entropy(logits: torch.Tensor) -> torch.Tensor:
    """-sum p log p over p > 0, in float64."""
    p = ref_softmax(logits.double())
    terms = torch.where(p > 0, -p * torch.log(torch.where(p > 0, p, 1.0)), 0.0)
    return terms.sum(-1)


def ref_weight(logits: torch.Tensor) -> torch.Tensor:
    """H(softmax(logits)) / log V in float64, no temperature."""
    return ref_entropy(logits) / math.log(logits.shape[-1])


def ref_soft(logits: torch.Tensor, embed: torch.Tensor, tau: float) -> torch.Tensor:
    """softmax(logits / tau) @ E in float64."""
    return ref_softmax(logits.double() / tau) @ embed.double()


def ref_soft_vjp(logits: torch.Tensor, embed: torch.Tensor, tau: float, u: torch.Tensor) -> torch.Tensor:
    """J_soft(logits)^T u by the explicit formula g_k = q_k ((E u)_k - q . E u) / tau, float64."""
    q = ref_softmax(logits.double() / tau)  # (..., V)
    eu = u.double() @ embed.double().T  # (..., V)
    return q * (eu - (q * eu).sum(-1, keepdim=True)) / tau


def ref_method_weight(method: str, logits: torch.Tensor) -> torch.Tensor:
    """The interpolation weight of each method, float64, shape logits.shape[:-1]."""
    if method == "entrgi":
        return ref_weight(logits)
    fill = 1.0 if method == "aps" else 0.0
    return torch.full(logits.shape[:-1], fill, dtype=torch.float64)


def linear_reward(coef: torch.Tensor):
    """R_b = sum_{l, d} C[b, l, d] * e[b, l, d] (linear in the embeddings)."""
    return lambda embeds, tokens: (embeds * coef).sum((-2, -1))


def sine_reward(coef: torch.Tensor):
    """R_b = sum_{l, d} C[b, l, d] * sin(e[b, l, d]) (nonlinear, rows independent)."""
    return lambda embeds, tokens: (coef * torch.sin(embeds)).sum((-2, -1))


class Recorder:
    """A reward_fn that records what `guide` hands it, then applies `inner`."""

    def __init__(self, inner):
        self.inner = inner
        self.embeds: list[torch.Tensor] = []
        self.tokens: list[torch.Tensor] = []

    def __call__(self, embeds: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        self.embeds.append(embeds.detach().clone())
        self.tokens.append(tokens.clone())
        return self.inner(embeds, tokens)


def run_guide(p: Problem, reward_fn, method: str, steps: int, lr: float, seed: int, logits=None, **kw):
    """guide(...) on problem p with a fresh generator seeded by `seed`."""
    return guide(
        p.logits if logits is None else logits, p.masked, p.tokens, p.embed, reward_fn,
        method=method, steps=steps, lr=lr, temperature=p.temperature, generator=gen(seed), **kw,
    )


def ref_keep(probs: list[float], top_p: float | None, top_k: int | None = None) -> list[bool]:
    """Which tokens filter(probs) keeps, by the definition, in plain Python (math.fsum: exact sums).

    Top-p keeps j iff the mass of the tokens strictly more probable than j is <= top_p * total;
    then top-k, on what top-p left, keeps the tokens >= its k-th largest value.
    """
    total = math.fsum(probs)
    kept = [top_p is None or top_p >= 1 or math.fsum(x for x in probs if x > q) <= top_p * total for q in probs]
    if top_k is not None and top_k < len(probs):
        left = [q if k else 0.0 for q, k in zip(probs, kept)]
        kth = sorted(left, reverse=True)[top_k - 1]
        kept = [k and q >= kth for q, k in zip(left, kept)]
    return kept


def ref_margin(probs: list[float], top_p: float) -> float:
    """Distance, in units of the total, from top_p * total to the nearest strictly-greater mass S(q_j)."""
    total = math.fsum(probs)
    return min(abs(math.fsum(x for x in probs if x > q) - top_p * total) for q in probs) / total


def assert_frequencies(draws: torch.Tensor, probs: torch.Tensor) -> None:
    """Every count within 5 binomial sigmas of n p; zero-probability tokens never drawn."""
    n = draws.numel()
    counts = torch.bincount(draws.reshape(-1), minlength=probs.numel()).double()
    p = probs.double() / probs.double().sum()
    sigma = torch.sqrt(n * p * (1 - p))
    assert torch.all((counts - n * p).abs() <= 5 * sigma + 1e-9), (counts, n * p, sigma)
    assert torch.all(counts[p == 0] == 0)


# --------------------------------------------------------------------------- reward_inputs


@FAST
@given(p=problems(), method=methods, dtype=st.sampled_from([torch.float32, torch.float64]))
def test_reward_inputs_forward_value(p: Problem, method: str, dtype: torch.dtype):
    """Forward value is (1 - w) soft + w hard with each method's w (float64 reference, atol 5e-5)."""
    embed = p.embed.to(dtype)
    out = reward_inputs(p.logits, embed, p.hard, method, p.temperature)
    assert out.dtype == dtype and out.shape == (*p.hard.shape, embed.shape[-1])
    w = ref_method_weight(method, p.logits).unsqueeze(-1)
    expected = (1 - w) * ref_soft(p.logits, embed, p.temperature) + w * embed.double()[p.hard]
    # float32 softmax / entropy round to ~1e-6 relative; E entries are O(1): 5e-5 is ample.
    torch.testing.assert_close(out.double(), expected, atol=5e-5, rtol=1e-5)


@FAST
@given(p=problems(), method=methods)
def test_reward_inputs_gradient_is_soft_path(p: Problem, method: str):
    """d f(e_hat)/d logits = J_soft^T f'(e_hat) for f(e) = sum(c e^2), every method."""
    logits = p.logits.clone().requires_grad_(True)
    e_hat = reward_inputs(logits, p.embed, p.hard, method, p.temperature)
    (p.coef * e_hat**2).sum().backward()
    w = ref_method_weight(method, p.logits).unsqueeze(-1)
    e_ref = (1 - w) * ref_soft(p.logits, p.embed, p.temperature) + w * p.embed.double()[p.hard]
    expected = ref_soft_vjp(p.logits, p.embed, p.temperature, 2 * p.coef.double() * e_ref)
    # Cross-check the explicit formula with autograd's vjp of the float64 soft path.
    _, vjp = torch.autograd.functional.vjp(
        lambda x: ref_soft(x, p.embed, p.temperature), p.logits.double(), 2 * p.coef.double() * e_ref
    )
    torch.testing.assert_close(vjp, expected, atol=1e-10, rtol=1e-9)
    torch.testing.assert_close(logits.grad.double(), expected, atol=2e-5, rtol=1e-4)


@FAST
@given(p=problems(), method=methods)
def test_reward_inputs_with_callers_soft_is_the_same(p: Problem, method: str):
    """Passing soft = soft_embedding(logits, E, tau)[0], as guide does, changes neither the value nor the gradient (bitwise)."""
    values, grads = [], []
    for shared in (False, True):
        logits = p.logits.clone().requires_grad_(True)
        soft = soft_embedding(logits, p.embed, p.temperature)[0] if shared else None
        e_hat = reward_inputs(logits, p.embed, p.hard, method, p.temperature, soft)
        (p.coef * e_hat**2).sum().backward()
        values.append(e_hat.detach())
        grads.append(logits.grad)
    assert torch.equal(values[0], values[1]) and torch.equal(grads[0], grads[1])


@FAST
@given(p=problems(), method=methods)
def test_reward_inputs_uses_the_callers_soft(p: Problem, method: str):
    """The soft it is given is the one it uses: value (1 - w) soft + w hard and the gradient through that soft,
    here a relaxation of 2 * logits, which reward_inputs would not compute itself."""
    logits = p.logits.clone().requires_grad_(True)
    soft = soft_embedding(2 * logits, p.embed, p.temperature)[0]
    e_hat = reward_inputs(logits, p.embed, p.hard, method, p.temperature, soft)
    (p.coef * e_hat**2).sum().backward()
    w = ref_method_weight(method, p.logits).unsqueeze(-1)
    soft_2 = ref_soft(2 * p.logits, p.embed, p.temperature)
    e_ref = (1 - w) * soft_2 + w * p.embed.double()[p.hard]
    torch.testing.assert_close(e_hat.detach().double(), e_ref, atol=5e-5, rtol=1e-5)
    expected = 2 * ref_soft_vjp(2 * p.logits, p.embed, p.temperature, 2 * p.coef.double() * e_ref)
    torch.testing.assert_close(logits.grad.double(), expected, atol=5e-5, rtol=1e-4)


@FAST
@given(p=problems())
def test_soft_embedding_is_the_plain_relaxation_keeping_only_logits(p: Problem):
    """soft and p_tau equal softmax((logits - max) / tau) @ E and softmax((logits - max) / tau) (tempered_softmax,
    softmax(logits / tau) to rounding), the gradient equals plain autograd's (bitwise: the checkpoint recomputes
    the same ops), p_tau carries no gradient, and the only tensor autograd keeps for the backward is the logits."""
    logits = p.logits.clone().requires_grad_(True)
    kept = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: kept.append(t) or t, lambda t: t):
        soft, p_tau = soft_embedding(logits, p.embed, p.temperature)
    assert kept and all(t.untyped_storage().data_ptr() == logits.untyped_storage().data_ptr() for t in kept)
    assert not p_tau.requires_grad
    (p.coef * soft**2).sum().backward()

    plain = p.logits.clone().requires_grad_(True)
    plain_q = torch.softmax((plain - plain.amax(-1, keepdim=True).detach()) / p.temperature, -1)
    plain_soft = plain_q @ p.embed
    torch.testing.assert_close(plain_q, torch.softmax(p.logits / p.temperature, -1), rtol=1e-5, atol=1e-7)
    (p.coef * plain_soft**2).sum().backward()
    assert torch.equal(p_tau, plain_q.detach()) and torch.equal(soft.detach(), plain_soft.detach())
    assert torch.equal(logits.grad, plain.grad)


@FAST
@given(p=problems(), steps=st.integers(1, 3), lr=st.sampled_from([0.05, 0.5]), seed=seeds)
def test_linear_reward_identical_across_methods(p: Problem, steps: int, lr: float, seed: int):
    """A reward linear in e gives bitwise-equal logit gradients and guide results for all methods."""
    grads, outs, values = [], [], []
    for method in METHODS:
        logits = p.logits.clone().requires_grad_(True)
        e_hat = reward_inputs(logits, p.embed, p.hard, method, p.temperature)
        (p.coef * e_hat).sum().backward()
        grads.append(logits.grad)
        values.append(e_hat.detach())
        outs.append(run_guide(p, linear_reward(p.coef), method, steps, lr, seed))
    for g in grads[1:]:
        assert torch.equal(g, grads[0])
    for o in outs[1:]:
        assert torch.equal(o, outs[0])
    assert not torch.equal(outs[0], p.logits)  # guidance did move something
    assert torch.all(grads[0].abs().sum(-1) > 0)  # gradients are not all zero
    # ... although the forward values differ: aps reads the hard token, expectation the soft mixture.
    assert torch.allclose(values[1].double(), p.embed.double()[p.hard], atol=1e-5)
    torch.testing.assert_close(values[2].double(), ref_soft(p.logits, p.embed, p.temperature), atol=5e-5, rtol=1e-5)


def test_reward_inputs_rejects_unknown_method():
    """reward_inputs raises ValueError on an unknown method name."""
    g = gen(0)
    logits, embed = torch.randn(2, 5, generator=g), torch.randn(5, 3, generator=g)
    with pytest.raises(ValueError):
        reward_inputs(logits, embed, torch.zeros(2, dtype=torch.long), "straight_through")


# --------------------------------------------------------------------------- entropy / weight


@FAST
@given(v=st.integers(2, 50), hot=st.data(), seed=seeds, big=st.sampled_from([100.0, 1e4]))
def test_entropy_weight_zero_at_one_hot(v: int, hot, seed: int, big: float):
    """w = 0 (and H = 0) for a one-hot distribution: -inf elsewhere, or one huge logit."""
    k = hot.draw(st.integers(0, v - 1))
    minus_inf = torch.full((v,), -math.inf)
    minus_inf[k] = torch.randn((), generator=gen(seed)).item()
    assert entropy(minus_inf).item() == 0.0
    assert entropy_weight(minus_inf).item() == 0.0
    huge = torch.randn(v, generator=gen(seed))
    huge[k] = big
    assert 0.0 <= entropy_weight(huge).item() <= 1e-6


@FAST
@given(v=st.integers(2, 5000), c=st.floats(-100, 100), lead=st.sampled_from([(), (3,), (2, 2)]))
def test_entropy_weight_one_at_uniform(v: int, c: float, lead: tuple):
    """w = 1 (H = log V) for uniform logits of any constant value, any leading shape."""
    logits = torch.full((*lead, v), c)
    w = entropy_weight(logits)
    assert w.shape == lead
    assert torch.all((w - 1).abs() <= 1e-6)
    torch.testing.assert_close(entropy(logits).double(), torch.full(lead, math.log(v), dtype=torch.float64), atol=1e-5, rtol=1e-6)


@FAST
@given(
    v=st.integers(2, 40),
    rows=st.integers(1, 6),
    seed=seeds,
    scale=st.sampled_from([0.1, 1.0, 10.0, 100.0]),
    dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.float64]),
    drop=st.sampled_from([0.0, 0.3, 0.8]),
)
def test_entropy_bounds_with_inf_and_bf16(v, rows, seed, scale, dtype, drop):
    """0 <= H <= log V' (V' finite entries) and matches float64; finite with -inf; w in [0, 1]."""
    g = gen(seed)
    logits = (torch.randn(rows, v, generator=g) * scale).to(dtype)
    dropped = torch.rand(rows, v, generator=g) < drop
    dropped[:, 0] = False  # every row keeps a finite logit
    logits = logits.masked_fill(dropped, -math.inf)
    h = entropy(logits)
    w = entropy_weight(logits)
    assert h.dtype == torch.float32 and h.shape == (rows,)
    assert torch.isfinite(h).all() and torch.isfinite(w).all()
    n_finite = (~dropped).sum(-1).double()
    assert torch.all(h >= 0)
    assert torch.all(h.double() <= torch.log(n_finite) * (1 + 1e-6) + 1e-6)
    assert torch.all((w >= 0) & (w <= 1))
    torch.testing.assert_close(h.double(), ref_entropy(logits), atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(w.double(), ref_weight(logits).clamp(0, 1), atol=2e-5, rtol=1e-5)
    if dtype == torch.bfloat16:  # computed in float32: same as upcasting first
        assert torch.equal(h, entropy(logits.float()))


def test_entropy_weight_has_no_gradient():
    """entropy_weight of logits requiring grad returns a tensor with no autograd history."""
    logits = torch.randn(3, 4, 7, generator=gen(1)).requires_grad_(True)
    w = entropy_weight(logits)
    assert not w.requires_grad and w.grad_fn is None
    assert entropy(logits).requires_grad  # the entropy itself is differentiable; the weight is not


# --------------------------------------------------------------------------- shift invariance


@FAST
@given(p=problems(), c=st.floats(-30, 30), method=methods)
def test_shift_invariance_entropy_and_reward_inputs(p: Problem, c: float, method: str):
    """Adding a constant to the logits leaves entropy, entropy_weight and reward_inputs unchanged."""
    shifted = p.logits + c
    torch.testing.assert_close(entropy(shifted), entropy(p.logits), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(entropy_weight(shifted), entropy_weight(p.logits), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(
        reward_inputs(shifted, p.embed, p.hard, method, p.temperature),
        reward_inputs(p.logits, p.embed, p.hard, method, p.temperature),
        atol=2e-4, rtol=1e-4,
    )


@FAST
@given(p=problems(), c=st.integers(1, 30) | st.integers(-30, -1), method=methods, steps=st.integers(1, 3), seed=seeds)
def test_shift_invariance_guide(p: Problem, c: int, method: str, steps: int, seed: int):
    """guide(phi + c) - c == guide(phi) up to rounding (atol 1e-4), with the same generator seed."""
    reward = sine_reward(p.coef)
    base = run_guide(p, reward, method, steps, 0.5, seed)
    shifted = run_guide(p, reward, method, steps, 0.5, seed, logits=p.logits + c)
    # |phi + c| <= ~45: float32 rounding of the shifted logits is ~4e-6.
    torch.testing.assert_close(shifted - c, base, atol=1e-4, rtol=0)
    assert not torch.equal(base, p.logits)


# --------------------------------------------------------------------------- guide: one Adam step


@FAST
@given(
    p=problems(), method=methods, lr=st.sampled_from([0.01, 0.1, 0.5, 2.0]), seed=seeds,
    top_p=st.sampled_from([None, 0.95, 0.5]),
)
def test_one_adam_step_moves_by_lr_along_reward_gradient(p: Problem, method: str, lr: float, seed: int, top_p):
    """steps=1: |dphi| <= lr, sign(dphi) = sign(dR/dphi), |dphi| ~= lr where clearly non-zero; unmasked untouched."""
    rec = Recorder(sine_reward(p.coef))
    out = run_guide(p, rec, method, 1, lr, seed, top_p=top_p)
    assert out.dtype == torch.float32 and out.shape == p.logits.shape
    assert len(rec.embeds) == 1
    unmasked = ~p.masked
    assert torch.equal(out[unmasked], p.logits[unmasked])  # exactly untouched
    # dR/dphi at the forward point R actually read: J_soft^T (C cos(e)) at masked positions.
    u = (p.coef.double() * torch.cos(rec.embeds[0].double()))
    grad = ref_soft_vjp(p.logits, p.embed, p.temperature, u)[p.masked]  # (n, V)
    delta = (out - p.logits)[p.masked].double()  # (n, V)
    ulp = 4 * torch.finfo(torch.float32).eps * p.logits.abs().max().item()
    assert torch.all(delta.abs() <= lr * (1 + 1e-6) + ulp)
    clear = grad.abs() > 1e-5
    assume(clear.any())
    assert torch.equal(torch.sign(delta[clear]), torch.sign(grad[clear]))
    # Adam's first step is lr * g / (|g| + 1e-8): ~lr wherever |g| >> 1e-8.
    torch.testing.assert_close(delta[clear].abs(), torch.full_like(delta[clear], lr), atol=ulp, rtol=2e-3)


@FAST
@given(p=problems(), method=methods, seed=seeds)
def test_steps_zero_is_identity_and_leaves_generator(p: Problem, method: str, seed: int):
    """steps=0 returns the logits unchanged, never calls R, and does not advance the generator."""
    rec = Recorder(sine_reward(p.coef))
    g = gen(seed)
    state = g.get_state()
    out = guide(p.logits, p.masked, p.tokens, p.embed, rec, method=method, steps=0, lr=0.5,
                temperature=p.temperature, generator=g)
    assert torch.equal(out, p.logits)
    assert rec.embeds == []
    assert torch.equal(g.get_state(), state)
    assert torch.equal(torch.rand(8, generator=g), torch.rand(8, generator=gen(seed)))


@pytest.mark.parametrize("steps", [0, 1])
def test_guide_rejects_bad_arguments(steps: int):
    """guide raises ValueError on an unknown method and on temperature <= 0."""
    g = gen(5)
    logits, embed = torch.randn(1, 2, 4, generator=g), torch.randn(4, 3, generator=g)
    masked, tokens = torch.tensor([[True, False]]), torch.tensor([[1, 2]])
    reward = lambda e, t: e.sum((-2, -1))  # noqa: E731
    kw = dict(steps=steps, lr=0.1, generator=gen(0))
    with pytest.raises(ValueError):
        guide(logits, masked, tokens, embed, reward, method="bon", temperature=0.7, **kw)
    for tau in (0.0, -0.5):
        with pytest.raises(ValueError):
            guide(logits, masked, tokens, embed, reward, method="entrgi", temperature=tau, **kw)


# --------------------------------------------------------------------------- guide: vectorised


@FAST
@given(p=problems(), method=methods, steps=st.integers(1, 3), seed=seeds)
def test_guide_is_vectorised(p: Problem, method: str, steps: int, seed: int):
    """R gets (B, L, d) embeds and (B, L) tokens: argmax of the current logits at masked positions."""
    b, l, v, d = p.shape
    rec = Recorder(sine_reward(p.coef))
    run_guide(p, rec, method, steps, 0.5, seed)
    assert len(rec.embeds) == steps
    fixed = ~p.masked
    for k in range(steps):
        embeds, tokens = rec.embeds[k], rec.tokens[k]
        assert embeds.shape == (b, l, d) and tokens.shape == (b, l) and tokens.dtype == torch.long
        # The current logits at step k are those after k steps (same seed -> same trajectory).
        current = run_guide(p, sine_reward(p.coef), method, k, 0.5, seed) if k else p.logits
        assert torch.equal(tokens[p.masked], current.argmax(-1)[p.masked])
        assert torch.equal(tokens[fixed], p.tokens[fixed])
        assert torch.equal(embeds[fixed], p.embed[p.tokens][fixed])  # real tokens, exactly
        if method == "expectation":  # no sampling: the masked embeddings are the soft mixture
            soft = ref_soft(current, p.embed, p.temperature)
            torch.testing.assert_close(embeds[p.masked].double(), soft[p.masked], atol=5e-5, rtol=1e-5)


@FEW
@given(p=problems(max_b=4), steps=st.integers(1, 2))
def test_guide_rows_independent(p: Problem, steps: int):
    """With a per-row reward and no sampling (expectation), guiding the batch = guiding each row alone."""
    batch = run_guide(p, sine_reward(p.coef), "expectation", steps, 0.5, 0)
    for i in range(p.logits.shape[0]):
        row = guide(p.logits[i : i + 1], p.masked[i : i + 1], p.tokens[i : i + 1], p.embed,
                    sine_reward(p.coef[i : i + 1]), method="expectation", steps=steps, lr=0.5,
                    temperature=p.temperature, generator=gen(0))
        torch.testing.assert_close(batch[i : i + 1], row, atol=1e-4, rtol=0)


@FAST
@given(p=problems(max_v=10), seed=seeds, top_p=st.sampled_from([0.3, 0.6]), top_k=st.sampled_from([None, 1, 2]))
def test_guide_hard_tokens_come_from_filtered_distribution(p: Problem, seed: int, top_p: float, top_k):
    """aps feeds R the embedding of a token drawn inside filter(softmax(phi_k / tau))'s support (top-p / top-k)
    at every Adam step k, phi_k being that step's logits (as they move: phi_k = guide's output after k steps
    with the same generator)."""
    embed = torch.eye(p.logits.shape[-1])  # one-hot rows: the hard token is readable from e_hat
    weights = torch.linspace(-1, 1, p.logits.shape[-1])  # a reward that moves phi

    def run(steps: int, rec=None):
        return guide(p.logits, p.masked, p.tokens, embed, rec or (lambda e, t: (e * weights).sum((-2, -1))),
                     method="aps", steps=steps, lr=0.5, temperature=p.temperature, top_p=top_p, top_k=top_k,
                     generator=gen(seed))

    rec = Recorder(lambda e, t: (e * weights).sum((-2, -1)))
    run(3, rec)
    for k in range(3):
        phi_k = p.logits if k == 0 else run(k)  # (B, L, V)
        drawn = rec.embeds[k].argmax(-1)  # (B, L)
        support = filter_probs(torch.softmax(phi_k / p.temperature, -1), top_p, top_k) > 0  # (B, L, V)
        assert torch.all(support.gather(-1, drawn.unsqueeze(-1)).squeeze(-1)[p.masked]), k
        torch.testing.assert_close(rec.embeds[k][p.masked], embed[drawn][p.masked], atol=1e-6, rtol=0)


@FEW
@given(seed=seeds, method=st.sampled_from(["entrgi", "aps"]), tau=temperatures, top_p=st.sampled_from([0.5, 0.8, 0.95]))
def test_guide_draws_follow_filtered_distribution(seed: int, method: str, tau: float, top_p: float):
    """Hard tokens in guide ~ softmax(filter(phi / tau)): 5-sigma frequencies over 20k positions."""
    v, n = 6, 20_000
    row = torch.randn(v, generator=gen(seed)) * 1.5
    q64 = ref_softmax(row.double() / tau).tolist()
    nucleus = {i for i, k in enumerate(ref_keep(q64, top_p)) if k}
    assume(ref_margin(q64, top_p) > 1e-4)  # a frequency test: float32 rounding at the boundary is not its subject
    w = ref_weight(row).item() if method == "entrgi" else 1.0
    assume(w > 0.05)  # the hard token must be recoverable from e_hat = (1 - w) soft + w hard
    probs = ref_softmax(row.double() / tau)
    probs = torch.where(torch.tensor([i in nucleus for i in range(v)]), probs, 0.0)
    embed = torch.eye(v)  # one-hot rows
    rec = Recorder(lambda e, t: e[..., 0].sum(-1))
    guide(row.expand(1, n, v).clone(), torch.ones(1, n, dtype=torch.bool), torch.zeros(1, n, dtype=torch.long),
          embed, rec, method=method, steps=1, lr=0.1, temperature=tau, top_p=top_p, generator=gen(seed + 1))
    hard = (rec.embeds[0].double() - (1 - w) * ref_soft(row, embed, tau)) / w  # (1, n, V) ~ one-hot
    drawn = hard.argmax(-1)
    torch.testing.assert_close(hard, embed.double()[drawn], atol=1e-3, rtol=0)
    assert_frequencies(drawn, probs)


@FAST
@given(p=problems(), seed=seeds, method=st.sampled_from(["entrgi", "aps"]), top_p=st.sampled_from([None, 0.8]))
def test_guide_first_probs_is_the_callers_distribution(p: Problem, seed: int, method: str, top_p):
    """first_probs = filter(softmax(logits / tau)) changes nothing (bitwise); another distribution
    is what the first step draws from (one-hot: its token at every masked position)."""
    reward = sine_reward(p.coef)
    q_filtered = filter_probs(torch.softmax(p.logits / p.temperature, -1), top_p)
    plain = run_guide(p, reward, method, 2, 0.5, seed, top_p=top_p)
    shared = run_guide(p, reward, method, 2, 0.5, seed, top_p=top_p, first_probs=q_filtered)
    assert torch.equal(plain, shared)
    v = p.logits.shape[-1]
    last_token = torch.zeros_like(p.logits)
    last_token[..., v - 1] = 1.0  # a one-hot distribution on token V - 1
    embed = torch.eye(v)
    rec = Recorder(lambda e, t: e.sum((-2, -1)))
    guide(p.logits, p.masked, p.tokens, embed, rec, method="aps", steps=2, lr=0.1, temperature=p.temperature,
          top_p=top_p, generator=gen(seed), first_probs=last_token)
    assert torch.all(rec.embeds[0].argmax(-1)[p.masked] == v - 1)


@FEW
@given(seed=seeds, tau=temperatures)
def test_guide_redraws_hard_tokens_each_step_from_generator(seed: int, tau: float):
    """aps: each step draws afresh from the caller's generator (independent draws, seed-reproducible)."""
    v, n = 6, 4000
    row = torch.randn(v, generator=gen(seed))
    embed = torch.eye(v)
    args = (row.expand(1, n, v).clone(), torch.ones(1, n, dtype=torch.bool), torch.zeros(1, n, dtype=torch.long), embed)

    def draws(generator_seed: int) -> list[torch.Tensor]:
        rec = Recorder(lambda e, t: 0.0 * e.sum((-2, -1)))  # zero gradient: phi stays put
        guide(*args, rec, method="aps", steps=2, lr=0.1, temperature=tau, top_p=None, generator=gen(generator_seed))
        return [e.argmax(-1) for e in rec.embeds]

    first, second = draws(seed)
    again = draws(seed)
    assert torch.equal(first, again[0]) and torch.equal(second, again[1])
    other = draws(seed + 1)
    assert not torch.equal(first, other[0])
    # Two independent draws from q agree with probability sum q^2: 5-sigma binomial bound.
    agree_p = (ref_softmax(row.double() / tau) ** 2).sum().item()
    agree = (first == second).double().mean().item()
    assert abs(agree - agree_p) <= 5 * math.sqrt(agree_p * (1 - agree_p) / n)


# --------------------------------------------------------------------------- filter_probs


FILTER_PATHS = ("sort", "radix")


@contextlib.contextmanager
def filter_path(path: str):
    """Make filter_probs take its sort path (small V) or its radix-select path (large V) at any V."""
    saved = entrgi.SORT_BELOW
    entrgi.SORT_BELOW = 2**62 if path == "sort" else 0
    try:
        yield
    finally:
        entrgi.SORT_BELOW = saved


def kept_set(probs_row: torch.Tensor, top_p, top_k=None) -> set[int]:
    """The token ids `filter_probs` keeps (leaves nonzero) in one row (V,) of positive probabilities."""
    return {i for i, q in enumerate(filter_probs(probs_row, top_p, top_k).tolist()) if q > 0}


@st.composite
def prob_blocks(draw) -> torch.Tensor:
    """Probability blocks (..., V) float32 of any leading shape and scale: ties (logits on a coarse
    grid, or copied), exact zeros (-inf logits), bfloat16-rounded values, near-uniform rows, V = 1."""
    g = gen(draw(seeds))
    lead = draw(st.sampled_from([(), (1,), (3,), (2, 2)]))
    v = draw(st.integers(1, 12))
    kind = draw(st.sampled_from(["normal", "grid", "copies", "bf16", "near_uniform"]))
    logits = torch.randn(*lead, v, generator=g) * draw(st.sampled_from([0.5, 2.0, 6.0]))  # (..., V)
    if kind == "grid":
        logits = logits.round()  # many equal logits: ties
    elif kind == "copies" and v > 1:
        logits[..., v // 2 :] = logits[..., : v - v // 2].clone()  # every value twice (or more)
    elif kind == "near_uniform":
        logits = logits * 1e-6
    if draw(st.booleans()) and v > 1:
        logits[..., 0] = -math.inf  # probability exactly 0
    probs = torch.softmax(logits, -1)  # (..., V)
    if kind == "bf16":
        probs = probs.bfloat16().float()  # few distinct values, and a total that is not 1
    return probs * draw(st.sampled_from([1.0, 7.0, 2.0**-70, 3e12]))


@pytest.mark.parametrize("path", FILTER_PATHS)
@settings(max_examples=80, deadline=None)
@given(probs=prob_blocks(), top_p=st.floats(0.01, 0.999), top_k=st.sampled_from([None, 1, 2, 4]))
def test_filter_matches_reference(path: str, probs: torch.Tensor, top_p: float, top_k):
    """Top-p (then top-k) keeps the reference set (exact sums, float64) and zeroes the rest, kept values
    unchanged, in every row of any leading shape and scale. A token whose strictly-greater mass is within
    float32 summation rounding (1e-5 of the total) of top_p * total may go either way; the boundary itself
    is pinned exactly by the dyadic tests below."""
    with filter_path(path):
        out = filter_probs(probs, top_p, top_k)  # (..., V)
        assert out.shape == probs.shape and out.dtype == torch.float32
        V = probs.shape[-1]
        for row_in, row_out in zip(probs.reshape(-1, V).tolist(), out.reshape(-1, V).tolist()):
            assert all(o == q or o == 0.0 for q, o in zip(row_in, row_out))  # unchanged or zeroed
            kept = [o > 0 for o in row_out]
            positive = [q > 0 for q in row_in]
            expected = ref_keep(row_in, top_p, top_k)
            total = math.fsum(row_in)
            for j, q in enumerate(row_in):
                if not positive[j]:
                    continue  # a zero stays zero whether kept or not
                margin = abs(math.fsum(x for x in row_in if x > q) - top_p * total)
                if margin > 1e-5 * total:
                    assert kept[j] == expected[j], (row_in, top_p, top_k, j)
            # whatever rounding decides, the kept set is a threshold: all ties of a kept value are kept
            smallest = min((q for q, k in zip(row_in, kept) if k), default=math.inf)
            assert all(k == (q >= smallest) for q, k, p in zip(row_in, kept, positive) if p)
            assert any(kept) or total == 0  # the most probable token is always kept


@st.composite
def dyadic_rows(draw) -> tuple[list[int], int]:
    """Integer weights c (with ties and zeros) summing to a power of two 2^a: the probabilities c * 2^-m and
    every partial sum of them are exact in float32 and float64, whatever the order of summation."""
    v = draw(st.integers(1, 24))
    levels = draw(st.lists(st.integers(0, 40), min_size=1, max_size=6))
    counts = [draw(st.sampled_from(levels)) for _ in range(v)]  # few distinct values: ties
    total = sum(counts)
    a = max(total, 1).bit_length()
    counts.append(2**a - total)  # a filler token brings the total to 2^a (it may tie with others)
    return counts, a


def dyadic_block(counts: list[int], shape: tuple, exponent: int) -> torch.Tensor:
    """The row c * 2^exponent, repeated to `shape` + (V,) (any leading shape), float32."""
    row = torch.tensor([math.ldexp(c, exponent) for c in counts], dtype=torch.float32)
    return row.expand(*shape, len(counts)).clone()


@pytest.mark.parametrize("path", FILTER_PATHS)
@settings(max_examples=60, deadline=None)
@given(row=dyadic_rows(), exponent=st.sampled_from([-10, -40, 0, 30]), shape=st.sampled_from([(), (3,), (2, 1)]))
def test_filter_exact_boundary_dyadic(path: str, row, exponent: int, shape: tuple):
    """At the boundary itself, ties included: for each distinct value q_j with G = the weight strictly above
    it, top_p = G / 2^a (so top_p * total equals that mass exactly) keeps exactly the tokens >= q_j, and
    top_p = (G - 1/2) / 2^a keeps exactly the tokens > q_j (G > 0). The rule is <=, ties go together."""
    with filter_path(path):
        counts, a = row
        probs = dyadic_block(counts, shape, exponent)  # (..., V)
        V = len(counts)
        for level in sorted(set(c for c in counts if c > 0)):
            above = sum(c for c in counts if c > level)
            cases = [(above / 2**a, [c >= level for c in counts])]
            if above > 0:
                cases.append(((above - 0.5) / 2**a, [c > level for c in counts]))
            for top_p, expected in cases:
                if top_p >= 1:
                    continue
                assert ref_keep([float(c) for c in counts], top_p) == expected  # the reference agrees
                out = filter_probs(probs, top_p)  # (..., V)
                kept = (out > 0).reshape(-1, V)  # (R, V)
                assert all(r == expected for r in kept.tolist()), (counts, top_p)
                torch.testing.assert_close(out, torch.where(out > 0, probs, 0.0), rtol=0, atol=0)


@pytest.mark.parametrize("path", FILTER_PATHS)
def test_filter_keeps_the_token_that_crosses_top_p(path: str):
    """[0.5, 0.25, 0.1875, 0.0625], top_p = 0.75: the mass above 0.1875 is exactly 0.75 <= 0.75, so three
    tokens are kept (a rule with < keeps two); just below, at 0.75 - 2^-10, two."""
    with filter_path(path):
        probs = torch.tensor([0.5, 0.25, 0.1875, 0.0625])
        assert kept_set(probs, 0.75) == {0, 1, 2}
        assert kept_set(probs, 0.75 - 2**-10) == {0, 1}
        assert kept_set(probs[[2, 0, 3, 1]], 0.75) == {0, 1, 3}  # the order of the vocabulary does not matter


@pytest.mark.parametrize("path", FILTER_PATHS)
@settings(max_examples=30, deadline=None)
@given(row=dyadic_rows(), data=st.data())
def test_filter_top_k_keeps_ties_of_the_kth(path: str, row, data):
    """Top-k keeps every token >= the k-th largest value (with multiplicity), ties of the k-th included."""
    with filter_path(path):
        counts, _ = row
        probs = dyadic_block(counts, (2,), -12)  # (2, V)
        k = data.draw(st.integers(1, len(counts)))
        kth = sorted(counts, reverse=True)[k - 1]
        kept = (filter_probs(probs, None, k) > 0).tolist()
        positive_kth = [c >= kth and c > 0 for c in counts]
        assert kept == [positive_kth, positive_kth]


@pytest.mark.parametrize("path", FILTER_PATHS)
@pytest.mark.parametrize("top_p", [1e-9, 1e-30])
def test_filter_tiny_top_p_keeps_the_most_probable_token(path: str, top_p: float):
    """(1 - top_p) * total rounds to the total: still the most probable token (and its ties) is kept."""
    with filter_path(path):
        probs = torch.tensor([[0.1, 0.5, 0.2, 0.2], [0.3, 0.3, 0.2, 0.2]])
        assert kept_set(probs[0], top_p) == {1}
        assert kept_set(probs[1], top_p) == {0, 1}


@settings(max_examples=30, deadline=None)
@given(v=st.integers(2, 12), rows=st.integers(1, 4), seed=seeds, data=st.data())
def test_filter_top_k_keeps_exactly_k(v: int, rows: int, seed: int, data):
    """Top-k keeps exactly the k largest (distinct) probabilities."""
    k = data.draw(st.integers(1, v))
    probs = torch.softmax(torch.randn(rows, 3, v, generator=gen(seed)), -1)
    out = filter_probs(probs, top_p=None, top_k=k)
    for row_in, row_out in zip(probs.reshape(-1, v).tolist(), out.reshape(-1, v).tolist()):
        assume(len(set(row_in)) == v)
        largest = set(sorted(range(v), key=lambda i: -row_in[i])[:k])
        assert {i for i in range(v) if row_out[i] > 0} == largest


@pytest.mark.parametrize("path", FILTER_PATHS)
def test_filter_keeps_ties_together(path: str):
    """Tokens of equal probability are kept or dropped together, by top-p and by top-k."""
    with filter_path(path):
        probs = torch.tensor([0.4, 0.2, 0.2, 0.1, 0.1])
        # By mass alone the nucleus of 0.5 is {0, one of the 0.2s}; the tie keeps both.
        assert kept_set(probs, 0.5) == {0, 1, 2}
        assert kept_set(probs, None, top_k=2) == {0, 1, 2}
        assert kept_set(probs, 0.85) == {0, 1, 2, 3, 4}  # the 0.1 tie straddles 0.85: both kept
        assert kept_set(probs, 0.39) == {0}  # the most probable token alone reaches 0.39


@FAST
@given(v=st.integers(1, 12), seed=seeds, top_p=st.sampled_from([None, 1.0]), with_zero=st.booleans())
def test_filter_noop_settings(v: int, seed: int, top_p, with_zero: bool):
    """top_p in {1, None} with top_k None (or top_k >= V) returns the probabilities unchanged."""
    logits = torch.randn(2, v, generator=gen(seed)) * 5
    if with_zero and v > 1:
        logits[:, -1] = -math.inf  # probability exactly 0
    probs = torch.softmax(logits, -1)
    assert torch.equal(filter_probs(probs, top_p=top_p, top_k=None), probs)
    assert torch.equal(filter_probs(probs, top_p=top_p, top_k=v), probs)


@pytest.mark.parametrize("path", FILTER_PATHS)
def test_filter_applies_top_p_before_top_k_as_dream_does(path: str):
    """Top-p acts on the full distribution, then top-k: q = (.5, .3, .2), p = .6, k = 2 keeps two tokens."""
    with filter_path(path):
        probs = torch.tensor([0.5, 0.3, 0.2])
        # top-k first would renormalise to (.625, .375) and the nucleus .6 would keep only one token
        assert kept_set(probs, 0.6, top_k=2) == {0, 1}


# --------------------------------------------------------------------------- sample_categorical


def test_sample_categorical_frequencies_fixed():
    """200k draws over V=6 (two zero entries) match probs within 5 sigma; zeros never drawn."""
    probs = torch.tensor([0.4, 0.25, 0.0, 0.2, 0.15, 0.0])
    draws = sample_categorical(probs.expand(200_000, 6), gen(1234))
    assert draws.shape == (200_000,) and draws.dtype == torch.long
    assert_frequencies(draws, probs)


@FEW
@given(seed=seeds, n_zero=st.integers(0, 4), lead=st.sampled_from([(200_000,), (4, 50_000)]))
def test_sample_categorical_frequencies_random(seed: int, n_zero: int, lead: tuple):
    """Random probs (some exactly zero), any leading shape: 5-sigma agreement over 200k draws."""
    g = gen(seed)
    probs = torch.rand(6, generator=g) + 0.02
    probs[torch.randperm(6, generator=g)[:n_zero]] = 0.0
    probs = probs / probs.sum()
    draws = sample_categorical(probs.expand(*lead, 6), gen(seed + 1))
    assert draws.shape == lead
    assert_frequencies(draws, probs)


@FAST
@given(seed=seeds, v=st.integers(2, 20))
def test_sample_categorical_reproducible(seed: int, v: int):
    """Same generator seed gives the same draws; a different seed gives different ones."""
    probs = torch.softmax(torch.randn(5, 200, v, generator=gen(seed)), -1)
    a = sample_categorical(probs, gen(seed))
    b = sample_categorical(probs, gen(seed))
    c = sample_categorical(probs, gen(seed + 1))
    assert a.shape == (5, 200)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    # One-hot rows are deterministic regardless of the generator.
    onehot = torch.nn.functional.one_hot(a, v).float()
    assert torch.equal(sample_categorical(onehot, gen(seed + 7)), a)


def test_sample_categorical_accepts_unnormalised_weights():
    """Weights need not sum to 1: scaling them by 7 gives the same draws from the same seed, at the right rates."""
    weights = torch.tensor([1.0, 0.0, 3.0, 4.0])  # normalised: (1/8, 0, 3/8, 1/2)
    a = sample_categorical(weights.expand(100_000, 4), gen(3))
    b = sample_categorical(7 * weights.expand(100_000, 4), gen(3))
    assert torch.equal(a, b)
    freq = torch.bincount(a, minlength=4).double() / a.numel()
    expected = weights.double() / weights.sum()
    sigma = (expected * (1 - expected) / a.numel()).sqrt()
    assert ((freq - expected).abs() <= 5 * sigma + 1e-12).all(), freq


@settings(max_examples=30, deadline=None)
@given(seed=seeds, v=st.integers(2, 40), scale=st.sampled_from([1.0, 30.0, 1e4]),
       tau=st.sampled_from([1e-45, 1e-40, 1e-30, 1e-6, 0.7, 5.0]))
def test_tempered_softmax_is_finite_for_any_positive_temperature(seed, v, scale, tau):
    """softmax(phi / tau) where it is finite; and for a tau so small that phi / tau overflows, still a
    distribution (no NaN): the argmax limit, ties sharing the mass."""
    g = gen(seed)
    logits = torch.randn(3, v, generator=g) * scale  # (3, v)
    logits[0, 0] = -math.inf  # a filtered-out entry, as the mask token's
    q = tempered_softmax(logits, tau)
    assert torch.isfinite(q).all()
    torch.testing.assert_close(q.sum(-1), torch.ones(3), rtol=0, atol=1e-5)
    scaled = logits / tau
    if torch.isfinite(scaled[:, 1:]).all():
        torch.testing.assert_close(q, torch.softmax(scaled, -1), rtol=1e-4, atol=1e-6)
    if tau <= 1e-30 and scale >= 1:
        top = logits == logits.amax(-1, keepdim=True)  # (3, v)
        torch.testing.assert_close(q, top.float() / top.sum(-1, keepdim=True), rtol=0, atol=1e-6)


# --------------------------------------------------------------------------- scratch-overwriting paths


@FAST
@given(seed=st.integers(0, 2**31 - 1), V=st.integers(2, 600), tau=st.sampled_from([1e-30, 0.7, 1.0, 3.0]))
def test_in_place_paths_give_the_same_values(seed, V, tau):
    """The paths that write over their own scratch (no autograd) give bit for bit what the copying ones give:
    tempered_softmax under no_grad vs with grad, entropy of detached vs grad-carrying logits, and
    sample_categorical(overwrite=True) vs False (same draw from the same generator state; probs become C)."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(3, 5, V, generator=g) * 4  # (3, 5, V)
    logits[..., 0] = -math.inf  # a masked-out token, as generate passes them on
    with torch.no_grad():
        in_place = tempered_softmax(logits, tau)  # (3, 5, V)
    copied = tempered_softmax(logits.clone().requires_grad_(True), tau).detach()  # (3, 5, V)
    assert torch.equal(in_place, copied)
    assert torch.equal(entropy(logits), entropy(logits.clone().requires_grad_(True)).detach())
    probs = filter_probs(in_place, 0.9)  # (3, 5, V)
    expected = sample_categorical(probs.clone(), torch.Generator().manual_seed(seed))  # (3, 5)
    scratch = probs.clone()  # (3, 5, V)
    assert torch.equal(sample_categorical(scratch, torch.Generator().manual_seed(seed), overwrite=True), expected)
    assert torch.equal(scratch, probs.cumsum(-1))  # overwritten by the cumulative sums
    assert torch.equal(sample_categorical(probs, torch.Generator().manual_seed(seed)), expected)
    assert torch.equal(probs, filter_probs(in_place, 0.9))  # overwrite=False leaves probs alone


@FAST
@given(p=problems(), seed=seeds, steps=st.integers(1, 3))
def test_guide_first_weight_is_the_callers_entropy_weight(p: Problem, seed: int, steps: int):
    """first_weight = entropy_weight(logits) handed in gives bitwise the same guided logits as guide computing it
    (the hook's log computes it anyway), and a given first_weight is the one the first step uses: with w = 1 the
    first reward call reads APS's embeddings, with w = 0 the expectation's, bitwise. (Comparing the final logits
    cannot show use: Adam's first step is lr * sign(gradient), which a different w often leaves unchanged.)"""
    reward = lambda e, t: (p.coef * e).sum((-2, -1))  # noqa: E731
    plain = run_guide(p, reward, "entrgi", steps, 0.5, seed)
    given_w = run_guide(p, reward, "entrgi", steps, 0.5, seed, first_weight=entropy_weight(p.logits))
    assert torch.equal(plain, given_w)

    def first_embeds(method: str, **kw) -> torch.Tensor:  # the embeddings of the first reward call
        seen = []
        run_guide(p, lambda e, t: seen.append(e.detach().clone()) or (p.coef * e**2).sum((-2, -1)), method, steps,
                  0.5, seed, **kw)
        return seen[0]

    aps, expectation = first_embeds("aps"), first_embeds("expectation")
    assume(not torch.equal(aps, expectation))  # else (q one-hot where masked) no weight can make a difference
    ones, zeros = torch.ones(p.masked.shape), torch.zeros(p.masked.shape)
    assert torch.equal(first_embeds("entrgi", first_weight=ones), aps)
    assert torch.equal(first_embeds("entrgi", first_weight=zeros), expectation)
