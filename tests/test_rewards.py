"""Tests of `rewards`: the bridge from denoiser tokens to the reward model R (docs/reward-reading.md).

What they prove, on the tiny seeded models of `models.py` (a Qwen2 denoiser whose byte-level
BPE tokenizer has 526 tokens and whose embedding has 576 rows; a Qwen3 sequence classifier
with its own, smaller 480-token tokenizer, so the bridge has unmapped tokens):

* the differentiable score of one-hot response embeddings equals the discrete score of the
  same tokens read through R's chat template ([prefix | response up to its first EOS,
  pads dropped | suffix]) -- with and without the prefix cache, for responses that end
  early (also at position 0: the empty response), contain pads, and for batches of prompts
  of different lengths (the pitfall of a classifier fed embeddings: the score is read at the last real token and
  position ids skip excluded positions);
* the cached score and its gradient equal the uncached ones;
* the score is differentiable in the embeddings, with gradient exactly zero at excluded
  positions (the first EOS and after, pads) and non-zero at kept positions;
* padding changes nothing: a batch scores like its rows one prompt at a time, for the
  differentiable score, `score_ids` and `score_texts`;
* the vocabulary bridge maps by token string (identity, permuted vocabulary, unmapped
  tokens counted), `bridged_embeddings` gathers R's rows (zeros where unmapped), and
  `chat_pieces` splits R's chat template around the response, and rejects a template that
  shows the response other than once.
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import models  # noqa: E402
import rewards  # noqa: E402

# Scores are O(1) float32 numbers from a 2-layer model. The one-hot embedding rows are
# bit-identical to R's embedding rows (x @ one_hot picks a row exactly), so two computations
# of the same score differ only by the order of float32 reductions inside attention
# (different padded lengths, cached vs uncached keys): observed <= ~2e-6 for scores of
# magnitude <= ~2 (cached vs uncached: bit-identical). 1e-5 abs + 1e-5 rel leaves a
# margin while staying far below any real error (a wrong position id, a pooled pad or an
# attended excluded token moved affected scores by 0.1 or more when tried as mutations).
SCORE_ATOL = 1e-5
SCORE_RTOL = 1e-5
# Gradients w.r.t. the embeddings reach ~10 per entry and flow back through more float32
# reductions (backward of attention and MLPs): observed <= ~2.5e-5 between a batch and its
# rows alone (cached vs uncached: bit-identical). 1e-4 absolute + 1e-4 relative.
GRAD_ATOL = 1e-4
GRAD_RTOL = 1e-4

PROMPTS = [  # different lengths in R's tokens (prefixes of 15, 21 and 37 tokens)
    "Why?",
    "Explain why the sky is blue.",
    "Write a short poem about the sea, and give three tips for sleeping well.",
]


@functools.lru_cache(maxsize=None)
def tiny():
    """The tiny denoiser tokenizer, reward model and tokenizer, bridge and bridged embeddings (built once)."""
    dllm, dt = models.tiny_dllm()
    rm, rt = models.tiny_reward()
    rm.requires_grad_(False)
    V = dllm.config.vocab_size
    bridge = rewards.vocab_bridge(dt, rt, V)
    E = rewards.bridged_embeddings(rm.get_input_embeddings().weight.detach(), bridge)
    eos, pad = dt.eos_token_id, dt.pad_token_id
    alt_pad = dt.mask_token_id  # a pad id distinct from EOS, to test pad exclusion on its own
    mapped = [i for i in range(bridge.tokenizer_size)
              if bridge.index[i] >= 0 and i not in (eos, pad, alt_pad)]
    return SimpleNamespace(dt=dt, rm=rm, rt=rt, V=V, bridge=bridge, E=E, eos=eos, pad=pad,
                           alt_pad=alt_pad, mapped=mapped)


def scorer(prompts, K, *, cache, pad_id=None):
    m = tiny()
    reading = rewards.response_reading(m.V, [m.eos], m.pad if pad_id is None else pad_id)
    return rewards.EmbeddingScorer(m.rm, m.rt, prompts, K=K, reading=reading, cache=cache)


def one_hot_embeds(tokens):
    m = tiny()
    return F.one_hot(tokens, m.V).float() @ m.E  # (N, L, d)


def discrete_scores(prompts, K, tokens, pad_id):
    """R's ordinary forward on [prefix | bridged response up to its first EOS, pads dropped | suffix]."""
    m = tiny()
    rows = []
    for n, row in enumerate(tokens.tolist()):
        prefix, suffix = rewards.chat_pieces(m.rt, prompts[n // K])
        response = []
        for t in row:
            if t == m.eos:
                break
            if t != pad_id:
                response.append(int(m.bridge.index[t]))
        assert all(r >= 0 for r in response), "test bug: reference response has an unmapped token"
        rows.append(prefix + response + suffix)
    ids, keep = rewards.left_pad(rows, m.rt.pad_token_id)
    return rewards.score_ids(m.rm, ids, keep)


def assert_scores_close(actual, expected):
    torch.testing.assert_close(actual, expected, atol=SCORE_ATOL, rtol=SCORE_RTOL)


def random_rows(gen, N, L, *, eos_at, pads=(), pad_id=None):
    """Mapped non-EOS tokens; EOS at eos_at[n] (None: none) followed by arbitrary ids (unmapped too)."""
    m = tiny()
    mapped = torch.tensor(m.mapped)
    tokens = mapped[torch.randint(len(mapped), (N, L), generator=gen)]
    for n, l in pads:
        tokens[n, l] = pad_id
    for n, e in enumerate(eos_at):
        if e is not None:
            tokens[n, e] = m.eos
            tokens[n, e + 1:] = torch.randint(m.V, (L - e - 1,), generator=gen)  # excluded: anything goes
    return tokens


def soft_embeds(gen, N, L):
    """Soft (expectation-like) embeddings: random distributions over the denoiser vocabulary @ E."""
    m = tiny()
    probs = torch.softmax(3 * torch.randn(N, L, m.V, generator=gen), -1)
    return (probs @ m.E).requires_grad_(True)


# --------------------------------------------------------------------------- one-hot == discrete


@pytest.mark.parametrize("cache", [True, False])
def test_one_hot_score_equals_discrete_score(cache):
    """One-hot embeddings score like the same tokens through R's chat template (early/immediate EOS, 3 prompts)."""
    m = tiny()
    gen = torch.Generator().manual_seed(0)
    K, L = 2, 9
    eos_at = [None, 0, 4, L - 1, 1, None]  # row 1: empty response; row 3: EOS at the last position
    tokens = random_rows(gen, len(PROMPTS) * K, L, eos_at=eos_at)
    tokens[5, 2] = tokens[5, 6] = m.pad  # dt's pad is its EOS: a pad ends the response like EOS
    s = scorer(PROMPTS, K, cache=cache)(one_hot_embeds(tokens), tokens)
    d = discrete_scores(PROMPTS, K, tokens, m.pad)
    assert s.shape == (len(PROMPTS) * K,) and s.dtype == torch.float32
    assert_scores_close(s, d)
    assert d.unique().numel() == d.numel()  # rows differ: a mix-up of rows would be seen


@pytest.mark.parametrize("cache", [True, False])
def test_one_hot_score_equals_discrete_score_with_pads(cache):
    """With a pad id distinct from EOS, pad positions are dropped (the discrete response skips them)."""
    m = tiny()
    gen = torch.Generator().manual_seed(1)
    K, L = 2, 8
    pads = [(0, 0), (0, 3), (1, 7), (2, 2), (2, 3), (3, 1), (4, 0), (5, 5)]
    tokens = random_rows(gen, len(PROMPTS) * K, L, eos_at=[None, None, 6, 4, 0, None], pads=pads, pad_id=m.alt_pad)
    s = scorer(PROMPTS, K, cache=cache, pad_id=m.alt_pad)(one_hot_embeds(tokens), tokens)
    assert_scores_close(s, discrete_scores(PROMPTS, K, tokens, m.alt_pad))
    # the pads matter: read as real tokens, the score would change
    assert not torch.allclose(s, discrete_scores(PROMPTS, K, tokens, pad_id=None), atol=1e-3)


@st.composite
def scoring_cases(draw):
    m = tiny()
    B = draw(st.integers(1, 3))
    prompts = draw(st.permutations(PROMPTS))[:B]
    K = draw(st.integers(1, 2))
    L = draw(st.integers(1, 10))
    use_alt_pad = draw(st.booleans())
    rows = []
    for _ in range(B * K):
        row = draw(st.lists(st.sampled_from(m.mapped), min_size=L, max_size=L))
        if use_alt_pad:
            for l in draw(st.sets(st.integers(0, L - 1), max_size=L)):
                row[l] = m.alt_pad
        eos = draw(st.one_of(st.none(), st.integers(0, L - 1)))
        if eos is not None:
            row[eos] = m.eos
            for l in range(eos + 1, L):
                row[l] = draw(st.integers(0, m.V - 1))
        rows.append(row)
    return prompts, K, torch.tensor(rows), (m.alt_pad if use_alt_pad else m.pad), draw(st.booleans())


@settings(max_examples=30, deadline=None, derandomize=True)
@given(scoring_cases())
def test_one_hot_score_equals_discrete_score_hypothesis(case):
    """Hypothesis: any tokens / EOS positions / pads / prompts / K, cached or not, one-hot == discrete."""
    prompts, K, tokens, pad_id, cache = case
    s = scorer(prompts, K, cache=cache, pad_id=pad_id)(one_hot_embeds(tokens), tokens)
    assert_scores_close(s, discrete_scores(prompts, K, tokens, pad_id))


# --------------------------------------------------------------------------- cache, gradients, batching


def _score_and_grad(sc, embeds, tokens):
    embeds = embeds.detach().requires_grad_(True)
    s = sc(embeds, tokens)
    (grad,) = torch.autograd.grad(s.sum(), embeds)
    return s.detach(), grad


def test_cached_score_and_gradient_equal_uncached():
    """The prefix-cached score and its gradient w.r.t. the embeddings equal the uncached ones."""
    m = tiny()
    gen = torch.Generator().manual_seed(2)
    K, L = 2, 7
    tokens = random_rows(gen, len(PROMPTS) * K, L, eos_at=[None, 3, 0, None, 6, 2],
                         pads=[(0, 1), (3, 4)], pad_id=m.alt_pad)
    embeds = soft_embeds(gen, len(PROMPTS) * K, L)
    s1, g1 = _score_and_grad(scorer(PROMPTS, K, cache=True, pad_id=m.alt_pad), embeds, tokens)
    s0, g0 = _score_and_grad(scorer(PROMPTS, K, cache=False, pad_id=m.alt_pad), embeds, tokens)
    assert_scores_close(s1, s0)
    torch.testing.assert_close(g1, g0, atol=GRAD_ATOL, rtol=GRAD_RTOL)
    assert g0.abs().max() > 1e-3  # a non-trivial gradient was compared


@pytest.mark.parametrize("cache", [True, False])
def test_gradient_nonzero_where_kept_and_exactly_zero_where_excluded(cache):
    """Gradient w.r.t. embeds: non-zero at kept positions, exactly 0 at the first EOS, after it, and at pads."""
    m = tiny()
    gen = torch.Generator().manual_seed(3)
    K, L = 2, 8
    tokens = random_rows(gen, len(PROMPTS) * K, L, eos_at=[None, 2, 0, 5, None, 7],
                         pads=[(0, 0), (0, 4), (1, 1), (4, 7), (5, 3)], pad_id=m.alt_pad)
    sc = scorer(PROMPTS, K, cache=cache, pad_id=m.alt_pad)
    embeds = soft_embeds(gen, len(PROMPTS) * K, L)
    s = sc(embeds, tokens)
    assert s.requires_grad
    (grad,) = torch.autograd.grad(s.sum(), embeds)
    assert torch.isfinite(grad).all()
    keep = torch.ones_like(tokens, dtype=torch.bool)
    for n, row in enumerate(tokens.tolist()):
        eos = row.index(m.eos) if m.eos in row else L
        keep[n, eos:] = False
        keep[n] &= tokens[n] != m.alt_pad
    assert torch.equal(sc.response_keep(tokens), keep)
    norms = grad.abs().sum(-1)  # (N, L)
    assert (norms[keep] > 0).all()
    assert (grad[~keep] == 0).all()
    # each row's score depends only on its own embeddings
    (g_row,) = torch.autograd.grad(sc(embeds, tokens)[1], embeds)
    assert (g_row[torch.arange(len(tokens)) != 1] == 0).all() and (g_row[1, keep[1]].abs().sum(-1) > 0).all()


@pytest.mark.parametrize("cache", [True, False])
def test_batch_scores_equal_one_prompt_at_a_time(cache):
    """A batch of 3 prompts x K=2 scores (and differentiates) like each prompt's rows scored alone."""
    m = tiny()
    gen = torch.Generator().manual_seed(4)
    K, L = 2, 6
    tokens = random_rows(gen, len(PROMPTS) * K, L, eos_at=[1, None, None, 0, 4, None],
                         pads=[(1, 2), (5, 0)], pad_id=m.alt_pad)
    embeds = soft_embeds(gen, len(PROMPTS) * K, L)
    s, g = _score_and_grad(scorer(PROMPTS, K, cache=cache, pad_id=m.alt_pad), embeds, tokens)
    for b, prompt in enumerate(PROMPTS):
        rows = slice(b * K, (b + 1) * K)
        s_b, g_b = _score_and_grad(scorer([prompt], K, cache=cache, pad_id=m.alt_pad), embeds[rows], tokens[rows])
        assert_scores_close(s[rows], s_b)
        torch.testing.assert_close(g[rows], g_b, atol=GRAD_ATOL, rtol=GRAD_RTOL)
        for k in range(K):  # and K = 1, one row at a time
            r = b * K + k
            alone = scorer([prompt], 1, cache=cache, pad_id=m.alt_pad)
            s_r, _ = _score_and_grad(alone, embeds[r:r + 1], tokens[r:r + 1])
            assert_scores_close(s[r:r + 1], s_r)


# --------------------------------------------------------------------------- discrete scores


def _plain_score(ids: list[int]) -> float:
    """R's ordinary forward on one unpadded row, no attention mask or position ids: the reference."""
    m = tiny()
    with torch.no_grad():
        return m.rm(input_ids=torch.tensor([ids])).logits[0, 0].item()


def test_score_ids_padding_changes_nothing():
    """score_ids of a left-padded batch equals R's plain forward on each unpadded row."""
    m = tiny()
    rows = [m.rt(rewards.chat_text(m.rt, p, r), add_special_tokens=False)["input_ids"]
            for p, r in zip(PROMPTS, ["a", "The fox jumps over the dog.", ""])]
    assert len({len(r) for r in rows}) == 3
    ids, keep = rewards.left_pad(rows, m.rt.pad_token_id)
    assert ids.shape == keep.shape == (3, max(map(len, rows)))
    assert keep.sum(-1).tolist() == [len(r) for r in rows] and not keep[:, -1].logical_not().any()
    got = rewards.score_ids(m.rm, ids, keep)
    expected = torch.tensor([_plain_score(r) for r in rows])
    assert_scores_close(got, expected)


def test_score_texts_equals_score_ids_and_one_by_one():
    """score_texts == score_ids of the tokenised chat text; batch == one pair at a time."""
    m = tiny()
    responses = ["Numbers like one, two, three.", "", "The sky is blue because the sun is warm and the sea is blue."]
    batch = rewards.score_texts(m.rm, m.rt, PROMPTS, responses)
    assert batch.shape == (3,) and batch.dtype == torch.float32
    for n, (p, r) in enumerate(zip(PROMPTS, responses)):
        ids = m.rt(rewards.chat_text(m.rt, p, r), add_special_tokens=False)["input_ids"]
        one = rewards.score_ids(m.rm, torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.bool))
        assert_scores_close(batch[n:n + 1], one)
        assert_scores_close(rewards.score_texts(m.rm, m.rt, [p], [r]), one)
        assert abs(one.item() - _plain_score(ids)) <= SCORE_ATOL + SCORE_RTOL * abs(one.item())
    assert batch.unique().numel() == 3


# --------------------------------------------------------------------------- vocabulary bridge


def test_bridge_identity_for_identical_tokenizers():
    """Same tokenizer on both sides: index is arange over the tokenizer, -1 on padding rows, coverage 1."""
    m = tiny()
    size = len(m.dt)
    bridge = rewards.vocab_bridge(m.dt, m.dt, m.V)
    assert bridge.index.shape == (m.V,) and bridge.index.dtype == torch.long
    assert torch.equal(bridge.index[:size], torch.arange(size))
    assert (bridge.index[size:] == -1).all() and m.V > size
    assert bridge.tokenizer_size == size and bridge.unmapped == 0 and bridge.coverage == 1.0


def _permuted_tokenizer(tokenizer, perm: list[int]):
    """The same token strings (and merges) with token id i renumbered perm[i]."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    spec["model"]["vocab"] = {tok: perm[i] for tok, i in spec["model"]["vocab"].items()}
    for added in spec["added_tokens"]:
        added["id"] = perm[added["id"]]
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(spec)),
                                   eos_token=tokenizer.eos_token, pad_token=tokenizer.pad_token)


def test_bridge_permuted_vocabulary():
    """A tokenizer with the same strings under permuted ids: index[i] is the permuted id of token i's string."""
    m = tiny()
    size = len(m.dt)
    gen = torch.Generator().manual_seed(5)
    perm = torch.randperm(size, generator=gen).tolist()
    permuted = _permuted_tokenizer(m.dt, perm)
    text = "The quick brown fox jumps over the lazy dog."
    original_ids = m.dt.encode(text, add_special_tokens=False)
    assert permuted.encode(text, add_special_tokens=False) == [perm[i] for i in original_ids]
    bridge = rewards.vocab_bridge(m.dt, permuted, m.V)
    assert bridge.index[:size].tolist() == perm
    assert (bridge.index[size:] == -1).all()
    assert bridge.unmapped == 0 and bridge.coverage == 1.0
    names, permuted_names = m.dt.convert_ids_to_tokens(list(range(size))), permuted.convert_ids_to_tokens(perm)
    assert names == permuted_names
    # the other direction inverts the permutation
    back = rewards.vocab_bridge(permuted, m.dt, size)
    assert torch.equal(back.index[torch.tensor(perm)], torch.arange(size))


def test_bridge_counts_unmapped_tokens():
    """Tiny denoiser vs tiny reward tokenizer: unmapped == independent string set difference; index by string."""
    m = tiny()
    dllm_vocab, reward_vocab = m.dt.get_vocab(), m.rt.get_vocab()
    missing = set(dllm_vocab) - set(reward_vocab)
    b = m.bridge
    assert len(missing) > 0 and b.unmapped == len(missing)
    assert b.tokenizer_size == len(m.dt) == 526
    assert b.coverage == pytest.approx(1 - len(missing) / len(m.dt))
    for token, i in dllm_vocab.items():
        assert b.index[i].item() == (-1 if token in missing else reward_vocab[token]), token
    assert (b.index[len(m.dt):] == -1).all()


def test_bridged_embeddings_gather_reward_rows():
    """bridged_embeddings rows equal E_R[index] where mapped and zero where unmapped."""
    m = tiny()
    gen = torch.Generator().manual_seed(6)
    E_R = torch.randn(len(m.rt), 16, generator=gen)  # random rows: no accidental zeros or equal rows
    E = rewards.bridged_embeddings(E_R, m.bridge)
    index = m.bridge.index
    assert E.shape == (m.V, 16) and E.dtype == E_R.dtype
    mapped = index >= 0
    assert torch.equal(E[mapped], E_R[index[mapped]])
    assert (E[~mapped] == 0).all() and (~mapped).sum() == m.bridge.unmapped + (m.V - len(m.dt))
    # the tiny models' own bridged embedding agrees
    W = m.rm.get_input_embeddings().weight
    assert torch.equal(m.E[mapped], W[index[mapped]]) and (m.E[~mapped] == 0).all()


# --------------------------------------------------------------------------- chat template


def test_chat_pieces_reassemble_the_chat_template():
    """prefix + response ids + suffix decodes to the full chat text; the suffix does not depend on the prompt."""
    m = tiny()
    rt = m.rt
    suffixes = set()
    for prompt, response in zip(PROMPTS, ["The sea is blue.", "", "one, two, three"]):
        prefix, suffix = rewards.chat_pieces(rt, prompt)
        response_ids = rt(response, add_special_tokens=False)["input_ids"]
        full = rt(rewards.chat_text(rt, prompt, response), add_special_tokens=False)["input_ids"]
        assert rt.decode(prefix + response_ids + suffix) == rt.decode(full)
        assert rt.decode(prefix).endswith("<|im_start|>assistant\n") and prompt in rt.decode(prefix)
        assert len(suffix) > 0
        suffixes.add(tuple(suffix))
    assert len(suffixes) == 1
    assert len({tuple(rewards.chat_pieces(rt, p)[0]) for p in PROMPTS}) == len(PROMPTS)


@pytest.mark.parametrize("times", [0, 2])
def test_chat_pieces_rejects_a_template_without_exactly_one_response(times):
    """A chat template that drops the assistant's text, or repeats it, cannot be split: a one-line ValueError."""
    tokenizer = models.tiny_tokenizer(models.TINY_REWARD_VOCAB)
    tokenizer.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }} "
                               + "{{ m['content'] }}" * times + "<|im_end|>{% endfor %}")
    with pytest.raises(ValueError, match=f"response {times} times, not once"):
        rewards.chat_pieces(tokenizer, PROMPTS[0])


def test_scorer_rejects_prompt_dependent_suffix():
    """EmbeddingScorer raises ValueError when R's chat template puts the prompt after the response."""
    m = tiny()
    tokenizer = models.tiny_tokenizer(models.TINY_REWARD_VOCAB)
    tokenizer.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'assistant' %}<|im_start|>assistant {{ m['content'] }}"
        "<|im_end|>{% endif %}{% endfor %}"
        "{% for m in messages %}{% if m['role'] == 'user' %}<|im_start|>user {{ m['content'] }}<|im_end|>"
        "{% endif %}{% endfor %}"
    )
    with pytest.raises(ValueError, match="suffix"):
        rewards.EmbeddingScorer(m.rm, tokenizer, PROMPTS[:2], K=2, reading=rewards.response_reading(m.V, [m.eos], m.pad),
                                cache=False)
    # one prompt: nothing to disagree with
    rewards.EmbeddingScorer(m.rm, tokenizer, PROMPTS[:1], K=2, reading=rewards.response_reading(m.V, [m.eos], m.pad),
                                cache=False)


# --------------------------------------------------------------------------- what R reads of a response


def reference_keep(row: list[int], end: set, hidden: set, newline: set) -> list[bool]:
    """Plain Python: before the first end token, not hidden, and not a leading newline among the shown tokens."""
    keep, started = [], False
    for t in row:
        if t in end:
            return keep + [False] * (len(row) - len(keep))
        shown = t not in hidden
        started = started or (shown and t not in newline)
        keep.append(shown and started)
    return keep


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), V=st.integers(3, 12), N=st.integers(1, 4), L=st.integers(1, 12),
       share=st.sampled_from([0.1, 0.3, 0.6]))
def test_response_reading_keep_matches_its_definition(seed, V, N, L, share):
    """ResponseReading.keep = before the first end, not hidden, at or after the first shown non-newline."""
    gen = torch.Generator().manual_seed(seed)
    tables = [torch.rand(V, generator=gen) < share for _ in range(3)]  # end, hidden, newline
    reading = rewards.ResponseReading(*tables)
    tokens = torch.randint(V, (N, L), generator=gen)
    sets = [set(torch.nonzero(t).flatten().tolist()) for t in tables]
    expected = torch.tensor([reference_keep(row, *sets) for row in tokens.tolist()])
    assert torch.equal(reading.keep(tokens), expected)


def test_response_reading_tables_from_the_tokenizer():
    """Hidden: the pad, unmapped tokens and the added tokens decoding drops; newline: tokens that decode to newlines."""
    m = tiny()
    reading = rewards.response_reading(m.V, [m.eos], m.pad, m.dt, m.bridge)
    assert reading.end.nonzero().flatten().tolist() == [m.eos]
    dropped = {i for i in m.dt.added_tokens_decoder if rewards.decode_text(m.dt, [i]) == ""}
    expected_hidden = dropped | {m.pad} | {i for i in range(m.V) if m.bridge.index[i] < 0}
    assert set(reading.hidden.nonzero().flatten().tolist()) == expected_hidden
    assert {m.dt.convert_tokens_to_ids(t) for t in ("<|im_start|>", "<|im_end|>", "<|mask|>")} <= expected_hidden
    lines = [i for i in range(len(m.dt)) if set(m.dt.decode([i])) == {"\n"}]
    assert reading.newline.nonzero().flatten().tolist() == lines
