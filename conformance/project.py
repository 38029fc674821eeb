"""The project's own answers to the conformance kinds: each kind as a call into entrgi / sampler.

Every method takes a case's decoded inputs (numpy arrays, numbers) and returns its outputs as
numpy arrays; `make_vectors.py` writes these as the expected values, and tests/test_conformance.py
checks them again through `runner.check`. Random draws come from the case's `uniforms` (a list
of arrays, consumed in order) through `rng.GivenUniforms`, the project's injection point, so
nothing depends on torch's generator.

Shapes: B rows (prompts x trajectories in guide), N = B * K, L positions / response length,
V vocabulary, d embedding, P prompt length.
"""

from __future__ import annotations

import math

import numpy as np
import torch

import entrgi
import sampler
from rng import GivenUniforms


class Recorder:
    """A `rng.UniformSource` that makes 24-bit uniforms from a NumPy generator as the project asks and keeps them.

    make_vectors.py runs each case once with it and writes `.given` into the case as its
    `uniforms` (one array per draw, in order, of the shape asked for). Replaying them goes
    through the project's own injection point, `rng.GivenUniforms`, which refuses a draw of
    another shape or beyond the list.
    """

    def __init__(self, make: np.random.Generator):
        self.make, self.given = make, []

    def uniform(self, shape, device=None):
        u = (self.make.integers(0, 1 << 24, math.prod(shape)) * 2.0**-24).astype(np.float32).reshape(tuple(shape))
        self.given.append(u)
        return torch.from_numpy(u.copy()).to(device)


def _replayed(source) -> list:
    """The draws a run consumed, after checking that it consumed all it was given."""
    if isinstance(source, Recorder):
        return source.given
    if source.taken != len(source.draws):
        raise ValueError(f"{len(source.draws) - source.taken} of {len(source.draws)} given draws were not used")
    return [u.numpy() for u in source.draws]


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
        return Recorder(self.record) if self.record is not None else GivenUniforms(uniforms or [])

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
        return {"index": _n(index), "uniforms": _replayed(source)}

    def schedule(self, L, T, eps):
        counts = np.array(sampler.unmask_schedule(L, T, eps), dtype=np.int64)  # (T, 2)
        return {"ratios": _n(sampler.step_ratios(T, eps)), "n_masked": counts[:, 0], "n_fill": counts[:, 1]}

    def guide(self, logits, masked, tokens, E, reward, method, M, eta, tau, top_p, top_k, uniforms=None):
        source = self._source(uniforms)
        phi = entrgi.guide(_t(logits), _t(masked), _t(tokens), _t(E), linear_or_tanh(reward), method=method,
                           steps=M, lr=eta, temperature=tau, top_p=top_p, top_k=top_k, generator=source)
        return {"phi": _n(phi), "uniforms": _replayed(source)}

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
        return {"response": _n(seen[0]), "uniforms": _replayed(source)}

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
        return {"response": _n(response), "uniforms": _replayed(source)}


PROJECT = Project()


class Spec(Project):
    """The same kinds answered by spec.py, the plain reference (tests/test_conformance.py runs it on every vector)."""

    def relax(self, logits, E, hard, method, tau, a):
        import spec

        phi = _t(logits).requires_grad_(True)  # (..., V)
        e_hat = spec.relaxations(phi, _t(E), _t(hard), method, tau)  # (..., d)
        (grad,) = torch.autograd.grad((e_hat * _t(a)).sum(), [phi])
        return {"e_hat": _n(e_hat), "grad": _n(grad)}

    def entropy_weight(self, logits):
        import spec

        return {"w": _n(spec.entropy_weight(_t(logits)))}

    def filter(self, probs, top_p, top_k):
        import spec

        return {"filtered": _n(spec.filter_probs(_t(probs), top_p, top_k))}

    def draw(self, probs, uniforms):
        import spec

        (u,) = uniforms
        return {"index": _n(spec.draw(_t(probs), _t(u)))}

    def schedule(self, L, T, eps):
        import spec

        t = spec.timesteps(T, eps)
        steps = spec.schedule(L, T, eps)
        return {"ratios": np.array([spec.f32(1.0 - spec.f32(t[i + 1] / t[i])) for i in range(T)], np.float32),
                "n_masked": np.array([s[0] for s in steps]), "n_fill": np.array([s[1] for s in steps])}

    def guide(self, logits, masked, tokens, E, reward, method, M, eta, tau, top_p, top_k, uniforms):
        import spec

        if len(uniforms) != (0 if method == "expectation" else M):  # spec.guide takes one draw per Adam step
            raise ValueError(f"{len(uniforms)} given draws for {M} Adam steps of {method}")
        phi = spec.guide(_t(logits), _t(masked), _t(tokens), _t(E), linear_or_tanh(reward), method=method, M=M,
                         lr=eta, tau=tau, top_p=top_p, top_k=top_k, uniforms=[_t(u) for u in uniforms])
        return {"phi": _n(phi)}

    def step(self, logits, guided, tau, top_p, top_k, alg, confidence, eos_last, eos_ids, mask_id, T, eps,
             uniforms):
        """spec.generate's first step: the denoiser hands back `logits`, then stops the run at its second call.
        Guidance is given as guided logits: spec's guide is replaced by them, under method expectation (whose
        guide makes no draws, so the given uniforms are the step's token and fill draws only)."""
        import spec

        logits, N, L = _t(logits), logits.shape[0], logits.shape[1]
        seen = []

        class Stop(Exception):
            pass

        def denoise(ids, keep, positions):
            if calls:  # the second step: ids hold the first step's result
                seen.append(ids[:, 1:].clone())
                raise Stop
            calls.append(1)
            return logits.gather(1, (positions - 1).unsqueeze(-1).expand(-1, -1, logits.shape[-1]))

        calls = []
        config = sampler.SamplingConfig(method="bon" if guided is None else "expectation", K=1, T=T, M=1,
                                        max_new_tokens=L, temperature=tau, top_p=top_p, top_k=top_k, alg=alg,
                                        confidence=confidence, eos_last=eos_last, eps=eps)
        saved, source = spec.guide, GivenUniforms(uniforms)
        spec.guide = lambda phi, *args, **kwargs: _t(guided)  # the step's guided logits, as given
        try:
            spec.generate(denoise, torch.zeros(N, 1, dtype=torch.long), torch.ones(N, 1, dtype=torch.bool), config,
                          mask_id=mask_id, eos_ids=list(eos_ids), E=torch.zeros(logits.shape[-1], 1),
                          reward=None, uniforms=source)
        except Stop:
            pass
        finally:
            spec.guide = saved
        _replayed(source)  # every given draw used
        return {"response": _n(seen[0])}

    def generate(self, prompt, K, L, T, M, eta, tau, top_p, top_k, alg, confidence, eos_last, eps, method,
                 mask_id, eos_ids, table, E, a, uniforms):
        import spec

        config = sampler.SamplingConfig(method=method, K=K, T=T, M=M, eta=eta, max_new_tokens=L, temperature=tau,
                                        top_p=top_p, top_k=top_k, alg=alg, confidence=confidence,
                                        eos_last=eos_last, eps=eps).validate()
        table, prompt = _t(table), _t(prompt)  # (L, V, V), (B, P)
        P = prompt.shape[1]

        def denoise(ids, keep, positions):
            return table[positions - P, ids.gather(1, positions - 1)]  # (N, n, V)

        source = GivenUniforms(uniforms)
        response = spec.generate(denoise, prompt, torch.ones_like(prompt, dtype=torch.bool), config,
                                 mask_id=mask_id, eos_ids=list(eos_ids), E=_t(E),
                                 reward=linear_or_tanh({"kind": "tanh", "a": a}), uniforms=source)
        _replayed(source)  # every given draw used
        return {"response": _n(response)}


SPEC = Spec()
