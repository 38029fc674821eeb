"""A NumPy port of EntRGi's math and Dream's unmasking loop, written from docs/porting.md alone (no torch).

It exists to prove that the documents are enough: tests/test_conformance.py runs it against
every vector in conformance/vectors. Everything is float32 unless a rule says otherwise.

    p        = softmax((phi - max phi) / tau)                  tempered distribution
    w        = H(softmax(phi)) / log V, clipped to [0, 1]      entropy weight (no tau)
    soft     = p @ E;  hard = E[x];  e_hat = soft + w (hard - soft)   (w = 1 aps, 0 expectation)
    dR/dphi  = p * (g - sum(p g)) / tau,  g = E @ dR/dsoft          the soft path only
    filter   : keep p_j >= v* and >= the k-th largest; v* = ascending p at the first j with
               Z - C_j <= top_p Z (C, Z in float64)
    draw     : first i with C_i > u C_V (C = cumulative sums)
    Adam     : exp_avg = b1 exp_avg + (1 - b1) g;  exp_avg_sq = b2 exp_avg_sq + (1 - b2) g^2;
               phi -= (lr / (1 - b1^t)) exp_avg / (sqrt(exp_avg_sq) / sqrt(1 - b2^t) + eps)   (torch's)
    schedule : t_i = linspace(1, eps, T + 1) by torch's rule (two halves, fused multiply-adds);
               n_fill = trunc(fl32(n * fl32(1 - fl32(s / t))))
    fill     : the n_fill largest confidences, ties to the lowest position; argmax ties to the lowest id

Shapes: N rows, L (or n) positions, V vocabulary, d embedding, B prompts, K trajectories.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np

F32 = np.float32
BETA1, BETA2, ADAM_EPS = 0.9, 0.999, 1e-8


class Draws:
    """The given uniforms, consumed in order; each draw must ask for as many numbers as the next array holds."""

    def __init__(self, arrays):
        self.arrays, self.next = list(arrays or []), 0

    def take(self, shape):
        u = np.asarray(self.arrays[self.next], dtype=F32)
        assert u.size == math.prod(shape), f"draw {self.next + 1}: asked {shape}, given {u.shape}"
        self.next += 1
        return u.reshape(shape)

    def done(self):
        assert self.next == len(self.arrays), f"{len(self.arrays) - self.next} given draws left unused"


def softmax(x):  # (..., V) -> (..., V)
    x = np.asarray(x, F32)
    e = np.exp(x - x.max(-1, keepdims=True))
    return (e / e.sum(-1, keepdims=True)).astype(F32)


def tempered(phi, tau):  # softmax(phi / tau); tau = 0: softmax(phi) (greedy reads only its argmax)
    phi = np.asarray(phi, F32)
    if tau == 0:
        return softmax(phi)
    return softmax((phi - phi.max(-1, keepdims=True)) / F32(tau))


def q_log_q(q):  # 0 where q = 0
    return np.where(q > 0, q * np.log(np.where(q > 0, q, 1)), 0).astype(F32)


def entropy_weight(phi):  # (..., V) -> (...)
    V = phi.shape[-1]
    return np.clip(-q_log_q(softmax(phi)).sum(-1) / F32(math.log(V)), 0, 1).astype(F32)


def filter_probs(probs, top_p, top_k):  # (..., V) -> (..., V): kept probabilities, 0 elsewhere
    q = np.asarray(probs, F32)
    threshold = np.zeros(q.shape[:-1] + (1,), F32)
    if top_p is not None and top_p < 1:  # the one rounding rule: ascending C in float64, first j with Z - C_j <= top_p Z
        ascending = np.sort(q, -1)  # (..., V)
        cdf = np.cumsum(ascending.astype(np.float64), -1)  # (..., V) C_j, float64
        total = cdf[..., -1:]  # (..., 1) Z
        first = ((total - cdf) > top_p * total).sum(-1, keepdims=True)  # entries failing = the first passing index
        threshold = np.take_along_axis(ascending, np.minimum(first, q.shape[-1] - 1), -1)  # v*
    if top_k is not None and top_k < q.shape[-1]:
        kth = -np.sort(-q, -1)[..., top_k - 1:top_k]  # the k-th largest, with multiplicity
        threshold = np.maximum(threshold, kth)
    return np.where(q >= threshold, q, F32(0)).astype(F32)


def draw(probs, u):  # (..., V), (...) -> (...): first i with C_i > u C_V
    cdf = np.cumsum(np.asarray(probs, np.float64), -1).astype(F32)  # exact sums, rounded once
    target = (u.astype(F32) * cdf[..., -1]).astype(F32)[..., None]
    return np.minimum((cdf <= target).sum(-1), probs.shape[-1] - 1).astype(np.int64)


def argmax_lowest(x):  # np.argmax returns the first maximum: the lowest id
    return np.argmax(x, -1).astype(np.int64)


def sample(probs, tau, draws):
    if tau == 0:
        return argmax_lowest(probs)
    return draw(probs, draws.take(probs.shape[:-1]))


def relaxation(phi, E, hard, method, tau):
    """(e_hat, p) for logits (..., V), E (V, d), hard (...)."""
    p = tempered(phi, tau)
    soft = (p @ E).astype(F32)
    if method == "expectation":
        return soft, p
    w = F32(1) if method == "aps" else entropy_weight(phi)[..., None]
    return (soft + w * (E[hard] - soft)).astype(F32), p


def grad_phi(p, E, grad_soft, tau):  # dR/dphi from dR/dsoft (..., d), through softmax(phi / tau) @ E
    g = (grad_soft @ E.T).astype(F32)  # (..., V)
    return (p * (g - (p * g).sum(-1, keepdims=True)) / F32(tau)).astype(F32)


def guide(phi, masked, tokens, E, reward_kind, a, method, M, eta, tau, top_p, top_k, draws):
    """M Adam steps of ascent on sum_b R_b. phi (B, n, V), masked/tokens (B, n), a (B, n, d) per position."""
    phi = np.array(phi, F32)
    exp_avg, exp_avg_sq = np.zeros_like(phi), np.zeros_like(phi)
    fixed = E[tokens]  # (B, n, d)
    for t in range(1, M + 1):
        hard = tokens
        if method != "expectation":
            hard = sample(filter_probs(tempered(phi, tau), top_p, top_k), tau, draws)
        e_hat, p = relaxation(phi, E, hard, method, tau)
        embeds = np.where(masked[..., None], e_hat, fixed)
        dR = a if reward_kind == "linear" else (1 - np.tanh((embeds * a).sum(-1, keepdims=True)) ** 2) * a
        g = -grad_phi(p, E, np.where(masked[..., None], dR, 0).astype(F32), tau)  # loss = -R
        exp_avg = (F32(BETA1) * exp_avg + F32(1 - BETA1) * g).astype(F32)
        exp_avg_sq = (F32(BETA2) * exp_avg_sq + F32(1 - BETA2) * g * g).astype(F32)
        denom = adam_denominator(exp_avg_sq, t)
        phi = (phi - F32(eta / (1 - BETA1 ** t)) * exp_avg / denom).astype(F32)
    return phi


def adam_denominator(exp_avg_sq, t):  # sqrt(v) / sqrt(1 - b2^t) + eps: eps AFTER the root (torch's)
    return np.sqrt(exp_avg_sq) / F32(math.sqrt(1 - BETA2 ** t)) + F32(ADAM_EPS)


def fill_order(score):  # (N, n) -> (N, n): descending score, equal scores lowest position first
    return np.argsort(-score, -1, kind="stable")


def round32(x: Fraction) -> float:
    """The exact rational x rounded once to the nearest float32 (ties to even). x > 0, in float32's normal range."""
    e = x.numerator.bit_length() - x.denominator.bit_length() - 24  # x / 2^e has 24 or 25 integer bits
    scaled = x / Fraction(2) ** e
    while scaled >= 1 << 24:
        e, scaled = e + 1, scaled / 2
    while scaled < 1 << 23:
        e, scaled = e - 1, scaled * 2
    whole, rest = divmod(scaled.numerator, scaled.denominator)
    if 2 * rest > scaled.denominator or (2 * rest == scaled.denominator and whole % 2):
        whole += 1
    return float(F32(whole * Fraction(2) ** e))


def fma32(a, b, c) -> float:
    """a * b + c of float32 values with ONE rounding to float32 (a fused multiply-add)."""
    return round32(Fraction(float(a)) * Fraction(float(b)) + Fraction(float(c)))


def linspace32(start, end, n):
    """Dream's linspace(1, eps, T + 1) in float32, torch's rule: h = fl32((end - start) / (n - 1));
    t_i = fma32(h, i, start) for i < n // 2, fma32(-h, n - 1 - i, end) for the rest (each half from its own end)."""
    start, end = F32(start), F32(end)
    if n == 1:
        return np.array([start], F32)
    h = F32((end - start) / F32(n - 1))
    return np.array([fma32(h, i, start) if i < n // 2 else fma32(-h, n - 1 - i, end) for i in range(n)], F32)


def step_ratios(T, eps):
    t = linspace32(1.0, eps, T + 1)
    return (F32(1) - t[1:] / t[:-1]).astype(F32)


def unmask_schedule(L, T, eps):
    ratios, n, out = step_ratios(T, eps), L, []
    for i in range(T):
        fill = n if i == T - 1 else int(F32(n) * ratios[i])
        out.append((n, fill))
        n -= fill
    return out


READS = {"authors": {"entropy": "p", "maskgit_plus": "q_g", "topk_margin": "q_g"},  # source -> alg -> r
         "filtered": dict.fromkeys(("entropy", "maskgit_plus", "topk_margin"), "q_g"),
         "unguided": dict.fromkeys(("entropy", "maskgit_plus", "topk_margin"), "q")}


def confidence(r, x, alg, normalise):
    if normalise:
        r = (r / r.sum(-1, keepdims=True)).astype(F32)
    if alg == "maskgit_plus":
        return np.take_along_axis(r, x[..., None], -1)[..., 0]
    if alg == "topk_margin":
        top = -np.sort(-r, -1)
        return top[..., 0] - top[..., 1]
    return q_log_q(r).sum(-1)  # entropy: -H(r)


def unmask(phi, guide_fn, block_masked, n_fill, fill_prob, alg, confidence_source, tau, top_p, top_k, eos_last,
           eos_ids, draws):
    """One step on a block: phi (N, n, V) with the mask token at -inf. Returns (tokens (N, n), fill (N, n))."""
    p = tempered(phi, tau)
    q = filter_probs(p, top_p, top_k)  # the unguided draw weights
    guided = guide_fn(phi, q) if guide_fn is not None else None
    q_g = q if guided is None else filter_probs(tempered(guided, tau), top_p, top_k)  # the guided ones
    x = sample(q_g, tau, draws)
    if alg == "origin":
        return x, block_masked & (draws.take(block_masked.shape) < fill_prob)
    reads = READS[confidence_source][alg]
    r = {"p": p, "q_g": q_g, "q": q}[reads]
    score = confidence(r, x, alg, normalise=reads != "p")  # q and q_g are renormalised, p sums to 1
    if eos_last:
        score = np.where(np.isin(x, eos_ids), -np.inf, score)
    order = fill_order(score)
    fill = np.zeros(block_masked.shape, bool)
    np.put_along_axis(fill, order[:, :n_fill], True, -1)
    return x, fill


class NumpyPort:
    """The kinds of conformance/runner.py, in NumPy."""

    def entropy_weight(self, logits):
        return {"w": entropy_weight(logits)}

    def relax(self, logits, E, hard, method, tau, a):
        e_hat, p = relaxation(logits, E, hard, method, tau)
        return {"e_hat": e_hat, "grad": grad_phi(p, E, a, tau)}

    def filter(self, probs, top_p, top_k):
        return {"filtered": filter_probs(probs, top_p, top_k)}

    def draw(self, probs, uniforms):
        draws = Draws(uniforms)
        index = draw(probs, draws.take(probs.shape[:-1]))
        draws.done()
        return {"index": index}

    def schedule(self, L, T, eps):
        counts = np.array(unmask_schedule(L, T, eps), np.int64)
        return {"ratios": step_ratios(T, eps), "n_masked": counts[:, 0], "n_fill": counts[:, 1]}

    def guide(self, logits, masked, tokens, E, reward, method, M, eta, tau, top_p, top_k, uniforms):
        draws = Draws(uniforms)
        a = np.broadcast_to(reward["a"], logits.shape[:-1] + (E.shape[1],))
        phi = guide(logits, masked, tokens, E, reward["kind"], a, method, M, eta, tau, top_p, top_k, draws)
        draws.done()
        return {"phi": phi}

    def step(self, logits, guided, tau, top_p, top_k, alg, confidence, eos_last, eos_ids, mask_id, T, eps, uniforms):
        draws = Draws(uniforms)
        phi = np.array(logits, F32)
        phi[..., mask_id] = -np.inf
        N, L = phi.shape[:2]
        ratios = step_ratios(T, eps)
        fill_prob = F32(1) if T == 1 else ratios[0]
        x, fill = unmask(phi, None if guided is None else (lambda phi, q: guided), np.ones((N, L), bool),
                         unmask_schedule(L, T, eps)[0][1], fill_prob, alg, confidence, tau, top_p, top_k,
                         eos_last, eos_ids, draws)
        draws.done()
        return {"response": np.where(fill, x, mask_id)}

    def generate(self, prompt, K, L, T, M, eta, tau, top_p, top_k, alg, confidence, eos_last, eps, method, mask_id,
                 eos_ids, table, E, a, uniforms):
        draws = Draws(uniforms)
        B, P = prompt.shape
        N = B * K
        ids = np.concatenate([np.repeat(prompt, K, 0), np.full((N, L), mask_id)], 1)  # (N, P + L), row b K + k
        schedule, ratios = unmask_schedule(L, T, eps), step_ratios(T, eps)
        rows = np.arange(N)[:, None]
        for i in range(T):
            masked = ids[:, P:] == mask_id  # (N, L)
            if alg == "origin":
                positions = np.broadcast_to(np.arange(L), (N, L))
            else:  # every row has schedule[i][0] masks: their positions, increasing
                positions = np.argsort(~masked, -1, kind="stable")[:, :schedule[i][0]]
            block_masked = masked[rows, positions]  # (N, n)
            phi = np.array(table[positions, ids[rows, P + positions - 1]], F32)  # (N, n, V)
            phi[..., mask_id] = -np.inf
            current = ids[rows, P + positions]

            def guide_fn(phi, q, positions=positions, block_masked=block_masked, current=current):
                if M == 0:
                    return None
                return guide(phi, block_masked, current, E, "tanh", a[positions], method, M, eta, tau, top_p,
                             top_k, draws)

            fill_prob = F32(1) if i == T - 1 else ratios[i]
            x, fill = unmask(phi, guide_fn if method != "bon" else None, block_masked, schedule[i][1], fill_prob,
                             alg, confidence, tau, top_p, top_k, eos_last, eos_ids, draws)
            ids[rows, P + positions] = np.where(fill, x, current)
        draws.done()
        return {"response": ids[:, P:].reshape(B, K, L)}


PORT = NumpyPort()
