"""Run one reward-guided generation: a prompt in, K guided responses and their rewards out.

    python run.py --prompt "Write a haiku about gradients." --dllm tiny --reward-model tiny
    python run.py --prompt "..." --method entrgi --output result.json       # Dream-7B + Skywork, CUDA

The pipeline (SPEC §2): the denoiser (Dream-v0-Instruct-7B) generates K responses of L
tokens by masked diffusion (`sampler.generate`); at every denoising step the logits of
the masked positions are guided by M Adam steps on the reward model's score
(`sampler.reward_guidance` -> `entrgi.guide` -> `rewards.EmbeddingScorer`); finally each
response is decoded and scored on real tokens (`rewards.score_texts`): Top@1 = max over
K, Avg@N = mean over K. `--method bon` samples without guidance (Best-of-N).

Models. `tiny` builds small seeded models and byte-level BPE tokenizers in-process
(a Qwen2 denoiser, a Qwen3 sequence-classifier reward model; nothing is downloaded).
Dream's hub code does not construct under transformers 5 (SPEC §3), so its checkpoint
is loaded into transformers' own `Qwen2ForCausalLM` and run with a full bidirectional
attention mask and Dream's right shift of logits (`sampler.dream_denoiser`).

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
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForSequenceClassification,
)

import rewards
import sampler
from sampler import SamplingConfig

DEFAULT_DLLM = "Dream-org/Dream-v0-Instruct-7B"
DEFAULT_REWARD = "Skywork/Skywork-Reward-V2-Qwen3-1.7B"
MASK_TOKEN = "<|mask|>"  # Dream's mask token (id 151666 in Dream's vocabulary)
EOS_TOKEN = "<|endoftext|>"
QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


class UsageError(Exception):
    """Bad input: reported as one line on stderr with exit status 2."""


# What transformers raises for a checkpoint that is missing, unreadable or malformed: a missing
# file (OSError), a bad config value (ValueError, KeyError, TypeError), weights that do not fit
# the config (RuntimeError). Each loading step turns them into a UsageError naming the model.
LOAD_ERRORS = (OSError, ValueError, KeyError, TypeError, RuntimeError)


# --------------------------------------------------------------------------- tiny models

TINY_CORPUS = [
    "A masked diffusion language model writes a response by filling masks, a few at every step.",
    "The reward model reads the whole answer and returns one number: higher means better.",
    "Guidance nudges the logits of the masked positions along the gradient of the reward.",
    "When the model is confident the soft embedding is exact; when it is unsure, a real token is read.",
    "Write a short poem about the sea. Explain why the sky is blue. Give three tips for sleeping well.",
    "The quick brown fox jumps over the lazy dog, and the tired cat sleeps in the warm sun.",
    "Numbers like one, two, three and ten appear in lists; questions end with a question mark?",
]
TINY_SPECIALS = [EOS_TOKEN, "<|im_start|>", "<|im_end|>", MASK_TOKEN]


def tiny_tokenizer(vocab_size: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on TINY_CORPUS (deterministic), with Qwen's specials and chat template.

    Its alphabet is the corpus's characters only, so that tiny responses print as readable text.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=TINY_SPECIALS, show_progress=False)
    bpe.train_from_iterator(TINY_CORPUS * 4, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token=EOS_TOKEN, pad_token=EOS_TOKEN,
                                        mask_token=MASK_TOKEN, additional_special_tokens=TINY_SPECIALS[1:3])
    tokenizer.chat_template = QWEN_CHAT_TEMPLATE
    return tokenizer


def _seeded(seed: int, build):
    """Build a model with a fixed seed without touching the caller's global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def tiny_dllm(seed: int = 0, vocab_size: int = 400) -> tuple[Qwen2ForCausalLM, PreTrainedTokenizerFast]:
    """A seeded 2-layer Qwen2 denoiser; like Dream, its embedding has more rows than the tokenizer has tokens."""
    tokenizer = tiny_tokenizer(vocab_size)
    config = Qwen2Config(
        vocab_size=(len(tokenizer) + 63) // 64 * 64, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, initializer_range=0.2,
        tie_word_embeddings=False, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    return _seeded(seed, lambda: Qwen2ForCausalLM(config)).eval(), tokenizer


def tiny_reward(seed: int = 1, vocab_size: int = 260) -> tuple[Qwen3ForSequenceClassification, PreTrainedTokenizerFast]:
    """A seeded 2-layer Qwen3 sequence classifier with one output and its own (smaller) tokenizer."""
    tokenizer = tiny_tokenizer(vocab_size)
    config = Qwen3Config(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=512,
        num_labels=1, pad_token_id=tokenizer.pad_token_id, initializer_range=0.2,
    )
    return _seeded(seed, lambda: Qwen3ForSequenceClassification(config)).eval(), tokenizer


# --------------------------------------------------------------------------- real models


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _read_config(name: str) -> dict:
    """config.json of a local directory or hub id, as a dict (Dream's model_type is unknown to transformers)."""
    from transformers.utils import cached_file

    try:
        path = Path(name) / "config.json" if Path(name).is_dir() else cached_file(name, "config.json")
        return json.loads(Path(path).read_text())
    except LOAD_ERRORS as error:
        raise UsageError(f"cannot load model {name!r}: {_first_line(error)}") from None


def _load_tokenizer(name: str, config=None):
    """The checkpoint's tokenizer without remote code (Dream's tokenizer class lives in its hub code).

    `config`, if given, spares transformers from reading config.json again (Dream's, with
    its unknown model type, makes it print warnings).
    """
    try:
        return AutoTokenizer.from_pretrained(name, trust_remote_code=False, config=config)  # never run hub code
    except LOAD_ERRORS:
        try:
            return PreTrainedTokenizerFast.from_pretrained(name)
        except LOAD_ERRORS as error:
            raise UsageError(f"cannot load the tokenizer of {name!r}: {_first_line(error)}") from None


def prompt_text(tokenizer, prompt: str) -> str:
    """The denoiser's chat template around a user turn, up to where the assistant's answer begins."""
    return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                         tokenize=False)


def _require_chat_template(whose: str, apply) -> None:
    """Run `apply()` (a chat-template call); a tokenizer without a usable template is a usage error."""
    from jinja2 import TemplateError  # transformers renders chat templates with jinja2 (a torch dependency)

    try:
        apply()
    except (ValueError, TemplateError) as error:  # no chat template; a template that fails or raises
        raise UsageError(f"the {whose} tokenizer cannot apply a chat template: {_first_line(error)}") from None


def load_dream(name: str, dtype: torch.dtype) -> tuple[Qwen2ForCausalLM, object]:
    """Dream (or any Qwen2-layout checkpoint) as transformers' own Qwen2ForCausalLM, plus its tokenizer."""
    raw = _read_config(name)
    if raw.get("model_type") not in ("Dream", "qwen2"):
        raise UsageError(f"unsupported denoiser {name!r}: model_type {raw.get('model_type')!r} "
                         "(expected Dream or qwen2)")
    dropped = {"model_type", "auto_map", "architectures", "transformers_version", "torch_dtype", "dtype"}
    if raw.get("rope_scaling") is None:  # Dream's is null; transformers 5 warns on the deprecated key even then
        dropped.add("rope_scaling")
    try:
        config = Qwen2Config(**{k: v for k, v in raw.items() if k not in dropped})
    except LOAD_ERRORS as error:
        raise UsageError(f"unsupported config in {name!r}: {_first_line(error)}") from None
    tokenizer = _load_tokenizer(name, config)
    mask_token_id(tokenizer, argparse.Namespace(config=config))  # no mask token: fail before loading the weights
    _require_chat_template("denoiser's", lambda: prompt_text(tokenizer, "hi"))  # no chat template: likewise
    try:
        model = Qwen2ForCausalLM.from_pretrained(name, config=config, dtype=dtype)
    except LOAD_ERRORS as error:
        raise UsageError(f"cannot load model {name!r}: {_first_line(error)}") from None
    return model, tokenizer


def load_reward_model(name: str, dtype: torch.dtype):
    """A sequence-classifier reward model with one output, plus its tokenizer."""
    try:
        config = AutoConfig.from_pretrained(name, trust_remote_code=False)
    except LOAD_ERRORS as error:
        raise UsageError(f"cannot load model {name!r}: {_first_line(error)}") from None
    if getattr(config, "num_labels", None) != 1:  # fail before loading the weights
        raise UsageError(f"reward model {name!r} has {getattr(config, 'num_labels', None)} outputs; expected 1")
    tokenizer = _load_tokenizer(name, config)
    _require_chat_template("reward model's", lambda: rewards.chat_pieces(tokenizer, "hi"))  # before the weights
    try:
        model = AutoModelForSequenceClassification.from_pretrained(name, config=config, dtype=dtype)
    except LOAD_ERRORS as error:
        raise UsageError(f"cannot load model {name!r}: {_first_line(error)}") from None
    if not all(hasattr(model, part) for part in ("model", "score")):  # what EmbeddingScorer drives
        raise UsageError(f"reward model {name!r} ({type(model).__name__}) is not a decoder with a `score` head")
    return model, tokenizer


def load_models(args, device: torch.device, dtype: torch.dtype):
    """(denoiser, its tokenizer, reward model, its tokenizer), frozen, in eval mode, on `device`."""
    dllm, dllm_tokenizer = tiny_dllm() if args.dllm == "tiny" else load_dream(args.dllm, dtype)
    reward, reward_tokenizer = tiny_reward() if args.reward_model == "tiny" else load_reward_model(args.reward_model, dtype)
    if getattr(reward.config, "num_labels", None) != 1:
        raise UsageError(f"reward model {args.reward_model!r} has {reward.config.num_labels} outputs; expected 1")
    for model in (dllm, reward):
        model.to(device=device, dtype=dtype).eval().requires_grad_(False)
    return dllm, dllm_tokenizer, reward, reward_tokenizer


def mask_token_id(tokenizer, model) -> int:
    """The denoiser's mask token: the tokenizer's mask token, the config's, or `<|mask|>` in the vocabulary.

    It must be a row of the denoiser's embedding (id < vocab_size).
    """
    for candidate in (tokenizer.mask_token_id, getattr(model.config, "mask_token_id", None),
                      tokenizer.get_vocab().get(MASK_TOKEN)):
        if candidate is not None:
            if not 0 <= int(candidate) < model.config.vocab_size:
                raise UsageError(f"the mask token id {candidate} is outside the denoiser's vocabulary "
                                 f"of {model.config.vocab_size} (tokenizer and model do not match)")
            return int(candidate)
    raise UsageError("the denoiser has no mask token (no mask_token, no mask_token_id, no <|mask|> in its vocabulary)")


# --------------------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    """The CLI: model and run options, then one option per SamplingConfig field (defaults live there)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--prompt", required=True, help="the user prompt")
    parser.add_argument("--dllm", default=DEFAULT_DLLM, help="denoiser: hub id, local directory, or tiny")
    parser.add_argument("--reward-model", default=DEFAULT_REWARD,
                        help="reward model: hub id (Skywork-Reward-V2-Qwen3-0.6B/-1.7B/-4B), local directory, or tiny")
    parser.add_argument("--seed", type=int, default=0, help="seed of the one torch.Generator behind every draw")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--dtype", choices=("auto", "float32", "bfloat16", "float16"), default="auto",
                        help="model dtype; auto = bfloat16 on CUDA, float32 on CPU")
    parser.add_argument("--output", type=Path, help="write the result as JSON to this file")
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
    """on_step callback drawing a bar on stderr (reads no tensor: no device sync)."""
    def on_step(i: int, _ids: Tensor) -> None:
        if enabled:
            done = (i + 1) * 30 // total
            end = "\n" if i + 1 == total else ""
            print(f"\rdenoising [{'#' * done}{'.' * (30 - done)}] {i + 1}/{total}", end=end, file=sys.stderr, flush=True)
    return on_step


def check_output_path(path: Path, flag: str = "--output") -> None:
    """Fail before any work if `path` cannot become a file: it is a directory, or a file stands where a directory must be."""
    if path.is_dir():
        raise UsageError(f"{flag} {path} is a directory")
    ancestor = path.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise UsageError(f"{flag} {path}: {ancestor} is a file, not a directory")


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


def decode_responses(tokenizer, tokens: Tensor, eos_id: int | None) -> list[str]:
    """Each row's text up to its first EOS, special tokens dropped. (N, L) -> N strings."""
    texts = []
    for row in tokens.tolist():
        if eos_id is not None and eos_id in row:
            row = row[: row.index(eos_id)]
        texts.append(tokenizer.decode(row, skip_special_tokens=True))
    return texts


def run(args) -> dict:
    """One experiment from parsed arguments; returns the result record (see README, "Output")."""
    config = config_from_args(args)
    if not args.prompt.strip():
        raise UsageError("the prompt is empty")
    if not -2**63 <= args.seed < 2**64:  # what torch.Generator.manual_seed accepts
        raise UsageError(f"--seed must be in [-2**63, 2**64), got {args.seed}")
    if args.output is not None:
        check_output_path(args.output)
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    started = time.perf_counter()
    dllm, dllm_tokenizer, reward, reward_tokenizer = load_models(args, device, dtype)
    mask_id = mask_token_id(dllm_tokenizer, dllm)
    eos_id = dllm_tokenizer.eos_token_id

    prompt_ids = dllm_tokenizer(prompt_text(dllm_tokenizer, args.prompt), add_special_tokens=False)["input_ids"]
    context = dllm.config.max_position_embeddings
    if len(prompt_ids) + config.max_new_tokens > context:
        raise UsageError(f"prompt ({len(prompt_ids)} tokens) + max-new-tokens ({config.max_new_tokens}) "
                         f"exceeds the denoiser's context of {context} tokens")
    prompt = torch.tensor([prompt_ids], device=device)  # (1, P)

    bridge = rewards.vocab_bridge(dllm_tokenizer, reward_tokenizer, dllm.config.vocab_size)
    generator = torch.Generator(device=device).manual_seed(args.seed)
    weight_log: list[Tensor] = []
    guidance = None
    if config.guided:
        embed_matrix = rewards.bridged_embeddings(reward.get_input_embeddings().weight, bridge)  # (V, d)
        scorer = rewards.EmbeddingScorer(reward, reward_tokenizer, [args.prompt], K=config.K, eos_id=eos_id,
                                         pad_id=dllm_tokenizer.pad_token_id)
        guidance = sampler.reward_guidance(scorer, embed_matrix, config, generator, weight_log)
    with torch.no_grad():
        tokens = sampler.generate(sampler.dream_denoiser(dllm), prompt, torch.ones_like(prompt, dtype=torch.bool),
                                  config, mask_id=mask_id, eos_id=eos_id, guidance=guidance, generator=generator,
                                  on_step=progress_bar(config.T, not args.no_progress))[0]  # (K, L)
    responses = decode_responses(dllm_tokenizer, tokens, eos_id)
    scores = rewards.score_texts(reward, reward_tokenizer, [args.prompt] * config.K, responses).tolist()
    best = max(range(config.K), key=scores.__getitem__)
    return {
        "config": {
            **dataclasses.asdict(config), "prompt": args.prompt, "dllm": args.dllm, "reward_model": args.reward_model,
            "seed": args.seed, "device": str(device), "dtype": str(dtype).removeprefix("torch."),
            "versions": {"python": platform.python_version(), "torch": torch.__version__,
                         "transformers": transformers.__version__},
        },
        "responses": responses,
        "rewards": scores,
        "top1_reward": max(scores),
        "avgN_reward": sum(scores) / len(scores),
        "best_response": responses[best],
        "wall_seconds": time.perf_counter() - started,
        "vocab_bridge": {"coverage": bridge.coverage, "unmapped": bridge.unmapped,
                         "tokenizer_size": bridge.tokenizer_size},
        "mean_entropy_weight": torch.stack(weight_log).mean().item() if weight_log else None,
    }


def report(result: dict) -> None:
    """Each response with its discrete reward, then Top@1 and Avg@N, on stdout."""
    for k, (text, score) in enumerate(zip(result["responses"], result["rewards"])):
        print(f"--- response {k}  reward {score:+.4f}\n{text}")
    print(f"Top@1 {result['top1_reward']:+.4f}   Avg@N {result['avgN_reward']:+.4f}   "
          f"(method {result['config']['method']}, K={result['config']['K']})")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = run(args)
    except UsageError as error:  # bad input only: any other exception is a bug and keeps its traceback
        print(f"error: {_first_line(error)}", file=sys.stderr)
        return 2
    report(result)
    if args.output is not None:
        write_json_atomically(args.output, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
