"""Masked (absorbing-state) diffusion sampling, Dream's way, with an optional guidance hook.

SPEC §2, "Unmasking". A response of L tokens starts as L mask tokens; over T steps some
masks are replaced by sampled tokens, and a token once placed never changes:

    timesteps = linspace(1, eps, T + 1)          t = timesteps[i], s = timesteps[i + 1]
    n_fill(i) = floor(n_masked * (1 - s / t))    for i < T - 1;  n_fill(T - 1) = n_masked
    phi       = denoiser logits at the masked positions, mask token at -inf   (guided by the hook, if any)
    x         ~ filter(softmax(phi / tau))        filter = top-p / top-k, renormalised;  tau = 0 is argmax
                                                  (top-p keeps j iff the mass strictly above q_j is <= top_p:
                                                  the token that crosses top_p is kept, ties go together)
    c         = confidence of each draw           maskgit_plus: q(x);  topk_margin: q_(1) - q_(2);
                                                  entropy: -H(q)  (q = filter(softmax(phi / tau)), renormalised)
    fill the n_fill masked positions of largest c; a draw of EOS gets c = -inf (EOS last).

The mask token itself is never drawn: its logit is set to -inf (MDLM's zero masking
probability). A drawn mask would leave its position masked, so the row would fall out of
step with the schedule and could end with a mask in the response; a trained denoiser gives
it next to no mass, but the tiny random ones do not.

`origin` instead fills each mask independently with probability 1 - s/t (all at the
last step). Because every row starts with L masks and, except for `origin`, fills the
same number per step, the number of masks per row at every step is known on the host
before sampling starts (`unmask_schedule`): each step works on a fixed-shape block of
exactly the masked positions, with no host synchronisation in the loop.

Denoisers are callables `denoise(input_ids (N, S), keep (N, S) bool, positions (N, n))
-> logits (N, n, V)`, the logits predicting the tokens at `positions`. Adapters:
`dream_denoiser` (Dream: full bidirectional attention, logits shifted right by one, so
token j is read from the hidden state at j - 1) and `llada_denoiser` (no shift).

Shapes:
    B prompts   K trajectories per prompt   N = B * K rows   P prompt length (left-padded)
    L response length   S = P + L   n masked positions in this step's block
    V vocabulary   d reward-model embedding   H denoiser hidden size
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Callable

import torch
from einops import rearrange, repeat
from torch import Tensor

from entrgi import METHODS, entropy_weight, filter_probs, guide, sample_categorical

ALGORITHMS = ("maskgit_plus", "topk_margin", "entropy", "origin")
CONFIDENCE_SOURCES = ("unguided", "guided")

Denoiser = Callable[[Tensor, Tensor, Tensor], Tensor]
Guidance = Callable[[Tensor, Tensor, Tensor, Tensor, Tensor], Tensor]
"""guidance(logits (N, n, V), probs (N, n, V), masked (N, n) bool, positions (N, n), response (N, L)) -> (N, n, V).

logits: the denoiser's, the mask token's at -inf. probs = token_probs(logits): the unguided
sampling distribution, which the sampler has computed anyway."""


def _option(default, help: str, source: str, **extra):
    return field(default=default, metadata={"help": help, "source": source, **extra})


@dataclass(frozen=True)
class SamplingConfig:
    """Every hyper-parameter of one guided generation. Defaults: the published runs (SPEC §2)."""

    method: str = _option("entrgi", "guidance: entrgi | aps (w=1) | expectation (w=0) | bon (unguided)",
                          "paper §3; SPEC §1", choices=METHODS + ("bon",))
    K: int = _option(4, "trajectories per prompt (N in Best-of-N)", "SPEC §2 published defaults")
    T: int = _option(128, "denoising steps", "SPEC §2 published defaults")
    M: int = _option(3, "guidance (Adam) steps per denoising step", "SPEC §2 published defaults")
    eta: float = _option(0.5, "Adam learning rate on the logits", "SPEC §2 published defaults")
    max_new_tokens: int = _option(128, "response length L", "SPEC §2 published defaults")
    temperature: float = _option(0.7, "sampling temperature tau (0 = greedy, unguided only)",
                                 "SPEC §2 published defaults")
    top_p: float = _option(0.95, "nucleus mass kept when sampling tokens", "SPEC §2 published defaults")
    top_k: int | None = _option(None, "keep only the k most likely tokens (default: off)", "Dream sampler")
    alg: str = _option("entropy", "unmasking confidence", "Dream sampler; SPEC §2", choices=ALGORITHMS)
    confidence: str = _option("unguided", "logits the confidence is computed from",
                              "authors' released runs; SPEC §2", choices=CONFIDENCE_SOURCES)
    eos_last: bool = _option(True, "de-prioritise EOS: confidence -inf for EOS draws", "Dream sampler; SPEC §2")
    eps: float = _option(1e-3, "final timestep of the schedule", "Dream sampler")

    @property
    def guided(self) -> bool:
        return self.method != "bon"

    def validate(self) -> "SamplingConfig":
        """Raise ValueError with a one-line message for any out-of-range value."""
        for f in fields(self):
            choices = f.metadata.get("choices")
            if choices and getattr(self, f.name) not in choices:
                raise ValueError(f"{f.name} must be one of {', '.join(choices)}; got {getattr(self, f.name)!r}")
        checks = [
            (self.K >= 1, f"K must be >= 1, got {self.K}"),
            (self.T >= 1, f"T must be >= 1, got {self.T}"),
            (self.M >= 0, f"M must be >= 0, got {self.M}"),
            (math.isfinite(self.eta) and self.eta > 0, f"eta must be finite and > 0, got {self.eta}"),
            (self.max_new_tokens >= 1, f"max_new_tokens must be >= 1, got {self.max_new_tokens}"),
            (math.isfinite(self.temperature) and self.temperature >= 0,
             f"temperature must be finite and >= 0, got {self.temperature}"),
            (self.temperature > 0 or not self.guided,
             f"method {self.method} needs temperature > 0 (the relaxation divides by it)"),
            (0 < self.top_p <= 1, f"top_p must be in (0, 1], got {self.top_p}"),
            (self.top_k is None or self.top_k >= 1, f"top_k must be >= 1, got {self.top_k}"),
            (0 < self.eps < 1, f"eps must be in (0, 1), got {self.eps}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        return self


# --------------------------------------------------------------------------- schedule


def unmask_schedule(length: int, steps: int, eps: float = 1e-3) -> list[tuple[int, int]]:
    """(masks before step i, masks filled at step i) for i = 0..steps-1, computed on the host.

    n_fill = floor(n_masked * (1 - s / t)) with t, s consecutive entries of
    linspace(1, eps, steps + 1) in float32 (as Dream computes it); the last step fills the rest.
    """
    timesteps = torch.linspace(1, eps, steps + 1)  # (T + 1,) float32
    n_masked, schedule = length, []
    for i in range(steps):
        ratio = (1 - timesteps[i + 1] / timesteps[i]).item()  # host tensor: no device sync
        n_fill = n_masked if i == steps - 1 else int(n_masked * ratio)
        schedule.append((n_masked, n_fill))
        n_masked -= n_fill
    return schedule


# --------------------------------------------------------------------------- one step


def token_probs(logits: Tensor, temperature: float, top_p: float | None, top_k: int | None) -> Tensor:
    """filter(softmax(phi / tau)): zeros outside the nucleus, not renormalised; tau = 0 means no scaling (greedy).

    (..., V) -> (..., V) float32.
    """
    scaled = logits.float() / temperature if temperature > 0 else logits.float()  # (..., V)
    return filter_probs(torch.softmax(scaled, dim=-1), top_p, top_k)


def sample_tokens(probs: Tensor, temperature: float, generator: torch.Generator | None) -> Tensor:
    """x ~ q, or argmax q when tau = 0. (..., V) -> (...) long."""
    if temperature == 0:
        return probs.argmax(-1)
    return sample_categorical(probs, generator)


def confidence(probs: Tensor, tokens: Tensor, alg: str) -> Tensor:
    """Dream's unmasking confidence of drawing `tokens` from q = probs / sum(probs). (..., V), (...) -> (...)."""
    probs = probs / probs.sum(-1, keepdim=True)  # (..., V) renormalised after filtering
    if alg == "maskgit_plus":
        return probs.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    if alg == "topk_margin":
        top2 = probs.topk(2, dim=-1).values  # (..., 2)
        return top2[..., 0] - top2[..., 1]
    if alg == "entropy":
        return torch.xlogy(probs, probs).sum(-1)  # -H(q); xlogy(q, q) = q log q, and 0 where q = 0
    raise ValueError(f"no confidence for alg {alg!r}")


def masked_positions(masked: Tensor, n: int) -> Tensor:
    """Positions of the masks in each row, when every row has exactly n of them. (N, L) -> (N, n).

    A stable sort on the mask flags puts the masked positions first, in increasing order.
    """
    order = torch.sort((~masked).to(torch.int8), dim=-1, stable=True).indices  # (N, L)
    return order[:, :n]


# --------------------------------------------------------------------------- generation


def generate(
    denoise: Denoiser,
    prompt_ids: Tensor,
    prompt_keep: Tensor,
    config: SamplingConfig,
    *,
    mask_id: int,
    eos_id: int | None,
    guidance: Guidance | None = None,
    generator: torch.Generator | None = None,
    on_step: Callable[[int, Tensor], None] | None = None,
) -> Tensor:
    """Generate K responses of L tokens for each of B left-padded prompts. Returns (B, K, L).

    prompt_ids (B, P) long, prompt_keep (B, P) bool (False at left padding). `guidance`,
    if given, maps the denoiser's logits at the masked positions to guided logits at every
    step; the unmasking confidence then comes from the unguided logits or the guided ones
    (config.confidence). `on_step(i, ids (N, S))` is called after each step.
    All randomness comes from `generator`.
    """
    K, L, T = config.K, config.max_new_tokens, config.T
    P = prompt_ids.shape[1]
    device = prompt_ids.device
    ids = torch.cat([
        repeat(prompt_ids, "b p -> (b k) p", k=K),
        torch.full((prompt_ids.shape[0] * K, L), mask_id, dtype=torch.long, device=device),
    ], dim=1)  # (N, S)
    keep = torch.cat([
        repeat(prompt_keep.bool(), "b p -> (b k) p", k=K),
        torch.ones(ids.shape[0], L, dtype=torch.bool, device=device),
    ], dim=1)  # (N, S)
    origin = config.alg == "origin"
    schedule = None if origin else unmask_schedule(L, T, config.eps)
    timesteps = torch.linspace(1, config.eps, T + 1)  # (T + 1,) float32, host
    fill_prob = (1 - timesteps[1:] / timesteps[:-1]).tolist()[:-1] + [1.0]  # origin's 1 - s/t per step; all at the last
    all_positions = repeat(torch.arange(L, device=device), "l -> n l", n=ids.shape[0])  # (N, L)
    never_drawn = torch.tensor([mask_id], device=device)  # (1,) vocabulary index of the mask token

    for i in range(T):
        response = ids[:, P:]  # (N, L)
        masked = response == mask_id  # (N, L)
        positions = all_positions if origin else masked_positions(masked, schedule[i][0])  # (N, n)
        block_masked = masked.gather(1, positions)  # (N, n)
        logits = denoise(ids, keep, positions + P)  # (N, n, V) in the denoiser's dtype: consumers upcast
        logits = logits.index_fill(-1, never_drawn, -math.inf)  # (N, n, V) a copy: the denoiser's output is its own
        probs = token_probs(logits, config.temperature, config.top_p, config.top_k)  # (N, n, V) unguided q
        guided_probs = probs  # (N, n, V)
        if guidance is not None:
            guided = guidance(logits, probs, block_masked, positions, response)  # (N, n, V)
            if guided is not logits:  # (M = 0 returns the logits themselves)
                guided_probs = token_probs(guided, config.temperature, config.top_p, config.top_k)  # (N, n, V)
        tokens = sample_tokens(guided_probs, config.temperature, generator)  # (N, n)
        if origin:
            draw = torch.rand(block_masked.shape, generator=generator, device=device)  # (N, n)
            fill = block_masked & (draw < fill_prob[i])  # (N, n)
        else:
            score = confidence(probs if config.confidence == "unguided" else guided_probs, tokens, config.alg)  # (N, n)
            if config.eos_last and eos_id is not None:
                score = torch.where(tokens == eos_id, -math.inf, score)
            chosen = score.topk(schedule[i][1], dim=-1).indices  # (N, n_fill)
            fill = torch.zeros_like(block_masked).scatter_(1, chosen, True)  # (N, n)
        placed = torch.where(fill, tokens, response.gather(1, positions))  # (N, n) others keep their token
        ids = torch.cat([ids[:, :P], response.scatter(1, positions, placed)], dim=1)  # (N, S)
        if on_step is not None:
            on_step(i, ids)
    return rearrange(ids[:, P:], "(b k) l -> b k l", k=K)


# --------------------------------------------------------------------------- guidance hook


def reward_guidance(
    score_embeds: Callable[[Tensor, Tensor], Tensor],
    embed_matrix: Tensor,
    config: SamplingConfig,
    generator: torch.Generator | None = None,
    weight_log: list[Tensor] | None = None,
) -> Guidance:
    """The guidance hook of `generate`: `entrgi.guide` on the step's block of masked positions.

    score_embeds(embeds (N, L, d), tokens (N, L)) -> (N,) scores whole responses; the
    block's embeddings and tokens are scattered into the response around it (unmasked
    positions read their real tokens). If `weight_log` is given, the mean entropy weight w
    of the unguided logits at the masked positions is appended to it at every step (a
    device scalar: no synchronisation).
    """

    def hook(logits: Tensor, probs: Tensor, masked: Tensor, positions: Tensor, response: Tensor) -> Tensor:
        fixed_embeds = embed_matrix[response]  # (N, L, d)
        index = repeat(positions, "n m -> n m d", d=fixed_embeds.shape[-1])  # (N, n, d)

        def reward_fn(block_embeds: Tensor, block_tokens: Tensor) -> Tensor:
            embeds = fixed_embeds.scatter(1, index, block_embeds)  # (N, L, d)
            tokens = response.scatter(1, positions, block_tokens)  # (N, L)
            return score_embeds(embeds, tokens)  # (N,)

        if weight_log is not None:
            weight = entropy_weight(logits)  # (N, n)
            weight_log.append((weight * masked).sum() / masked.sum().clamp(min=1))
        return guide(
            logits, masked, response.gather(1, positions), embed_matrix, reward_fn,
            method=config.method, steps=config.M, lr=config.eta, temperature=config.temperature,
            top_p=config.top_p, top_k=config.top_k, generator=generator, first_probs=probs,
        )

    return hook


# --------------------------------------------------------------------------- denoiser adapters


def _gather_rows(hidden: Tensor, positions: Tensor) -> Tensor:
    """hidden (N, S, H), positions (N, n) -> (N, n, H)."""
    return hidden.gather(1, repeat(positions, "n m -> n m h", h=hidden.shape[-1]))


def dream_denoiser(model) -> Denoiser:
    """Dream on a transformers `Qwen2ForCausalLM`: bidirectional attention, logits shifted by one.

    A 4-D boolean mask (N, 1, S, S) in which every query sees every real (non-pad) key
    makes Qwen2 attend bidirectionally; position ids count real tokens only. Token j is
    predicted from the hidden state at j - 1 (Dream was trained from an autoregressive
    model and kept its next-token head), so the LM head runs only at positions - 1.
    """

    def denoise(input_ids: Tensor, keep: Tensor, positions: Tensor) -> Tensor:
        S = input_ids.shape[1]
        attention = repeat(keep, "n s -> n 1 q s", q=S)  # (N, 1, S, S)
        position_ids = (keep.long().cumsum(-1) - 1).clamp(min=0)  # (N, S)
        hidden = model.model(input_ids=input_ids, attention_mask=attention,
                             position_ids=position_ids).last_hidden_state  # (N, S, H)
        return model.lm_head(_gather_rows(hidden, positions - 1))  # (N, n, V)

    return denoise


def llada_denoiser(model) -> Denoiser:
    """LLaDA: a bidirectional model whose logits at j predict token j (no shift).

    `model(input_ids=..., attention_mask=(N, S) long)` must return an object with
    `.logits` (N, S, V), as LLaDA's own modelling code does.
    """

    def denoise(input_ids: Tensor, keep: Tensor, positions: Tensor) -> Tensor:
        logits = model(input_ids=input_ids, attention_mask=keep.long()).logits  # (N, S, V)
        return _gather_rows(logits, positions)  # (N, n, V)

    return denoise
