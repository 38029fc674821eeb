"""The fast path (`entrgi`, `sampler`) held equal to the plain reference `spec.py`.

Tokens bit for bit; floats within stated tolerances; on random and adversarial inputs (ties,
rows with -inf logits, exact dyadic boundaries, V on both sides of entrgi.SORT_BELOW), for
every method, alg and confidence source, over whole generations (every step, not the first).

* entropy weight, relaxations (each method) and their gradient for a linear reward: equal to
  1e-6 relative (the same float32 operations in another arrangement: in place, checkpointed);
* filter: the sorted path (V < SORT_BELOW) keeps bitwise the reference's set; the radix path
  (V >= SORT_BELOW) too whenever the sums are exact (dyadic rows), and otherwise differs only
  for a token whose mass above lies within float32 summation rounding (1e-5 Z) of top_p Z;
* draws from given uniforms: bitwise the same tokens (u = 0, u on a cumulative boundary);
* guide: after M Adam steps, softmax(phi_g / tau) within 1e-5 of the reference's and phi_g
  within 1e-4 + 1e-5 |phi|, for a linear and a tanh reward. Why not bitwise: the fast path runs
  torch's fused Adam, whose kernel orders the update's float32 operations its own way (1-ulp
  differences in phi after one step, seen on 15-40 % of entries), and Adam's step is about
  lr * g / (|g| + eps): where |g| is near eps (1e-8) a last-bit difference in the gradient moves
  phi by up to lr. Those are tail logits of probability < 1e-6, which is why the distribution is
  compared tightly and the logits loosely;
* generation: tokens bit for bit against spec.generate with the same given uniforms, for every
  method (bon with tau = 0 too), alg, confidence source, eos_last on and off (a denoiser that
  draws EOS often: ties at -inf), top-k on and off.
"""

from __future__ import annotations

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import entrgi
import rng
import sampler
import spec
from test_exactness import Recording
from test_sampler import EOS_ID, MASK_ID, ToyDenoiser, config, linear_reward, padded_prompts

seeds = st.integers(0, 2**31 - 1)


def rand_logits(seed: int, shape, kind: str) -> torch.Tensor:
    """Random logits: normal, a coarse grid (ties), or with -inf entries (exact zeros)."""
    g = torch.Generator().manual_seed(seed)
    phi = torch.randn(*shape, generator=g) * 3
    if kind == "grid":
        phi = phi.round()
    elif kind == "neg_inf":
        phi = phi.masked_fill(torch.rand(*shape, generator=g) < 0.5, -math.inf)
        phi[..., 0] = phi[..., 0].nan_to_num(neginf=0.0)  # at least one finite logit per row
    return phi


kinds = st.sampled_from(["normal", "grid", "neg_inf"])


@settings(max_examples=60, deadline=None)
@given(seed=seeds, kind=kinds, v=st.integers(2, 40), method=st.sampled_from(entrgi.METHODS),
       tau=st.sampled_from([0.3, 0.7, 1.0, 2.0]), dtype=st.sampled_from([torch.float32, torch.bfloat16]))
def test_entropy_weight_and_relaxations_and_their_gradient(seed, kind, v, method, tau, dtype):
    """In float32 and in bfloat16 (the reward model's embedding dtype on a GPU: the relaxation runs in it)."""
    phi = rand_logits(seed, (3, 4, v), kind)
    g = torch.Generator().manual_seed(seed + 1)
    E = torch.randn(v, 5, generator=g).to(dtype)
    x = torch.randint(0, v, (3, 4), generator=g)
    c = torch.randn(5, generator=g)
    torch.testing.assert_close(entrgi.entropy_weight(phi), spec.entropy_weight(phi), rtol=1e-6, atol=1e-7)
    out = []
    for f in (lambda p: entrgi.reward_inputs(p, E, x, method, tau), lambda p: spec.relaxations(p, E, x, method, tau)):
        p = phi.clone().requires_grad_(True)
        e_hat = f(p)  # (3, 4, 5)
        (grad,) = torch.autograd.grad((e_hat.float() @ c).sum(), [p])
        out.append((e_hat.detach(), grad))
    torch.testing.assert_close(out[0][0], out[1][0], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(out[0][1], out[1][1], rtol=1e-6, atol=1e-7)


@st.composite
def prob_rows(draw):
    """(R, V) probabilities: softmax of random / tied / -inf logits, or dyadic rows; V on both sides of SORT_BELOW."""
    v = draw(st.sampled_from([1, 2, 7, 50, entrgi.SORT_BELOW - 1, entrgi.SORT_BELOW, entrgi.SORT_BELOW + 300]))
    kind = draw(st.sampled_from(["normal", "grid", "neg_inf", "dyadic"]))
    seed = draw(seeds)
    if kind == "dyadic":  # weights 2^-e, few levels: every sum exact
        g = torch.Generator().manual_seed(seed)
        levels = torch.tensor(draw(st.lists(st.integers(0, 30), min_size=1, max_size=4)), dtype=torch.float32)
        return torch.exp2(-levels[torch.randint(0, len(levels), (3, v), generator=g)]), True
    return torch.softmax(rand_logits(seed, (3, v), kind), -1), False


@settings(max_examples=80, deadline=None)
@given(rows=prob_rows(), data=st.data(), top_k=st.sampled_from([None, 1, 3, 40]))
def test_filter_equals_the_reference(rows, data, top_k):
    probs, exact = rows
    Z = probs.double().sum(-1, keepdim=True)  # (R, 1)
    rows = probs.double().unsqueeze(1)  # (R, 1, V)
    above = (rows * (rows > probs.double().unsqueeze(-1))).sum(-1)  # (R, V) S(p_j): the mass strictly above p_j
    top_p = data.draw(st.one_of(st.sampled_from((above / Z).flatten().tolist()), st.floats(0.01, 0.999)))
    if not 0 < top_p < 1:
        top_p = 0.5
    fast, ref = entrgi.filter_probs(probs, top_p, top_k), spec.filter_probs(probs, top_p, top_k)
    if probs.shape[-1] < entrgi.SORT_BELOW or exact:
        assert torch.equal(fast, ref)
    else:  # radix: float32 bin sums; a difference only within summation rounding of the boundary
        differ = (fast > 0) != (ref > 0)  # (R, V)
        near = (above - top_p * Z).abs() <= 1e-5 * Z  # (R, V)
        assert bool((~differ | near).all())
        assert torch.equal(fast[~differ], ref[~differ])


@settings(max_examples=60, deadline=None)
@given(seed=seeds, kind=kinds, v=st.integers(1, 30), edge=st.sampled_from(["random", "zero", "boundary"]))
def test_draws_from_given_uniforms_equal_the_reference(seed, kind, v, edge):
    q = entrgi.filter_probs(torch.softmax(rand_logits(seed, (4, 3, v), kind), -1), 0.8)  # (4, 3, V)
    u = torch.rand(4, 3, generator=torch.Generator().manual_seed(seed))
    if edge == "zero":
        u = torch.zeros(4, 3)
    elif edge == "boundary":  # u * C_last lands on a cumulative sum (dyadic weights)
        q = torch.exp2(-torch.randint(0, 6, (4, 3, v), generator=torch.Generator().manual_seed(seed)).float())
        C = q.cumsum(-1)
        u = (C[..., v // 2] / C[..., -1]).clamp(max=0.99)
    fast = entrgi.sample_categorical(q, rng.GivenUniforms([u]))
    assert torch.equal(fast, spec.draw(q, u))


def tanh_reward(d: int, seed: int = 5):
    g = torch.Generator().manual_seed(seed)
    c = torch.randn(d, generator=g)
    return lambda embeds, tokens: torch.tanh(embeds.float() @ c).sum(-1)  # (N, n, d) -> (N,)


@settings(max_examples=40, deadline=None)
@given(seed=seeds, kind=kinds, method=st.sampled_from(entrgi.METHODS), M=st.integers(1, 3),
       reward_kind=st.sampled_from(["linear", "tanh", "tokens"]), top_k=st.sampled_from([None, 3]),
       dtype=st.sampled_from([torch.float32, torch.bfloat16]))
def test_guide_equals_the_reference(seed, kind, method, M, reward_kind, top_k, dtype):
    """E in float32 and in bfloat16 (the GPU job's embedding dtype); phi and Adam are float32 in both."""
    N, n, v, d, tau = 2, 5, 12, 6, 0.7
    phi = rand_logits(seed, (N, n, v), kind)
    g = torch.Generator().manual_seed(seed + 7)
    E = torch.randn(v, d, generator=g).to(dtype)
    masked = torch.rand(N, n, generator=g) < 0.7
    tokens = torch.randint(0, v, (N, n), generator=g)
    if reward_kind == "linear":
        c = torch.randn(d, generator=g)
        reward = lambda embeds, toks: (embeds.float() @ c).sum(-1)  # noqa: E731
    elif reward_kind == "tanh":
        reward = tanh_reward(d, seed % 7)
    else:  # reads the tokens too (R's end-of-response cut-off reads argmax phi at masked positions)
        c = torch.randn(d, generator=g)
        reward = lambda embeds, toks: ((embeds.float() @ c) * (1.0 + (toks % 3 == 0))).sum(-1)  # noqa: E731
    draws = [] if method == "expectation" else [torch.rand(N, n, generator=g) for _ in range(M)]
    kw = dict(method=method, lr=0.5, top_p=0.9, top_k=top_k)
    fast = entrgi.guide(phi, masked, tokens, E, reward, steps=M, temperature=tau,
                        generator=rng.GivenUniforms(draws), **kw)
    ref = spec.guide(phi, masked, tokens, E, reward, M=M, tau=tau, uniforms=draws, **kw)
    torch.testing.assert_close(torch.softmax(fast / tau, -1), torch.softmax(ref / tau, -1), rtol=0, atol=1e-5)
    finite = ref.isfinite()
    assert torch.equal(finite, fast.isfinite())
    torch.testing.assert_close(fast[finite], ref[finite], rtol=1e-5, atol=1e-4)
    assert torch.equal(fast[~masked], phi[~masked].float())  # unmasked positions untouched


@settings(max_examples=60, deadline=None)
@given(method=st.sampled_from(["entrgi", "aps", "expectation", "bon"]), alg=st.sampled_from(sampler.ALGORITHMS),
       source=st.sampled_from(sampler.CONFIDENCE_SOURCES), eos_last=st.booleans(), top_k=st.sampled_from([None, 4]),
       M=st.integers(1, 2), T=st.integers(2, 5), L=st.integers(2, 7), seed=st.integers(0, 2**16),
       greedy=st.booleans(), eos=st.sampled_from([0.0, 3.0]))
def test_generation_equals_the_reference_token_for_token(method, alg, source, eos_last, top_k, M, T, L, seed,
                                                         greedy, eos):
    tau = 0.0 if greedy and method == "bon" else 0.8
    cfg = config(method=method, alg=alg, confidence=source, eos_last=eos_last, top_k=top_k, M=M, T=T,
                 max_new_tokens=L, temperature=tau, top_p=0.85)
    ids, keep = padded_prompts()
    toy = ToyDenoiser(seed % 5, eos_boost=torch.full((64,), eos))  # eos = 3: many EOS draws, -inf ties
    E, score = linear_reward()
    recording = Recording(seed)
    hook = sampler.reward_guidance(score, E, cfg, generator=recording) if cfg.guided else None
    fast = sampler.generate(toy, ids, keep, cfg, mask_id=MASK_ID, eos_id=EOS_ID, guidance=hook, generator=recording)
    replay = rng.GivenUniforms(recording.draws)
    ref = spec.generate(toy, ids, keep, cfg, mask_id=MASK_ID, eos_ids=[EOS_ID], E=E, reward=score, uniforms=replay)
    assert torch.equal(fast, ref)
    assert replay.taken == len(recording.draws)  # the same draws, all of them
