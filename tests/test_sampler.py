"""Properties of `sampler`: Dream-style masked-diffusion sampling (the unmasking loop of Dream's sampler,
`generation_utils.py`, with the confidence choices of the authors' released EntRGi code).

What these tests prove, on a deterministic toy denoiser whose logits depend on the whole
current sequence (so the unmasking order matters) and on a tiny random Qwen2:

* invariants of `generate`: prompt tokens never change (left-padded batch, B = 2, K = 2);
  a token once unmasked never changes; every step asks the denoiser for exactly the
  masked positions, in increasing order; the number unmasked per step follows
  `unmask_schedule` for maskgit_plus / topk_margin / entropy; no mask is left after T
  steps for every alg (origin included), for T = 1 and T > L; the mask token is never
  drawn, even where the denoiser's argmax is the mask (the toy gives it real mass);
* `unmask_schedule` itself against an independent recomputation of Dream's
  int(n_masked * (1 - s/t)) as a float32 product on float32 linspace(1, eps, T + 1), over
  the full range of L, T, eps, and a pinned case where a float64 product would differ;
  `origin_fill_probs` is the same float32 ratio and exactly 1 at the last step, and
  `origin` leaves no mask although masks remain before its last step in every row;
* the choice of positions: greedy (temperature 0) draws are the argmax of the logits and
  each step fills the masks of largest confidence; with a guidance hook that moves the
  logits and top-p < 1, at every step the positions filled are those a reference
  computation picks from the distribution each `confidence` option names for each alg
  (authors: unguided unfiltered softmax for entropy, the guided filtered draw distribution
  for maskgit_plus / topk_margin; filtered: the draw distribution; unguided: the unguided
  filtered one), and the three distributions do pick differently on those runs; each
  (source, alg) on fixed runs is told apart from every other source's distribution; every
  token placed under guidance lies in the guided filtered nucleus; EOS
  de-prioritisation places an EOS only when every non-EOS draw is placed (and is not
  vacuous: without it the toy places EOS earlier);
* randomness: the same generator seed gives the same output, a different one a different
  output; `reward_guidance` with M = 0 reproduces the unguided output exactly for every
  confidence option and the default, M > 0 not;
* `weight_log` is each prompt's mean entropy weight over its masked positions at every step;
* the hook receives the unguided token_probs and its first draw shares them bitwise; a
  bfloat16 denoiser gives bitwise the float32 results of its upcast logits;
* helpers: `masked_positions`, `confidence` against direct formulas;
* adapters: `dream_denoiser` equals Qwen2ForCausalLM under an all-True 4-D mask read at
  j - 1 (shift), is bidirectional and padding-invariant; `llada_denoiser` is unshifted;
* `SamplingConfig.validate` rejects every out-of-range field with a one-line ValueError.
"""

from __future__ import annotations

import math
from dataclasses import fields, replace
from types import SimpleNamespace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from entrgi import filter_probs, sample_categorical, tempered_softmax
from sampler import (
    ALGORITHMS,
    CONFIDENCE_SOURCES,
    SamplingConfig,
    confidence,
    dream_denoiser,
    generate,
    llada_denoiser,
    masked_positions,
    origin_fill_probs,
    reward_guidance,
    token_distributions,
    token_probs,
    unmask_schedule,
)

# --------------------------------------------------------------------------- helpers

V = 16  # toy vocabulary
MASK_ID = 15
EOS_ID = 14
PAD_ID = 0
MAX_LEN = 64  # longest sequence the toy denoiser accepts
NON_ORIGIN = ("maskgit_plus", "topk_margin", "entropy")

FAST = settings(max_examples=25, deadline=None)


class ToyDenoiser:
    """Deterministic seeded denoiser: logits depend on the token, its position and a mix of the
    whole (non-pad) sequence, so what has been unmasked changes later logits.

    The mask token is a token like any other (unlike a trained denoiser, which gives it next
    to no mass), plus `mask_boost` on its logit: generate must never draw it. `eos_boost`
    (MAX_LEN,) is added to the EOS logit at each absolute position. Every call is recorded.
    """

    def __init__(self, seed: int = 0, dim: int = 8, eos_boost: torch.Tensor | None = None, mask_boost: float = 0.0):
        g = torch.Generator().manual_seed(seed)
        self.embed = torch.randn(V, dim, generator=g)  # (V, D)
        self.pos = torch.randn(MAX_LEN, dim, generator=g)  # (MAX_LEN, D)
        self.mix = torch.randn(dim, dim, generator=g) / math.sqrt(dim)  # (D, D)
        self.out = torch.randn(dim, V, generator=g)  # (D, V)
        self.bias = torch.randn(MAX_LEN, V, generator=g)  # (MAX_LEN, V)
        self.bias[:, MASK_ID] += mask_boost
        if eos_boost is not None:
            self.bias[:, EOS_ID] += eos_boost
        self.calls: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def full(self, input_ids: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """Logits at every position. (N, S), (N, S) -> (N, S, V)."""
        S = input_ids.shape[1]
        h = self.embed[input_ids] + self.pos[:S]  # (N, S, D)
        k = keep.float().unsqueeze(-1)  # (N, S, 1)
        context = (h * k).sum(1, keepdim=True) / k.sum(1, keepdim=True).clamp(min=1)  # (N, 1, D)
        return torch.tanh(h + context @ self.mix) @ self.out + self.bias[:S]  # (N, S, V)

    def __call__(self, input_ids, keep, positions):
        assert input_ids.dtype == torch.long and keep.dtype == torch.bool
        assert input_ids.shape == keep.shape and positions.shape[0] == input_ids.shape[0]
        self.calls.append((input_ids.clone(), keep.clone(), positions.clone()))
        logits = self.full(input_ids, keep)  # (N, S, V)
        return logits.gather(1, positions.unsqueeze(-1).expand(-1, -1, V))  # (N, n, V)


def drawable(logits: torch.Tensor) -> torch.Tensor:
    """The logits generate draws from: the mask token's set to -inf. (..., V) -> (..., V)."""
    return logits.masked_fill(torch.arange(logits.shape[-1]) == MASK_ID, -math.inf)


def padded_prompts():
    """Two left-padded prompts of lengths 3 and 5 (B = 2, P = 5)."""
    ids = torch.tensor([[PAD_ID, PAD_ID, 3, 4, 5], [6, 7, 8, 9, 10]])
    keep = torch.tensor([[False, False, True, True, True], [True, True, True, True, True]])
    return ids, keep


def config(**kw) -> SamplingConfig:
    """A small unguided config; keyword overrides."""
    base = dict(method="bon", K=2, T=4, M=0, max_new_tokens=6, temperature=0.7, top_p=0.95,
                alg="entropy", eos_last=True)
    base.update(kw)
    return SamplingConfig(**base).validate()


def run(denoise, cfg, seed=0, prompts=None, guidance=None, eos_id=EOS_ID):
    """generate() on the padded prompts; returns (output (B, K, L), [ids (N, S) after each step])."""
    ids, keep = padded_prompts() if prompts is None else prompts
    steps: list[torch.Tensor] = []
    out = generate(denoise, ids, keep, cfg, mask_id=MASK_ID, eos_id=eos_id, guidance=guidance,
                   generator=torch.Generator().manual_seed(seed),
                   on_step=lambda i, x: steps.append(x.clone()))
    assert len(steps) == cfg.T
    return out, steps


def initial_ids(cfg, prompts=None) -> torch.Tensor:
    """The (N, S) state before step 0: prompts repeated K times, then L masks."""
    ids, _ = padded_prompts() if prompts is None else prompts
    rows = ids.repeat_interleave(cfg.K, dim=0)  # (N, P)
    return torch.cat([rows, torch.full((rows.shape[0], cfg.max_new_tokens), MASK_ID)], dim=1)


def initial_keep(cfg, prompts=None) -> torch.Tensor:
    _, keep = padded_prompts() if prompts is None else prompts
    rows = keep.repeat_interleave(cfg.K, dim=0)
    return torch.cat([rows, torch.ones(rows.shape[0], cfg.max_new_tokens, dtype=torch.bool)], dim=1)


def direct_confidence(probs: torch.Tensor, tokens: torch.Tensor, alg: str) -> torch.Tensor:
    """Independent formulas: q(x), q_(1) - q_(2), sum q log q (0 log 0 = 0)."""
    if alg == "maskgit_plus":
        return probs.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    if alg == "topk_margin":
        s = probs.sort(-1, descending=True).values
        return s[..., 0] - s[..., 1]
    plogp = torch.where(probs > 0, probs * probs.clamp_min(1e-45).log(), torch.zeros_like(probs))
    return plogp.sum(-1)


def linear_reward(d: int = 6, seed: int = 3):
    """A fixed embedding matrix (V, d) and a differentiable linear score of embeddings."""
    g = torch.Generator().manual_seed(seed)
    embed_matrix = torch.randn(V, d, generator=g)
    weight = torch.randn(d, generator=g) * 4

    def score_embeds(embeds, tokens):  # (N, L, d), (N, L) -> (N,)
        return (embeds @ weight).sum(-1)

    return embed_matrix, score_embeds


def tiny_qwen2(seed: int = 0, vocab: int = 64, layers: int = 2):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      tie_word_embeddings=False)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(cfg).eval()
        # Default init (std 0.02) gives near-constant logits; widen so differences show.
        for p in model.parameters():
            if p.dim() >= 2:
                torch.nn.init.normal_(p, std=0.3)
    return model


algs = st.sampled_from(ALGORITHMS)
seeds = st.integers(0, 2**31 - 1)


# --------------------------------------------------------------------------- generate invariants


@FAST
@given(alg=algs, L=st.integers(1, 7), T=st.integers(1, 10), temperature=st.sampled_from([0.0, 0.7, 1.5]),
       seed=seeds, eos_last=st.booleans())
def test_prompt_fixed_and_unmasked_tokens_never_change(alg, L, T, temperature, seed, eos_last):
    """Prompt tokens (left-padded, B=2, K=2) stay put and an unmasked token never changes across steps."""
    cfg = config(alg=alg, max_new_tokens=L, T=T, temperature=temperature, eos_last=eos_last)
    out, steps = run(ToyDenoiser(seed % 7), cfg, seed=seed)
    start = initial_ids(cfg)
    P = start.shape[1] - L
    prev = start
    for ids in steps:
        assert torch.equal(ids[:, :P], start[:, :P])
        was_placed = prev[:, P:] != MASK_ID
        assert torch.equal(ids[:, P:][was_placed], prev[:, P:][was_placed])
        prev = ids
    assert out.shape == (2, 2, L)
    assert torch.equal(out.reshape(4, L), steps[-1][:, P:])


@FAST
@given(alg=st.sampled_from(NON_ORIGIN), L=st.integers(1, 9), T=st.integers(1, 12),
       temperature=st.sampled_from([0.0, 0.7]), seed=seeds, eos_boost=st.sampled_from([0.0, 6.0]))
def test_fill_counts_follow_schedule_on_masked_blocks(alg, L, T, temperature, seed, eos_boost):
    """Non-origin algs fill exactly unmask_schedule's count per row per step, querying only the masks."""
    cfg = config(alg=alg, max_new_tokens=L, T=T, temperature=temperature)
    toy = ToyDenoiser(seed % 5, eos_boost=torch.full((MAX_LEN,), eos_boost))
    _, steps = run(toy, cfg, seed=seed)
    schedule = unmask_schedule(L, T, cfg.eps)
    P = steps[0].shape[1] - L
    prev = initial_ids(cfg)
    assert len(toy.calls) == T
    for i, ids in enumerate(steps):
        n_masked, n_fill = schedule[i]
        before = (prev[:, P:] == MASK_ID).sum(1)
        after = (ids[:, P:] == MASK_ID).sum(1)
        assert (before == n_masked).all() and (before - after == n_fill).all()
        called_ids, _, positions = toy.calls[i]
        assert torch.equal(called_ids, prev)
        expected = torch.stack([(row == MASK_ID).nonzero().squeeze(-1) for row in prev[:, P:]]) + P
        assert torch.equal(positions, expected)
        prev = ids


@FAST
@given(alg=algs, L=st.integers(1, 8), extra=st.integers(0, 6), seed=seeds,
       temperature=st.sampled_from([0.0, 0.7]))
def test_no_mask_left_after_T_steps(alg, L, extra, seed, temperature):
    """After T steps no mask remains, for every alg, with T from 1 up to beyond L."""
    for T in {1, L + extra, max(1, L - extra)}:
        cfg = config(alg=alg, max_new_tokens=L, T=T, temperature=temperature)
        out, _ = run(ToyDenoiser(seed % 3), cfg, seed=seed)
        assert not (out == MASK_ID).any(), (T, out)
        assert ((out >= 0) & (out < V)).all()


@pytest.mark.parametrize("alg", ALGORITHMS)
def test_no_mask_left_edge_cases(alg):
    """T = 1 fills everything in one step; T much larger than L also ends with no mask."""
    for T, L in [(1, 8), (40, 5), (5, 1)]:
        cfg = config(alg=alg, max_new_tokens=L, T=T)
        out, steps = run(ToyDenoiser(1), cfg, seed=11)
        assert not (out == MASK_ID).any()
        if T == 1:
            assert len(steps) == 1


@pytest.mark.parametrize("alg", ALGORITHMS)
@pytest.mark.parametrize("temperature", [0.0, 0.7])
def test_mask_token_never_drawn_even_when_most_likely(alg, temperature):
    """A denoiser whose argmax is mostly the mask token: generate never draws it (the hook, too, gets its
    logit at -inf and its probability 0), so no mask is left and rows follow the schedule (non-origin)."""
    L, T = 6, 3
    cfg = config(alg=alg, max_new_tokens=L, T=T, temperature=temperature)
    toy = ToyDenoiser(3, mask_boost=8.0)
    P = initial_ids(cfg).shape[1] - L
    assert (toy.full(initial_ids(cfg), initial_keep(cfg))[:, P:].argmax(-1) == MASK_ID).float().mean() > 0.5
    received = []

    def hook(logits, probs, masked, positions, response):
        received.append((logits, probs))
        return logits

    out, steps = run(toy, cfg, seed=4, guidance=hook)
    assert not (out == MASK_ID).any()
    assert len(received) == T
    for logits, probs in received:
        assert (logits[..., MASK_ID] == -math.inf).all() and (probs[..., MASK_ID] == 0).all()
    if alg != "origin":
        remaining = [(initial_ids(cfg)[:, P:] == MASK_ID).sum(1)] + [(ids[:, P:] == MASK_ID).sum(1) for ids in steps]
        for (n_masked, n_fill), before, after in zip(unmask_schedule(L, T), remaining, remaining[1:]):
            assert (before == n_masked).all() and (before - after == n_fill).all()


# --------------------------------------------------------------------------- unmask_schedule


@settings(max_examples=60, deadline=None)
@given(L=st.integers(1, 300), T=st.integers(1, 300), eps=st.sampled_from([1e-3, 1e-2, 0.3]))
def test_unmask_schedule_recomputed(L, T, eps):
    """n_fill = floor(n_masked*(1-s/t)) on float32 linspace(1, eps, T+1); last step fills the rest; sums to L."""
    schedule = unmask_schedule(L, T, eps)
    assert len(schedule) == T
    ts = torch.linspace(1, eps, T + 1, dtype=torch.float32)
    n = L
    for i, (n_masked, n_fill) in enumerate(schedule):
        assert n_masked == n
        if i < T - 1:
            expect = int(math.floor(torch.tensor(float(n), dtype=torch.float32).mul(1 - ts[i + 1] / ts[i]).item()))
        else:
            expect = n
        assert n_fill == expect and 0 <= n_fill <= n_masked
        n -= n_fill
    assert n == 0
    assert sum(f for _, f in schedule) == L
    assert schedule[-1][1] == schedule[-1][0]


def test_unmask_schedule_float32_product_pinned():
    """L = 110, T = 11, eps = 0.3: Dream's float32 product 110 * (1 - s/t) is 7.0, so step 0 fills 7
    (a float64 product of the same float32 ratio is 6.99999988 and would fill 6)."""
    ts = torch.linspace(1, 0.3, 12)
    ratio = 1 - ts[1] / ts[0]  # float32
    assert int(torch.tensor(110) * ratio) == 7 and int(110 * ratio.item()) == 6  # the two roundings disagree here
    schedule = unmask_schedule(110, 11, 0.3)
    assert schedule[0] == (110, 7) and schedule[1] == (103, 6)
    assert sum(f for _, f in schedule) == 110


def test_origin_fill_probs_are_the_schedule_ratios_and_one_at_the_end():
    """origin_fill_probs: float32 1 - s/t on float32 linspace(1, eps, T + 1) for i < T - 1, exactly 1.0 at the last step."""
    for T, eps in [(1, 1e-3), (2, 0.5), (11, 0.3), (128, 1e-3)]:
        probs = origin_fill_probs(T, eps)
        ts = torch.linspace(1, eps, T + 1, dtype=torch.float32)
        assert probs.dtype == torch.float32 and probs.shape == (T,)
        assert probs[-1].item() == 1.0
        for i in range(T - 1):
            assert probs[i].item() == (1 - ts[i + 1] / ts[i]).item()
        if T > 1:
            assert (probs[:-1] < 1).all()


@pytest.mark.parametrize("T", [2, 3, 5])
def test_origin_fills_every_remaining_mask_at_the_last_step(T):
    """origin with eps = 0.5 (the last ratio 1 - s/t is only 0.25-0.4): masks remain before the last step in
    every row, and the last step fills all of them (probability 1, not 1 - s/t)."""
    L = 12
    cfg = config(alg="origin", max_new_tokens=L, T=T, eps=0.5)
    for seed in range(3):
        out, steps = run(ToyDenoiser(seed), cfg, seed=seed)
        P = steps[0].shape[1] - L
        before_last = steps[-2][:, P:] if T > 1 else initial_ids(cfg)[:, P:]
        assert ((before_last == MASK_ID).sum(1) >= 3).all()  # plenty left for the last step to fill
        assert not (out == MASK_ID).any()


def test_unmask_schedule_worked_example():
    """L = 4, T = 4: timesteps 1, .75025, .5005, .25075, .001 give fills 0, 1, 1, 2."""
    assert unmask_schedule(4, 4) == [(4, 0), (4, 1), (3, 1), (2, 2)]
    assert unmask_schedule(8, 2) == [(8, 3), (5, 5)]
    assert unmask_schedule(3, 1) == [(3, 3)]


# --------------------------------------------------------------------------- which positions


@pytest.mark.parametrize("alg", ALGORITHMS)
def test_greedy_draws_are_argmax(alg):
    """Temperature 0: every placed token is the argmax of the toy logits in the state before the step."""
    cfg = config(alg=alg, max_new_tokens=7, T=5, temperature=0.0, eos_last=False)
    toy = ToyDenoiser(2)
    _, steps = run(toy, cfg, seed=5)
    P = steps[0].shape[1] - 7
    keep = initial_keep(cfg)
    prev = initial_ids(cfg)
    placed_any = 0
    for ids in steps:
        new = (prev == MASK_ID) & (ids != MASK_ID)  # (N, S)
        argmax = drawable(toy.full(prev, keep)).argmax(-1)  # (N, S)
        assert torch.equal(ids[new], argmax[new])
        placed_any += int(new.sum())
        prev = ids
    assert placed_any == 4 * 7
    assert (prev[:, :P] == initial_ids(cfg)[:, :P]).all()


@pytest.mark.parametrize("alg", NON_ORIGIN)
@pytest.mark.parametrize("top_p", [1.0, 0.8])
@pytest.mark.parametrize("source", CONFIDENCE_SOURCES)
def test_greedy_steps_fill_most_confident(alg, top_p, source):
    """Greedy, unguided: each step fills exactly the n_fill masks of largest confidence computed from the logits:
    from softmax(phi) itself for entropy under `authors`, from its filtered, renormalised copy otherwise."""
    L, T = 8, 4
    cfg = config(alg=alg, max_new_tokens=L, T=T, temperature=0.0, top_p=top_p, eos_last=False, confidence=source)
    toy = ToyDenoiser(4)
    _, steps = run(toy, cfg, seed=0)
    P = steps[0].shape[1] - L
    keep = initial_keep(cfg)
    prev = initial_ids(cfg)
    for (n_masked, n_fill), ids in zip(unmask_schedule(L, T), steps):
        logits = drawable(toy.full(prev, keep)[:, P:])  # (N, L, V)
        probs = torch.softmax(logits, -1)  # (N, L, V)
        if EXPECTED_READS[source, alg] != "unfiltered":
            probs = filter_probs(probs, top_p)  # (N, L, V) filtered
            probs = probs / probs.sum(-1, keepdim=True)
        conf = direct_confidence(probs, probs.argmax(-1), alg)  # (N, L)
        masked = prev[:, P:] == MASK_ID
        conf = torch.where(masked, conf, -math.inf)
        new = masked & (ids[:, P:] != MASK_ID)
        for r in range(conf.shape[0]):
            filled = set(new[r].nonzero().squeeze(-1).tolist())
            assert len(filled) == n_fill
            if n_fill:
                worst_filled = conf[r][list(filled)].min()
                others = [j for j in masked[r].nonzero().squeeze(-1).tolist() if j not in filled]
                assert all(conf[r, j] <= worst_filled for j in others)
        prev = ids


def _eos_toy(L: int, P: int, eos_at: list[int], seed: int) -> ToyDenoiser:
    """EOS overwhelmingly likely at response positions `eos_at`, impossible elsewhere."""
    boost = torch.full((MAX_LEN,), -60.0)
    for j in eos_at:
        boost[P + j] = 60.0
    return ToyDenoiser(seed, eos_boost=boost)


def _eos_violations(steps, P, final):
    """Steps at which a row newly got an EOS while a position whose final token is non-EOS stayed masked."""
    bad, prev = [], None
    for i, ids in enumerate(steps):
        resp = ids[:, P:]
        new_eos = (resp == EOS_ID) & ((prev == MASK_ID) if prev is not None else True)
        pending_non_eos = (resp == MASK_ID) & (final != EOS_ID)
        for r in range(resp.shape[0]):
            if new_eos[r].any() and pending_non_eos[r].any():
                bad.append((i, r))
        prev = resp
    return bad


@settings(max_examples=15, deadline=None)
@given(alg=st.sampled_from(NON_ORIGIN), seed=seeds, temperature=st.sampled_from([0.0, 0.7]),
       T=st.integers(2, 6))
def test_eos_last_places_eos_only_when_nothing_else_left(alg, seed, temperature, T):
    """eos_last=True: no EOS is placed at a step while a finally-non-EOS position is still masked after it."""
    L, P = 8, 5
    toy = _eos_toy(L, P, [1, 4, 6], seed % 5)
    cfg = config(alg=alg, max_new_tokens=L, T=T, temperature=temperature, eos_last=True)
    out, steps = run(toy, cfg, seed=seed)
    final = steps[-1][:, P:]
    assert ((final == EOS_ID) == torch.isin(torch.arange(L), torch.tensor([1, 4, 6]))).all()
    assert _eos_violations(steps, P, final) == []


@pytest.mark.parametrize("alg", ["maskgit_plus", "entropy"])
def test_eos_not_deprioritised_goes_earlier(alg):
    """eos_last=False with the same EOS-heavy toy places an EOS while other masks remain (non-vacuity)."""
    L, P, T = 8, 5, 4
    toy = _eos_toy(L, P, [1, 4, 6], 0)
    cfg = config(alg=alg, max_new_tokens=L, T=T, temperature=0.7, eos_last=False)
    _, steps = run(toy, cfg, seed=0)
    final = steps[-1][:, P:]
    assert _eos_violations(steps, P, final) != []
    cfg_last = replace(cfg, eos_last=True)
    _, steps_last = run(_eos_toy(L, P, [1, 4, 6], 0), cfg_last, seed=0)
    assert _eos_violations(steps_last, P, steps_last[-1][:, P:]) == []


def test_eos_last_takes_a_set_of_end_tokens():
    """eos_id may list several end tokens (Dream-Instruct: <|im_end|> and <|endoftext|>): every listed one is
    placed last, and a token not listed is not de-prioritised. (The other listed id is the mask's, which
    is never drawn, so that only EOS draws are affected.)"""
    L, P, T = 8, 5, 4
    cfg = config(alg="maskgit_plus", max_new_tokens=L, T=T, temperature=0.7, eos_last=True)
    _, listed = run(_eos_toy(L, P, [1, 4, 6], 0), cfg, seed=0, eos_id=[MASK_ID, EOS_ID])
    assert _eos_violations(listed, P, listed[-1][:, P:]) == []
    _, unlisted = run(_eos_toy(L, P, [1, 4, 6], 0), cfg, seed=0, eos_id=[MASK_ID])
    assert _eos_violations(unlisted, P, unlisted[-1][:, P:]) != []


# --------------------------------------------------------------------------- randomness


@pytest.mark.parametrize("alg", ALGORITHMS)
def test_seed_determinism(alg):
    """Same generator seed -> identical output; a different seed -> a different output (temperature > 0)."""
    cfg = config(alg=alg, max_new_tokens=8, T=4, temperature=1.0, top_p=1.0)
    a, _ = run(ToyDenoiser(0), cfg, seed=123)
    b, _ = run(ToyDenoiser(0), cfg, seed=123)
    c, _ = run(ToyDenoiser(0), cfg, seed=124)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@pytest.mark.parametrize("alg", ALGORITHMS)
@pytest.mark.parametrize("source", (None,) + CONFIDENCE_SOURCES)  # None: the default option
def test_guidance_zero_steps_is_unguided(alg, source):
    """reward_guidance with M = 0 gives exactly the unguided (bon) output, for every confidence option and the
    default (top-p 0.95 filters, so the unfiltered and filtered distributions differ); with M > 0 it differs."""
    embed_matrix, score_embeds = linear_reward()
    base = dict(alg=alg, max_new_tokens=8, T=4, temperature=0.7)
    if source is not None:
        base["confidence"] = source
    unguided, _ = run(ToyDenoiser(0), config(**base), seed=7)

    cfg0 = config(**base, method="entrgi", M=0)
    gen = torch.Generator().manual_seed(999)  # a separate generator: M = 0 must not matter either way
    hook0 = reward_guidance(score_embeds, embed_matrix, cfg0, generator=gen)
    guided0, _ = run(ToyDenoiser(0), cfg0, seed=7, guidance=hook0)
    assert torch.equal(guided0, unguided)

    cfg3 = config(**base, method="entrgi", M=3, eta=1.0)
    log: list[torch.Tensor] = []
    hook3 = reward_guidance(score_embeds, embed_matrix, cfg3, generator=torch.Generator().manual_seed(999),
                            weight_log=log)
    guided3, _ = run(ToyDenoiser(0), cfg3, seed=7, guidance=hook3)
    assert not torch.equal(guided3, unguided)
    assert len(log) == cfg3.T and all(((0.0 <= w) & (w <= 1.0)).all() for w in log)
    # The guidance pushes toward tokens of high linear score: the mean score goes up.
    score = lambda out: score_embeds(embed_matrix[out.reshape(-1, 8)], None).mean()
    assert score(guided3) > score(unguided)


@pytest.mark.parametrize("alg", ["origin", "entropy"])
def test_weight_log_is_the_mean_entropy_weight_over_the_masked_positions(alg):
    """weight_log gets, at every step and for each prompt, the mean over its rows' *masked* positions of
    w = H(softmax(phi)) / log V of the unguided logits, computed here independently in float64. With `origin` the block is the whole
    response, unmasked positions included, and their mean differs: averaging over the block fails this."""
    embed_matrix, score_embeds = linear_reward()
    cfg = config(alg=alg, method="entrgi", M=1, eta=1.0, max_new_tokens=8, T=5)
    log: list[torch.Tensor] = []
    inner = reward_guidance(score_embeds, embed_matrix, cfg, generator=torch.Generator().manual_seed(2), weight_log=log)
    seen = []

    def recording(logits, probs, masked, positions, response):
        seen.append((logits.double(), masked.clone()))
        return inner(logits, probs, masked, positions, response)

    block_mean_differs = False
    for seed in range(3):
        log.clear(), seen.clear()
        run(ToyDenoiser(seed), cfg, seed=seed, guidance=recording)
        assert len(log) == len(seen) == cfg.T
        for logged, (logits, masked) in zip(log, seen):
            q = torch.softmax(logits, -1)  # (N, n, V) float64
            w = -(q * q.clamp_min(1e-300).log()).sum(-1) / math.log(V)  # (N, n)
            B = masked.shape[0] // cfg.K
            assert logged.shape == (B,)
            for b in range(B):  # rows b * K .. b * K + K - 1 are prompt b's
                rows = slice(b * cfg.K, (b + 1) * cfg.K)
                if not masked[rows].any():
                    assert torch.isnan(logged[b])  # no masked position: no mean (a 0 would pull the run's mean down)
                    continue
                expect = w[rows][masked[rows]].mean()
                assert abs(float(logged[b]) - float(expect)) < 1e-6, (float(logged[b]), float(expect))
                block_mean_differs |= abs(float(w[rows].mean()) - float(expect)) > 1e-3
    assert block_mean_differs == (alg == "origin")


@pytest.mark.parametrize("top_p,top_k", [(0.8, None), (0.9, 5)])
def test_guidance_first_draw_is_the_unguided_token_probs(top_p, top_k):
    """The hook receives token_probs(logits) (filtered at tau, not renormalised) and its first draw from them
    is what guide would draw itself: generate matches, bitwise, a hook that lets guide filter the logits anew."""
    embed_matrix, score_embeds = linear_reward()
    cfg = config(alg="entropy", max_new_tokens=8, T=4, temperature=0.7, top_p=top_p, top_k=top_k,
                 method="entrgi", M=2, eta=1.0)
    received = []
    shared = reward_guidance(score_embeds, embed_matrix, cfg, generator=torch.Generator().manual_seed(3))

    def recording(logits, probs, masked, positions, response):
        received.append((logits.clone(), probs.clone()))
        return shared(logits, probs, masked, positions, response)

    out_shared, _ = run(ToyDenoiser(0), cfg, seed=7, guidance=recording)
    fresh = reward_guidance(score_embeds, embed_matrix, cfg, generator=torch.Generator().manual_seed(3))
    out_fresh, _ = run(ToyDenoiser(0), cfg, seed=7, guidance=lambda lg, _probs, *rest: fresh(lg, None, *rest))
    assert torch.equal(out_shared, out_fresh)
    for logits, probs in received:
        assert torch.equal(probs, token_probs(logits, 0.7, top_p, top_k))
        assert torch.all(probs.sum(-1) < 1)  # filtered, not renormalised (the toy's logits are never one-hot)


@pytest.mark.parametrize("method,alg", [("bon", "entropy"), ("entrgi", "entropy"), ("aps", "maskgit_plus")])
def test_bfloat16_logits_are_upcast_where_used(method, alg):
    """generate keeps the denoiser's logits in its dtype; every consumer upcasts, so a bfloat16 denoiser
    gives, bitwise, what the float32 copy of the same logits gives: the same guided logits (float32,
    as guide promises) at every step, and the same tokens."""
    embed_matrix, score_embeds = linear_reward()
    cfg = config(method=method, M=0 if method == "bon" else 2, alg=alg, max_new_tokens=8, T=4, eta=1.0)
    toy = ToyDenoiser(0)
    half = lambda *a: toy(*a).to(torch.bfloat16)  # noqa: E731
    outs, guided = [], []
    for denoise in (half, lambda *a: half(*a).float()):
        inner = reward_guidance(score_embeds, embed_matrix, cfg, generator=torch.Generator().manual_seed(3))
        returned = []

        def recording(*args):
            returned.append(inner(*args))
            return returned[-1]

        outs.append(run(denoise, cfg, seed=7, guidance=None if method == "bon" else recording)[0])
        guided.append(returned)
    assert torch.equal(outs[0], outs[1])
    assert len(guided[0]) == len(guided[1]) == (0 if method == "bon" else cfg.T)
    for from_half, from_float in zip(*guided):
        assert from_half.dtype == torch.float32 and torch.equal(from_half, from_float)


def test_guidance_zero_steps_shared_generator():
    """M = 0 with the hook sharing generate's generator still reproduces the unguided output exactly."""
    embed_matrix, score_embeds = linear_reward()
    base = dict(alg="entropy", max_new_tokens=6, T=3, temperature=0.7)
    ids, keep = padded_prompts()
    g1 = torch.Generator().manual_seed(5)
    unguided = generate(ToyDenoiser(0), ids, keep, config(**base), mask_id=MASK_ID, eos_id=EOS_ID, generator=g1)
    cfg0 = config(**base, method="aps", M=0)
    g2 = torch.Generator().manual_seed(5)
    hook = reward_guidance(score_embeds, embed_matrix, cfg0, generator=g2)
    guided = generate(ToyDenoiser(0), ids, keep, cfg0, mask_id=MASK_ID, eos_id=EOS_ID, guidance=hook, generator=g2)
    assert torch.equal(guided, unguided)


# The distribution each option's confidence reads, written out from the definitions (the authors' EntRGi code,
# Dream's sampler / the authors' bon.py), independently of sampler.CONFIDENCE_READS:
#   unfiltered = softmax(phi / tau) of the unguided logits;  drawn = filter(softmax(phi_guided / tau)), renormalised;
#   unguided = filter(softmax(phi / tau)), renormalised.
EXPECTED_READS = {
    ("authors", "entropy"): "unfiltered", ("authors", "maskgit_plus"): "drawn", ("authors", "topk_margin"): "drawn",
    ("filtered", "entropy"): "drawn", ("filtered", "maskgit_plus"): "drawn", ("filtered", "topk_margin"): "drawn",
    ("unguided", "entropy"): "unguided", ("unguided", "maskgit_plus"): "unguided", ("unguided", "topk_margin"): "unguided",
}


def _changing_hook(generator: torch.Generator, scale: float = 2.5):
    """Guidance that moves every logit by a position- and token-dependent amount (so the guided order of
    confidences, and the guided nucleus, differ from the unguided ones), recording at each step the unguided
    and guided logits, the block's positions and masks, and the generator's state just before the draw."""
    records = []
    tokens = torch.arange(V).float()  # (V,)

    def hook(logits, probs, masked, positions, response):
        shift = scale * torch.cos(1.7 * positions.float().unsqueeze(-1) + 0.9 * tokens)  # (N, n, V)
        guided = logits + shift  # (N, n, V) the mask token stays at -inf
        records.append(dict(logits=logits.clone(), guided=guided.clone(), positions=positions.clone(),
                            masked=masked.clone(), state=generator.get_state()))
        return guided

    return hook, records


def _run_recorded(cfg, seed: int, toy_seed: int):
    """generate() on the padded prompts with `_changing_hook`, no EOS rule; returns (records, [ids after each step])."""
    ids, keep = padded_prompts()
    generator = torch.Generator().manual_seed(seed)
    hook, records = _changing_hook(generator)
    steps: list[torch.Tensor] = []
    generate(ToyDenoiser(toy_seed), ids, keep, cfg, mask_id=MASK_ID, eos_id=None, guidance=hook,
             generator=generator, on_step=lambda i, x: steps.append(x.clone()))
    assert len(records) == len(steps) == cfg.T
    return records, steps


def lowest_first(conf: torch.Tensor, n_fill: int) -> torch.Tensor:
    """The fill rule written out in Python: per row, the n_fill positions of largest confidence, equal confidences
    taken lowest position first (sorted by the key (-c, position)). (N, n) -> (N, n) bool."""
    out = torch.zeros_like(conf, dtype=torch.bool)
    for r, row in enumerate(conf.tolist()):
        for j in sorted(range(len(row)), key=lambda j: (-row[j], j))[:n_fill]:
            out[r, j] = True
    return out


def _reference_choices(cfg, records, steps):
    """Per step: the block's newly filled positions (N, n) bool, and the positions the definition fills when the
    confidence reads each of the three distributions (from the recorded logits; the draws replayed from the
    recorded generator state with the sampler's inverse-CDF draw from filter(softmax(guided / tau)))."""
    tau, L = cfg.temperature, cfg.max_new_tokens
    P = steps[0].shape[1] - L
    prev = initial_ids(cfg)[:, P:]  # (N, L)
    out = []
    for (n_masked, n_fill), rec, ids in zip(unmask_schedule(L, cfg.T, cfg.eps), records, steps):
        positions = rec["positions"]  # (N, n)
        assert positions.shape[1] == n_masked and (prev.gather(1, positions) == MASK_ID).all()
        unfiltered = torch.softmax(rec["logits"] / tau, -1)  # (N, n, V) p
        unguided = filter_probs(unfiltered, cfg.top_p, cfg.top_k)  # (N, n, V)
        drawn = filter_probs(torch.softmax(rec["guided"] / tau, -1), cfg.top_p, cfg.top_k)  # (N, n, V) q
        tokens = sample_categorical(drawn, torch.Generator().set_state(rec["state"]))  # (N, n) the replayed draws
        placed = ids[:, P:].gather(1, positions)  # (N, n)
        new = placed != MASK_ID  # (N, n)
        assert torch.equal(placed[new], tokens[new])  # the replay is faithful: the placed tokens are these draws
        choices = {}
        for name, r in [("unfiltered", unfiltered), ("drawn", drawn / drawn.sum(-1, keepdim=True)),
                        ("unguided", unguided / unguided.sum(-1, keepdim=True))]:
            conf = direct_confidence(r, tokens, cfg.alg)  # (N, n)
            choices[name] = lowest_first(conf, n_fill)
        out.append((new, choices))
        prev = ids[:, P:]
    return out


@settings(max_examples=30, deadline=None)
@given(alg=st.sampled_from(NON_ORIGIN), source=st.sampled_from(CONFIDENCE_SOURCES), L=st.integers(2, 9),
       T=st.integers(2, 6), top_p=st.sampled_from([0.6, 0.8]), seed=seeds)
def test_confidence_reads_the_configured_distribution_at_every_step(alg, source, L, T, top_p, seed):
    """At every step, the positions filled are the n_fill of largest confidence computed from the distribution
    CONFIDENCE_READS names: authors = p (unguided, unfiltered) for entropy, q (guided, filtered, renormalised)
    for maskgit_plus / topk_margin; filtered = q for all; unguided = the unguided filtered one, renormalised."""
    cfg = config(alg=alg, confidence=source, max_new_tokens=L, T=T, top_p=top_p, eos_last=False)
    records, steps = _run_recorded(cfg, seed, seed % 5)
    reads = EXPECTED_READS[source, alg]
    for i, (new, choices) in enumerate(_reference_choices(cfg, records, steps)):
        assert torch.equal(new, choices[reads]), (i, new, choices[reads])


@pytest.mark.parametrize("alg", NON_ORIGIN)
def test_confidence_distributions_differ_and_the_defaults_are_the_authors(alg):
    """Non-vacuity of the test above: on these runs the three distributions fill different positions at some
    step (so reading the wrong one fails), and the default option is `authors`."""
    assert SamplingConfig().confidence == "authors"
    differs = {("unfiltered", "drawn"): False, ("drawn", "unguided"): False, ("unfiltered", "unguided"): False}
    for seed in range(4):
        cfg = config(alg=alg, max_new_tokens=9, T=4, top_p=0.7, eos_last=False)  # default confidence
        records, steps = _run_recorded(cfg, seed, seed)
        for new, choices in _reference_choices(cfg, records, steps):
            assert torch.equal(new, choices[EXPECTED_READS["authors", alg]])
            for a, b in differs:
                differs[a, b] |= not torch.equal(choices[a], choices[b])
    assert all(differs.values()), differs


@pytest.mark.parametrize("source", CONFIDENCE_SOURCES)
@pytest.mark.parametrize("alg", NON_ORIGIN)
def test_each_confidence_source_is_told_apart_from_the_others_under_guidance(source, alg):
    """Every (source, alg), on fixed runs (not left to Hypothesis' draw) with guidance that moves the logits:
    at every step the filled positions are those the source's distribution picks, and on the same runs every
    other source that reads a different distribution for this alg picks differently at some step. So a source
    that reads another's distribution ('unguided' reading the guided one, say) fails here whatever the seed
    the property test above happens to draw."""
    reads = EXPECTED_READS[source, alg]
    others = {EXPECTED_READS[other, alg] for other in CONFIDENCE_SOURCES} - {reads}
    told_apart = dict.fromkeys(others, False)
    for seed in range(3):
        cfg = config(alg=alg, confidence=source, max_new_tokens=9, T=4, top_p=0.7, eos_last=False)
        records, steps = _run_recorded(cfg, seed, seed)
        for i, (new, choices) in enumerate(_reference_choices(cfg, records, steps)):
            assert torch.equal(new, choices[reads]), (seed, i)
            for other in others:
                told_apart[other] |= not torch.equal(choices[reads], choices[other])
    assert all(told_apart.values()), told_apart


@settings(max_examples=20, deadline=None)
@given(alg=algs, source=st.sampled_from(CONFIDENCE_SOURCES), T=st.integers(1, 5), top_p=st.sampled_from([0.5, 0.8]),
       top_k=st.sampled_from([None, 6]), seed=seeds)
def test_guided_tokens_lie_in_the_filtered_guided_nucleus(alg, source, T, top_p, top_k, seed):
    """Under guidance every token placed at every step has positive mass in filter(softmax(phi_guided / tau)),
    the guided logits the hook returned at that step (drawing from the unfiltered guided softmax fails this)."""
    L = 8
    cfg = config(alg=alg, confidence=source, max_new_tokens=L, T=T, top_p=top_p, top_k=top_k, temperature=1.0)
    records, steps = _run_recorded(cfg, seed, seed % 5)
    P = steps[0].shape[1] - L
    prev = initial_ids(cfg)[:, P:]  # (N, L)
    outside = 0
    for rec, ids in zip(records, steps):
        positions = rec["positions"]  # (N, n)
        unfiltered = torch.softmax(rec["guided"] / cfg.temperature, -1)  # (N, n, V)
        support = filter_probs(unfiltered, top_p, top_k) > 0  # (N, n, V)
        placed = ids[:, P:].gather(1, positions)  # (N, n)
        new = (prev.gather(1, positions) == MASK_ID) & (placed != MASK_ID)  # (N, n)
        assert support.gather(-1, placed.unsqueeze(-1)).squeeze(-1)[new].all()
        # Non-vacuity: the filter drops tokens the unfiltered softmax could draw (the mask's -inf does not count).
        outside += int((~support & (unfiltered > 0)).any(-1)[new].sum())
        prev = ids[:, P:]
    assert outside > 0


# --------------------------------------------------------------------------- helpers of the sampler


@FAST
@given(data=st.data(), N=st.integers(1, 4), L=st.integers(1, 12))
def test_masked_positions_increasing(data, N, L):
    """masked_positions returns, per row, exactly the masked positions in increasing order."""
    n = data.draw(st.integers(0, L))
    rows = []
    for _ in range(N):
        perm = data.draw(st.permutations(list(range(L))))
        row = torch.zeros(L, dtype=torch.bool)
        row[list(perm[:n])] = True
        rows.append(row)
    masked = torch.stack(rows)
    got = masked_positions(masked, n)
    assert got.shape == (N, n)
    for r in range(N):
        assert got[r].tolist() == masked[r].nonzero().squeeze(-1).tolist()


def test_confidence_formulas():
    """confidence() per alg equals q(x), q1 - q2 and -H(q) (0 log 0 = 0) on a small example."""
    probs = torch.tensor([[0.5, 0.3, 0.2, 0.0], [0.1, 0.1, 0.8, 0.0], [0.25, 0.25, 0.25, 0.25]])
    tokens = torch.tensor([1, 2, 0])
    torch.testing.assert_close(confidence(probs, tokens, "maskgit_plus"), torch.tensor([0.3, 0.8, 0.25]))
    torch.testing.assert_close(confidence(probs, tokens, "topk_margin"), torch.tensor([0.2, 0.7, 0.0]))
    neg_h = torch.tensor([
        0.5 * math.log(0.5) + 0.3 * math.log(0.3) + 0.2 * math.log(0.2),
        2 * 0.1 * math.log(0.1) + 0.8 * math.log(0.8),
        math.log(0.25),
    ])
    got = confidence(probs, tokens, "entropy")
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, neg_h)
    torch.testing.assert_close(got, direct_confidence(probs, tokens, "entropy"))
    with pytest.raises(ValueError):
        confidence(probs, tokens, "origin")
    # The exact -sum q log q (xlogy, 0 log 0 = 0), not Dream's -sum q log(q + 1e-10): bitwise the first.
    rows = torch.softmax(torch.randn(64, 300, generator=torch.Generator().manual_seed(0)) * 4, -1)  # (64, 300)
    rows[:, :5] = 0.0  # filtered-out tokens
    q = rows / rows.sum(-1, keepdim=True)  # (64, 300) what confidence() renormalises to
    got = confidence(rows, tokens[:1].expand(64), "entropy")  # (64,)
    assert torch.equal(got, torch.xlogy(q, q).sum(-1))
    assert not torch.equal(got, (q * (q + 1e-10).log()).sum(-1))


@pytest.mark.parametrize("top_p,top_k", [(1.0, None), (0.7, None), (0.9, 4)])
def test_token_distributions_one_softmax_and_its_filter(top_p, top_k):
    """token_distributions gives softmax(phi / tau) and filter_probs of that very tensor (token_probs' result,
    bitwise); without a filter both are the same tensor. confidence(..., normalised=True) reads p as it is."""
    g = torch.Generator().manual_seed(0)
    logits = drawable(torch.randn(3, 5, V, generator=g) * 3)  # (3, 5, V)
    unfiltered, filtered = token_distributions(logits, 0.7, top_p, top_k)
    assert torch.equal(unfiltered, tempered_softmax(logits, 0.7))
    torch.testing.assert_close(unfiltered, torch.softmax(logits / 0.7, -1), rtol=1e-5, atol=1e-7)
    assert torch.equal(filtered, filter_probs(unfiltered, top_p, top_k))
    assert torch.equal(filtered, token_probs(logits, 0.7, top_p, top_k))
    assert (filtered is unfiltered) == (top_p == 1.0 and top_k is None)
    torch.testing.assert_close(confidence(unfiltered, None, "entropy", normalised=True),
                               direct_confidence(unfiltered, None, "entropy"), rtol=0, atol=1e-6)


@pytest.mark.parametrize("alg", NON_ORIGIN)
def test_confidence_renormalises(alg):
    """Filtered weights of any total mass give the confidence of the renormalised distribution."""
    weights = torch.tensor([[0.5, 0.3, 0.0, 0.0], [0.1, 0.1, 0.6, 0.0]])  # masses 0.8 and 0.8
    tokens = torch.tensor([1, 2])
    normalised = weights / weights.sum(-1, keepdim=True)
    torch.testing.assert_close(confidence(weights, tokens, alg), direct_confidence(normalised, tokens, alg))
    torch.testing.assert_close(confidence(7 * weights, tokens, alg), confidence(normalised, tokens, alg))


@FAST
@given(seed=seeds, alg=st.sampled_from(NON_ORIGIN))
def test_confidence_matches_direct_formula_random(seed, alg):
    """On random filtered distributions (with zeros), confidence() equals the direct formula."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(3, 5, V, generator=g) * 3
    probs = filter_probs(torch.softmax(logits, -1), 0.8)  # zeros outside the nucleus
    probs = probs / probs.sum(-1, keepdim=True)
    tokens = torch.multinomial(probs.reshape(-1, V), 1, generator=g).reshape(3, 5)
    torch.testing.assert_close(confidence(probs, tokens, alg), direct_confidence(probs, tokens, alg))


# --------------------------------------------------------------------------- denoiser adapters


@pytest.fixture(scope="module")
def qwen():
    return tiny_qwen2(seed=0)


def test_dream_denoiser_shift_matches_qwen2_bidirectional(qwen):
    """dream_denoiser's logits at j equal Qwen2ForCausalLM's logits at j-1 under an all-True 4-D mask."""
    g = torch.Generator().manual_seed(0)
    N, S = 2, 9
    ids = torch.randint(0, 64, (N, S), generator=g)
    keep = torch.ones(N, S, dtype=torch.bool)
    positions = torch.tensor([[1, 4, 8], [2, 3, 7]])
    with torch.no_grad():
        got = dream_denoiser(qwen)(ids, keep, positions)
        full = qwen(input_ids=ids, attention_mask=torch.ones(N, 1, S, S, dtype=torch.bool)).logits
        causal = qwen(input_ids=ids).logits
    expect = full.gather(1, (positions - 1).unsqueeze(-1).expand(-1, -1, full.shape[-1]))
    assert got.shape == (N, 3, 64)
    torch.testing.assert_close(got, expect, rtol=1e-5, atol=1e-5)
    unshifted = full.gather(1, positions.unsqueeze(-1).expand(-1, -1, full.shape[-1]))
    assert not torch.allclose(got, unshifted, atol=1e-3)
    assert not torch.allclose(full[:, :-1], causal[:, :-1], atol=1e-3)  # the reference really is bidirectional


def test_dream_denoiser_bidirectional(qwen):
    """Changing a later token changes dream_denoiser's logits at an earlier position."""
    ids = torch.tensor([[5, 9, 12, 3, 30, 41, 7, 2]])
    keep = torch.ones_like(ids, dtype=torch.bool)
    positions = torch.tensor([[2]])
    changed = ids.clone()
    changed[0, 6] = 50
    with torch.no_grad():
        a = dream_denoiser(qwen)(ids, keep, positions)
        b = dream_denoiser(qwen)(changed, keep, positions)
    assert not torch.allclose(a, b, atol=1e-4)


def test_dream_denoiser_left_padding_invariant(qwen):
    """A left-padded row gives the same logits as the same row unpadded (1e-5)."""
    row = torch.tensor([5, 9, 12, 3, 30, 41, 7])
    padded = torch.cat([torch.tensor([0, 0, 0]), row]).unsqueeze(0)
    keep_padded = torch.tensor([[False] * 3 + [True] * 7])
    batch = torch.stack([padded[0], torch.cat([row, torch.tensor([1, 2, 3])])])  # second row: other content
    keep_batch = torch.cat([keep_padded, torch.ones(1, 10, dtype=torch.bool)])
    with torch.no_grad():
        plain = dream_denoiser(qwen)(row.unsqueeze(0), torch.ones(1, 7, dtype=torch.bool), torch.tensor([[1, 3, 6]]))
        pad = dream_denoiser(qwen)(padded, keep_padded, torch.tensor([[4, 6, 9]]))
        in_batch = dream_denoiser(qwen)(batch, keep_batch, torch.tensor([[4, 6, 9], [1, 3, 6]]))
    torch.testing.assert_close(pad, plain, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(in_batch[:1], plain, rtol=1e-5, atol=1e-5)


def test_llada_denoiser_no_shift():
    """llada_denoiser reads logits at the positions themselves and passes keep as a long (N, S) mask."""
    seen = {}

    class Toy:
        def __call__(self, input_ids, attention_mask):
            seen["mask"] = attention_mask
            S = input_ids.shape[1]
            logits = input_ids.unsqueeze(-1).float() * 10 + torch.arange(S).float().view(1, S, 1) \
                + torch.arange(V).float() / 100
            return SimpleNamespace(logits=logits)  # (N, S, V), distinct at every position

    ids = torch.tensor([[1, 2, 3, 4, 5], [6, 7, 8, 9, 10]])
    keep = torch.tensor([[False, True, True, True, True], [True] * 5])
    positions = torch.tensor([[1, 3], [0, 4]])
    got = llada_denoiser(Toy())(ids, keep, positions)
    passed_mask = seen["mask"]
    assert passed_mask.dtype == torch.long and torch.equal(passed_mask, keep.long())
    full = Toy()(ids, keep.long()).logits
    expect = torch.stack([full[r, positions[r]] for r in range(2)])
    assert torch.equal(got, expect)


def test_llada_denoiser_in_generate():
    """generate with llada_denoiser over a toy model: no shift means the toy's argmax at j is placed at j."""
    toy = ToyDenoiser(3)

    class Model:
        def __call__(self, input_ids, attention_mask):
            return SimpleNamespace(logits=toy.full(input_ids, attention_mask.bool()))

    cfg = config(alg="maskgit_plus", max_new_tokens=5, T=5, temperature=0.0, eos_last=False)
    via_llada, _ = run(llada_denoiser(Model()), cfg, seed=0)
    direct, _ = run(toy, cfg, seed=0)
    assert torch.equal(via_llada, direct)


def test_generate_with_tiny_qwen2_dream(qwen):
    """Integration: guided generation through dream_denoiser on a tiny Qwen2 keeps every invariant."""
    mask_id, eos_id = 63, 62
    base = dream_denoiser(qwen)

    ids = torch.tensor([[0, 0, 11, 12], [21, 22, 23, 24]])
    keep = torch.tensor([[False, False, True, True], [True] * 4])
    g = torch.Generator().manual_seed(0)
    embed_matrix = torch.randn(64, 8, generator=g)
    weight = torch.randn(8, generator=g)
    score_embeds = lambda e, t: (e @ weight).sum(-1)
    L, T = 6, 3
    cfg = SamplingConfig(K=2, T=T, M=1, max_new_tokens=L, alg="entropy").validate()
    outs, records = [], []
    for _ in range(2):
        steps = []
        hook = reward_guidance(score_embeds, embed_matrix, cfg, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            out = generate(base, ids, keep, cfg, mask_id=mask_id, eos_id=eos_id, guidance=hook,
                           generator=torch.Generator().manual_seed(2), on_step=lambda i, x: steps.append(x.clone()))
        outs.append(out)
        records.append(steps)
    out, steps = outs[0], records[0]
    assert torch.equal(outs[0], outs[1])
    assert out.shape == (2, 2, L)
    assert not (out == mask_id).any()
    schedule = unmask_schedule(L, T)
    prev = torch.cat([ids.repeat_interleave(2, 0), torch.full((4, L), mask_id)], 1)
    for (n_masked, n_fill), state in zip(schedule, steps):
        assert torch.equal(state[:, :4], prev[:, :4])
        placed = prev[:, 4:] != mask_id
        assert torch.equal(state[:, 4:][placed], prev[:, 4:][placed])
        assert ((prev[:, 4:] == mask_id).sum(1) - (state[:, 4:] == mask_id).sum(1) == n_fill).all()
        prev = state


# --------------------------------------------------------------------------- SamplingConfig.validate


def test_validate_accepts_defaults():
    """The published defaults, greedy unguided BoN and top_p = 1 all validate."""
    cfg = SamplingConfig()
    assert cfg.validate() is cfg
    assert (cfg.K, cfg.T, cfg.M, cfg.eta, cfg.max_new_tokens, cfg.temperature, cfg.top_p, cfg.alg, cfg.eos_last) == \
        (4, 128, 3, 0.5, 128, 0.7, 0.95, "entropy", True)
    SamplingConfig(method="bon", temperature=0.0).validate()
    SamplingConfig(top_p=1.0, top_k=1, M=0).validate()
    for alg in ALGORITHMS:
        SamplingConfig(alg=alg).validate()
    for method in ("entrgi", "aps", "expectation", "bon"):
        SamplingConfig(method=method).validate()
    for source in ("authors", "filtered", "unguided"):
        SamplingConfig(confidence=source).validate()


def test_config_sources_name_where_each_default_comes_from():
    """Every field has help and a source; EOS de-prioritisation is the authors' rule (Dream's sampler has none),
    eps and top_k are Dream's, and `confidence` offers the three documented options, the authors' by default."""
    by_name = {f.name: f for f in fields(SamplingConfig)}
    assert all(f.metadata["help"] and f.metadata["source"] for f in by_name.values())
    assert "authors" in by_name["eos_last"].metadata["source"] and "Dream" not in by_name["eos_last"].metadata["source"]
    assert by_name["eps"].metadata["source"] == by_name["top_k"].metadata["source"] == "Dream's sampler"
    assert by_name["confidence"].metadata["choices"] == CONFIDENCE_SOURCES == ("authors", "filtered", "unguided")
    assert by_name["confidence"].default == "authors"
    for name in ("K", "T", "M", "eta", "max_new_tokens", "temperature", "top_p"):
        assert "authors' released configuration" in by_name[name].metadata["source"]


@pytest.mark.parametrize("overrides,field", [
    (dict(K=0), "K"), (dict(K=-3), "K"),
    (dict(T=0), "T"),
    (dict(M=-1), "M"),
    (dict(eta=0.0), "eta"), (dict(eta=-0.5), "eta"), (dict(eta=math.inf), "eta"), (dict(eta=math.nan), "eta"),
    (dict(temperature=-0.1), "temperature"),
    (dict(temperature=math.inf), "temperature"), (dict(temperature=math.nan), "temperature"),
    (dict(temperature=0.0), "temperature"),
    (dict(temperature=0.0, method="aps"), "temperature"),
    (dict(temperature=0.0, method="expectation"), "temperature"),
    (dict(top_p=0.0), "top_p"), (dict(top_p=1.5), "top_p"), (dict(top_p=-0.1), "top_p"),
    (dict(top_k=0), "top_k"),
    (dict(max_new_tokens=0), "max_new_tokens"),
    (dict(alg="greedy"), "alg"),
    (dict(method="dps"), "method"),
    (dict(confidence="both"), "confidence"), (dict(confidence="guided"), "confidence"),
    (dict(eps=0.0), "eps"), (dict(eps=1.0), "eps"),
])
def test_validate_rejects(overrides, field):
    """Each out-of-range field raises ValueError with a one-line message naming the problem."""
    with pytest.raises(ValueError) as info:
        SamplingConfig(**overrides).validate()
    message = str(info.value)
    assert message and "\n" not in message
    assert field in message


def test_validate_names_fields_as_asked():
    """validate(name) calls each field what `name` maps it to (the CLI passes its options), field names by default."""
    with pytest.raises(ValueError, match=r"^<top_p> must be in \(0, 1\]"):
        SamplingConfig(top_p=1.5).validate(lambda field: f"<{field}>")
    with pytest.raises(ValueError, match=r"^<method> entrgi needs <temperature> > 0"):
        SamplingConfig(temperature=0.0).validate(lambda field: f"<{field}>")
    with pytest.raises(ValueError, match=r"^top_p must be in"):
        SamplingConfig(top_p=1.5).validate()


def test_weight_log_is_nan_where_origin_has_no_mask_left():
    """`origin` can fill every mask before the last step; those steps log NaN (no masked position), not 0, so the
    run's nanmean is the mean over the steps that had masks."""
    embed_matrix, score_embeds = linear_reward()
    cfg = config(alg="origin", method="entrgi", M=1, eta=1.0, max_new_tokens=2, T=12)
    found = False
    for seed in range(5):
        log: list[torch.Tensor] = []
        hook = reward_guidance(score_embeds, embed_matrix, cfg, generator=torch.Generator().manual_seed(seed),
                               weight_log=log)
        run(ToyDenoiser(seed), cfg, seed=seed, guidance=hook)
        logged = torch.stack(log)  # (T, B)
        empty = torch.isnan(logged)
        found |= bool(empty.any())
        assert not empty[0].any() and torch.isfinite(logged.nanmean(0)).all()
        for b in range(logged.shape[1]):
            torch.testing.assert_close(logged[:, b].nanmean(), logged[~empty[:, b], b].mean(), rtol=1e-6, atol=0)
    assert found, "no run emptied its masks early: the case is not exercised"


@pytest.mark.parametrize("normalised", [True, False])
@pytest.mark.parametrize("alg", ["maskgit_plus", "topk_margin", "entropy"])
def test_confidence_overwrite_gives_the_same_score(alg, normalised):
    """overwrite=True (generate's scratch unfiltered softmax) scores exactly as overwrite=False does."""
    g = torch.Generator().manual_seed(3)
    probs = torch.softmax(torch.randn(4, 6, 50, generator=g), -1)  # (4, 6, 50)
    probs[..., 7] = 0.0  # a filtered-out token: 0 log 0 = 0
    tokens = torch.randint(0, 50, (4, 6), generator=g)  # (4, 6)
    expected = confidence(probs, tokens, alg, normalised=normalised)  # (4, 6)
    assert torch.equal(confidence(probs.clone(), tokens, alg, normalised=normalised, overwrite=True), expected)
