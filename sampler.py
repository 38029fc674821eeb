"""Masked (absorbing-state) diffusion sampling, Dream's way, with an optional guidance hook.

The unmasking loop of Dream's sampler (Dream's `generation_utils.py`), with the guidance
and confidence choices of the authors' released EntRGi code (arXiv 2602.05000). A response
of L tokens starts as L mask tokens; over T steps some masks are replaced by sampled tokens,
and a token once placed never changes:

    timesteps = linspace(1, eps, T + 1)          t = timesteps[i], s = timesteps[i + 1]   (float32)
    n_fill(i) = floor(n_masked * (1 - s / t))    for i < T - 1;  n_fill(T - 1) = n_masked   (float32 product)
    phi       = denoiser logits at the masked positions, mask token at -inf
    phi_g     = guidance(phi)                    the guided logits (phi_g = phi without a hook, or with M = 0)
    p         = softmax(phi / tau)               tempered, unfiltered, unguided;  tau = 0: softmax(phi) (greedy)
    q         = filter(p)                        the unguided draw weights: top-p / top-k kept, the rest 0,
                                                 NOT renormalised (top-p keeps j iff the mass strictly above
                                                 q_j is <= top_p times the row's total: the token that
                                                 crosses top_p is kept, ties go together)
    q_g       = filter(softmax(phi_g / tau))     the guided draw weights (q_g = q unguided)
    x         ~ q_g                              inverse CDF on the weights;  argmax q_g when tau = 0
    c         = confidence of each position      maskgit_plus: r(x);  topk_margin: r_(1) - r_(2);  entropy: -H(r)
    fill the n_fill masked positions of largest c; a draw of EOS gets c = -inf (EOS last: `eos_last`,
    from the authors' EntRGi code; Dream's sampler has no EOS rule).

r is the distribution the confidence reads, always summing to 1: p itself, or a draw weight
renormalised, q / sum(q) or q_g / sum(q_g). Which one is `SamplingConfig.confidence`
(CONFIDENCE_READS):

    authors  (default)  entropy: r = p;  maskgit_plus, topk_margin: r = q_g / sum(q_g)
                        -- the authors' released EntRGi code, which produced the published numbers
    filtered            every alg: r = q_g / sum(q_g), what the token is drawn from
                        -- Dream's sampler, and the authors' bon.py (their Best-of-N baseline)
    unguided            every alg: r = q / sum(q), the unguided logits' draw weights

Without guidance (`bon`) q_g = q, so `filtered` and `unguided` coincide, and `authors` still
reads p for `entropy`: `bon` uses exactly the confidence that guidance with M = 0 uses, so
M = 0 reproduces `bon` bit for bit (the authors' bon.py instead reads q / sum(q) for
`entropy`: `confidence="filtered"` reproduces it). p costs no extra pass over the
vocabulary: it is the softmax that q's filter starts from.

The mask token itself is never drawn: its logit is set to -inf (MDLM's zero masking
probability). A drawn mask would leave its position masked, so the row would fall out of
step with the schedule and could end with a mask in the response; a trained denoiser gives
it next to no mass, but the tiny random ones do not. (Dream's sampler can draw it.)

`origin` instead fills each mask independently with probability 1 - s/t, and every
remaining one at the last step (probability 1), as Dream's sampler does; it reads no
confidence. Because every row starts with L masks and, except for `origin`, fills the same
number per step, the number of masks per row at every step is known on the host
before sampling starts (`unmask_schedule`): each step works on a fixed-shape block of
exactly the masked positions, with no host synchronisation in the loop.

Random draws (docs/draws.md; all through `entrgi.uniform`, from the one `generator` argument:
a torch.Generator, an rng.CounterRNG, or rng.GivenUniforms for uniforms given in advance).
Per step, block (N, n) = the n positions the step works on, in increasing position:

    1 .. M   guidance's hard tokens, one (N, n) draw per Adam step    (none: expectation, bon, M = 0)
    M + 1    the token draw x ~ q, (N, n)                              (none: tau = 0, greedy)
    M + 2    origin only: the fill draw, (N, L), fill iff u < 1 - s/t

Exactness rules (each tested in tests/test_exactness.py): the fill takes the n_fill largest
confidences, equal ones lowest position first (`fill_by_confidence`); argmax ties take the
lowest token id (`entrgi.argmax_lowest`); the schedule is float32 arithmetic written out
(`timesteps`, `step_ratios`, `unmask_schedule`).

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

import entrgi
from entrgi import METHODS, argmax_lowest, entropy_weight, filter_probs, guide, sample_categorical, tempered_softmax
from spec import f32, timesteps  # the schedule's float32 arithmetic, written out once (spec.py)

ALGORITHMS = ("maskgit_plus", "topk_margin", "entropy", "origin")
TINIEST_TEMPERATURE = torch.finfo(torch.float32).tiny  # 1.18e-38: 1 / tau (guidance's gradient scale) is finite above it


class NonFiniteError(FloatingPointError):
    """A draw distribution was not a distribution (NaN or inf probabilities) at some denoising step."""
CONFIDENCE_SOURCES = ("authors", "filtered", "unguided")
CONFIDENCE_READS = {
    # confidence source -> alg -> r, the distribution the confidence reads, in the module docstring's notation:
    #   "p":    softmax(phi / tau) of the unguided logits (tempered, unfiltered)
    #   "q":    q / sum(q), q = filter(p): the unguided draw weights, renormalised
    #   "q_g":  q_g / sum(q_g): the weights the token was drawn from (the guided ones under guidance), renormalised
    "authors": {"entropy": "p", "maskgit_plus": "q_g", "topk_margin": "q_g"},
    "filtered": {"entropy": "q_g", "maskgit_plus": "q_g", "topk_margin": "q_g"},
    "unguided": {"entropy": "q", "maskgit_plus": "q", "topk_margin": "q"},
}

Denoiser = Callable[[Tensor, Tensor, Tensor], Tensor]
Guidance = Callable[[Tensor, Tensor, Tensor, Tensor, Tensor], Tensor]
"""guidance(logits (N, n, V), probs (N, n, V), masked (N, n) bool, positions (N, n), response (N, L)) -> (N, n, V).

logits: phi, the denoiser's, the mask token's at -inf. probs = token_probs(logits) = q: the
unguided draw weights (not renormalised), which the sampler has computed anyway."""


RELEASED = "the authors' released configuration (the paper's experimental setup)"


def _option(default, help: str, source: str, **extra):
    return field(default=default, metadata={"help": help, "source": source, **extra})


@dataclass(frozen=True)
class SamplingConfig:
    """Every hyper-parameter of one guided generation. Defaults: the authors' released configuration.

    Each field's metadata holds `help`, `source` (where its default, or the option itself,
    comes from) and, for a closed set of values, `choices`.
    """

    method: str = _option("entrgi", "guidance: entrgi | aps (w=1) | expectation (w=0) | bon (unguided)",
                          "the paper (arXiv 2602.05000): EntRGi and the baselines it is compared with",
                          choices=METHODS + ("bon",))
    K: int = _option(4, "trajectories per prompt (N in Best-of-N)", RELEASED)
    T: int = _option(128, "denoising steps", RELEASED)
    M: int = _option(3, "guidance (Adam) steps per denoising step", RELEASED)
    eta: float = _option(0.5, "Adam learning rate on the logits", RELEASED)
    max_new_tokens: int = _option(128, "response length L", RELEASED)
    temperature: float = _option(0.7, "sampling temperature tau (0 = greedy, unguided only)", RELEASED)
    top_p: float = _option(0.95, "nucleus mass kept when sampling tokens", RELEASED)
    top_k: int | None = _option(None, "keep only the k most likely tokens (default: off)", "Dream's sampler")
    alg: str = _option("entropy", "unmasking confidence", f"the algorithms: Dream's sampler; the default: {RELEASED}",
                       choices=ALGORITHMS)
    confidence: str = _option(
        "authors",
        "distribution the unmasking confidence reads: "
        "authors = per alg as the authors' EntRGi code: entropy from the unguided, unfiltered softmax(phi/tau), "
        "maskgit_plus and topk_margin from the filtered, renormalised distribution the token is drawn from "
        "(guided under guidance) | "
        "filtered = every alg from the distribution the token is drawn from (Dream's sampler, the authors' bon.py) | "
        "unguided = every alg from the unguided logits' filtered, renormalised distribution",
        "authors: the authors' released EntRGi code; filtered: Dream's sampler and the authors' bon.py; "
        "unguided: no reference, a variant kept for comparison",
        choices=CONFIDENCE_SOURCES)
    eos_last: bool = _option(True, "de-prioritise EOS: confidence -inf for EOS draws", "the authors' released EntRGi code")
    eps: float = _option(1e-3, "final timestep of the schedule", "Dream's sampler")

    @property
    def guided(self) -> bool:
        return self.method != "bon"

    def validate(self, name: Callable[[str], str] = str) -> "SamplingConfig":
        """Raise ValueError with a one-line message for any out-of-range value.

        The message calls each field `name(field)`: the field's own name by default (the
        Python API), the option the user typed where the CLI passes its mapping (`run.flag`).
        """
        n = name
        for f in fields(self):
            choices = f.metadata.get("choices")
            if choices and getattr(self, f.name) not in choices:
                raise ValueError(f"{n(f.name)} must be one of {', '.join(choices)}; got {getattr(self, f.name)!r}")
        checks = [
            (self.K >= 1, f"{n('K')} must be >= 1, got {self.K}"),
            (self.T >= 1, f"{n('T')} must be >= 1, got {self.T}"),
            (self.M >= 0, f"{n('M')} must be >= 0, got {self.M}"),
            (math.isfinite(self.eta) and self.eta > 0, f"{n('eta')} must be finite and > 0, got {self.eta}"),
            (self.max_new_tokens >= 1, f"{n('max_new_tokens')} must be >= 1, got {self.max_new_tokens}"),
            (math.isfinite(self.temperature) and self.temperature >= 0,
             f"{n('temperature')} must be finite and >= 0, got {self.temperature}"),
            (self.temperature > 0 or not self.guided,
             f"{n('method')} {self.method} needs {n('temperature')} > 0 (the relaxation divides by it)"),
            (self.temperature == 0 or self.temperature >= TINIEST_TEMPERATURE,
             f"{n('temperature')} must be 0 or >= {TINIEST_TEMPERATURE:.3g} (float32's smallest normal number: "
             f"below it the gradient through softmax(phi / tau), which scales as 1 / tau, overflows), "
             f"got {self.temperature}"),
            (0 < self.top_p <= 1, f"{n('top_p')} must be in (0, 1], got {self.top_p}"),
            (self.top_k is None or self.top_k >= 1, f"{n('top_k')} must be >= 1, got {self.top_k}"),
            (0 < self.eps < 1, f"{n('eps')} must be in (0, 1), got {self.eps}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        return self


# --------------------------------------------------------------------------- schedule


def step_ratios(steps: int, eps: float = 1e-3) -> Tensor:
    """1 - s / t for t, s = timesteps[i], timesteps[i + 1], i = 0..steps-1. (T,) float32, on the host.

    Each in float32, exactly as Dream's sampler computes them (`generation_utils.py`: torch
    tensors, default dtype):  ratio_i = fl32(1 - fl32(t_{i+1} / t_i)),  t = `timesteps`.
    (One float32 operation at a time: computing it in float64 and rounding to float32 gives
    the same bits for +, -, *, / of float32 values.)
    """
    t = timesteps(steps, eps)
    return torch.tensor([f32(1.0 - f32(t[i + 1] / t[i])) for i in range(steps)], dtype=torch.float32)  # (T,)


def origin_fill_probs(steps: int, eps: float = 1e-3) -> Tensor:
    """`origin`'s probability of filling a mask at step i: 1 - s / t, and 1 at the last step. (T,) float32, host.

    Dream's sampler: `p_transfer = 1 - s / t if i < steps - 1 else 1`, compared with a float32
    uniform draw; the same float32 ratios as `unmask_schedule`.
    """
    probs = step_ratios(steps, eps)  # (T,) float32
    probs[-1] = 1.0  # every remaining mask is filled at the last step
    return probs


def unmask_schedule(length: int, steps: int, eps: float = 1e-3) -> list[tuple[int, int]]:
    """(masks before step i, masks filled at step i) for i = 0..steps-1, computed on the host.

    n_fill = floor(n_masked * (1 - s / t)) for i < T - 1, and n_masked at the last step.
    Computed exactly as Dream's sampler does, `int(num_mask_token * (1 - s / t))` with torch
    tensors: the count times the float32 ratio is a float32 product, truncated. (Rounding
    the product in float64 instead gives, e.g., 110 * 0.0636364 = 6.99999988 -> 6 where
    Dream's float32 product is 7.0 -> 7: L = 110, T = 11, eps = 0.3.)
    """
    ratios = step_ratios(steps, eps).tolist()  # T float32 values, on the host: no device sync
    n_masked, schedule = length, []
    for i in range(steps):
        n_fill = n_masked if i == steps - 1 else int(f32(n_masked * ratios[i]))  # fl32(n * ratio), truncated
        schedule.append((n_masked, n_fill))
        n_masked -= n_fill
    return schedule


# --------------------------------------------------------------------------- one step


def token_distributions(logits: Tensor, temperature: float, top_p: float | None,
                        top_k: int | None) -> tuple[Tensor, Tensor]:
    """p = softmax(phi / tau) and q = filter(p): zeros outside the nucleus, not renormalised; tau = 0: no scaling.

    (..., V) -> (..., V), (..., V) float32. One softmax: the filter starts from p (and is p
    itself when top_p = 1 and top_k is off).
    """
    if temperature > 0:
        unfiltered = tempered_softmax(logits, temperature)  # (..., V) finite for any tau > 0
    else:
        unfiltered = torch.softmax(logits.float(), dim=-1)  # (..., V) greedy: only its argmax is used
    return unfiltered, filter_probs(unfiltered, top_p, top_k)  # (..., V), (..., V)


def token_probs(logits: Tensor, temperature: float, top_p: float | None, top_k: int | None) -> Tensor:
    """q = filter(softmax(phi / tau)), not renormalised: the weights tokens are drawn from. (..., V) -> (..., V)."""
    return token_distributions(logits, temperature, top_p, top_k)[1]


def sample_tokens(probs: Tensor, temperature: float, generator: torch.Generator | None) -> Tensor:
    """x ~ the draw weights (one uniform per row, `entrgi.sample_categorical`), or their argmax when tau = 0
    (ties: lowest id; no draw).

    (..., V) -> (...) long."""
    if temperature == 0:
        return argmax_lowest(probs)
    return sample_categorical(probs, generator)


def confidence(probs: Tensor, tokens: Tensor | None, alg: str, normalised: bool = False,
               overwrite: bool = False) -> Tensor:
    """Dream's unmasking confidence of drawing `tokens`, read from r = probs / sum(probs). (..., V), (...) -> (...).

    maskgit_plus: r(x);  topk_margin: r_(1) - r_(2);  entropy: -H(r) (`tokens` unused, may be None).
    normalised=True: `probs` already sums to 1 (p, an unfiltered softmax), so r = probs as it is.
    overwrite=True: `probs` is the caller's scratch; entropy's r log r is written over it (same values).
    """
    if not normalised:
        probs = probs / probs.sum(-1, keepdim=True)  # (..., V) r: the draw weights renormalised
    if alg == "maskgit_plus":
        return probs.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    if alg == "topk_margin":
        top2 = probs.topk(2, dim=-1).values  # (..., 2)
        return top2[..., 0] - top2[..., 1]
    if alg == "entropy":
        r_log_r = torch.xlogy(probs, probs, out=probs) if overwrite else torch.xlogy(probs, probs)  # (..., V)
        return r_log_r.sum(-1)  # -H(r); xlogy(r, r) = r log r, and 0 where r = 0
    raise ValueError(f"no confidence for alg {alg!r}")


def fill_by_confidence(score: Tensor, n_fill: int) -> Tensor:
    """The n_fill entries of largest confidence per row; among equal confidences the LOWEST position first.

    (N, n) -> (N, n) bool. The exactness rule of the fill: a descending sort that is stable
    (torch.sort(stable=True) keeps equal values in their order: documented, CPU and CUDA), so
    ties -- end-token draws at -inf under `eos_last`, equal values -- go to the lower positions
    of the block (which are in increasing response position). -0.0 is made +0.0 first (a radix
    sort could order the two zeros by their bits). Dream's sampler takes torch.topk, whose tie
    order is unspecified (docs/departures.md).
    """
    order = torch.sort(score + 0.0, dim=-1, descending=True, stable=True).indices  # (N, n) -0.0 + 0.0 = +0.0
    return torch.zeros_like(score, dtype=torch.bool).scatter_(1, order[:, :n_fill], True)  # (N, n)


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
    eos_id: int | list[int] | None,
    guidance: Guidance | None = None,
    generator: "torch.Generator | entrgi.UniformSource | None" = None,
    on_step: Callable[[int, Tensor], None] | None = None,
) -> Tensor:
    """Generate K responses of L tokens for each of B left-padded prompts. Returns (B, K, L).

    prompt_ids (B, P) long, prompt_keep (B, P) bool (False at left padding). `guidance`,
    if given, maps the denoiser's logits at the masked positions to guided logits at every
    step, and tokens are drawn from q_g = filter(softmax(guided / tau)); the unmasking confidence
    reads the distribution `config.confidence` names for `config.alg` (CONFIDENCE_READS; the
    module docstring). `eos_id` is the end-of-response token id, or a list of them (Dream-
    Instruct ends with `<|im_end|>` and pads with `<|endoftext|>`): with `config.eos_last` a
    draw of any gets confidence -inf. `on_step(i, ids (N, S))` is called after each step.
    All randomness comes from `generator`: a torch.Generator, an `rng.CounterRNG`
    with one stream per prompt (then a prompt's draws do not depend on its batch), or
    `rng.GivenUniforms` (the draws given: docs/draws.md lists their order and shapes).
    Raises NonFiniteError, after the last step, if any drawn token had probability NaN or 0
    (a broken distribution: NaN logits, or guidance overflowing at a tiny temperature).
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
    reads = None if origin else CONFIDENCE_READS[config.confidence][config.alg]  # the distribution c reads
    schedule = None if origin else unmask_schedule(L, T, config.eps)
    fill_prob = origin_fill_probs(T, config.eps).to(device)  # (T,) float32: origin's 1 - s/t per step; 1 at the last
    all_positions = repeat(torch.arange(L, device=device), "l -> n l", n=ids.shape[0])  # (N, L)
    never_drawn = torch.tensor([mask_id], device=device)  # (1,) vocabulary index of the mask token
    end_ids = torch.tensor([] if eos_id is None else [eos_id] if isinstance(eos_id, int) else list(eos_id),
                           dtype=torch.long, device=device)  # (E,) the end-of-response tokens

    healthy = torch.ones((), dtype=torch.bool, device=device)  # every drawn token had probability > 0 (not NaN)

    for i in range(T):
        response = ids[:, P:]  # (N, L)
        masked = response == mask_id  # (N, L)
        positions = all_positions if origin else masked_positions(masked, schedule[i][0])  # (N, n)
        block_masked = masked.gather(1, positions)  # (N, n)
        logits = denoise(ids, keep, positions + P)  # (N, n, V) in the denoiser's dtype: consumers upcast
        logits = logits.index_fill(-1, never_drawn, -math.inf)  # (N, n, V) a copy: the denoiser's output is its own
        p, q = token_distributions(logits, config.temperature, config.top_p, config.top_k)  # (N, n, V) x2
        score = None  # (N, n) confidence, once known
        if reads == "p":  # -H(p) of the unguided logits, before guidance moves them
            score = confidence(p, None, config.alg, normalised=True, overwrite=p is not q)  # (N, n) p is dropped next
        del p  # only q (the draw's, and the hook's) lives on through guidance
        q_g = q  # (N, n, V) the draw weights: the guided ones under guidance
        if guidance is not None:
            guided = guidance(logits, q, block_masked, positions, response)  # (N, n, V) phi_g
            if guided is not logits:  # (M = 0 returns the logits themselves)
                q_g = token_probs(guided, config.temperature, config.top_p, config.top_k)  # (N, n, V)
        tokens = sample_tokens(q_g, config.temperature, generator)  # (N, n) x
        healthy &= (q_g.gather(-1, tokens.unsqueeze(-1)) > 0).all()  # a NaN row fails: NaN > 0 is False
        if origin:
            draw = entrgi.uniform(block_masked.shape, generator, device)  # (N, n) origin's fill draw
            fill = block_masked & (draw < fill_prob[i])  # (N, n)
        else:
            if score is None:
                score = confidence(q_g if reads == "q_g" else q, tokens, config.alg)  # (N, n) renormalised inside
            if config.eos_last:
                score = torch.where(torch.isin(tokens, end_ids), -math.inf, score)  # (N, n)
            fill = fill_by_confidence(score, schedule[i][1])  # (N, n)
        placed = torch.where(fill, tokens, response.gather(1, positions))  # (N, n) others keep their token
        ids = torch.cat([ids[:, :P], response.scatter(1, positions, placed)], dim=1)  # (N, S)
        if on_step is not None:
            on_step(i, ids)
    if not healthy:  # one host sync, after the loop
        raise NonFiniteError("the draw distribution held NaN or inf at some denoising step: non-finite logits from "
                             f"the denoiser, or guidance overflowing (temperature {config.temperature:g}: the gradient "
                             "through softmax(phi / tau) grows as 1 / tau)")
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
    of the unguided logits over each prompt's masked positions is appended to it at every
    step: a (B,) device tensor, rows prompt-major (no synchronisation; NaN for a prompt with
    no masked position, as `origin`'s blocks can have: average over steps with nanmean).
    """

    def hook(logits: Tensor, probs: Tensor, masked: Tensor, positions: Tensor, response: Tensor) -> Tensor:
        fixed_embeds = embed_matrix[response]  # (N, L, d)
        index = repeat(positions, "n m -> n m d", d=fixed_embeds.shape[-1])  # (N, n, d)

        def reward_fn(block_embeds: Tensor, block_tokens: Tensor) -> Tensor:
            embeds = fixed_embeds.scatter(1, index, block_embeds)  # (N, L, d)
            tokens = response.scatter(1, positions, block_tokens)  # (N, L)
            return score_embeds(embeds, tokens)  # (N,)

        first_weight = None
        if weight_log is not None:
            first_weight = entropy_weight(logits)  # (N, n) guide's first Adam step reads the same w
            weight = rearrange(first_weight * masked, "(b k) n -> b (k n)", k=config.K)  # (B, K n)
            count = rearrange(masked, "(b k) n -> b (k n)", k=config.K).sum(-1)  # (B,)
            weight_log.append(weight.sum(-1) / count)  # (B,) NaN for a prompt with no masked position
        return guide(
            logits, masked, response.gather(1, positions), embed_matrix, reward_fn,
            method=config.method, steps=config.M, lr=config.eta, temperature=config.temperature,
            top_p=config.top_p, top_k=config.top_k, generator=generator, first_probs=probs,
            first_weight=first_weight,
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
