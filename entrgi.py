"""EntRGi: entropy-aware reward guidance on the logits of a masked diffusion LM.

Implements the guidance step of Tejaswi et al., "EntRGi: Entropy-aware Reward Guidance
for diffusion language models" (arXiv 2602.05000), as the authors' released code runs it
(a fresh Adam per denoising step, the hard token re-drawn at every Adam step). Pure tensor
functions: models come in as callables, randomness as an explicit `torch.Generator` (or
an `rng.UniformSource`: `rng.CounterRNG`, one stream per prompt; `rng.GivenUniforms`).
spec.py is the plain reference of the same math; this module is the fast path (see "Where
the speed comes from" below), held equal to it by tests/test_spec.py.

At one denoising step the denoiser gives logits phi at the masked positions. A reward
model R reads input embeddings, so phi is turned into embeddings through its embedding
matrix E (rows in the denoiser's vocabulary) and nudged by gradient ascent on R:

    w       = H(softmax(phi)) / log V                       entropy weight in [0, 1]: no temperature, no gradient
              H(pi) = -sum_i pi_i log pi_i                  entropy in nats, 0 <= H <= log V
    p       = softmax(phi / tau)                            tempered distribution
    soft    = p @ E                                         continuous relaxation  (e~)
    x       ~ filter(p)                                     inverse CDF on the kept weights (not renormalised:
                                                            the draw divides by their total itself)
    filter: p_j kept iff sum_{i : p_i > p_j} p_i <= top_p * sum_i p_i, then iff p_j >= the k-th largest; else 0
    hard    = E[x]                                          real token embedding   (e-)
    e_hat   = soft + sg(w * (hard - soft))                  EntRGi input            (e^)

sg is stop-gradient (`.detach()`). The forward value of e_hat is (1 - w) * soft + w * hard;
its gradient with respect to phi is always that of the soft path. The baselines are the
same formula with w = 1 ("aps", the straight-through estimator: R reads the hard token)
and w = 0 ("expectation", the continuous relaxation: R reads soft).

`guide` runs `steps` (M) steps of a fresh Adam(lr = eta) on phi maximising the summed
reward, re-drawing x at every step, and returns the optimised logits.

Where the speed comes from (the fast path's tricks, all here; spec.py has none of them):
    tempered_softmax   softmax written over its own shifted copy (one (..., V) block, not two)
    soft_embedding     activation checkpoint: p is recomputed in the backward, not kept through R
    filter_probs       top-p by radix select on the float bits at V >= SORT_BELOW (no sort),
                       the kept set written with a sign-bit shift into the output's own memory
    sample_categorical the cumulative sum may overwrite the caller's scratch block
    guide              `_hard_tokens` reuses the caller's first draw weights and frees each (..., V)
                       block before the reward pass; torch's fused Adam (one kernel per step)

Shapes:
    B  rows (prompts x trajectories)     L  positions      V  vocabulary      d  embedding
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from rng import UniformSource

METHODS = ("entrgi", "aps", "expectation")

RewardFn = Callable[[Tensor, Tensor], Tensor]
"""reward_fn(embeds (B, L, d), tokens (B, L) long) -> rewards (B,), differentiable in embeds."""


def entropy(logits: Tensor) -> Tensor:
    """H(softmax(logits)) in nats over the last dim, computed in float32.

    Entries of -inf have probability 0 and contribute 0 (0 * log 0 = 0), so rows with
    filtered-out tokens stay finite. (..., V) -> (...).
    """
    q = torch.softmax(logits.float(), dim=-1)  # (..., V)
    if not q.requires_grad:  # q is ours: q log q in its memory, no second (..., V) block (same values)
        return -torch.xlogy(q, q, out=q).sum(-1)  # (...)
    return -torch.xlogy(q, q).sum(-1)  # (...) xlogy(q, q) = q log q, and 0 where q = 0


def entropy_weight(logits: Tensor) -> Tensor:
    """w = H(softmax(logits)) / log V in [0, 1], with no gradient. (..., V) -> (...).

    Note: no temperature (as in the authors' code: the weight reads softmax(phi), the
    relaxation softmax(phi / tau)). w = 0 for a one-hot distribution, 1 for uniform.
    """
    vocab_size = logits.shape[-1]
    weight = entropy(logits.detach()) / math.log(vocab_size)  # (...)
    return weight.clamp(0.0, 1.0)  # rounding can leave H a hair outside [0, log V]


def tempered_softmax(logits: Tensor, temperature: float) -> Tensor:
    """softmax(phi / tau) in float32, computed as softmax((phi - sg(max phi)) / tau). (..., V) -> (..., V).

    The same distribution (softmax is shift invariant, and the max carries no gradient), but
    finite for every tau > 0: the largest scaled logit is 0 and the others are <= 0, so a tiny
    tau gives the argmax limit where phi / tau would overflow to inf - inf = NaN. Without
    autograd (no grad mode, or logits without grad) the softmax overwrites the shifted copy:
    one fresh (..., V) block instead of two, the same values.
    """
    logits = logits.float()  # (..., V)
    shifted = torch.sub(logits, logits.amax(-1, keepdim=True).detach())  # (..., V) <= 0, the max at 0
    shifted.div_(temperature)  # (..., V) in place: one pass fewer
    if torch.is_grad_enabled() and logits.requires_grad:
        return torch.softmax(shifted, dim=-1)  # (..., V) autograd keeps this output for the backward
    return torch.softmax(shifted, dim=-1, out=shifted)  # (..., V)


def soft_embedding(logits: Tensor, embed_matrix: Tensor, temperature: float = 1.0) -> tuple[Tensor, Tensor]:
    """The continuous relaxation soft = p @ E, and p = softmax(logits / tau).

    logits (..., V), embed_matrix (V, d) -> soft (..., d) in embed_matrix's dtype, differentiable
    in logits; p (..., V) float32, detached (guide draws its hard tokens from filter(p)).
    Activation-checkpointed: autograd keeps only the logits for the backward and recomputes
    p there, so no (..., V) tensor waits through the reward model's forward and backward.
    """

    def relax(logits: Tensor) -> tuple[Tensor, Tensor]:
        p = tempered_softmax(logits, temperature)  # (..., V)
        return p.to(embed_matrix.dtype) @ embed_matrix, p  # (..., d), (..., V)

    soft, p = checkpoint(relax, logits, use_reentrant=False, preserve_rng_state=False)
    return soft, p.detach()


def reward_inputs(
    logits: Tensor,
    embed_matrix: Tensor,
    hard_tokens: Tensor,
    method: str,
    temperature: float = 1.0,
    soft: Tensor | None = None,
    weight: Tensor | None = None,
) -> Tensor:
    """The reward model's input embeddings at the guided positions.

        soft  = softmax(logits / tau) @ E          (..., d), differentiable in logits
        hard  = E[hard_tokens]                      (..., d)
        e_hat = soft + sg(w * (hard - soft))        w = entropy_weight(logits) | 1 | 0

    for method "entrgi" | "aps" | "expectation". logits (..., V), embed_matrix (V, d),
    hard_tokens (...) long. `soft` (..., d), if given, is soft_embedding(logits, E, tau)[0]
    already computed by the caller; `weight` (...), if given, is entropy_weight(logits) likewise.
    Returns (..., d) in embed_matrix's dtype.
    """
    if method not in METHODS:
        raise ValueError(f"unknown guidance method {method!r}; expected one of {METHODS}")
    if soft is None:
        soft, _ = soft_embedding(logits, embed_matrix, temperature)  # (..., d)
    if method == "expectation":
        return soft
    hard = embed_matrix[hard_tokens]  # (..., d)
    if method == "aps":
        return soft + (hard - soft).detach()
    if weight is None:
        weight = entropy_weight(logits)  # (...)
    weight = weight.unsqueeze(-1).to(soft.dtype)  # (..., 1)
    return soft + (weight * (hard - soft)).detach()


RADIX_DIGITS = (11, 10, 10)
"""Bits 30-20, 19-10 and 9-0 of a non-negative float32, read from the top; bit 31 (the sign) is 0."""
SORT_BELOW = 2048  # vocabularies smaller than this: a sort beats 3 passes over 2^11-bin histograms per row


def filter_probs(probs: Tensor, top_p: float | None = None, top_k: int | None = None) -> Tensor:
    """Zero every probability outside the top-p nucleus, then outside the top-k. (..., V) -> (..., V) float32.

    Dream's order: top-p on the full distribution first, then top-k. The result is not
    renormalised (`sample_categorical` does not need it). With Z = sum_i p_i the row's total:

        top-p keeps j  iff  S(p_j) = sum_{i : p_i > p_j} p_i  <=  top_p * Z
        top-k keeps j  iff  p_j >= the k-th largest p (counted with multiplicity)

    The token whose mass crosses top_p is kept (as in Dream's sampler and the authors' code:
    the mass ranked before a kept token is <= top_p), and so is the most probable token
    (S = 0). Both rules are thresholds on the probability, so tied tokens are kept or dropped
    together; Dream and the authors instead cut inside a tie by sort order, which makes their
    nucleus depend on how the sort orders equal values. top_p = 1 or None and top_k = None or
    >= V are no-ops. probs must be finite and >= 0 (+0.0, as softmax gives); any scale.

    Top-p in O(V) per row, without a sort (at V >= SORT_BELOW; a sort below, where it is faster
    than the histograms): the threshold v* = min{p_j : S(p_j) <= top_p Z} is
    found by radix select on the float bits (non-negative float32 orders like its int32 bit
    pattern). Each of three passes (RADIX_DIGITS) sums the row's mass into 2^b bins by the next
    b bits, with one bin below and one above the current candidate range, and keeps the lowest
    bin whose mass above it is <= top_p * Z; after the last pass a bin is one value: v*.
    Rounding rule (both paths, `first_kept`): with C the cumulative masses in ascending order
    of probability, accumulated in float64, and Z = C_last, the threshold is the smallest p_j
    with fl64(Z - C_j) <= fl64(top_p * Z). The sorted path sums the float32 probabilities
    in float64; the radix path sums each bin in float32 first (the masses below and above its
    candidate range carried in float64 from pass to pass). So the two paths (and spec.py)
    give the same set whenever those sums are exact (e.g. dyadic probabilities, exact
    boundaries included: `test_filter_exact_boundary_dyadic`); otherwise they differ only for
    tokens whose S lies within float32 summation rounding of top_p * Z, as a sorted float32
    cumulative sum (Dream's, the authors') does.
    """
    probs = probs.float()  # (..., V)
    V = probs.shape[-1]
    use_p, use_k = top_p is not None and top_p < 1.0, top_k is not None and top_k < V
    if not (use_p or use_k):
        return probs
    rows = probs.reshape(-1, V).contiguous()  # (R, V)
    out = torch.empty_like(rows)  # (R, V) the result; its memory is the passes' int32 scratch first
    threshold = torch.zeros_like(rows[:, :1])  # (R, 1) keep everything
    if use_p:
        top_p_threshold = _sorted_top_p_threshold if V < SORT_BELOW else _top_p_threshold
        threshold = top_p_threshold(rows, top_p, out.view(torch.int32))  # (R, 1)
    if use_k:
        kth = torch.topk(rows, top_k, dim=-1, sorted=False).values.amin(-1, keepdim=True)  # (R, 1)
        threshold = torch.maximum(threshold, kth)  # (R, 1)
    # where(p >= v*, p, 0) on the bits, in out's own memory (no (R, V) bool block to fault in):
    # (bits(v*) - 1 - bits(p)) >> 31 is all ones iff p >= v* (no overflow: both in [0, 2^31)), else 0.
    bits, kept = rows.view(torch.int32), out.view(torch.int32)  # (R, V), (R, V)
    torch.sub(threshold.view(torch.int32) - 1, bits, out=kept)  # (R, V) < 0 iff kept
    kept.bitwise_right_shift_(31).bitwise_and_(bits)  # (R, V) bits(p) where kept, +0.0 elsewhere
    return out.view(probs.shape)  # (..., V)


def _sorted_top_p_threshold(rows: Tensor, top_p: float, scratch: Tensor | None = None) -> Tensor:
    """v* as `_top_p_threshold` defines it, by one ascending sort: O(V log V), for small V. (R, V) -> (R, 1).

    With s the ascending probabilities and C their cumulative sums (float64), the mass strictly
    above s_j's tie group is Z - C_last(group), so v* = s_j at the first j with Z - C_j <=
    top_p Z (`first_kept`; the rest of j's tie group passes too, having C at least as large). The int32 bit
    patterns sort like the probabilities and faster. `scratch` is unused (the same signature).
    """
    ascending = torch.sort(rows.view(torch.int32), dim=-1).values.view(torch.float32)  # (R, V)
    cdf = ascending.cumsum(-1, dtype=torch.float64)  # (R, V) C, float64 as the radix path's
    first = first_kept(cdf, top_p)  # (R, 1)
    return ascending.gather(-1, first)  # (R, 1)


def first_kept(cdf: Tensor, top_p: float) -> Tensor:
    """Top-p's one rounding rule: the first j with fl64(Z - C_j) <= fl64(top_p * Z). (R, J) float64 -> (R, 1) long.

    cdf: C, the float64 cumulative masses in ascending order of probability (Z = C_last);
    Z - C_j is the mass above entry j. Both the sorted path and every radix pass decide with
    this one comparison, in float64, top_p a Python float (float64). (The radix path's C sums
    each bin in float32 -- values sharing their top bits -- and the bins in float64, the masses
    below and above its candidate range carried in float64 from the pass before.) The count of entries
    failing it is the first passing index (Z - C is non-increasing: C is).
    """
    total = cdf[:, -1:]  # (R, 1) Z
    return ((total - cdf) > top_p * total).sum(-1, keepdim=True)  # (R, 1)


def _top_p_threshold(rows: Tensor, top_p: float, scratch: Tensor) -> Tensor:
    """v* = the smallest p_j with sum_{i : p_i > p_j} p_i <= top_p * sum_i p_i, per row. (R, V) -> (R, 1).

    Radix select over RADIX_DIGITS. `prefix` holds the bits of v* found so far. A pass with
    b-bit digits and `shift` bits below them maps each entry's bits x to a bin
        0                     if x is below the candidate range (prefix's bits, then anything)
        1 + digit(x)          if x is inside it (digit = the next b bits)
        2^b + 1               if x is above it
    and sums the entries' mass per bin (index_add_ into one (R * (2^b + 2),) vector: int32
    indices, no int64 copy of the block). With C the cumulative mass over the bins in
    ascending order (float64) and Z = C_last, the mass strictly above bin j is Z - C_j, so the
    lowest bin that can hold a kept token is the first j with Z - C_j <= top_p * Z
    (`first_kept`, the sorted path's rule). Bins below it hold only dropped tokens and bins above it
    only kept ones (the bin right below it has mass above > top_p Z, so the chosen bin is not
    empty). The first pass has no range yet: every entry falls inside. `scratch` (R, V)
    int32 is overwritten.
    """
    R, V = rows.shape
    bits = rows.view(torch.int32)  # (R, V) bit patterns, ordered like the probabilities
    values = rows.view(-1)  # (R * V,)
    row = torch.arange(R, dtype=torch.int32, device=rows.device).unsqueeze(-1)  # (R, 1)
    prefix = torch.zeros(R, 1, dtype=torch.int32, device=rows.device)  # (R, 1)
    known = 0  # bits of v* found so far, from bit 30 down
    below = above = torch.zeros(R, 1, dtype=torch.float64, device=rows.device)  # (R, 1) masses outside the range
    for width in RADIX_DIGITS:
        shift = 31 - known - width
        bins = (1 << width) + 2
        if known == 0:
            torch.bitwise_right_shift(bits, shift, out=scratch)  # (R, V) digit, all inside
            scratch.add_(row * bins + 1)  # (R, V) flat bin index
        else:
            low = prefix << (31 - known)  # (R, 1) the smallest bit pattern in the range
            step = 1 << shift
            torch.sub(bits, low - step, out=scratch)  # (R, V) x - low + step (finite floats: no int32 overflow)
            scratch.clamp_(0, (bins - 1) * step)  # (R, V) in [0, (2^b + 1) * step]: scalar bounds, 3x a tensor clamp
            if shift:
                scratch.bitwise_right_shift_(shift)  # (R, V) in [0, 2^b + 1]
            scratch.add_(row * bins)  # (R, V) flat bin index
        mass = torch.zeros(R * bins, device=rows.device).index_add_(0, scratch.view(-1), values)  # (R * bins,)
        mass = mass.view(R, bins).double()  # (R, bins) float64
        if known:  # the masses below and above the range: the previous pass's float64 sums, not re-summed in float32
            mass[:, :1], mass[:, -1:] = below, above
        cdf = mass.cumsum(-1)  # (R, bins) C, ascending bins, float64
        first = first_kept(cdf, top_p)  # (R, 1) first j with Z - C_j <= top_p Z (float64)
        chosen = first.clamp(1, bins - 2)  # (R, 1) the bin holding v* (clamped: rounding across passes)
        below, above = cdf.gather(-1, chosen - 1), cdf[:, -1:] - cdf.gather(-1, chosen)  # (R, 1), (R, 1) float64
        digit = chosen.to(torch.int32) - 1  # (R, 1)
        prefix = (prefix << width) + digit  # (R, 1)
        known += width
    return prefix.view(torch.float32)  # (R, 1) v*


def sample_categorical(probs: Tensor, generator: "torch.Generator | UniformSource | None" = None,
                       overwrite: bool = False) -> Tensor:
    """One draw per row from the categorical distribution `probs` (need not sum to 1). (..., V) -> (...) long.

    Inverse CDF: with u ~ U[0, 1) and C_i = fl32(probs_0 + ... + probs_i summed in float64) (the
    rule, on every device: a float32 scan, as CUDA's cumsum of float32, drops mass past 2^24 ulps),
    the draw is the first i with C_i > fl32(u * C_V), so i is picked with probability probs_i / C_V (never one of
    probability 0). One uniform per row instead of one random number per vocabulary entry
    (a Gumbel/exponential race), and any leading shape (unlike `torch.multinomial`).
    overwrite=True: a float32 `probs` is overwritten by C (the caller's scratch: no fresh
    (..., V) block, the same draw).
    """
    probs = probs.float()  # (..., V)
    running = probs.cumsum(-1, dtype=torch.float64)  # (..., V) the draw's rule: float64 running sums (any device)
    cdf = probs.copy_(running) if overwrite else running.float()  # (..., V) C, each sum rounded to float32
    del running
    u = uniform(cdf.shape[:-1], generator, cdf.device).unsqueeze(-1)  # (..., 1) one uniform per row: draw shape (...)
    index = torch.searchsorted(cdf, u * cdf[..., -1:], right=True)  # (..., 1)
    return index.clamp(max=cdf.shape[-1] - 1).squeeze(-1)  # (...)


def uniform(shape: tuple[int, ...], generator: "torch.Generator | UniformSource | None",
            device: torch.device | str | None = None) -> Tensor:
    """U[0, 1) float32 of `shape`: THE one place where every random number of the project is drawn.

    A torch.Generator (or None): torch.rand. Any other object is a `rng.UniformSource`: its
    `uniform(shape, device)` supplies the numbers -- `rng.CounterRNG` (per-prompt streams, run.py)
    or `rng.GivenUniforms` (numbers given in advance: tests and ports). Passing such an object as
    the `generator` of `guide` / `sampler.generate` is the injection point; docs/draws.md lists
    the order and shapes of the draws one step and one generation make.
    """
    if generator is None or isinstance(generator, torch.Generator):
        return torch.rand(shape, generator=generator, device=device)
    return generator.uniform(tuple(shape), device)


def argmax_lowest(values: Tensor) -> Tensor:
    """Index of the largest entry over the last dim; a tie takes the LOWEST index. (..., V) -> (...) long.

    The exactness rule for every argmax of the project (greedy draws; R's end-of-response
    token under guidance). torch.argmax specifies it ("If there are multiple maximal values
    then the indices of the first maximal value are returned", torch.argmax's documentation,
    CPU and CUDA alike); -0.0 and +0.0 are equal there; a NaN counts as the largest (the first
    NaN is returned), which the sampler then reports as a broken distribution.
    """
    return values.argmax(-1)


def _hard_tokens(p: Tensor, first_probs: Tensor | None, top_p: float | None, top_k: int | None,
                 generator) -> Tensor:
    """x ~ filter(p), one uniform per row (fast path: no (..., V) block beyond the one filter_probs returns).

    first_probs, if given (guide's first step), is filter(p) already computed by the caller: drawn from
    as it is. A fresh filter_probs block is ours, so the draw's cumulative sum overwrites it.
    (..., V) -> (...) long.
    """
    weights = first_probs if first_probs is not None else filter_probs(p, top_p, top_k)  # (..., V)
    own = weights is not first_probs and weights is not p  # a fresh block (filter_probs returns p itself as a no-op)
    return sample_categorical(weights, generator, overwrite=own)  # (...)


def guide(
    logits: Tensor,
    masked: Tensor,
    tokens: Tensor,
    embed_matrix: Tensor,
    reward_fn: RewardFn,
    *,
    method: str,
    steps: int,
    lr: float,
    temperature: float,
    top_p: float | None = 0.95,
    top_k: int | None = None,
    generator: "torch.Generator | UniformSource | None" = None,
    first_probs: Tensor | None = None,
    first_weight: Tensor | None = None,
) -> Tensor:
    """Reward-guided logits: `steps` Adam steps of gradient ascent on the summed reward.

    The guidance of the paper's algorithm, as the authors' code runs it. logits (B, L, V),
    masked (B, L) bool, tokens (B, L) long, embed_matrix (V, d). At every step, with phi the
    current logits:
        x      ~ filter(softmax(phi / tau))                    re-drawn each step (inverse CDF, one uniform per row)
        embeds = where(masked, reward_inputs(phi, E, x, method, tau), E[tokens])
        tokens' = where(masked, argmax phi, tokens)             for R's EOS cut-off
        loss   = -sum_b reward_fn(embeds, tokens')_b ;  Adam step on phi
    `first_probs` (B, L, V), if given, is the first step's draw weights
    filter(softmax(logits / tau)) as filter_probs returns them, already computed by the caller:
    the first step draws from it instead of filtering the same logits again. `first_weight`
    (B, L), if given, is entropy_weight(logits), likewise computed by the caller (for its log).
    The Adam optimiser is created here, fresh, with learning rate `lr`. Positions where
    `masked` is False carry no gradient and come back unchanged, as do all logits when
    steps = 0 (the generator is then not touched and the input itself is returned).
    Otherwise returns float32 (B, L, V).
    """
    if method not in METHODS:
        raise ValueError(f"unknown guidance method {method!r}; expected one of {METHODS}")
    if temperature <= 0:
        raise ValueError(f"guidance needs a temperature > 0, got {temperature}")
    if steps == 0:
        return logits
    phi = logits.detach().to(torch.float32, copy=True).requires_grad_(True)  # (B, L, V)
    optimizer = torch.optim.Adam([phi], lr=lr, fused=True)  # one kernel per step, on CPU and CUDA
    embed_matrix = embed_matrix.detach()  # guidance moves phi only
    fixed_embeds = embed_matrix[tokens]  # (B, L, d) real tokens at unmasked positions
    is_masked = masked.unsqueeze(-1)  # (B, L, 1)
    with torch.enable_grad():
        for step in range(steps):
            soft, p = soft_embedding(phi, embed_matrix, temperature)  # (B, L, d) e~, (B, L, V) p = softmax(phi / tau)
            with torch.no_grad():
                hard_tokens = tokens if method == "expectation" else _hard_tokens(
                    p, first_probs if step == 0 else None, top_p, top_k, generator)  # (B, L) x ~ filter(p)
                del p  # free (B, L, V) before the reward pass
                read_tokens = torch.where(masked, argmax_lowest(phi), tokens)  # (B, L) for R's end-of-response cut-off
            weight = first_weight if step == 0 else None  # entropy_weight(logits), if the caller has it
            e_hat = reward_inputs(phi, embed_matrix, hard_tokens, method, temperature, soft, weight)  # (B, L, d)
            loss = -reward_fn(torch.where(is_masked, e_hat, fixed_embeds), read_tokens).sum()
            (phi.grad,) = torch.autograd.grad(loss, [phi])  # d loss / d phi only: R's weights get no .grad
            optimizer.step()
            phi.grad = None  # free (B, L, V) before the next step's reward pass
    return phi.detach()
