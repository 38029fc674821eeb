"""Run one reward-guided generation: a prompt in, K guided responses and their rewards out.

    python run.py --prompt "Write a haiku about gradients." --dllm tiny --reward-model tiny
    python run.py --prompt "..." --method entrgi --output result.json       # Dream-7B + Skywork, CUDA
    python run.py --prompt "..." --dry-run        # configs and tokenizers only: the plan, no weights
    python run.py --prompts prompts.jsonl --output-dir out --seeds 0,1,2   # the experiment (docs/outputs.md)

The pipeline: the denoiser (Dream-v0-Instruct-7B) generates K responses of L tokens by
masked diffusion (`sampler.generate`); at every denoising step the logits of the masked
positions are guided by M Adam steps on the reward model's score
(`sampler.reward_guidance` -> `entrgi.guide` -> `rewards.EmbeddingScorer`); finally each
response is decoded and scored on real tokens (`rewards.score_texts`): Top@1 = max over
K, Avg@N = mean over K. `--method bon` samples without guidance (Best-of-N). Loading the
checkpoints as they are shipped, and the tiny in-process models, is `models.py`.

Exit status: 0 on success, 2 on bad input (one line on stderr; no output file is written),
130 on Ctrl-C (one line: what is kept, and how to go on); under torchrun, 1 on a rank whose
rank 0 failed (rank 0 reports the error).
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

if __package__:  # installed: imported as entrgi_ref.run (docs/install.md); its siblings live beside it, first
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch
import transformers
from torch import Tensor

import api
import experiment
import models
import prompt_sets
import rewards
import sampler
import summaries
from models import UsageError, first_line
from rng import CounterRNG
from sampler import SamplingConfig

EXPERIMENT_METHODS = ("entrgi", "aps", "expectation", "bon")
DEFAULT_BATCH_SIZE = 4


# --------------------------------------------------------------------------- command line


class _HelpFormatter(argparse.HelpFormatter):
    """Shows an option's default where it has one that its help does not already state."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default is None or action.default is False or action.default == argparse.SUPPRESS \
                or action.required or "(default:" in text:
            return text
        return f"{text} (default: {action.default})"


class _Parser(argparse.ArgumentParser):
    """argparse, with its usage errors as the one `error:` line (exit 2) that every other bad input gets."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The CLI: model and run options, then one option per SamplingConfig field (defaults live there)."""
    parser = _Parser(description=__doc__.split("\n\n")[0], formatter_class=_HelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--prompt", help="the user prompt: one run (this or --prompts is required)")
    source.add_argument("--prompts", metavar="FILE",
                        help="the experiment: every prompt of FILE (.jsonl with a \"prompt\" field, or .txt, one a line)")
    source.add_argument("--dataset", metavar="NAME|PATH",
                        help=f"the experiment on a benchmark's rows, chosen per seed as the paper does: "
                             f"{', '.join(prompt_sets.PRESETS)}, a hub id, a save_to_disk directory, or "
                             f"parquet/jsonl files (docs/experiment.md)")
    source.add_argument("--report", nargs="+", metavar="DIR",
                        help="merge the summaries of finished run directories into one report in --output-dir "
                             "(summary.json, summary.md, summary.png); no model is loaded")
    parser.add_argument("--dllm", default=models.DEFAULT_DLLM, help="denoiser: hub id, local directory, or tiny")
    parser.add_argument("--reward-model", default=models.DEFAULT_REWARD,
                        help="reward model: hub id (Skywork-Reward-V2-Qwen3-0.6B/-1.7B/-4B), local directory, or tiny")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of every draw, in [0, 2**64): of the one torch.Generator of a --prompt run; "
                             "the default of --seeds for --prompts")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="where the models run; auto = cuda when available, else cpu")
    parser.add_argument("--dtype", choices=("auto", "float32", "bfloat16", "float16"), default="auto",
                        help="model dtype; auto = bfloat16 on CUDA, float32 on CPU")
    parser.add_argument("--output", help="write the result as JSON to this file")
    parser.add_argument("--dry-run", action="store_true",
                        help="read the configs and tokenizers only (never the weights), print the plan, write nothing")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    experiment_options(parser.add_argument_group("the experiment (--prompts, --dataset)"))
    dataset_options(parser.add_argument_group("the prompts of --dataset"))
    hints = typing.get_type_hints(SamplingConfig)
    for f in dataclasses.fields(SamplingConfig):
        help = f"{f.metadata['help']} [{f.metadata['source']}]"
        if hints[f.name] is bool:
            parser.add_argument(flag(f.name), action=argparse.BooleanOptionalAction, default=f.default, help=help)
            continue
        kind = {int: int, float: float, str: str, int | None: int}[hints[f.name]]
        parser.add_argument(flag(f.name), type=kind, default=f.default, choices=f.metadata.get("choices"), help=help)
    return parser


def flag(field: str) -> str:
    """The option of a SamplingConfig field (top_p -> --top-p): what the CLI's errors call it."""
    return "--" + field.replace("_", "-")


def experiment_options(group) -> None:
    """The options of `--prompts` runs (all None/False by default, so that a single run can refuse them)."""
    group.add_argument("--output-dir", metavar="DIR", help="records.jsonl, config.json and the summary (summary.json, .md, .png, .plot.json) go here; "
                       "with --report, the merged summary")
    group.add_argument("--methods", help=f"comma-separated methods (default: {','.join(EXPERIMENT_METHODS)})")
    group.add_argument("--seeds", help="comma-separated seeds (default: --seed)")
    group.add_argument("--batch-size", type=int, metavar="B", help="prompts per batch: B x K rows per forward "
                       f"(default: {DEFAULT_BATCH_SIZE}); a prompt's result does not depend on it")
    group.add_argument("--resume", action="store_true", help="continue the run in DIR: skip its complete records")
    group.add_argument("--eval-reward-model", metavar="ID",
                       help="also score every final response with this reward model (it does not guide)")


def dataset_options(group) -> None:
    """The options of `--dataset` (None by default, so that other runs can refuse them; prompt_sets has the rule)."""
    group.add_argument("--split", help="the split to read (default: the benchmark's, else train)")
    group.add_argument("--prompt-field", metavar="FIELD", help="the field holding the prompt (default: the "
                       "benchmark's, else prompt)")
    group.add_argument("--subset-size", type=int, metavar="N", help="per seed, the first N rows of "
                       f"shuffle(seed) (default: {prompt_sets.DEFAULT_SUBSET_SIZE}, the authors')")
    group.add_argument("--subset-field", metavar="FIELD", help="then keep the rows whose FIELD equals --subset-name")
    group.add_argument("--subset-name", metavar="NAME", help="the value --subset-field must have")
    group.add_argument("--subset-seed", type=int, metavar="S", help="draw one selection with shuffle(S) and run "
                       "every seed on it (the paired design; default: each seed draws its own, as the authors do)")


DATASET_FLAGS = ("split", "prompt_field", "subset_size", "subset_field", "subset_name", "subset_seed")


def config_from_args(args, **replaced) -> SamplingConfig:
    """The SamplingConfig of the parsed options (`replaced` fields set instead, e.g. one of --methods); an
    out-of-range value is a UsageError naming the option (--methods where the method came from it)."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(SamplingConfig)} | replaced
    name = lambda field: "--methods" if field == "method" and "method" in replaced else flag(field)  # noqa: E731
    try:
        return SamplingConfig(**values).validate(name)
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
    """Write to a temporary file beside `path`, then rename: no partial file, ever; the file gets the
    mode an ordinary open() gives a new file (experiment.atomic_write, the one writer)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    experiment.atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(payload, indent=2)))


def decode_responses(tokenizer, tokens: Tensor, end_ids) -> list[str]:
    """Each row's text up to its first end token, decoded as Dream decodes (`rewards.decode_text`). (N, L) -> N strings."""
    ends = set(end_ids)
    texts = []
    for row in tokens.tolist():
        cut = next((i for i, t in enumerate(row) if t in ends), len(row))
        texts.append(rewards.decode_text(tokenizer, row[:cut]))
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


def make_plan(dllm_name: str, reward_name: str, prompts: list[str], config: SamplingConfig,
              labels: list[str] | None = None) -> Plan:
    """Read both checkpoints' configs and tokenizers and check every prompt against both contexts."""
    dllm = models.denoiser_checkpoint(dllm_name)
    ids = models.token_ids(dllm.tokenizer, dllm.config, dllm.generation_config)
    reward = models.reward_checkpoint(reward_name)
    prompt_ids, pieces = tokenize_prompts(dllm, reward, prompts, config.max_new_tokens, labels)
    bridge = rewards.vocab_bridge(dllm.tokenizer, reward.tokenizer, dllm.config.vocab_size)
    reading = rewards.response_reading(dllm.config.vocab_size, ids.ends, ids.pad, dllm.tokenizer, bridge)
    return Plan(config, dllm, reward, ids, bridge, reading, prompts, prompt_ids, pieces)


def tokenize_prompts(dllm: models.Checkpoint, reward: models.Checkpoint, prompts: list[str], L: int,
                     labels: list[str] | None = None) -> tuple[list[list[int]], list[tuple[list[int], list[int]]]]:
    """Each prompt in the denoiser's chat template, and R's (prefix, suffix) around its response, checked against
    both contexts with L new tokens (UsageError naming `labels[i]` otherwise)."""
    dllm_context = dllm.config.max_position_embeddings
    reward_context = reward.config.max_position_embeddings
    prompt_ids, pieces = [], []
    for index, prompt in enumerate(prompts):
        where = f"{labels[index]}: " if labels is not None else ""  # which prompt, in an error
        tokens = dllm.tokenizer(models.prompt_text(dllm.tokenizer, prompt), add_special_tokens=False)["input_ids"]
        if len(tokens) + L > dllm_context:
            raise UsageError(f"{where}prompt ({len(tokens)} tokens) + --max-new-tokens ({L}) exceeds the denoiser's context "
                             f"of {dllm_context} tokens")
        prefix, suffix = rewards.chat_pieces(reward.tokenizer, prompt)
        if len(prefix) + L + len(suffix) > reward_context:
            raise UsageError(f"{where}the reward model reads {len(prefix)} + {L} + {len(suffix)} tokens (chat prefix, "
                             f"response, suffix), beyond its context of {reward_context}")
        prompt_ids.append(tokens)
        pieces.append((prefix, suffix))
    return prompt_ids, pieces


def check_batchable(pieces: list[tuple[list[int], list[int]]], evaluator: models.Checkpoint | None,
                    prompts: list[str], labels: list[str], L: int) -> None:
    """What prompts run together need beyond `tokenize_prompts`: one reward suffix for all (the batched
    scorer appends one after every response), and room in the eval reward model's context, if there is one
    (UsageError naming `labels[i]` otherwise). The CLI and api.Session check this before any work."""
    if len({tuple(suffix) for _, suffix in pieces}) > 1:
        raise UsageError("the reward model's chat template ends different prompts' turns differently")
    if evaluator is None:
        return
    context = evaluator.config.max_position_embeddings
    for prompt, label in zip(prompts, labels):
        prefix, suffix = rewards.chat_pieces(evaluator.tokenizer, prompt)
        if len(prefix) + L + len(suffix) > context:
            raise UsageError(f"{label}: the eval reward model reads {len(prefix)} + {L} + {len(suffix)} tokens, "
                             f"beyond its context of {context}")


def describe_plan(plan: Plan, dtype: torch.dtype, batch: int = 1, resident: tuple = ()) -> list[str]:
    """The plan as printed by --dry-run: model classes, special ids, the bridge, R's chat pieces, and the
    predicted peak memory of a batch of `batch` prompts (B x K rows), with the `resident` checkpoints' weights
    (an eval reward model) counted too."""
    d, r, ids, config = plan.dllm, plan.reward, plan.ids, plan.config
    name = lambda i: d.tokenizer.convert_ids_to_tokens(i)  # noqa: E731
    unmapped = name((plan.bridge.index[:plan.bridge.tokenizer_size] < 0).nonzero().flatten().tolist())
    shown = ", ".join(unmapped[:20]) + (f", ... and {len(unmapped) - 20} more" if len(unmapped) > 20 else "")
    prefix, suffix = plan.reward_pieces[0]
    reward_tokens = config.max_new_tokens + len(suffix)
    peak = models.predict_peak_bytes(d, r, rows=config.K * batch, length=config.max_new_tokens,
                                     reward_tokens=reward_tokens, dtype=dtype,
                                     prefix_tokens=max(len(prefix) for prefix, _ in plan.reward_pieces),
                                     resident=resident)
    lengths = [len(ids) for ids in plan.prompt_ids]
    gib = lambda n: f"{n / 2**30:.3g} GiB"  # noqa: E731
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
        (f"prompt        {lengths[0]} tokens in the denoiser's chat template, + {config.max_new_tokens} new"
         if len(lengths) == 1 else f"prompts       {len(lengths)}, {min(lengths)} to {max(lengths)} tokens in the "
         f"denoiser's chat template, + {config.max_new_tokens} new"),
        f"peak memory   {gib(peak['total'])} predicted for B = {batch} x K = {config.K}, L = {config.max_new_tokens}, "
        f"{str(dtype).removeprefix('torch.')}: weights {gib(peak['weights'])} + vocabulary blocks "
        f"{gib(peak['vocab_blocks'])} + reward activations {gib(peak['reward_activations'])} + prefix cache "
        f"{gib(peak['prefix_cache'])}",
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
    """K responses to one prompt, their two rewards, and the diagnostics of the record: `generate_batch` with
    B = 1 and one torch.Generator seeded with `seed`."""
    generator = torch.Generator(device=loaded.device).manual_seed(seed)
    counts = {"denoiser_forwards": 0, "reward_forward_backward": 0, "reward_forwards": 0}
    return generate_batch(loaded, [prompt], [prompt_ids], config, generator, counts,
                          on_step=progress_bar(config.T, progress))[0]


def generate_batch(loaded: Loaded, prompts: list[str], prompt_ids: list[list[int]], config: SamplingConfig,
                   rng: CounterRNG | torch.Generator, counts: dict, on_step=None, eval_reward=None) -> list[dict]:
    """K responses to each of B prompts at once: B x K rows in every denoiser forward and reward pass, left-padded.

    Row b * K + k is trajectory k of prompt b. Every draw comes from `rng`: an
    `rng.CounterRNG` with one stream per prompt, so that a prompt's record does not depend
    on its batch (docs/outputs.md), or a torch.Generator (`generate`, B = 1).
    `counts` gains the forwards made: denoiser_forwards, reward_forward_backward (guidance:
    each one a forward and a backward), reward_forwards (the final scores, no gradient).
    `eval_reward` = (model, tokenizer) also scores the final responses (eval_* fields).
    """
    plan, device, K, B = loaded.plan, loaded.device, config.K, len(prompts)
    ids, keep = rewards.left_pad(prompt_ids, plan.ids.pad if plan.ids.pad is not None else plan.ids.mask)  # (B, P)
    ids, keep = ids.to(device), keep.to(device)
    scorer = rewards.EmbeddingScorer(loaded.reward, plan.reward.tokenizer, prompts, K=K, reading=plan.reading)
    denoise = sampler.dream_denoiser(loaded.dllm)

    def counted_denoise(*inputs: Tensor) -> Tensor:
        counts["denoiser_forwards"] += 1
        return denoise(*inputs)

    def counted_score(embeds: Tensor, tokens: Tensor) -> Tensor:
        counts["reward_forward_backward"] += 1
        return scorer(embeds, tokens)

    weights: list[Tensor] = []  # per step, (B,): mean w over each prompt's masked positions
    guidance = None
    if config.guided:
        guidance = sampler.reward_guidance(counted_score, loaded.embed_matrix, config, rng, weights)

    with torch.no_grad():
        tokens = sampler.generate(counted_denoise, ids, keep, config, mask_id=plan.ids.mask,
                                  eos_id=list(plan.ids.ends), guidance=guidance, generator=rng,
                                  on_step=on_step).flatten(0, 1)  # (N, L)
        token_scores = scorer(loaded.embed_matrix[tokens], tokens).reshape(B, K)  # (B, K)
    responses = decode_responses(plan.dllm.tokenizer, tokens, plan.ids.ends)
    repeated = [p for p in prompts for _ in range(K)]
    scores = rewards.score_texts(loaded.reward, plan.reward.tokenizer, repeated, responses).reshape(B, K)  # (B, K)
    counts["reward_forwards"] += 2
    evals = None
    if eval_reward is not None:
        evals = rewards.score_texts(*eval_reward, repeated, responses).reshape(B, K).tolist()  # (B, K)
        counts["reward_forwards"] += 1
    mean_weights = torch.stack(weights).nanmean(0).tolist() if weights else [None] * B  # (B,) over steps with masks
    token_lists, score_lists, tokens_of = token_scores.tolist(), scores.tolist(), tokens.reshape(B, K, -1).tolist()
    results = []
    for b in range(B):
        texts, rewards_b = responses[b * K:(b + 1) * K], score_lists[b]
        best = max(range(K), key=rewards_b.__getitem__)
        result = {"responses": texts, "rewards": rewards_b, "token_rewards": token_lists[b],
                  "response_tokens": tokens_of[b], "top1_reward": max(rewards_b),
                  "avgN_reward": sum(rewards_b) / K, "best_response": texts[best],
                  "mean_entropy_weight": mean_weights[b]}
        if evals is not None:
            result.update(eval_rewards=evals[b], eval_top1_reward=max(evals[b]), eval_avgN_reward=sum(evals[b]) / K)
        results.append(result)
    return results


def versions() -> dict:
    return {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__}


def run(args) -> dict:
    """One experiment from parsed arguments; returns the result record (see docs/outputs.md, "One prompt").

    With --dry-run, returns {"plan": [lines]} without reading any weight.
    """
    config = config_from_args(args)
    given = [dest for dest in ("output_dir", "methods", "seeds", "batch_size", "resume", "eval_reward_model")
             if getattr(args, dest) not in (None, False)]
    if given:
        raise UsageError(f"{flag(given[0])} is for --prompts runs")
    refuse_dataset_options(args, "--prompt")
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


# --------------------------------------------------------------------------- the experiment (--prompts)


def parse_list(text: str | None, default: list, flag: str, kind=str) -> list:
    if text is None:
        return list(default)
    try:
        items = [kind(item.strip()) for item in text.split(",")]
    except ValueError:
        raise UsageError(f"{flag} must be a comma-separated list of {kind.__name__}s, got {text!r}") from None
    if not items or len(set(items)) != len(items) or any(item == "" for item in items):
        raise UsageError(f"{flag} must list distinct, non-empty items, got {text!r}")
    return items


def experiment_settings(args, config: SamplingConfig, device: torch.device, dtype: torch.dtype) -> dict:
    """Every setting that changes a record's result: a record's key is (prompt id, method, seed) plus their
    fingerprint. Not in it: the batch size and the number of processes (results do not depend on them)."""
    return api.settings(args.dllm, args.reward_model, args.eval_reward_model, config, device, dtype)


def peak_memory(device: torch.device) -> tuple[int, str]:
    """(bytes, what they measure): the batch's peak allocation on CUDA, the process's peak RSS on the CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device), "cuda_max_memory_allocated (this batch)"
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "cpu_max_rss (this process so far)"


def refuse_dataset_options(args, what: str) -> None:
    given = [dest for dest in DATASET_FLAGS if getattr(args, dest) is not None]
    if given:
        raise UsageError(f"{flag(given[0])} is for --dataset runs, not {what}")


def prompt_selection(args, seeds: list[int]) -> tuple[prompt_sets.Source | None, dict[int, list]]:
    """(the dataset's Source or None, {seed: its prompts}): a prompts file gives every seed all its prompts."""
    if args.dataset is None:
        refuse_dataset_options(args, "--prompts")
        prompts = experiment.read_prompts(args.prompts)
        return None, {seed: prompts for seed in seeds}
    source = prompt_sets.resolve(args.dataset, args.split, args.prompt_field, args.subset_size, args.subset_field,
                                 args.subset_name, args.subset_seed)
    if source.subset_seed is not None:
        check_seed(source.subset_seed, "--subset-seed")
    return source, prompt_sets.selections(source, seeds)


def distinct_prompts(selection: dict[int, list]) -> list:
    seen: dict[str, object] = {}
    for prompts in selection.values():
        for prompt in prompts:
            seen.setdefault(prompt.key, prompt)
    return list(seen.values())


def describe_selection(plan: Plan, source, selection: dict[int, list], prompts: list) -> list[str]:
    """--dry-run's account of the selection: count per seed, and the longest prompt against both contexts."""
    L = plan.config.max_new_tokens
    lines = []
    if source is not None:
        rule = f"the first {source.subset_size} rows of shuffle(seed)"
        if source.subset_field is not None:
            rule += f", then {source.subset_field} == {source.subset_name!r}"
        if source.subset_seed is not None:
            rule += f"; every seed runs the selection of seed {source.subset_seed} (paired)"
        lines.append(f"dataset       {source.name} ({source.path}, split {source.split}, field {source.prompt_field}): "
                     f"{rule}")
    counts = ", ".join(f"{seed}: {len(chosen)}" for seed, chosen in selection.items())
    lines.append(f"selection     prompts per seed {counts} ({len(prompts)} distinct)")
    d = max(range(len(prompts)), key=lambda i: len(plan.prompt_ids[i]))
    r = max(range(len(prompts)), key=lambda i: sum(map(len, plan.reward_pieces[i])))
    prefix, suffix = plan.reward_pieces[r]
    lines.append(f"longest       denoiser: {prompts[d].where}, {len(plan.prompt_ids[d])} + {L} new = "
                 f"{len(plan.prompt_ids[d]) + L} of {plan.dllm.config.max_position_embeddings} tokens; reward model: "
                 f"{prompts[r].where}, {len(prefix)} + {L} + {len(suffix)} = {len(prefix) + L + len(suffix)} of "
                 f"{plan.reward.config.max_position_embeddings}")
    return lines


H100_GUIDED_STEP_S = 0.490  # benchmarks/RESULTS.md: one guided step, B = 1, K = 4, L = 128, Dream-7B + Skywork-1.7B
H100_UNGUIDED_STEP_S = 0.051  # the same run's denoiser forward (41 ms) and sampling (10 ms)


def describe_work(config: SamplingConfig, methods: list[str], selection: dict[int, list]) -> str:
    """--dry-run's estimate of the run's length from the one H100 measurement (B = 1; an estimate, not a measurement)."""
    per_method = sum(len(prompts) for prompts in selection.values())  # records per method
    guided = sum(per_method for m in methods if m != "bon")
    guided_step = H100_UNGUIDED_STEP_S + (H100_GUIDED_STEP_S - H100_UNGUIDED_STEP_S) * config.M / 3  # guidance ~ M
    seconds = config.T * (guided * guided_step + (len(methods) * per_method - guided) * H100_UNGUIDED_STEP_S)
    return (f"work          {len(methods) * per_method} records ({len(methods)} methods x {per_method}); about "
            f"{seconds / 3600:.3g} h on one H100 at B = 1, /processes under torchrun (estimate: docs/experiment.md)")


def run_experiment(args) -> int:
    """Every (prompt, method, seed) of `--prompts` into `--output-dir`; exit status as `main`'s."""
    ddp = experiment.Distributed.from_env()
    try:
        return experiment_loop(args, ddp)
    except KeyboardInterrupt:  # Ctrl-C (every rank gets it under torchrun; rank 0 speaks)
        if ddp.rank == 0:
            print(("" if args.no_progress else "\n") + interrupted(args), file=sys.stderr)  # after the bar's line
        return 130
    except (UsageError, sampler.NonFiniteError) as error:
        if not isinstance(error, experiment.Rank0Error):  # rank 0 reports its own errors, other ranks theirs
            where = f"rank {ddp.rank}: " if ddp.rank > 0 else ""
            print(f"error: {where}{first_line(error)}", file=sys.stderr)
        return 2 if not isinstance(error, experiment.Rank0Error) or error.usage else 1
    finally:
        experiment.unlock_all()
        ddp.close()


def interrupted(args) -> str:
    """The line a Ctrl-C prints: what is kept, and how to go on."""
    if args.prompts is None and args.dataset is None:
        return "interrupted: nothing written (a --prompt run writes its result only at its end); run it again"
    directory = Path(args.output_dir) if args.output_dir is not None and not args.dry_run else None
    if directory is None or not directory.is_dir():
        return "interrupted before anything was written; run the command again"
    try:
        kept = len(experiment.Store(directory).read())
    except (OSError, UsageError):
        kept = "the"
    return (f"interrupted: {kept} complete record{'' if kept == 1 else 's'} kept in {directory}; "
            "to go on, run the same command with --resume")


def experiment_loop(args, ddp: experiment.Distributed) -> int:
    """Check everything, load the models once, then per (method, seed) the prompts in batches of B."""
    # 1. Options, the prompts file and both models' configs and tokenizers: no weight is read yet.
    if args.output is not None:
        raise UsageError("--output is for --prompt runs (--prompts writes to --output-dir)")
    if args.output_dir is None and not args.dry_run:
        raise UsageError(f"{'--prompts' if args.dataset is None else '--dataset'} needs --output-dir")
    if args.method != SamplingConfig.method:
        raise UsageError("--method is for --prompt runs (--prompts and --dataset runs take --methods)")
    methods = parse_list(args.methods, EXPERIMENT_METHODS, "--methods")
    configs = {method: config_from_args(args, method=method) for method in methods}
    base = configs[methods[0]]
    seeds = parse_list(args.seeds, [args.seed], "--seeds", int)
    for seed in seeds:
        check_seed(seed, "--seeds" if args.seeds is not None else "--seed")
    batch_size = DEFAULT_BATCH_SIZE if args.batch_size is None else args.batch_size
    if batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {batch_size}")
    if not args.dry_run:
        directory = Path(args.output_dir)
        check_output_path(directory / experiment.CONFIG, "--output-dir")
    device = resolve_device(args.device)
    if device.type == "cuda" and ddp.world > 1:
        device = torch.device("cuda", ddp.local_rank)  # one device per rank
        torch.cuda.set_device(device)
    dtype = resolve_dtype(args.dtype, device)
    source, selection = ddp.from_rank0(lambda: prompt_selection(args, seeds))  # rank 0 reads; every rank gets it
    prompts = distinct_prompts(selection)  # every seed's prompts, each once, in order of first selection
    texts, labels = [p.text for p in prompts], [p.where for p in prompts]
    plan = make_plan(args.dllm, args.reward_model, texts, base, labels)
    eval_checkpoint = None
    if args.eval_reward_model is not None:
        eval_checkpoint = models.reward_checkpoint(args.eval_reward_model, "--eval-reward-model")
    check_batchable(plan.reward_pieces, eval_checkpoint, texts, labels, base.max_new_tokens)
    if args.dry_run:  # the plan for one batch of B prompts, and nothing written
        if ddp.rank == 0:
            resident = () if eval_checkpoint is None else (eval_checkpoint,)
            print("\n".join(describe_plan(plan, dtype, batch=min(batch_size, len(prompts)), resident=resident)
                            + describe_selection(plan, source, selection, prompts)
                            + [describe_work(base, methods, selection)]))
        return 0

    # 2. The output directory (rank 0 checks it and tells every rank what is already done).
    settings = experiment_settings(args, base, device, dtype)
    fingerprint = experiment.fingerprint(settings)
    store = experiment.Store(directory, ddp.rank, ddp.world)
    chosen = {s: {p.key for p in selection[s]} for s in seeds}
    order = [(p.key, m, s) for p in prompts for m in methods for s in seeds if p.key in chosen[s]]
    position = {p.key: i for i, p in enumerate(prompts)}
    benchmark = source.name if source is not None else Path(args.prompts).stem
    extra = (lambda p: {"dataset": source.name, "index": p.id}) if source is not None else (lambda p: {})

    def prepare() -> list[tuple]:
        done = store.prepare(fingerprint, args.resume, settings)
        for prompt in prompts:
            record = next((done[k] for k in done if k[0] == prompt.key), None)
            if record is not None and (record["prompt"], record["fields"]) != (prompt.text, prompt.fields):
                raise UsageError(f"--resume: {prompt.where}: id {prompt.id!r} was run with another prompt or fields")
        write_json_atomically(directory / experiment.CONFIG, {
            "fingerprint": fingerprint, "settings": settings, "prompts": args.prompts, "n_prompts": len(prompts),
            "benchmark": benchmark, "dataset": source.describe() if source is not None else None,
            "selection": {str(s): [p.id for p in selection[s]] for s in seeds},
            "methods": methods, "seeds": seeds, "batch_size": batch_size, "processes": ddp.world,
            "versions": versions()})
        return [key for key in order if key in done]

    done = set(ddp.from_rank0(prepare))
    left = len(order) - len(done)
    if left == 0 and ddp.rank == 0:  # a finished run resumed: no model to load, the summary written again
        print(f"--resume: nothing left to do: {directory} holds all {len(order)} records; the summary is in "
              f"{directory / experiment.SUMMARY}", file=sys.stderr)

    # 3. The models, once (api.Session); then the batches. Each record is on disk before the next batch starts.
    session = None  # a finished run resumed loads no model
    if left:
        session = api.Session.from_plan(plan, args.dllm, args.reward_model, args.eval_reward_model, eval_checkpoint,
                                        device, dtype)
    work = {(m, s): [p for p in selection[s] if (p.key, m, s) not in done][ddp.rank::ddp.world]
            for m in methods for s in seeds}  # this rank's share of what is left
    from tqdm import tqdm

    bar = tqdm(total=sum(map(len, work.values())), desc="records" if ddp.world == 1 else f"rank {ddp.rank} records",
               unit="record", file=sys.stderr, disable=args.no_progress or not left)

    def on_batch(records: list[dict]) -> None:
        store.append(records)
        bar.update(len(records))

    if session is not None:
        session.run(work, configs, {p.key: plan.prompt_ids[position[p.key]] for p in prompts}, batch_size, extra=extra,
                    on_batch=on_batch, on_step=lambda m, s, i: bar.set_postfix_str(f"{m} seed {s} step {i + 1}/{base.T}"))
    bar.close()
    store.close()
    ddp.barrier()
    if ddp.rank != 0:
        return 0

    # 4. Rank 0: every record in records.jsonl, and the summary.
    records = store.merge(order)
    summary = summaries.benchmark_summary(json.loads((directory / experiment.CONFIG).read_text()), records)
    note = summaries.write(directory, [summary], summary)
    print(summaries.text_table(summary))
    if note:
        print(note, file=sys.stderr)
    return 0


def run_report(args) -> int:
    """`--report DIR...`: the runs' summaries recomputed from their records, one report (no model is loaded)."""
    try:
        parser = build_parser()  # every option but --output-dir and --no-progress is another mode's: refused if given
        used = [dest for dest, value in vars(args).items()
                if dest not in ("report", "output_dir", "no_progress") and value != parser.get_default(dest)]
        if used:
            raise UsageError(f"{flag(used[0])} is not for --report")
        output = check_output_path(Path(args.output_dir) / experiment.SUMMARY, "--output-dir") \
            if args.output_dir is not None else None
        if output is not None and (output.parent / experiment.RECORDS).exists():
            raise UsageError(f"--output-dir {output.parent} holds a run: write the report to a directory of its own")
        benchmarks = summaries.merge(args.report)
    except UsageError as error:
        print(f"error: {first_line(error)}", file=sys.stderr)
        return 2
    print("\n\n".join(summaries.text_table(b) for b in benchmarks))
    if output is not None:
        note = summaries.write(output.parent, benchmarks, {"benchmarks": {b["benchmark"]: b for b in benchmarks}})
        if note:
            print(note, file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.report is not None:
        return run_report(args)
    if args.prompts is not None or args.dataset is not None:
        return run_experiment(args)
    try:
        result = run(args)
        if "plan" in result:
            print("\n".join(result["plan"]))
            return 0
        report(result)
        output = result.pop("output")
        if output is not None:
            write_json_atomically(Path(output), result)
    except (UsageError, sampler.NonFiniteError) as error:  # bad input; any other exception keeps its traceback
        print(f"error: {first_line(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: one line, no traceback
        print(("" if args.no_progress else "\n") + interrupted(args), file=sys.stderr)  # after the bar's line
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
