"""The plain reference of EntRGi guidance and Dream's unmasking: the algorithm, top to bottom, no tricks.

What `entrgi.py` and `sampler.py` compute (their fast path: radix select, scratch buffers,
checkpointing, fused Adam), written as plain tensor code for a reader or a port to follow.
tests/test_spec.py holds the fast path equal to this module: tokens bit for bit, floats within
stated tolerances. One denoising step, on the block of n masked positions of N rows:

    w     = H(softmax(phi)) / log V                    entropy weight in [0, 1]; no temperature, no gradient
    p     = softmax(phi / tau)                         tempered distribution (computed from phi - max phi);
                                                       tau = 0 (greedy, bon only): p = softmax(phi)
    soft  = p @ E                                      e~, the continuous relaxation (gradient flows)
    x     = draw(filter(p), u)                         a hard token, from one uniform u per row
    hard  = E[x]                                       e-, a real token's embedding
    e_hat = soft + sg(w * (hard - soft))               e^: EntRGi (w = 1: aps, w = 0: expectation)
    guide: M steps of Adam on the reward R(e_hat) -> phi_g (guided logits)
    q_g   = filter(softmax(phi_g / tau)); x ~ q_g;  c = confidence(r, x);  fill the n_fill largest c

filter (top-p then top-k, one ascending sort s of the row p with total Z = sum p, C_j = s_0 + ...
+ s_j in float64): top-p's threshold v_p = s_j at the first j with fl64(Z - C_j) <= fl64(top_p * Z)
(Z - C_j = the mass above s_j); top-k's v_k = s_{V-k}; p_j is kept iff p_j >= max(v_p, v_k),
else set to 0. Not renormalised. Tied values are kept or dropped together.

draw(q, u): the first j with C_j > fl32(u * C_last), C_j = fl32(q_0 + ... + q_j summed in float64), in index
order. Schedule: t_i = Dream's torch.linspace(1, eps, T + 1) in float32 (`timesteps`);
n_fill(i) = int(fl32(n * fl32(1 - fl32(t_{i+1} / t_i)))), every remaining mask at i = T - 1.
Ties: the fill takes equal confidences lowest position first; argmax takes the lowest id.

Notation (one meaning each):
    phi    logits at the block's positions, the mask token's at -inf      (N, n, V)
    phi_g  guided logits, phi after M Adam steps (phi_g = phi unguided)
    tau    temperature;  p = softmax(phi / tau): tempered, unfiltered, unguided
    q      filter(p): the unguided draw weights (zeros outside the nucleus, not renormalised)
    q_g    filter(softmax(phi_g / tau)): the guided draw weights, x is drawn from them
    r      the distribution a confidence reads, summing to 1: p, q / sum q or q_g / sum q_g
    w      entropy weight;  E the reward model's embedding rows in the denoiser's vocabulary (V, d)
    soft, hard, e_hat   e~, e-, e^ above;  u  a uniform in [0, 1);  c  a confidence
    Z, C, v_p, v_k      filter's total mass, cumulative masses, thresholds
    T, M, t, s          denoising steps, Adam steps, timesteps t = t_i, s = t_{i+1}

Shapes: B prompts, K trajectories, N = B * K rows, P prompt length, L response length,
n positions in a step's block, V vocabulary, d reward-embedding width.
"""

from __future__ import annotations

import math
import struct
from fractions import Fraction

import torch
from torch import Tensor


def entropy_weight(phi: Tensor) -> Tensor:
    """w = H(softmax(phi)) / log V, clamped to [0, 1], no gradient. (..., V) -> (...)."""
    probs = torch.softmax(phi.detach().float(), dim=-1)  # (..., V)
    entropy = -torch.xlogy(probs, probs).sum(-1)  # (...) 0 log 0 = 0
    return (entropy / math.log(phi.shape[-1])).clamp(0.0, 1.0)


def tempered(phi: Tensor, tau: float) -> Tensor:
    """p = softmax(phi / tau), computed as softmax((phi - sg(max phi)) / tau): finite for any tau > 0."""
    phi = phi.float()  # (..., V)
    return torch.softmax((phi - phi.amax(-1, keepdim=True).detach()) / tau, dim=-1)


def relaxations(phi: Tensor, E: Tensor, x: Tensor, method: str, tau: float) -> Tensor:
    """e_hat = soft + sg(w * (hard - soft)), w per method. phi (..., V), x (...) -> (..., d); gradient of soft."""
    soft = tempered(phi, tau).to(E.dtype) @ E  # (..., d)
    if method == "expectation":
        return soft
    hard = E[x]  # (..., d)
    w = torch.ones(x.shape, device=x.device) if method == "aps" else entropy_weight(phi)  # (...)
    return soft + (w.unsqueeze(-1).to(soft.dtype) * (hard - soft)).detach()


def filter_probs(probs: Tensor, top_p: float | None, top_k: int | None) -> Tensor:
    """Top-p then top-k by one ascending sort; zeros outside, not renormalised. (..., V) -> (..., V)."""
    probs = probs.float()  # (..., V)
    s = torch.sort(probs, dim=-1).values  # (..., V) ascending
    threshold = torch.zeros_like(probs[..., :1])  # (..., 1)
    if top_p is not None and top_p < 1:
        C = s.double().cumsum(-1)  # (..., V) float64
        Z = C[..., -1:]  # (..., 1)
        first = ((Z - C) > top_p * Z).sum(-1, keepdim=True)  # (..., 1) first j with Z - C_j <= top_p Z
        threshold = s.gather(-1, first)  # v_p
    if top_k is not None and top_k < probs.shape[-1]:
        threshold = torch.maximum(threshold, s[..., probs.shape[-1] - top_k:][..., :1])  # v_k = the k-th largest
    return torch.where(probs >= threshold, probs, 0.0)


def draw(weights: Tensor, u: Tensor) -> Tensor:
    """Inverse CDF: the first j with C_j > fl32(u * C_last). weights (..., V), u (...) -> (...) long.

    C_j = fl32(weights_0 + ... + weights_j accumulated in float64): the float64 running sums, each
    rounded to float32 (what torch's CPU cumsum of float32 gives; a float32 scan, as on a GPU or
    in NumPy/JAX by default, loses mass past 2^24 ulps and is not this rule)."""
    C = weights.double().cumsum(-1).float()  # (..., V)
    below = C <= (u.unsqueeze(-1) * C[..., -1:])  # (..., V) entries not yet past u's mass (float32 product)
    return below.sum(-1).clamp(max=weights.shape[-1] - 1)


def argmax_lowest(values: Tensor) -> Tensor:
    """The largest entry's index; a tie takes the lowest (torch.argmax documents this). (..., V) -> (...)."""
    return values.argmax(-1)


def guide(phi: Tensor, masked: Tensor, tokens: Tensor, E: Tensor, reward, *, method: str, M: int, lr: float,
          tau: float, top_p: float | None, top_k: int | None, uniforms: list[Tensor],
          betas=(0.9, 0.999), eps: float = 1e-8) -> Tensor:
    """M steps of Adam ascent on sum_b reward(embeds, tokens')_b. phi (N, n, V), masked (N, n), tokens (N, n).

    uniforms: the M (N, n) draws (none for expectation). Adam's formulas as torch defines them (torch
    orders the float32 operations its own way, e.g. a lerp for m: equal up to rounding): m, v the first
    and second moments, step size lr / (1 - b1^k), denominator sqrt(v) / sqrt(1 - b2^k) + eps.
    """
    phi = phi.detach().float()  # (N, n, V)
    m, v = torch.zeros_like(phi), torch.zeros_like(phi)
    fixed = E[tokens]  # (N, n, d) real tokens where the block is not masked
    for k in range(1, M + 1):
        phi = phi.detach().requires_grad_(True)
        x = tokens if method == "expectation" else draw(filter_probs(tempered(phi, tau).detach(), top_p, top_k),
                                                        uniforms[k - 1])  # (N, n)
        embeds = torch.where(masked.unsqueeze(-1), relaxations(phi, E, x, method, tau), fixed)  # (N, n, d)
        read = torch.where(masked, argmax_lowest(phi.detach()), tokens)  # (N, n) R's end-of-response cut-off
        (g,) = torch.autograd.grad(-reward(embeds, read).sum(), [phi])  # (N, n, V)
        m = betas[0] * m + (1 - betas[0]) * g
        v = betas[1] * v + (1 - betas[1]) * g * g
        denominator = v.sqrt() / math.sqrt(1 - betas[1] ** k) + eps
        phi = phi.detach() - (lr / (1 - betas[0] ** k)) * m / denominator
    return phi.detach()


# ---------------------------------------------------------------- the schedule (float32, written out)


def f32(x: float) -> float:
    """x rounded to the nearest float32 (ties to even)."""
    return struct.unpack("<f", struct.pack("<f", x))[0]


def fma32(a: float, b: float, c: float) -> float:
    """a * b + c for float32 a, b, c, rounded ONCE to float32 (a fused multiply-add), exactly. Result > 0.

    a * b is exact in float64; if the float64 sum is exact too, one rounding to float32 is left;
    otherwise the exact rational, and the nearest of the three float32 values around its float64
    rounding (ties to even): no double rounding.
    """
    total = a * b + c
    if total - a * b == c and total - c == a * b:  # the float64 sum is exact
        return f32(total)
    exact = Fraction(a) * Fraction(b) + Fraction(c)
    bits = struct.unpack("<i", struct.pack("<f", f32(float(exact))))[0]
    near = [struct.unpack("<f", struct.pack("<i", n))[0] for n in (bits - 1, bits, bits + 1)]
    return min(near, key=lambda y: (abs(Fraction(y) - exact), struct.unpack("<i", struct.pack("<f", y))[0] % 2))


def timesteps(T: int, eps: float = 1e-3) -> list[float]:
    """Dream's torch.linspace(1, eps, T + 1) in float32, computed without linspace. T + 1 floats.

    The rule torch's linspace follows (checked bitwise by tests/test_exactness.py), in float32:
        e = f32(eps),  h = fl32(fl32(e - 1) / T)                  the step (negative)
        t_i = fma32(h, i, 1)         for i <  (T + 1) // 2        first half from the start
        t_i = fma32(-h, T - i, e)    for i >= (T + 1) // 2        second half from the end
    fma32 = one rounding (torch's kernels compile to fused multiply-adds: a separate product and
    sum changes most schedules in the last bit; np/jnp.linspace cast to float32 changes others).
    """
    e = f32(eps)
    h = f32(f32(e - 1.0) / T) if T else 0.0
    return [fma32(h, i, 1.0) if i < (T + 1) // 2 else fma32(-h, T - i, e) for i in range(T + 1)]


def schedule(L: int, T: int, eps: float) -> list[tuple[int, int, float]]:
    """Per step (masks before, masks filled, origin's fill probability 1 - s/t), in float32."""
    t, n, out = timesteps(T, eps), L, []
    for i in range(T):
        ratio = f32(1.0 - f32(t[i + 1] / t[i])) if i < T - 1 else 1.0
        fill = n if i == T - 1 else int(f32(n * ratio))
        out.append((n, fill, ratio))
        n -= fill
    return out


# ---------------------------------------------------------------- one generation


READS = {  # source -> alg -> the distribution r the confidence reads
    "authors": {"entropy": "p", "maskgit_plus": "q_g", "topk_margin": "q_g"},
    "filtered": {"entropy": "q_g", "maskgit_plus": "q_g", "topk_margin": "q_g"},
    "unguided": {"entropy": "q", "maskgit_plus": "q", "topk_margin": "q"},
}


def confidence(r: Tensor, x: Tensor, alg: str) -> Tensor:
    """maskgit_plus r(x); topk_margin r_(1) - r_(2); entropy sum r log r (= -H). r sums to 1. (N, n, V) -> (N, n)."""
    if alg == "maskgit_plus":
        return r.gather(-1, x.unsqueeze(-1)).squeeze(-1)
    if alg == "topk_margin":
        top = torch.sort(r, dim=-1, descending=True).values  # (N, n, V)
        return top[..., 0] - top[..., 1]
    return torch.xlogy(r, r).sum(-1)


def fill_lowest_first(c: Tensor, n_fill: int) -> Tensor:
    """The n_fill largest c per row, equal c lowest position first. (N, n) -> (N, n) bool.

    Position j is filled iff fewer than n_fill positions k go before it: c_k > c_j, or c_k = c_j with k < j.
    """
    j = torch.arange(c.shape[1], device=c.device)  # (n,)
    ahead = (c.unsqueeze(1) > c.unsqueeze(2)) | ((c.unsqueeze(1) == c.unsqueeze(2)) & (j < j.unsqueeze(-1)))  # (N, j, k)
    return ahead.sum(-1) < n_fill  # (N, n)


def generate(denoise, prompt_ids: Tensor, prompt_keep: Tensor, cfg, *, mask_id: int, eos_ids: list[int],
             E: Tensor | None, reward, uniforms) -> Tensor:
    """K responses of L tokens per prompt. reward(embeds (N, L, d), tokens (N, L)) -> (N,); uniforms.uniform(shape)
    supplies every draw (docs/draws.md). cfg: a sampler.SamplingConfig. Returns (B, K, L)."""
    K, L, T, tau = cfg.K, cfg.max_new_tokens, cfg.T, cfg.temperature
    device = prompt_ids.device
    ids = torch.cat([prompt_ids.repeat_interleave(K, 0), torch.full((prompt_ids.shape[0] * K, L), mask_id, device=device)], 1)
    keep = torch.cat([prompt_keep.repeat_interleave(K, 0), torch.ones(ids.shape[0], L, dtype=torch.bool, device=device)], 1)
    P, N = prompt_ids.shape[1], ids.shape[0]
    origin = cfg.alg == "origin"
    for i, (n, n_fill, ratio) in enumerate(schedule(L, T, cfg.eps)):
        response = ids[:, P:]  # (N, L)
        if origin:
            positions = torch.arange(L, device=device).repeat(N, 1)  # (N, L) every position
        else:  # the n masked positions, increasing
            positions = (response == mask_id).nonzero()[:, 1].reshape(N, n)  # (N, n) nonzero: row-major order
        masked = response.gather(1, positions) == mask_id  # (N, n)
        phi = denoise(ids, keep, positions + P).float()  # (N, n, V)
        phi[..., mask_id] = -math.inf  # the mask token is never drawn
        p = tempered(phi, tau) if tau > 0 else torch.softmax(phi, -1)  # (N, n, V)
        q = filter_probs(p, cfg.top_p, cfg.top_k)
        phi_g = phi
        if cfg.guided and cfg.M > 0:
            def block_reward(embeds, tokens):  # the block scattered into the whole response
                index = positions.unsqueeze(-1).expand(-1, -1, E.shape[1])
                return reward(E[response].scatter(1, index, embeds), response.scatter(1, positions, tokens))
            draws = [] if cfg.method == "expectation" else [uniforms.uniform((N, positions.shape[1]), device)
                                                            for _ in range(cfg.M)]
            phi_g = guide(phi, masked, response.gather(1, positions), E, block_reward, method=cfg.method,
                          M=cfg.M, lr=cfg.eta, tau=tau, top_p=cfg.top_p, top_k=cfg.top_k, uniforms=draws)
        q_g = filter_probs(tempered(phi_g, tau), cfg.top_p, cfg.top_k) if phi_g is not phi else q
        x = argmax_lowest(q_g) if tau == 0 else draw(q_g, uniforms.uniform((N, positions.shape[1]), device))  # (N, n)
        if origin:
            fill = masked & (uniforms.uniform((N, L), device) < ratio)  # (N, L)
        else:
            r = {"p": p, "q": q / q.sum(-1, keepdim=True), "q_g": q_g / q_g.sum(-1, keepdim=True)}
            c = confidence(r[READS[cfg.confidence][cfg.alg]], x, cfg.alg)  # (N, n)
            if cfg.eos_last:
                c = torch.where(torch.isin(x, torch.tensor(eos_ids, dtype=torch.long, device=device)), -math.inf, c)
            fill = fill_lowest_first(c, n_fill)
        placed = torch.where(fill, x, response.gather(1, positions))  # (N, n)
        ids = torch.cat([ids[:, :P], response.scatter(1, positions, placed)], 1)
    return ids[:, P:].reshape(-1, K, L)
