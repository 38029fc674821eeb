"""The models: the real checkpoints as they are shipped, and tiny seeded stand-ins.

Denoiser. Dream-org/Dream-v0-Instruct-7B ships remote code written for transformers 4.46,
which is broken under transformers 5 in three ways: constructing it raises
`KeyError: 'default'` (its RoPE initialisation); once that is patched, `from_pretrained`
leaves the rotary frequencies at zero; and `diffusion_generate` without an explicit
generation config raises on `eps`. Its parameter names are exactly those of transformers'
own `Qwen2ForCausalLM`, and Qwen2 given a 4-D boolean attention mask of all-True attends
bidirectionally, so the weights are loaded into the native class and run without remote
code (`sampler.dream_denoiser` adds Dream's right shift of the logits); on a tiny
checkpoint its logits equalled Dream's own (patched) modelling code exactly, a comparison
made once outside this suite (the suite cannot run Dream's code). Dream's tokenizer ships as
`vocab.json` + `merges.txt` + `added_tokens.json` + `special_tokens_map.json` +
`tokenizer_config.json` naming a remote-code class `DreamTokenizer`, and no
`tokenizer.json`; that class is Qwen2's byte-level BPE, so transformers' own
`Qwen2Tokenizer` is built from the same files (it reads a `tokenizer.json` instead where a
re-saved copy has one).

Reward model. Skywork/Skywork-Reward-V2-Qwen3-{0.6B,1.7B,4B} are native
`Qwen3ForSequenceClassification` checkpoints with one logit and a `tokenizer.json`.

Special tokens, read from the checkpoint, never hard-coded: the mask token (the
tokenizer's, the config's `mask_token_id`, or `<|mask|>`), the end-of-response tokens
(Dream-Instruct closes its turn with `<|im_end|>` and pads with `<|endoftext|>`: both, and
every EOS id the configs name, end a response), and the pad token.

`tiny` builds small seeded models and byte-level BPE tokenizers in-process (a Qwen2
denoiser, a Qwen3 sequence-classifier reward model): the whole pipeline on a CPU, with
nothing downloaded.

`predict_peak_bytes` estimates the GPU memory of a guided run from the configs alone, for
`run.py --dry-run`.
"""

from __future__ import annotations

import json
import math
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    GenerationConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen2Tokenizer,
    Qwen3Config,
    Qwen3ForSequenceClassification,
)

import rewards

DEFAULT_DLLM = "Dream-org/Dream-v0-Instruct-7B"
DEFAULT_REWARD = "Skywork/Skywork-Reward-V2-Qwen3-1.7B"
MASK_TOKEN = "<|mask|>"  # Dream's mask token (id 151666 in Dream's vocabulary)
EOS_TOKEN = "<|endoftext|>"
END_TOKENS = ("<|im_end|>", "<|endoftext|>")  # Dream-Instruct ends its turn with the first, pads with the second
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


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


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


# Tokenizer sizes of the tiny models: the 4 specials and the 256 bytes (ids 0-259), then the merges learnt
# from TINY_CORPUS. The corpus yields 266 merges in all, so the denoiser's tokenizer stops at 526 tokens
# (its embedding: 576 rows); the reward model's keeps the first 220, so that some denoiser tokens have no
# counterpart in it (the vocabulary bridge's unmapped tokens, as between Dream and Skywork).
TINY_DLLM_VOCAB = 660
TINY_REWARD_VOCAB = 480


def tiny_tokenizer(vocab_size: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on TINY_CORPUS (deterministic), with Qwen's specials and chat template.

    Byte-level as Qwen's: a ByteLevel pre-tokenizer and decoder, and all 256 bytes in the base
    alphabet (after the specials), so that every UTF-8 string encodes and decodes back to itself
    (newlines, digits, accents, emoji); the merges are learnt from the corpus. `vocab_size` caps
    the tokens (specials + bytes + merges); the corpus's merges run out at 526.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=TINY_SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(TINY_CORPUS * 4, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token=EOS_TOKEN, pad_token=EOS_TOKEN,
                                        mask_token=MASK_TOKEN, additional_special_tokens=TINY_SPECIALS[1:3])
    tokenizer.chat_template = QWEN_CHAT_TEMPLATE
    return tokenizer


def seeded(seed: int, build):
    """Build a model with a fixed seed without touching the caller's global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def tiny_dllm_config(tokenizer) -> Qwen2Config:
    """A 2-layer Qwen2 denoiser; like Dream, its embedding has more rows than the tokenizer has tokens."""
    return Qwen2Config(
        vocab_size=(len(tokenizer) + 63) // 64 * 64, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, initializer_range=0.2,
        tie_word_embeddings=False, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
    )


def tiny_reward_config(tokenizer) -> Qwen3Config:
    """A 2-layer Qwen3 sequence classifier with one output."""
    return Qwen3Config(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=512,
        num_labels=1, pad_token_id=tokenizer.pad_token_id, initializer_range=0.2,
    )


def tiny_dllm(seed: int = 0, vocab_size: int = TINY_DLLM_VOCAB) -> tuple[Qwen2ForCausalLM, PreTrainedTokenizerFast]:
    """A seeded tiny Qwen2 denoiser and its tokenizer."""
    tokenizer = tiny_tokenizer(vocab_size)
    config = tiny_dllm_config(tokenizer)
    return seeded(seed, lambda: Qwen2ForCausalLM(config)).eval(), tokenizer


def tiny_reward(seed: int = 1, vocab_size: int = TINY_REWARD_VOCAB) -> tuple[Qwen3ForSequenceClassification, PreTrainedTokenizerFast]:
    """A seeded tiny Qwen3 sequence classifier with its own (smaller) tokenizer."""
    tokenizer = tiny_tokenizer(vocab_size)
    config = tiny_reward_config(tokenizer)
    return seeded(seed, lambda: Qwen3ForSequenceClassification(config)).eval(), tokenizer


# --------------------------------------------------------------------------- where a checkpoint lives


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the hub's host answers a TCP connection within `timeout` seconds."""
    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)),
                                 timeout=timeout).close()
        return True
    except OSError:
        return False


CONFIG_FILES = ["*.json", "*.txt", "*.jinja", "*.model"]  # configs and tokenizers: all a plan reads
WEIGHT_FILES = ["*.safetensors", "*.safetensors.index.json"]


def resolve_checkpoint(name: str, what: str) -> str:
    """A local directory holding checkpoint `name`'s configs and tokenizer: the directory itself, or its
    copy in the hub cache (fetched without the weights, which `fetch_weights` adds when they are needed).

    Fails fast with one line where transformers would retry for half a minute: a file
    instead of a directory, a name that is neither a directory nor a hub id, a hub id that
    is not cached while the hub is offline (HF_HUB_OFFLINE) or unreachable.
    """
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    path = Path(name).expanduser()
    if path.is_dir():
        return str(path)
    if path.exists():
        raise UsageError(f"{what} {name!r} is a file: neither a checkpoint directory nor a hub id")
    if name.startswith((".", "/", "~")):  # a path, not a hub id
        raise UsageError(f"{what} {name!r}: no such directory")
    try:
        validate_repo_id(name)
    except HFValidationError:
        raise UsageError(f"{what} {name!r} is neither an existing directory nor a hub id (owner/name)") from None
    try:
        return snapshot_download(name, local_files_only=True)  # already in the hub cache
    except LOAD_ERRORS:
        pass
    hint = f"download it where there is network (hf download {name} --local-dir DIR), then pass {what} DIR"
    if constants.HF_HUB_OFFLINE:
        raise UsageError(f"cannot load model {name!r}: not in the local hub cache and HF_HUB_OFFLINE is set; {hint}")
    if not _hub_reachable():
        raise UsageError(f"cannot load model {name!r}: the hub ({constants.ENDPOINT}) is unreachable and it is not "
                         f"in the local cache; {hint}")
    try:
        return snapshot_download(name, allow_patterns=CONFIG_FILES)  # a --dry-run downloads no weight
    except LOAD_ERRORS as error:
        raise UsageError(f"cannot load model {name!r}: {first_line(error)}") from None


def fetch_weights(name: str, directory: str) -> str:
    """The directory with the weights too: `directory` itself for a local checkpoint, else the hub snapshot
    with its safetensors files fetched (or found in the cache when the hub is offline)."""
    from huggingface_hub import constants, snapshot_download

    if Path(name).expanduser().is_dir():
        return directory
    try:
        return snapshot_download(name, allow_patterns=WEIGHT_FILES, local_files_only=bool(constants.HF_HUB_OFFLINE))
    except LOAD_ERRORS as error:
        raise UsageError(f"cannot load the weights of {name!r}: {first_line(error)}") from None


def _read_json(directory: str, filename: str, name: str) -> dict | None:
    """A JSON file of a checkpoint directory, or None where the checkpoint has none."""
    path = Path(directory) / filename
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise UsageError(f"cannot load model {name!r}: {filename}: {first_line(error)}") from None


# --------------------------------------------------------------------------- special tokens


@dataclass(frozen=True)
class TokenIds:
    """The denoiser's special token ids: `mask`, the end-of-response set `ends`, `pad` (or None)."""

    mask: int
    ends: tuple[int, ...]
    pad: int | None


def _as_ids(value) -> list[int]:
    if value is None:
        return []
    return [int(v) for v in value] if isinstance(value, (list, tuple)) else [int(value)]


def token_ids(tokenizer, config, generation_config: dict | None = None) -> TokenIds:
    """Read the mask, end and pad ids from the tokenizer and configs; each must be a row of the embedding."""
    vocab_size = config.vocab_size
    vocab = tokenizer.get_vocab()
    mask = next((int(c) for c in (tokenizer.mask_token_id, getattr(config, "mask_token_id", None),
                                  vocab.get(MASK_TOKEN)) if c is not None), None)
    if mask is None:
        raise UsageError("the denoiser has no mask token (no mask_token, no mask_token_id, no <|mask|> in its vocabulary)")
    ends = {vocab[t] for t in END_TOKENS if t in vocab}
    ends |= set(_as_ids(tokenizer.eos_token_id)) | set(_as_ids(getattr(config, "eos_token_id", None)))
    ends |= set(_as_ids((generation_config or {}).get("eos_token_id")))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else getattr(config, "pad_token_id", None)
    for what, ids in (("mask token", [mask]), ("end token", sorted(ends)), ("pad token", _as_ids(pad))):
        for i in ids:
            if not 0 <= i < vocab_size:
                raise UsageError(f"the {what} id {i} is outside the denoiser's vocabulary of {vocab_size} "
                                 "(tokenizer and model do not match)")
    return TokenIds(mask=mask, ends=tuple(sorted(ends)), pad=None if pad is None else int(pad))


# --------------------------------------------------------------------------- chat templates


def prompt_text(tokenizer, prompt: str) -> str:
    """The denoiser's chat template around a user turn, up to where the assistant's answer begins."""
    return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                         tokenize=False)


def require_chat_template(whose: str, apply) -> None:
    """Run `apply()` (a chat-template call); a tokenizer without a usable template is a usage error."""
    from jinja2 import TemplateError  # transformers renders chat templates with jinja2

    try:
        apply()
    except (ValueError, TemplateError) as error:  # no chat template; a template that fails or raises
        raise UsageError(f"the {whose} tokenizer cannot apply a chat template: {first_line(error)}") from None


# --------------------------------------------------------------------------- checkpoint parts (no weights)


@dataclass
class Checkpoint:
    """What a checkpoint says before its weights are read: where it is, its config and tokenizer."""

    name: str  # as the user gave it: hub id, directory, or "tiny"
    directory: str | None  # None for tiny
    config: object
    tokenizer: object
    model_class: type
    generation_config: dict | None = None
    model_type: str | None = None  # as config.json names it (Dream's "Dream" is unknown to transformers)


def denoiser_checkpoint(name: str) -> Checkpoint:
    """Dream (or any Qwen2-layout checkpoint): its config as a Qwen2Config, and its tokenizer, without weights."""
    if name == "tiny":
        tokenizer = tiny_tokenizer(TINY_DLLM_VOCAB)
        return Checkpoint(name, None, tiny_dllm_config(tokenizer), tokenizer, Qwen2ForCausalLM)
    directory = resolve_checkpoint(name, "--dllm")
    raw = _read_json(directory, "config.json", name)
    if raw is None:
        raise UsageError(f"cannot load model {name!r}: no config.json in {directory}")
    if raw.get("model_type") not in ("Dream", "qwen2"):
        raise UsageError(f"unsupported denoiser {name!r}: model_type {raw.get('model_type')!r} "
                         "(expected Dream or qwen2)")
    dropped = {"model_type", "auto_map", "architectures", "transformers_version", "torch_dtype", "dtype"}
    if raw.get("rope_scaling") is None:  # Dream's is null; transformers 5 warns on the deprecated key even then
        dropped.add("rope_scaling")
    try:
        config = Qwen2Config(**{k: v for k, v in raw.items() if k not in dropped})
    except LOAD_ERRORS as error:
        raise UsageError(f"unsupported config in {name!r}: {first_line(error)}") from None
    try:  # Qwen2's byte-level BPE from vocab.json + merges.txt (Dream), or tokenizer.json where present
        tokenizer = Qwen2Tokenizer.from_pretrained(directory)
    except LOAD_ERRORS as error:
        raise UsageError(f"cannot load the tokenizer of {name!r}: {first_line(error)}") from None
    require_chat_template("denoiser's", lambda: prompt_text(tokenizer, "hi"))
    generation = _read_json(directory, "generation_config.json", name)
    return Checkpoint(name, directory, config, tokenizer, Qwen2ForCausalLM, generation, raw.get("model_type"))


def reward_checkpoint(name: str, flag: str = "--reward-model") -> Checkpoint:
    """A sequence-classifier reward model with one output: its config and tokenizer, without weights.
    `flag`: the option that named it, for errors (--eval-reward-model for the eval model)."""
    if name == "tiny":
        tokenizer = tiny_tokenizer(TINY_REWARD_VOCAB)
        return Checkpoint(name, None, tiny_reward_config(tokenizer), tokenizer, Qwen3ForSequenceClassification)
    directory = resolve_checkpoint(name, flag)
    try:
        config = AutoConfig.from_pretrained(directory, trust_remote_code=False)
    except LOAD_ERRORS as error:
        raise UsageError(f"cannot load model {name!r}: {first_line(error)}") from None
    architectures = getattr(config, "architectures", None) or []
    if not any(a.endswith("ForSequenceClassification") for a in architectures):
        raise UsageError(f"reward model {name!r} ({', '.join(architectures) or config.model_type}) is not a sequence "
                         "classifier with one output")
    if getattr(config, "num_labels", None) != 1:  # fail before loading the weights
        raise UsageError(f"reward model {name!r} is a sequence classifier with {config.num_labels} outputs; "
                         "a reward model has one")
    try:
        tokenizer = AutoTokenizer.from_pretrained(directory, trust_remote_code=False)  # never run hub code
    except LOAD_ERRORS as error:
        raise UsageError(f"cannot load the tokenizer of {name!r}: {first_line(error)}") from None
    require_chat_template("reward model's", lambda: rewards.chat_pieces(tokenizer, "hi"))
    return Checkpoint(name, directory, config, tokenizer, AutoModelForSequenceClassification)


# --------------------------------------------------------------------------- weights


def load_weights(checkpoint: Checkpoint, dtype: torch.dtype):
    """The model of a checkpoint with its weights, frozen, in eval mode (tiny: seeded in-process).

    The dtype rule is transformers' own `from_pretrained(..., dtype=dtype)`, which is how the
    authors load both models: the parameters in `dtype`, every buffer in the dtype and value
    the model class gives it. For Qwen2 and Qwen3 that keeps RoPE's inverse frequencies
    (`rotary_emb.inv_freq`, `original_inv_freq`) in float32; a `model.to(dtype)` would cast
    them too, and RoPE angles (position x frequency) would then carry bfloat16's 3 digits:
    the logits of a 1,700-token input moved by up to 2.5, reward scores by up to 0.08. A
    checkpoint directory is read by `from_pretrained` itself; the tiny models are built in
    float32 and only their parameters are cast (`cast_parameters`), which is what saving
    them and loading them back with `from_pretrained(dtype=dtype)` gives (tests/test_dtype.py
    compares both paths with the standard load, parameter by parameter and buffer by buffer).
    A causal LM is handed a default generation config, so that Dream's `generation_config.json`
    (its own sampler's keys, `temperature` 0.0) is not read: transformers would warn that
    those flags "are not valid", about a config this project never uses.
    """
    if checkpoint.directory is None:
        seed = 0 if checkpoint.model_class is Qwen2ForCausalLM else 1
        model = cast_parameters(seeded(seed, lambda: checkpoint.model_class(checkpoint.config)), dtype)
    else:
        directory = fetch_weights(checkpoint.name, checkpoint.directory)
        generation = {"generation_config": GenerationConfig()} if checkpoint.model_class is Qwen2ForCausalLM else {}
        try:
            model = checkpoint.model_class.from_pretrained(directory, config=checkpoint.config, dtype=dtype,
                                                           **generation)
        except LOAD_ERRORS as error:
            raise UsageError(f"cannot load model {checkpoint.name!r}: {first_line(error)}") from None
    if checkpoint.model_class is not Qwen2ForCausalLM and not all(hasattr(model, p) for p in ("model", "score")):
        raise UsageError(f"reward model {checkpoint.name!r} ({type(model).__name__}) is not a decoder with a "
                         "`score` head")
    return model.eval().requires_grad_(False)


def cast_parameters(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """Every parameter of `model` in `dtype`, its buffers left as they are (RoPE's float32 frequencies). In place."""
    for parameter in model.parameters():
        parameter.data = parameter.data.to(dtype)
    return model


def load_dream(name: str, dtype: torch.dtype) -> tuple[Qwen2ForCausalLM, object]:
    """Dream (or any Qwen2-layout checkpoint) as transformers' own Qwen2ForCausalLM, plus its tokenizer."""
    checkpoint = denoiser_checkpoint(name)
    token_ids(checkpoint.tokenizer, checkpoint.config, checkpoint.generation_config)  # before the weights
    return load_weights(checkpoint, dtype), checkpoint.tokenizer


# --------------------------------------------------------------------------- memory prediction


def parameter_count(checkpoint: Checkpoint) -> int:
    """Parameters of the checkpoint's model, from its config alone (built on the meta device: no memory, no weights)."""
    with torch.device("meta"):
        if checkpoint.model_class is AutoModelForSequenceClassification:
            model = AutoModelForSequenceClassification.from_config(checkpoint.config)
        else:
            model = checkpoint.model_class(checkpoint.config)
    return sum(p.numel() for p in model.parameters())


# The live (N, L, V) float32 blocks at the end of a reward forward (the step's peak): phi 1, Adam's
# two states 2, the unguided q 1, the denoiser's bfloat16 logits 0.5, sundry 0.07 (a live-tensor count
# at V = 151936, benchmarks/RESULTS.md). The reward model's saved activations per token and layer: 11.0
# values per (hidden + intermediate) unit -- 2.45 GiB at Skywork-1.7B, 4 x 130 tokens, 28 layers, bf16,
# measured once on an H100 (the peak 22.47 GiB less the weights and the blocks).
VOCAB_BLOCKS = 4.57
REWARD_ACTIVATION_VALUES = 11.0


def predict_peak_bytes(dllm: Checkpoint, reward: Checkpoint, *, rows: int, length: int, reward_tokens: int,
                       dtype: torch.dtype, prefix_tokens: int = 0, resident: tuple[Checkpoint, ...] = ()
                       ) -> dict[str, int]:
    """Predicted peak GPU memory of one guided step over `rows` = B * K trajectories of `length` tokens.

    weights (denoiser + reward model + bridged embedding + any `resident` model such as an eval
    reward model, `dtype`) + VOCAB_BLOCKS * rows * length * V * 4
    + the reward model's activations over `reward_tokens` (= response + suffix) positions per row
    + its cached keys and values of `prefix_tokens` chat-prefix positions per row.
    """
    element = torch.finfo(dtype).bits // 8
    d_reward = reward.config.hidden_size
    V = dllm.config.vocab_size
    weights = (parameter_count(dllm) + parameter_count(reward) + V * d_reward
               + sum(parameter_count(model) for model in resident)) * element
    blocks = math.ceil(VOCAB_BLOCKS * rows * length * V * 4)
    width = reward.config.hidden_size + reward.config.intermediate_size
    activations = int(REWARD_ACTIVATION_VALUES * width * rows * reward_tokens * reward.config.num_hidden_layers
                      * element)
    config = reward.config
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    prefix_cache = (rows * prefix_tokens * config.num_hidden_layers * 2 * config.num_key_value_heads * head_dim
                    * element)
    return {"weights": weights, "vocab_blocks": blocks, "reward_activations": activations,
            "prefix_cache": prefix_cache, "total": weights + blocks + activations + prefix_cache}
