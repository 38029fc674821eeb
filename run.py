"""Run one reward-guided generation: a prompt in, K guided responses and their rewards out.

    python run.py --prompt "Write a haiku about gradients." --dllm tiny --reward-model tiny
    python run.py --prompt "..." --method entrgi --output result.json       # Dream-7B + Skywork, CUDA
    python run.py --prompt "..." --dry-run        # configs and tokenizers only: the plan, no weights

The pipeline: the denoiser (Dream-v0-Instruct-7B) generates K responses of L tokens by
masked diffusion (`sampler.generate`); at every denoising step the logits of the masked
positions are guided by M Adam steps on the reward model's score
(`sampler.reward_guidance` -> `entrgi.guide` -> `rewards.EmbeddingScorer`); finally each
response is decoded and scored on real tokens (`rewards.score_texts`): Top@1 = max over
K, Avg@N = mean over K. `--method bon` samples without guidance (Best-of-N). Loading the
checkpoints as they are shipped, and the tiny in-process models, is `models.py`.

Exit status: 0 on success, 2 on bad input (one line on stderr; no output file is written).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import tempfile
import time
import typing
from pathlib import Path

import torch
import transformers
from torch import Tensor

import models
import rewards
import sampler
from models import UsageError, first_line
from sampler import SamplingConfig


# --------------------------------------------------------------------------- command line


class _HelpFormatter(argparse.HelpFormatter):
    """Shows an option's default where it has one that its help does not already state."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default in (None, argparse.SUPPRESS, False) or action.required or "default" in text:
            return text
        return f"{text} (default: {action.default})"


def build_parser() -> argparse.ArgumentParser:
    """The CLI: model and run options, then one option per SamplingConfig field (defaults live there)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=_HelpFormatter)
    parser.add_argument("--prompt", required=True, help="the user prompt (required)")
    parser.add_argument("--dllm", default=models.DEFAULT_DLLM, help="denoiser: hub id, local directory, or tiny")
    parser.add_argument("--reward-model", default=models.DEFAULT_REWARD,
                        help="reward model: hub id (Skywork-Reward-V2-Qwen3-0.6B/-1.7B/-4B), local directory, or tiny")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the one torch.Generator behind every draw, in [0, 2**64)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="where the models run; auto = cuda when available, else cpu")
    parser.add_argument("--dtype", choices=("auto", "float32", "bfloat16", "float16"), default="auto",
                        help="model dtype; auto = bfloat16 on CUDA, float32 on CPU")
    parser.add_argument("--output", help="write the result as JSON to this file")
    parser.add_argument("--dry-run", action="store_true",
                        help="read the configs and tokenizers only (never the weights), print the plan, write nothing")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    hints = typing.get_type_hints(SamplingConfig)
    for f in dataclasses.fields(SamplingConfig):
        flag = "--" + f.name.replace("_", "-")
        help = f"{f.metadata['help']} [{f.metadata['source']}]"
        if hints[f.name] is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default, help=help)
            continue
        kind = {int: int, float: float, str: str, int | None: int}[hints[f.name]]
        parser.add_argument(flag, type=kind, default=f.default, choices=f.metadata.get("choices"), help=help)
    return parser


def config_from_args(args) -> SamplingConfig:
    try:
        return SamplingConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(SamplingConfig)}).validate()
    except ValueError as error:  # an out-of-range option
        raise UsageError(str(error)) from None


def resolve_device(choice: str) -> torch.device:
    if choice == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda was asked for but CUDA is not available")
    return torch.device("cuda" if choice == "auto" and torch.cuda.is_available() else "cpu" if choice == "auto" else choice)


def resolve_dtype(choice: str, device: torch.device) -> torch.dtype:
    if choice == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, choice)


def progress_bar(total: int, enabled: bool):
    """on_step callback advancing a tqdm bar on stderr (reads no tensor: no device sync)."""
    from tqdm import tqdm

    bar = tqdm(total=total, desc="denoising", file=sys.stderr, disable=not enabled, leave=True)

    def on_step(i: int, _ids: Tensor) -> None:
        bar.update(1)
        if i + 1 == total:
            bar.close()

    return on_step


def check_output_path(path: str | Path, flag: str = "--output") -> Path:
    """Fail before any work if `path` cannot become a file; returns it as a Path.

    Bad: an empty path, a directory, a file standing where a directory must be, a place
    where nothing can be created (a read-only or virtual file system such as /proc).
    Nothing is left behind by the check.
    """
    if str(path).strip() == "":
        raise UsageError(f"{flag} is empty")
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{flag} {path} is a directory")
    ancestor = path.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise UsageError(f"{flag} {path}: {ancestor} is a file, not a directory")
    try:
        with tempfile.TemporaryFile(dir=ancestor):
            pass
    except OSError as error:
        raise UsageError(f"{flag} {path} cannot be written: {first_line(error)}") from None
    return path


def write_json_atomically(path: Path, payload: dict) -> None:
    """Write to a temporary file beside `path`, then rename: no partial file, ever."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(payload, handle, indent=2)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def decode_responses(tokenizer, tokens: Tensor, end_ids) -> list[str]:
    """Each row's text up to its first end token, special tokens dropped. (N, L) -> N strings."""
    ends = set(end_ids)
    texts = []
    for row in tokens.tolist():
        cut = next((i for i, t in enumerate(row) if t in ends), len(row))
        texts.append(tokenizer.decode(row[:cut], skip_special_tokens=True))
    return texts


# --------------------------------------------------------------------------- the plan (no weights)


@dataclasses.dataclass
class Plan:
    """Everything a run needs that the configs and tokenizers tell, checked before any weight is read."""

    config: SamplingConfig
    dllm: models.Checkpoint
    reward: models.Checkpoint
    ids: models.TokenIds
    bridge: rewards.VocabBridge
    reading: rewards.ResponseReading
    prompts: list[str]
    prompt_ids: list[list[int]]  # the denoiser's chat-templated prompts
    reward_pieces: list[tuple[list[int], list[int]]]  # R's (prefix, suffix) per prompt


def check_seed(seed: int, flag: str = "--seed") -> None:
    if not 0 <= seed < 2**64:  # torch.Generator.manual_seed takes [-2**63, 2**64); negatives alias 2**64 + seed
        raise UsageError(f"{flag} must be in [0, 2**64), got {seed}")


def make_plan(dllm_name: str, reward_name: str, prompts: list[str], config: SamplingConfig) -> Plan:
    """Read both checkpoints' configs and tokenizers and check every prompt against both contexts."""
    dllm = models.denoiser_checkpoint(dllm_name)
    ids = models.token_ids(dllm.tokenizer, dllm.config, dllm.generation_config)
    reward = models.reward_checkpoint(reward_name)
    L = config.max_new_tokens
    dllm_context = dllm.config.max_position_embeddings
    reward_context = reward.config.max_position_embeddings
    prompt_ids, pieces = [], []
    for prompt in prompts:
        tokens = dllm.tokenizer(models.prompt_text(dllm.tokenizer, prompt), add_special_tokens=False)["input_ids"]
        if len(tokens) + L > dllm_context:
            raise UsageError(f"prompt ({len(tokens)} tokens) + max-new-tokens ({L}) exceeds the denoiser's context "
                             f"of {dllm_context} tokens")
        prefix, suffix = rewards.chat_pieces(reward.tokenizer, prompt)
        if len(prefix) + L + len(suffix) > reward_context:
            raise UsageError(f"the reward model reads {len(prefix)} + {L} + {len(suffix)} tokens (chat prefix, "
                             f"response, suffix), beyond its context of {reward_context}")
        prompt_ids.append(tokens)
        pieces.append((prefix, suffix))
    bridge = rewards.vocab_bridge(dllm.tokenizer, reward.tokenizer, dllm.config.vocab_size)
    reading = rewards.response_reading(dllm.config.vocab_size, ids.ends, ids.pad, dllm.tokenizer, bridge)
    return Plan(config, dllm, reward, ids, bridge, reading, prompts, prompt_ids, pieces)


def describe_plan(plan: Plan, dtype: torch.dtype) -> list[str]:
    """The plan as printed by --dry-run: model classes, special ids, the bridge, R's chat pieces, memory."""
    d, r, ids, config = plan.dllm, plan.reward, plan.ids, plan.config
    name = lambda i: d.tokenizer.convert_ids_to_tokens(i)  # noqa: E731
    unmapped = [name(i) for i in range(plan.bridge.tokenizer_size) if plan.bridge.index[i] < 0]
    shown = ", ".join(unmapped[:20]) + (f", ... and {len(unmapped) - 20} more" if len(unmapped) > 20 else "")
    prefix, suffix = plan.reward_pieces[0]
    reward_tokens = config.max_new_tokens + len(suffix)
    peak = models.predict_peak_bytes(d, r, rows=config.K * len(plan.prompts), length=config.max_new_tokens,
                                     reward_tokens=reward_tokens, dtype=dtype)
    gib = lambda n: f"{n / 2**30:.2f} GiB"  # noqa: E731
    return [
        f"denoiser      {d.name}: {d.model_class.__name__} (no remote code), {d.config.vocab_size} embedding rows, "
        f"{len(d.tokenizer)} tokenizer tokens ({type(d.tokenizer).__name__}), context {d.config.max_position_embeddings}"
        + (f"; config.json's model_type {d.model_type}" if d.model_type else ""),
        f"  mask {name(ids.mask)} = {ids.mask}; ends {', '.join(f'{name(i)} = {i}' for i in ids.ends)}; pad "
        + (f"{name(ids.pad)} = {ids.pad}" if ids.pad is not None else "none"),
        f"reward model  {r.name}: {type(r.config).__name__.replace('Config', '')} sequence classifier, "
        f"{r.config.num_labels} output, {r.config.vocab_size} embedding rows, {len(r.tokenizer)} tokenizer tokens, "
        f"context {r.config.max_position_embeddings}",
        f"vocab bridge  {plan.bridge.tokenizer_size - plan.bridge.unmapped} of {plan.bridge.tokenizer_size} denoiser "
        f"tokens mapped ({100 * plan.bridge.coverage:.2f} %); unmapped: {shown or 'none'}",
        f"reward prefix {len(prefix)} tokens: {r.tokenizer.decode(prefix)!r}",
        f"reward suffix {len(suffix)} tokens: {r.tokenizer.decode(suffix)!r}",
        f"prompt        {len(plan.prompt_ids[0])} tokens in the denoiser's chat template, + {config.max_new_tokens} new",
        f"peak memory   {gib(peak['total'])} predicted for K = {config.K}, L = {config.max_new_tokens}, "
        f"{str(dtype).removeprefix('torch.')}: weights {gib(peak['weights'])} + vocabulary blocks "
        f"{gib(peak['vocab_blocks'])} + reward activations {gib(peak['reward_activations'])}",
    ]


# --------------------------------------------------------------------------- one generation


@dataclasses.dataclass
class Loaded:
    """The plan's models with their weights, on `device`, and what guidance reads from them."""

    plan: Plan
    dllm: torch.nn.Module
    reward: torch.nn.Module
    embed_matrix: Tensor  # (V, d) R's embedding rows in the denoiser's vocabulary
    device: torch.device
    dtype: torch.dtype


def load(plan: Plan, device: torch.device, dtype: torch.dtype) -> Loaded:
    dllm = models.load_weights(plan.dllm, dtype).to(device)
    reward = models.load_weights(plan.reward, dtype).to(device)
    embed_matrix = rewards.bridged_embeddings(reward.get_input_embeddings().weight, plan.bridge)  # (V, d)
    return Loaded(plan, dllm, reward, embed_matrix, device, dtype)


def generate(loaded: Loaded, prompt: str, prompt_ids: list[int], config: SamplingConfig, seed: int,
             progress: bool) -> dict:
    """K responses to one prompt, their two rewards, and the diagnostics of the record."""
    plan, device = loaded.plan, loaded.device
    prompt_tensor = torch.tensor([prompt_ids], device=device)  # (1, P)
    generator = torch.Generator(device=device).manual_seed(seed)
    scorer = rewards.EmbeddingScorer(loaded.reward, plan.reward.tokenizer, [prompt], K=config.K,
                                     reading=plan.reading)
    weight_log: list[Tensor] = []
    guidance = None
    if config.guided:
        guidance = sampler.reward_guidance(scorer, loaded.embed_matrix, config, generator, weight_log)
    with torch.no_grad():
        tokens = sampler.generate(sampler.dream_denoiser(loaded.dllm), prompt_tensor,
                                  torch.ones_like(prompt_tensor, dtype=torch.bool), config, mask_id=plan.ids.mask,
                                  eos_id=list(plan.ids.ends), guidance=guidance, generator=generator,
                                  on_step=progress_bar(config.T, progress))[0]  # (K, L)
        token_scores = scorer(loaded.embed_matrix[tokens], tokens)  # (K,) the token sequences as guidance reads them
    responses = decode_responses(plan.dllm.tokenizer, tokens, plan.ids.ends)
    scores = rewards.score_texts(loaded.reward, plan.reward.tokenizer, [prompt] * config.K, responses).tolist()
    best = max(range(config.K), key=scores.__getitem__)
    return {
        "responses": responses,
        "rewards": scores,
        "token_rewards": token_scores.tolist(),
        "response_tokens": tokens.tolist(),
        "top1_reward": max(scores),
        "avgN_reward": sum(scores) / len(scores),
        "best_response": responses[best],
        "mean_entropy_weight": torch.stack(weight_log).mean().item() if weight_log else None,
    }


def versions() -> dict:
    return {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__}


def run(args) -> dict:
    """One experiment from parsed arguments; returns the result record (see README, "Output").

    With --dry-run, returns {"plan": [lines]} without reading any weight.
    """
    config = config_from_args(args)
    if not args.prompt.strip():
        raise UsageError("the prompt is empty")
    check_seed(args.seed)
    output = check_output_path(args.output) if args.output is not None and not args.dry_run else None
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    started = time.perf_counter()
    plan = make_plan(args.dllm, args.reward_model, [args.prompt], config)
    if args.dry_run:
        return {"plan": describe_plan(plan, dtype)}
    loaded = load(plan, device, dtype)
    result = generate(loaded, args.prompt, plan.prompt_ids[0], config, args.seed, not args.no_progress)
    return {
        "config": {
            **dataclasses.asdict(config), "prompt": args.prompt, "dllm": args.dllm, "reward_model": args.reward_model,
            "seed": args.seed, "device": str(device), "dtype": str(dtype).removeprefix("torch."),
            "versions": versions(),
        },
        **result,
        "wall_seconds": time.perf_counter() - started,
        "vocab_bridge": {"coverage": plan.bridge.coverage, "unmapped": plan.bridge.unmapped,
                         "tokenizer_size": plan.bridge.tokenizer_size},
        "output": str(output) if output is not None else None,
    }


def report(result: dict) -> None:
    """Each response with its discrete reward, then Top@1 and Avg@N, on stdout."""
    for k, (text, score, tokens) in enumerate(zip(result["responses"], result["rewards"], result["token_rewards"])):
        print(f"--- response {k}  reward {score:+.4f}  (as tokens {tokens:+.4f})\n{text}")
    print(f"Top@1 {result['top1_reward']:+.4f}   Avg@N {result['avgN_reward']:+.4f}   "
          f"(method {result['config']['method']}, K={result['config']['K']})")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = run(args)
    except UsageError as error:  # bad input only: any other exception is a bug and keeps its traceback
        print(f"error: {first_line(error)}", file=sys.stderr)
        return 2
    if "plan" in result:
        print("\n".join(result["plan"]))
        return 0
    report(result)
    output = result.pop("output")
    if output is not None:
        write_json_atomically(Path(output), result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
