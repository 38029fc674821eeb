"""EntRGi: entropy-aware reward guidance on the logits of a masked diffusion LM.

Implements the guidance step of Tejaswi et al., "EntRGi: Entropy-aware Reward Guidance
for diffusion language models" (arXiv 2602.05000), SPEC §1-§2. Pure tensor functions:
models come in as callables, randomness as an explicit `torch.Generator`.

At one denoising step the denoiser gives logits phi at the masked positions. A reward
model R reads input embeddings, so phi is turned into embeddings through its embedding
matrix E (rows in the denoiser's vocabulary) and nudged by gradient ascent on R:

    q       = softmax(phi)                                  model distribution
    H(q)    = -sum_i q_i log q_i                            entropy in nats, 0 <= H <= log V
    w       = H(q) / log V                                  entropy weight in [0, 1], no gradient
    soft    = softmax(phi / tau) @ E                        continuous relaxation  (e~)
    x       ~ Categorical(filter(softmax(phi / tau)))       top-p / top-k kept, renormalised
    hard    = E[x]                                          real token embedding   (e-)
    e_hat   = soft + sg(w * (hard - soft))                  EntRGi input            (e^)

sg is stop-gradient (`.detach()`). The forward value of e_hat is (1 - w) * soft + w * hard;
its gradient with respect to phi is always that of the soft path. The baselines are the
same formula with w = 1 ("aps", the straight-through estimator: R reads the hard token)
and w = 0 ("expectation", the continuous relaxation: R reads soft).

`guide` runs `steps` (M) steps of a fresh Adam(lr = eta) on phi maximising the summed
reward, re-drawing x at every step, and returns the optimised logits.

Shapes:
    B  rows (prompts x trajectories)     L  positions      V  vocabulary      d  embedding
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from rng import CounterRNG

METHODS = ("entrgi", "aps", "expectation")

RewardFn = Callable[[Tensor, Tensor], Tensor]
"""reward_fn(embeds (B, L, d), tokens (B, L) long) -> rewards (B,), differentiable in embeds."""


def entropy(logits: Tensor) -> Tensor:
    """H(softmax(logits)) in nats over the last dim, computed in float32.

    Entries of -inf have probability 0 and contribute 0 (0 * log 0 = 0), so rows with
    filtered-out tokens stay finite. (..., V) -> (...).
    """
    q = torch.softmax(logits.float(), dim=-1)  # (..., V)
    return -torch.xlogy(q, q).sum(-1)  # (...) xlogy(q, q) = q log q, and 0 where q = 0


def entropy_weight(logits: Tensor) -> Tensor:
    """w = H(softmax(logits)) / log V in [0, 1], with no gradient. (..., V) -> (...).

    Note: no temperature (SPEC §2, step 3). w = 0 for a one-hot distribution, 1 for uniform.
    """
    vocab_size = logits.shape[-1]
    weight = entropy(logits.detach()) / math.log(vocab_size)  # (...)
    return weight.clamp(0.0, 1.0)  # rounding can leave H a hair outside [0, log V]


def tempered_softmax(logits: Tensor, temperature: float) -> Tensor:
    """softmax(phi / tau) in float32, computed as softmax((phi - sg(max phi)) / tau). (..., V) -> (..., V).

    The same distribution (softmax is shift invariant, and the max carries no gradient), but
    finite for every tau > 0: the largest scaled logit is 0 and the others are <= 0, so a tiny
    tau gives the argmax limit where phi / tau would overflow to inf - inf = NaN.
    """
    logits = logits.float()  # (..., V)
    shifted = logits - logits.amax(-1, keepdim=True).detach()  # (..., V) <= 0, the max at 0
    return torch.softmax(shifted / temperature, dim=-1)  # (..., V)


def soft_embedding(logits: Tensor, embed_matrix: Tensor, temperature: float = 1.0) -> tuple[Tensor, Tensor]:
    """The continuous relaxation soft = softmax(logits / tau) @ E, and q_tau = softmax(logits / tau).

    logits (..., V), embed_matrix (V, d) -> soft (..., d) in embed_matrix's dtype, differentiable
    in logits; q_tau (..., V) float32, detached (guide draws its hard tokens from it).
    Activation-checkpointed: autograd keeps only the logits for the backward and recomputes
    q_tau there, so no (..., V) tensor waits through the reward model's forward and backward.
    """

    def relax(logits: Tensor) -> tuple[Tensor, Tensor]:
        q_tau = tempered_softmax(logits, temperature)  # (..., V)
        return q_tau.to(embed_matrix.dtype) @ embed_matrix, q_tau  # (..., d), (..., V)

    soft, q_tau = checkpoint(relax, logits, use_reentrant=False, preserve_rng_state=False)
    return soft, q_tau.detach()


def reward_inputs(
    logits: Tensor,
    embed_matrix: Tensor,
    hard_tokens: Tensor,
    method: str,
    temperature: float = 1.0,
    soft: Tensor | None = None,
) -> Tensor:
    """The reward model's input embeddings at the guided positions.

        soft  = softmax(logits / tau) @ E          (..., d), differentiable in logits
        hard  = E[hard_tokens]                      (..., d)
        e_hat = soft + sg(w * (hard - soft))        w = entropy_weight(logits) | 1 | 0

    for method "entrgi" | "aps" | "expectation". logits (..., V), embed_matrix (V, d),
    hard_tokens (...) long. `soft` (..., d), if given, is soft_embedding(logits, E, tau)[0]
    already computed by the caller. Returns (..., d) in embed_matrix's dtype.
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
    weight = entropy_weight(logits).unsqueeze(-1).to(soft.dtype)  # (..., 1)
    return soft + (weight * (hard - soft)).detach()


def filter_probs(probs: Tensor, top_p: float | None = None, top_k: int | None = None) -> Tensor:
    """Zero every probability outside the top-p nucleus, then outside the top-k. (..., V) -> (..., V) float32.

    Dream's order: top-p on the full distribution first, then top-k. The result is not
    renormalised (`sample_categorical` does not need it). Top-p keeps token i iff the mass
    of the tokens strictly more probable than i is < top_p * total: the smallest set of most
    probable tokens whose mass reaches top_p (the most probable token is always kept).
    Top-k keeps the tokens >= the k-th largest. Both are thresholds on the probability, so
    tied tokens are kept or dropped together. top_p = 1 or None and top_k = None are no-ops.

    With the probabilities in ascending order s and their cumulative sums C, the mass
    strictly above s_j is C_V - C_last (C_last at the last entry equal to s_j), so s_j is
    kept iff C_last > (1 - top_p) C_V. That holds from the first j with C_j > (1 - top_p) C_V
    on, and for the entries equal to it: s_j there is the threshold, found by binary search
    on C. One sort and one cumulative sum; no second softmax, no scatter back.
    """
    probs = probs.float()  # (..., V)
    V = probs.shape[-1]
    use_p, use_k = top_p is not None and top_p < 1.0, top_k is not None and top_k < V
    if not (use_p or use_k):
        return probs
    # Probabilities are >= 0, and non-negative floats order like their int32 bit patterns:
    # sorting the bits gives the same order, and integer sorts are faster on CPU.
    ascending = torch.sort(probs.view(torch.int32), dim=-1).values.view(torch.float32)  # (..., V)
    threshold = torch.zeros_like(ascending[..., :1])  # (..., 1) keep everything
    if use_p:
        cdf = ascending.cumsum(-1)  # (..., V)
        first = torch.searchsorted(cdf, cdf[..., -1:] * (1.0 - top_p), right=True).clamp(max=V - 1)  # (..., 1)
        threshold = ascending.gather(-1, first)  # (..., 1) smallest kept probability
    if use_k:
        threshold = torch.maximum(threshold, ascending[..., V - top_k : V - top_k + 1])  # (..., 1)
    return torch.where(probs >= threshold, probs, 0.0)  # (..., V)


def sample_categorical(probs: Tensor, generator: "torch.Generator | CounterRNG | None" = None) -> Tensor:
    """One draw per row from the categorical distribution `probs` (need not sum to 1). (..., V) -> (...) long.

    Inverse CDF: with u ~ U[0, 1) and C the cumulative sums of probs, the draw is the first
    i with C_i > u * C_V, so i is picked with probability probs_i / C_V (never one of
    probability 0). One uniform per row instead of one random number per vocabulary entry
    (a Gumbel/exponential race), and any leading shape (unlike `torch.multinomial`).
    """
    cdf = probs.float().cumsum(-1)  # (..., V)
    u = uniform(cdf.shape[:-1] + (1,), generator, cdf.device)  # (..., 1)
    index = torch.searchsorted(cdf, u * cdf[..., -1:], right=True)  # (..., 1)
    return index.clamp(max=cdf.shape[-1] - 1).squeeze(-1)  # (...)


def uniform(shape: tuple[int, ...], generator: "torch.Generator | CounterRNG | None",
            device: torch.device | str | None = None) -> Tensor:
    """U[0, 1) float32 of `shape`: torch.rand for a torch.Generator (or None), per-prompt streams for a CounterRNG."""
    if isinstance(generator, CounterRNG):
        return generator.uniform(tuple(shape), device)
    return torch.rand(shape, generator=generator, device=device)


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
    generator: torch.Generator | None = None,
    first_probs: Tensor | None = None,
) -> Tensor:
    """Reward-guided logits: `steps` Adam steps of gradient ascent on the summed reward.

    SPEC §2, guidance. logits (B, L, V), masked (B, L) bool, tokens (B, L) long,
    embed_matrix (V, d). At every step, with phi the current logits:
        x      ~ filter(softmax(phi / tau)), renormalised       re-drawn each step
        embeds = where(masked, reward_inputs(phi, E, x, method, tau), E[tokens])
        tokens' = where(masked, argmax phi, tokens)             for R's EOS cut-off
        loss   = -sum_b reward_fn(embeds, tokens')_b ;  Adam step on phi
    `first_probs` (B, L, V), if given, is the first step's draw distribution
    filter(softmax(logits / tau)) as filter_probs returns it, already computed by the caller:
    the first step draws from it instead of filtering the same logits again.
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
            soft, q_tau = soft_embedding(phi, embed_matrix, temperature)  # (B, L, d), (B, L, V) the draw's q_tau
            with torch.no_grad():
                if method == "expectation":
                    hard_tokens = tokens  # unused by the relaxation: no draw needed
                else:
                    q_filtered = first_probs if step == 0 and first_probs is not None else filter_probs(
                        q_tau, top_p, top_k)  # (B, L, V)
                    hard_tokens = sample_categorical(q_filtered, generator)  # (B, L)
                    del q_filtered
                del q_tau  # free (B, L, V) before the reward pass
                guided_tokens = torch.where(masked, phi.argmax(-1), tokens)  # (B, L)
            guided_embeds = reward_inputs(phi, embed_matrix, hard_tokens, method, temperature, soft)  # (B, L, d)
            embeds = torch.where(is_masked, guided_embeds, fixed_embeds)  # (B, L, d)
            loss = -reward_fn(embeds, guided_tokens).sum()
            (phi.grad,) = torch.autograd.grad(loss, [phi])  # d loss / d phi only: R's weights get no .grad
            optimizer.step()
            phi.grad = None  # free (B, L, V) before the next step's reward pass
    return phi.detach()
