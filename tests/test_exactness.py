"""The exactness rules a port must reproduce, each pinned by a test that fails when the rule is broken.

* the fill: the n_fill largest confidences, equal confidences lowest position first (end-token
  draws at -inf included), against a Python sort on the key (-c, position); the issue's case
  (4 of [finite, -inf x 5]) pinned;
* argmax: ties take the lowest token id (greedy draws, `entrgi.argmax_lowest`), -0.0 = +0.0;
* the schedule: `sampler.timesteps` (float32 fused multiply-adds, no linspace) is bitwise
  torch.linspace(1, eps, T + 1) over a (T, eps) grid; `step_ratios` and `unmask_schedule` are
  Dream's torch expressions on it over an (L, T, eps) grid; the naive unfused formula is not
  (non-vacuity); the issue's L = 148, T = 16, eps = 0.3 case fills 7 at step 12;
* the draws: every generation (each method, alg, M) consumes exactly the uniforms of the
  table in docs/draws.md (order and shapes), all through the one injection point: replaying
  them with `rng.GivenUniforms` gives the same tokens bit for bit; the inverse-CDF rule;
  GivenUniforms refuses a wrong shape or a missing draw;
* top-p's rounding rule, kept iff fl64(Z - C_j) <= fl64(top_p * Z), on both filter paths,
  against exact rationals, on rows whose values span 40 binary orders (float64 sums exact,
  float32 ones not) with exact and near boundaries.
"""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import entrgi
import rng
import sampler
from entrgi import _sorted_top_p_threshold, _top_p_threshold, argmax_lowest, sample_categorical
from sampler import fill_by_confidence, step_ratios, timesteps, unmask_schedule
from test_sampler import EOS_ID, MASK_ID, ToyDenoiser, config, linear_reward, lowest_first, padded_prompts

# --------------------------------------------------------------------------- the fill


@settings(max_examples=200, deadline=None)
@given(data=st.data(), rows=st.integers(1, 4), n=st.integers(1, 12))
def test_fill_takes_equal_confidences_lowest_position_first(data, rows, n):
    """Scores on a coarse grid (many ties), -inf (end-token draws), -0.0 and +0.0: the filled set is the
    Python reference's (sort on (-c, position)) for every n_fill."""
    values = st.sampled_from([-math.inf, -2.0, -1.0, -0.0, 0.0, 0.5, 1.0])
    score = torch.tensor(data.draw(st.lists(st.lists(values, min_size=n, max_size=n), min_size=rows,
                                            max_size=rows)))  # (rows, n)
    n_fill = data.draw(st.integers(0, n))
    assert torch.equal(fill_by_confidence(score, n_fill), lowest_first(score, n_fill))


def test_fill_of_four_among_five_end_tokens_is_the_lowest_positions():
    """The issue's case: 4 of [finite, -inf x 5] are positions 0, 1, 2, 3 (torch.topk took 0, 3, 4, 5)."""
    score = torch.tensor([[0.3] + [-math.inf] * 5])  # (1, 6)
    assert fill_by_confidence(score, 4).tolist() == [[True, True, True, True, False, False]]


# --------------------------------------------------------------------------- argmax


@settings(max_examples=200, deadline=None)
@given(rows=st.lists(st.lists(st.sampled_from([0.0, -0.0, 0.25, 0.5, 0.5, 1.0]), min_size=1, max_size=9),
                     min_size=1, max_size=4).filter(lambda r: len({len(x) for x in r}) == 1))
def test_argmax_ties_take_the_lowest_token_id(rows):
    """argmax_lowest and greedy sampling (tau = 0) return the lowest index among the row's maxima."""
    probs = torch.tensor(rows)  # (R, V)
    expected = [min(j for j, x in enumerate(row) if x == max(row)) for row in rows]
    assert argmax_lowest(probs).tolist() == expected
    assert sampler.sample_tokens(probs, 0.0, None).tolist() == expected


# --------------------------------------------------------------------------- the schedule

EPS_GRID = [1e-3, 1e-4, 1e-5, 0.3, 0.1, 0.05, 0.5, 0.9, 0.999, 1e-2, 0.25, 0.123456, 1 / 3, 0.7]


def test_timesteps_equal_torch_linspace():
    """Bitwise torch.linspace(1, eps, T + 1) in float32, T = 1..256 and some large T, 14 eps values."""
    for T in list(range(1, 257)) + [511, 1000, 1024]:
        for eps in EPS_GRID:
            ours = torch.tensor(timesteps(T, eps), dtype=torch.float32)  # (T + 1,)
            assert torch.equal(ours, torch.linspace(1, eps, T + 1)), (T, eps)


def naive_timesteps(T: int, eps: float) -> torch.Tensor:
    """The same two halves with a separate float32 product and sum (no fused multiply-add)."""
    n, end = T + 1, torch.tensor(eps, dtype=torch.float32)
    h = (end - 1) / T  # float32
    i = torch.arange(n, dtype=torch.float32)
    return torch.where(torch.arange(n) < n // 2, 1 + h * i, end - h * (n - 1 - i))


def test_the_fused_rule_is_needed():
    """Non-vacuity: the unfused formula differs from torch.linspace on most of the grid (so does a float64
    linspace cast to float32 on some), and the issue's case L = 148, T = 16, eps = 0.3 fills 7 at step 12."""
    differ = sum(not torch.equal(naive_timesteps(T, eps), torch.linspace(1, eps, T + 1))
                 for T in range(1, 65) for eps in EPS_GRID)
    assert differ > 100
    assert unmask_schedule(148, 16, 0.3)[12] == (76, 7)
    import numpy as np

    t, n = np.linspace(1, 0.3, 17).astype(np.float32), 148  # NumPy's linspace cast to float32: the port
    for i in range(12):
        n -= int(np.float32(n * (np.float32(1) - t[i + 1] / t[i])))
    assert int(np.float32(n * (np.float32(1) - t[13] / t[12]))) == 6  # one fewer than Dream's 7


def dream_schedule(L: int, T: int, eps: float) -> list[tuple[int, int]]:
    """Dream's sampler's expressions, in torch: linspace, 1 - s / t, int(tensor(n) * ratio)."""
    ts = torch.linspace(1, eps, T + 1)
    n, out = L, []
    for i in range(T):
        fill = n if i == T - 1 else int(torch.tensor(n) * (1 - ts[i + 1] / ts[i]))
        out.append((n, fill))
        n -= fill
    return out


def test_schedule_equals_dreams_torch_expressions_over_a_grid():
    """step_ratios bitwise 1 - s/t on torch.linspace; unmask_schedule = Dream's counts, L in 1..160 step 7."""
    for T in list(range(1, 33)) + [64, 128]:
        for eps in EPS_GRID:
            ts = torch.linspace(1, eps, T + 1)
            assert torch.equal(step_ratios(T, eps), 1 - ts[1:] / ts[:-1]), (T, eps)
            for L in range(1, 161, 7 if T < 64 else 31):
                assert unmask_schedule(L, T, eps) == dream_schedule(L, T, eps), (L, T, eps)


# --------------------------------------------------------------------------- the draws


class Recording:
    """A UniformSource that draws torch.rand from a seeded generator and records every draw."""

    def __init__(self, seed: int):
        self.generator = torch.Generator().manual_seed(seed)
        self.draws: list[torch.Tensor] = []

    def uniform(self, shape, device=None):
        u = torch.rand(shape, generator=self.generator)
        self.draws.append(u.clone())
        return u


def table_shapes(cfg, N: int) -> list[tuple[int, int]]:
    """docs/draws.md's table: per step, M guide draws (entrgi, aps), the token draw (tau > 0), origin's fill draw."""
    L, shapes = cfg.max_new_tokens, []
    origin = cfg.alg == "origin"
    for i in range(cfg.T):
        n = L if origin else unmask_schedule(L, cfg.T, cfg.eps)[i][0]
        if cfg.method in ("entrgi", "aps"):
            shapes += [(N, n)] * cfg.M
        if cfg.temperature > 0:
            shapes.append((N, n))
        if origin:
            shapes.append((N, L))
    return shapes


def generate_with(cfg, source, toy_seed: int = 1):
    """generate() on the padded prompts with a linear reward's guidance (unless bon), all draws from `source`."""
    ids, keep = padded_prompts()
    hook = None
    if cfg.guided:
        embed_matrix, score_embeds = linear_reward()
        hook = sampler.reward_guidance(score_embeds, embed_matrix, cfg, generator=source)
    return sampler.generate(ToyDenoiser(toy_seed), ids, keep, cfg, mask_id=MASK_ID, eos_id=EOS_ID, guidance=hook,
                            generator=source)


@settings(max_examples=40, deadline=None)
@given(method=st.sampled_from(["entrgi", "aps", "expectation", "bon"]), alg=st.sampled_from(sampler.ALGORITHMS),
       M=st.integers(0, 2), T=st.integers(1, 4), L=st.integers(1, 6), seed=st.integers(0, 2**16),
       greedy=st.booleans())
def test_every_draw_is_in_the_table_and_given_uniforms_replay_it(method, alg, M, T, L, seed, greedy):
    """A generation consumes exactly the draws of docs/draws.md's table (order and shapes); a torch.Generator
    of the same seed gives the same tokens (so no draw bypasses the injection point); GivenUniforms with the
    recorded numbers reproduces the tokens bit for bit and consumes every one."""
    tau = 0.0 if greedy and method == "bon" else 0.8
    cfg = config(method=method, alg=alg, M=M, T=T, max_new_tokens=L, temperature=tau, top_p=0.9)
    recording = Recording(seed)
    out = generate_with(cfg, recording)
    N = padded_prompts()[0].shape[0] * cfg.K
    assert [tuple(u.shape) for u in recording.draws] == table_shapes(cfg, N)
    assert torch.equal(generate_with(cfg, torch.Generator().manual_seed(seed)), out)
    given_uniforms = rng.GivenUniforms(recording.draws)
    assert torch.equal(generate_with(cfg, given_uniforms), out)
    assert given_uniforms.taken == len(recording.draws)


def test_inverse_cdf_draw_from_given_uniforms():
    """First j with C_j > fl32(u * C_last): weights [0, .25, .25, .5] (not normalised: x 2) -> u = 0.5 gives 3,
    u just below gives 2, u = 0 gives 1 (never the zero-weight token 0)."""
    w = torch.tensor([[0.0, 0.5, 0.5, 1.0]] * 3)  # (3, 4) total 2
    u = rng.GivenUniforms([[0.5, 0.5 - 2.0**-25, 0.0]])  # the float32 just below 0.5
    assert sample_categorical(w, u).tolist() == [3, 2, 1]


def test_given_uniforms_refuse_a_wrong_shape_or_a_missing_draw():
    source = rng.GivenUniforms([torch.zeros(2, 3)])
    with pytest.raises(ValueError, match="draw 0: shape"):
        source.uniform((3, 2))
    source.uniform((2, 3))
    with pytest.raises(ValueError, match="only 1 draws"):
        source.uniform((2, 3))
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        rng.GivenUniforms([[1.0]])


# --------------------------------------------------------------------------- top-p's rounding rule


def rule_keep(row: list[float], top_p: float) -> list[bool]:
    """The stated rule in exact rationals: Z = the row's sum (exact in float64 on these rows), p_j kept iff
    the mass strictly above p_j (Z - C of p_j's tie group) <= fl64(top_p * Z)."""
    total = sum(Fraction(q) for q in row)
    bound = Fraction(top_p * float(total))  # fl64(top_p * Z), Z exact in float64 here
    return [sum((Fraction(x) for x in row if x > q), Fraction(0)) <= bound for q in row]


@st.composite
def wide_rows(draw):
    """Rows of dyadic values 2^-e, e in 0..40 (few levels: ties): float64 sums exact, float32 sums not."""
    levels = draw(st.lists(st.integers(0, 40), min_size=1, max_size=5))
    row = [math.ldexp(1.0, -draw(st.sampled_from(levels))) for _ in range(draw(st.integers(1, 20)))]
    return row


@settings(max_examples=300, deadline=None)
@given(row=wide_rows(), data=st.data())
def test_top_p_rounding_rule_on_both_paths(row, data):
    """Both top-p paths (sort, radix) keep exactly the rule's set, at the exact boundaries (top_p * Z equal to
    the mass above some value, in float64) and at random top_p. A float32 cumulative sum (the old sorted
    path) loses 2^-40 next to 1 and fails; so did the radix path while it re-summed the mass below its
    range in float32."""
    total = math.fsum(row)
    boundaries = [math.fsum(x for x in row if x > q) / total for q in row]
    top_p = data.draw(st.one_of(st.sampled_from(boundaries), st.floats(0.001, 0.999)))
    if not 0 < top_p < 1:
        return
    probs = torch.tensor([row], dtype=torch.float32)  # (1, V)
    expected = rule_keep(row, top_p)
    for threshold in (_sorted_top_p_threshold, _top_p_threshold):
        v = threshold(probs, top_p, torch.empty_like(probs, dtype=torch.int32))  # (1, 1)
        assert (probs[0] >= v[0]).tolist() == expected, (threshold.__name__, row, top_p)


def test_filter_switches_paths_at_sort_below():
    """SORT_BELOW is the radix switch: V on both sides of it take the same rule (a dyadic row padded with zeros)."""
    for V_ in (entrgi.SORT_BELOW - 1, entrgi.SORT_BELOW):
        probs = torch.zeros(1, V_)
        probs[0, :4] = torch.tensor([0.5, 0.25, 0.125, 0.125])
        assert (entrgi.filter_probs(probs, 0.75) > 0)[0, :4].tolist() == [True, True, True, True]
        assert (entrgi.filter_probs(probs, 0.74) > 0)[0, :4].tolist() == [True, True, False, False]


def test_draw_running_sums_are_float64_rounded_to_float32():
    """The draw's rule: C_j = fl32(float64 running sum), not a float32 scan. Weights (2^24, 1, 1): float64 sums
    give C = (2^24, 2^24, 2^24 + 2), a float32 scan (CUDA's cumsum of float32, NumPy's and JAX's by default)
    C = (2^24, 2^24, 2^24); with u = 1 - 2^-24 the rule draws token 2, the float32 scan token 0. The fast path,
    spec.py and the NumPy port all follow the rule (on the CPU torch's float32 cumsum happens to accumulate
    in float64; the fast path asks for it on every device)."""
    import numpy as np

    from conformance import numpy_port
    import spec

    weights = torch.tensor([[2.0**24, 1.0, 1.0]])  # (1, 3)
    u = torch.tensor([1 - 2.0**-24])  # (1,)
    float32_scan = np.cumsum(weights.numpy(), -1)  # float32 accumulation: what the rule is not
    assert float32_scan[0, -1] == 2.0**24 and int((float32_scan <= np.float32(u.item()) * float32_scan[:, -1:]).sum()) == 0
    assert sample_categorical(weights, rng.GivenUniforms([u])).tolist() == [2]
    assert sample_categorical(weights.clone(), rng.GivenUniforms([u]), overwrite=True).tolist() == [2]
    assert spec.draw(weights, u).tolist() == [2]
    assert numpy_port.draw(weights.numpy(), u.numpy()).tolist() == [2]
