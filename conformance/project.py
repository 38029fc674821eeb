"""The project's own answers to the conformance kinds: each kind as a call into entrgi / sampler.

Every method takes a case's decoded inputs (numpy arrays, numbers) and returns its outputs as
numpy arrays; `make_vectors.py` writes these as the expected values, and tests/test_conformance.py
checks them again through `runner.check`. Random draws come from the case's `uniforms` (a list
of arrays, consumed in order) through `GivenUniforms`, so nothing depends on torch's generator.

Shapes: B rows (prompts x trajectories in guide), N = B * K, L positions / response length,
V vocabulary, d embedding, P prompt length.
"""

from __future__ import annotations

import math

import numpy as np
import torch

import entrgi
import sampler
from rng import CounterRNG


class GivenUniforms(CounterRNG):
    """A random source that hands out given U[0, 1) float32 arrays in order (and records the shapes asked for).

    `entrgi.uniform` routes a CounterRNG to its `.uniform(shape, device)`, so a subclass is the
    injection point here. Each draw takes the next array, which must hold prod(shape) numbers
    (row-major; the project asks for (N, n, 1) where a port may ask for (N, n)). With
    `make=rng` (a numpy Generator) instead of arrays, it makes 24-bit uniforms as asked and
    keeps them in `.given` (how make_vectors.py records a case's draws).
    """

    def __init__(self, given: list[np.ndarray] | None = None, make: np.random.Generator | None = None):
        self.given, self.make, self.used = list(given or []), make, 0

    def uniform(self, shape, device=None):
        count = math.prod(shape)
        if self.make is not None:
            drawn = tuple(shape[:-1]) if len(shape) > 1 and shape[-1] == 1 else tuple(shape)  # (N, n, 1) -> (N, n)
            self.given.append((self.make.integers(0, 1 << 24, count) * 2.0**-24).astype(np.float32).reshape(drawn))
        if self.used >= len(self.given):
            raise ValueError(f"draw {self.used + 1} asked for {tuple(shape)}: only {len(self.given)} arrays given")
        u = np.asarray(self.given[self.used], dtype=np.float32)
        if u.size != count:
            raise ValueError(f"draw {self.used + 1} asked for {tuple(shape)}, the given array has shape {u.shape}")
        self.used += 1
        return torch.from_numpy(u.copy()).reshape(tuple(shape)).to(device)

    def done(self):
        if self.used != len(self.given):
            raise ValueError(f"{len(self.given) - self.used} given uniform arrays were not used")


def _t(x):
    return torch.from_numpy(np.asarray(x).copy())


def _n(x: torch.Tensor) -> np.ndarray:
    return x.detach().cpu().numpy()


def linear_or_tanh(reward: dict):
    """The toy reward of a case: R_b = sum_l (e_bl . a_l) ("linear") or sum_l tanh(e_bl . a_l) ("tanh"). a (L, d)."""
    a = _t(reward["a"])  # (L, d)

    def score(embeds, tokens):  # (B, L, d), (B, L) -> (B,)
        dots = (embeds * a).sum(-1)  # (B, L)
        return (dots if reward["kind"] == "linear" else torch.tanh(dots)).sum(-1)

    return score


class Project:
    """The project's implementation of each kind (see docs/porting.md for the inputs and outputs)."""

    def __init__(self, record: np.random.Generator | None = None):
        self.record = record  # make_vectors.py: make the draws here and return them as output "uniforms"

    def _source(self, uniforms):
        return GivenUniforms(make=self.record) if self.record is not None else GivenUniforms(uniforms)

    def entropy_weight(self, logits):
        return {"w": _n(entrgi.entropy_weight(_t(logits)))}

    def relax(self, logits, E, hard, method, tau, a):
        phi = _t(logits).requires_grad_(True)  # (..., V)
        e_hat = entrgi.reward_inputs(phi, _t(E), _t(hard), method, tau)  # (..., d)
        (grad,) = torch.autograd.grad((e_hat * _t(a)).sum(), [phi])  # linear reward R = sum e_hat . a
        return {"e_hat": _n(e_hat), "grad": _n(grad)}

    def filter(self, probs, top_p, top_k):
        return {"filtered": _n(entrgi.filter_probs(_t(probs), top_p, top_k))}

    def draw(self, probs, uniforms=None):
        source = self._source(uniforms)
        index = entrgi.sample_categorical(_t(probs), source)
        source.done()
        return {"index": _n(index), "uniforms": source.given}

    def schedule(self, L, T, eps):
        counts = np.array(sampler.unmask_schedule(L, T, eps), dtype=np.int64)  # (T, 2)
        return {"ratios": _n(sampler.step_ratios(T, eps)), "n_masked": counts[:, 0], "n_fill": counts[:, 1]}

    def guide(self, logits, masked, tokens, E, reward, method, M, eta, tau, top_p, top_k, uniforms=None):
        source = self._source(uniforms)
        phi = entrgi.guide(_t(logits), _t(masked), _t(tokens), _t(E), linear_or_tanh(reward), method=method,
                           steps=M, lr=eta, temperature=tau, top_p=top_p, top_k=top_k, generator=source)
        source.done()
        return {"phi": _n(phi), "uniforms": source.given}

    def step(self, logits, guided, tau, top_p, top_k, alg, confidence, eos_last, eos_ids, mask_id, T, eps,
             uniforms=None):
        """The first step of a generation whose response is all masks; its logits given, no prompt influence."""
        logits, N, L = _t(logits), logits.shape[0], logits.shape[1]  # (N, L, V)
        config = sampler.SamplingConfig(method="bon" if guided is None else "entrgi", K=1, T=T, max_new_tokens=L,
                                        temperature=tau, top_p=top_p, top_k=top_k, alg=alg, confidence=confidence,
                                        eos_last=eos_last, eps=eps)

        def denoise(ids, keep, positions):  # positions (N, n) in the sequence: prompt of length 1 first
            return logits.gather(1, (positions - 1).unsqueeze(-1).expand(-1, -1, logits.shape[-1]))  # (N, n, V)

        def guidance(block_logits, probs, masked, positions, response):
            return _t(guided).gather(1, positions.unsqueeze(-1).expand(-1, -1, logits.shape[-1]))  # (N, n, V)

        return self._first_step(denoise, None if guided is None else guidance, config, N, mask_id, eos_ids, uniforms)

    def _first_step(self, denoise, guidance, config, N, mask_id, eos_ids, uniforms):
        source, seen = self._source(uniforms), []

        class Stop(Exception):
            pass

        def on_step(i, ids):
            seen.append(ids[:, 1:].clone())
            raise Stop

        try:
            sampler.generate(denoise, torch.zeros(N, 1, dtype=torch.long), torch.ones(N, 1, dtype=torch.bool),
                             config, mask_id=mask_id, eos_id=list(eos_ids), guidance=guidance, generator=source,
                             on_step=on_step)
        except Stop:
            pass
        source.done()
        return {"response": _n(seen[0]), "uniforms": source.given}

    def generate(self, prompt, K, L, T, M, eta, tau, top_p, top_k, alg, confidence, eos_last, eps, method,
                 mask_id, eos_ids, table, E, a, uniforms=None):
        """A whole generation with the toy denoiser table[j, id before j] and reward sum_l tanh(e_l . a_l)."""
        config = sampler.SamplingConfig(method=method, K=K, T=T, M=M, eta=eta, max_new_tokens=L, temperature=tau,
                                        top_p=top_p, top_k=top_k, alg=alg, confidence=confidence,
                                        eos_last=eos_last, eps=eps).validate()
        table, prompt = _t(table), _t(prompt)  # (L, V, V), (B, P)
        P = prompt.shape[1]

        def denoise(ids, keep, positions):  # (N, S), (N, S), (N, n) -> (N, n, V)
            before = ids.gather(1, positions - 1)  # (N, n) the token left of each position
            return table[positions - P, before]  # (N, n, V)

        source = self._source(uniforms)
        guidance = None
        if config.guided:
            guidance = sampler.reward_guidance(linear_or_tanh({"kind": "tanh", "a": a}), _t(E), config, source)
        response = sampler.generate(denoise, prompt, torch.ones_like(prompt, dtype=torch.bool), config,
                                    mask_id=mask_id, eos_id=list(eos_ids), guidance=guidance, generator=source)
        source.done()
        return {"response": _n(response), "uniforms": source.given}


PROJECT = Project()
