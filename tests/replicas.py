"""Tiny checkpoints written in the real checkpoints' file layouts, for the loaders' tests.

The loaders in `models.py` only ever meet the real models on a user's GPU machine, so the
tests build replicas of the files those checkpoints ship -- the same file names, config
fields, tokenizer files and chat templates -- with tiny seeded weights. A layout that is
merely convenient to write (a `tokenizer.json` that the real Dream does not ship) once hid
a loader that fails on the real one.

* `write_dream(directory)`: Dream-org/Dream-v0-Instruct-7B as shipped for transformers
  4.46: `config.json` (model_type "Dream", `auto_map` to its remote code, `mask_token_id`,
  `rope_scaling: null`, `torch_dtype`, `transformers_version` 4.46.2; bos, eos and pad all
  `<|endoftext|>`), `generation_config.json` (Dream's own sampler keys: `temperature` 0.0,
  `alg`, `steps`, `eps`, ...), two safetensors shards with `model.safetensors.index.json`,
  the remote-code files (present, and raising if anything ever executes them), and the
  tokenizer as a pretty-printed `vocab.json` + `merges.txt` + `added_tokens.json` +
  `special_tokens_map.json` (additional specials `<|beginoftext|>` and `<|mask|>` only) +
  `tokenizer_config.json` (`tokenizer_class` "DreamTokenizer" with an `auto_map`,
  `added_tokens_decoder` with Qwen2.5's 22 special tokens and then `<|beginoftext|>` and
  `<|mask|>`, and Qwen2.5's chat template, tools branch included, with Dream's default
  system turn) -- and **no `tokenizer.json`**.
* `write_skywork(directory)`: Skywork/Skywork-Reward-V2-Qwen3-*: a native
  `Qwen3ForSequenceClassification` config with one label (`id2label`), `pad_token_id`,
  tied embeddings and more embedding rows than tokens, one safetensors file, and
  `tokenizer.json` + `tokenizer_config.json` carrying Qwen3's chat template (the last
  assistant turn opens with an empty think block, its content's leading newlines
  stripped, text before a `</think>` in it moved into the block).

Both tokenizers share one byte-level BPE (`vocab.json` / `merges.txt`, the full 256-byte
alphabet, so any string encodes), as Qwen2.5 and Qwen3 share theirs; their added tokens
follow at the end with the real models' order.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import transformers
from safetensors.torch import save_file

import models

# Qwen2.5's added tokens, in id order from <|endoftext|> on (special=False: kept by decoding).
QWEN25_ADDED = [
    ("<|endoftext|>", True), ("<|im_start|>", True), ("<|im_end|>", True), ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True), ("<|box_start|>", True), ("<|box_end|>", True), ("<|quad_start|>", True),
    ("<|quad_end|>", True), ("<|vision_start|>", True), ("<|vision_end|>", True), ("<|vision_pad|>", True),
    ("<|image_pad|>", True), ("<|video_pad|>", True), ("<tool_call>", False), ("</tool_call>", False),
    ("<|fim_prefix|>", False), ("<|fim_middle|>", False), ("<|fim_suffix|>", False), ("<|fim_pad|>", False),
    ("<|repo_name|>", False), ("<|file_sep|>", False),
]
DREAM_ADDED = QWEN25_ADDED + [("<|beginoftext|>", True), ("<|mask|>", True)]
QWEN3_ADDED = QWEN25_ADDED + [("<tool_response>", False), ("</tool_response>", False),
                              ("<think>", False), ("</think>", False)]

# Dream's chat template: Qwen2.5's, tools branch included, whose default system turn Dream shortened
# to "You are a helpful assistant." (with tools, the system turn lists them; assistant tool calls and
# tool results have turns of their own).
DREAM_CHAT_TEMPLATE = (
    "{%- if tools %}"
    "{{- '<|im_start|>system\\n' }}"
    "{%- if messages[0]['role'] == 'system' %}{{- messages[0]['content'] }}"
    "{%- else %}{{- 'You are a helpful assistant.' }}{%- endif %}"
    "{{- '\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\n"
    "You are provided with function signatures within <tools></tools> XML tags:\\n<tools>' }}"
    "{%- for tool in tools %}{{- '\\n' }}{{- tool | tojson }}{%- endfor %}"
    "{{- '\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments "
    "within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\\"name\\\": <function-name>, "
    "\\\"arguments\\\": <args-json-object>}\\n</tool_call><|im_end|>\\n' }}"
    "{%- else %}"
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if (message.role == 'user') or (message.role == 'system' and not loop.first) "
    "or (message.role == 'assistant' and not message.tool_calls) %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}"
    "{%- elif message.role == 'assistant' %}"
    "{{- '<|im_start|>' + message.role }}"
    "{%- if message.content %}{{- '\\n' + message.content }}{%- endif %}"
    "{%- for tool_call in message.tool_calls %}"
    "{%- if tool_call.function is defined %}{%- set tool_call = tool_call.function %}{%- endif %}"
    "{{- '\\n<tool_call>\\n{\\\"name\\\": \\\"' }}{{- tool_call.name }}"
    "{{- '\\\", \\\"arguments\\\": ' }}{{- tool_call.arguments | tojson }}{{- '}\\n</tool_call>' }}"
    "{%- endfor %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- elif message.role == 'tool' %}"
    "{%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != 'tool') %}{{- '<|im_start|>user' }}{%- endif %}"
    "{{- '\\n<tool_response>\\n' }}{{- message.content }}{{- '\\n</tool_response>' }}"
    "{%- if loop.last or (messages[loop.index0 + 1].role != 'tool') %}{{- '<|im_end|>\\n' }}{%- endif %}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

# Qwen3's chat template (tools left out): assistant turns after the last user query open with
# a think block -- empty unless the content holds a `</think>`, whose preceding text moves
# into it -- and have their leading newlines stripped.
QWEN3_CHAT_TEMPLATE = (
    "{%- if messages[0].role == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- set ns = namespace(last_query_index=messages|length - 1) %}"
    "{%- for message in messages[::-1] %}"
    "{%- set index = (messages|length - 1) - loop.index0 %}"
    "{%- if message.role == 'user' and ns.last_query_index == messages|length - 1 %}"
    "{%- set ns.last_query_index = index %}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- for message in messages %}"
    "{%- set content = message.content if message.content is string else '' %}"
    "{%- if message.role == 'user' or (message.role == 'system' and not loop.first) %}"
    "{{- '<|im_start|>' + message.role + '\\n' + content + '<|im_end|>' + '\\n' }}"
    "{%- elif message.role == 'assistant' %}"
    "{%- set reasoning_content = '' %}"
    "{%- if '</think>' in content %}"
    "{%- set reasoning_content = content.split('</think>')[0].rstrip('\\n').split('<think>')[-1].lstrip('\\n') %}"
    "{%- set content = content.split('</think>')[-1].lstrip('\\n') %}"
    "{%- endif %}"
    "{%- if loop.index0 > ns.last_query_index and (loop.last or reasoning_content) %}"
    "{{- '<|im_start|>' + message.role + '\\n<think>\\n' + reasoning_content.strip('\\n') + '\\n</think>\\n\\n'"
    " + content.lstrip('\\n') }}"
    "{%- else %}"
    "{{- '<|im_start|>' + message.role + '\\n' + content }}"
    "{%- endif %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}"
    "{%- endif %}"
)

CORPUS = [
    "A masked diffusion language model writes a response by filling masks, a few at every step.",
    "The reward model reads the whole answer and returns one number: higher means better.",
    "def guide(logits, steps=3):\n    return [x ** 2 for x in range(10)]  # code, too\n\n",
    "Ünïcödé façade — naïve café, 東京, Москва; emoji 🙂🚀 and tabs\tand   runs of spaces.\n",
    "Numbers like 12, 345 and 6789 appear in lists; questions end with a question mark?",
]


def hub_offline(monkeypatch) -> None:
    """The hub unreachable, as on this project's machines, for transformers and huggingface_hub alike."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def train_bpe(vocab_size: int = 500) -> tuple[dict[str, int], list[str]]:
    """A deterministic byte-level BPE with Qwen2's pre-tokenizer: (vocab, merges) as in vocab.json / merges.txt."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(transformers.models.qwen2.tokenization_qwen2.PRETOKENIZE_REGEX),
                             behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(CORPUS * 4, trainer)
    state = json.loads(bpe.to_str())["model"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in state["merges"]]
    return state["vocab"], merges


def _write_bpe_files(directory: Path, vocab: dict[str, int], merges: list[str]) -> None:
    (directory / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False, indent=2))  # pretty-printed, as Dream's
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")


def _added_tokens_decoder(added: list[tuple[str, bool]], first_id: int) -> dict[str, dict]:
    return {str(first_id + i): {"content": token, "lstrip": False, "normalized": False, "rstrip": False,
                                "single_word": False, "special": special} for i, (token, special) in enumerate(added)}


def _save_sharded(model: torch.nn.Module, directory: Path, shards: int) -> dict[str, torch.Tensor]:
    """Safetensors shards `model-0000i-of-0000n.safetensors` and their index, as the hub ships large models."""
    state = {name: tensor.detach().clone().contiguous() for name, tensor in model.state_dict().items()}
    names = list(state)
    weight_map = {}
    for i in range(shards):
        shard = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = names[i::shards]
        save_file({n: state[n] for n in part}, str(directory / shard), metadata={"format": "pt"})
        weight_map.update({n: shard for n in part})
    total = sum(t.numel() * t.element_size() for t in state.values())
    (directory / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}, indent=2))
    return state


REMOTE_CODE = "raise RuntimeError('remote code was executed: {name}')\n"


def write_dream(directory: Path, seed: int = 7, max_positions: int = 512) -> tuple[dict, dict[str, torch.Tensor]]:
    """Write a tiny Dream-v0-Instruct in Dream's hub layout; returns (config.json as a dict, saved state dict)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    vocab, merges = train_bpe()
    _write_bpe_files(directory, vocab, merges)
    first = len(vocab)
    ids = {token: first + i for i, (token, _) in enumerate(DREAM_ADDED)}
    (directory / "added_tokens.json").write_text(json.dumps(ids, indent=2, ensure_ascii=False))
    specials = {"bos_token": "<|beginoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
                "mask_token": "<|mask|>", "additional_special_tokens": ["<|beginoftext|>", "<|mask|>"]}
    (directory / "special_tokens_map.json").write_text(json.dumps(specials, indent=2))
    tokenizer_config = {
        "add_bos_token": False, "add_prefix_space": False,
        "added_tokens_decoder": _added_tokens_decoder(DREAM_ADDED, first),
        "additional_special_tokens": specials["additional_special_tokens"],
        "auto_map": {"AutoTokenizer": ["tokenization_dream.DreamTokenizer", None]},
        "bos_token": "<|beginoftext|>", "chat_template": DREAM_CHAT_TEMPLATE, "clean_up_tokenization_spaces": False,
        "eos_token": "<|endoftext|>", "errors": "replace", "mask_token": "<|mask|>", "model_max_length": 131072,
        "pad_token": "<|endoftext|>", "padding_side": "left", "split_special_tokens": False,
        "tokenizer_class": "DreamTokenizer", "unk_token": None,
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2, ensure_ascii=False))
    for name in ("configuration_dream.py", "modeling_dream.py", "generation_utils.py", "tokenization_dream.py"):
        (directory / name).write_text(REMOTE_CODE.format(name=name))

    n_tokens = first + len(DREAM_ADDED)
    raw = dream_config_json(n_tokens, mask=ids["<|mask|>"], pad=ids["<|endoftext|>"], bos=ids["<|endoftext|>"],
                            eos=ids["<|endoftext|>"], max_positions=max_positions)
    (directory / "config.json").write_text(json.dumps(raw, indent=2))
    # Dream's own sampler reads its keys from here (temperature 0.0 among them): transformers' generic
    # validation of a causal LM's generation config calls them "not valid" if it is ever read.
    generation = {"bos_token_id": raw["bos_token_id"], "eos_token_id": raw["eos_token_id"],
                  "pad_token_id": raw["pad_token_id"], "mask_token_id": raw["mask_token_id"],
                  "temperature": 0.0, "top_p": None, "top_k": None, "alg": "origin", "alg_temp": None,
                  "steps": 512, "eps": 0.001, "max_length": 20, "output_history": False,
                  "return_dict_in_generate": False, "transformers_version": "4.46.2"}
    (directory / "generation_config.json").write_text(json.dumps(generation, indent=2))

    config = qwen2_config(raw)
    model = models.seeded(seed, lambda: transformers.Qwen2ForCausalLM(config))
    with torch.no_grad():  # random biases too, so that a dropped bias would show
        for name, param in model.named_parameters():
            if name.endswith(".bias"):
                param.copy_(models.seeded(seed + 1, lambda: torch.randn(param.shape)) * 0.1)
    state = _save_sharded(model, directory, shards=2)
    return raw, state


def dream_config_json(n_tokens: int, *, mask: int, pad: int, bos: int, eos: int, max_positions: int = 512) -> dict:
    """Dream-v0-Instruct's config.json fields (transformers 4.46, remote-code auto_map) at tiny sizes;
    like Dream's, the embedding has more rows than the tokenizer has tokens (a multiple of 64)."""
    return {
        "architectures": ["DreamModel"],
        "auto_map": {"AutoConfig": "configuration_dream.DreamConfig", "AutoModel": "modeling_dream.DreamModel"},
        "model_type": "Dream",
        "attention_dropout": 0.0, "hidden_act": "silu", "initializer_range": 0.02,
        "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "vocab_size": (n_tokens + 63) // 64 * 64, "max_position_embeddings": max_positions,
        "max_window_layers": 2, "rms_norm_eps": 1e-6, "rope_theta": 1_000_000.0, "rope_scaling": None,
        "sliding_window": 512, "use_sliding_window": False, "tie_word_embeddings": False, "use_cache": False,
        "mask_token_id": mask, "pad_token_id": pad, "bos_token_id": bos, "eos_token_id": eos,
        "torch_dtype": "bfloat16", "transformers_version": "4.46.2",
    }


def qwen2_config(raw: dict) -> transformers.Qwen2Config:
    """The Qwen2 config a correct loader must arrive at, written out field by field (RoPE base included)."""
    return transformers.Qwen2Config(
        vocab_size=raw["vocab_size"], hidden_size=raw["hidden_size"], intermediate_size=raw["intermediate_size"],
        num_hidden_layers=raw["num_hidden_layers"], num_attention_heads=raw["num_attention_heads"],
        num_key_value_heads=raw["num_key_value_heads"], max_position_embeddings=raw["max_position_embeddings"],
        rms_norm_eps=raw["rms_norm_eps"], rope_parameters={"rope_type": "default", "rope_theta": raw["rope_theta"]},
        tie_word_embeddings=False, use_sliding_window=False, pad_token_id=raw["pad_token_id"],
        eos_token_id=raw["eos_token_id"],
    )


def write_skywork(directory: Path, seed: int = 11, max_positions: int = 1024) -> dict:
    """Write a tiny Skywork-Reward-V2-Qwen3 in its hub layout; returns config.json as a dict."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    vocab, merges = train_bpe()
    first = len(vocab)
    tokenizer = transformers.Qwen2Tokenizer(vocab=vocab, merges=[tuple(m.split(" ")) for m in merges], unk_token=None, bos_token=None,
                                            eos_token=None, pad_token=None)
    tokenizer.add_tokens([transformers.AddedToken(t, special=s, normalized=False) for t, s in QWEN3_ADDED])
    tokenizer.eos_token, tokenizer.pad_token = "<|im_end|>", "<|endoftext|>"
    ids = {token: first + i for i, (token, _) in enumerate(QWEN3_ADDED)}
    assert all(tokenizer.convert_tokens_to_ids(t) == i for t, i in ids.items())
    tokenizer.save_pretrained(directory)
    config_path = directory / "tokenizer_config.json"
    tokenizer_config = json.loads(config_path.read_text())
    (directory / "chat_template.jinja").unlink(missing_ok=True)
    tokenizer_config.update({"chat_template": QWEN3_CHAT_TEMPLATE, "tokenizer_class": "Qwen2Tokenizer",
                             "model_max_length": 131072, "errors": "replace", "split_special_tokens": False,
                             "added_tokens_decoder": _added_tokens_decoder(QWEN3_ADDED, first)})
    config_path.write_text(json.dumps(tokenizer_config, indent=2, ensure_ascii=False))

    n_tokens = first + len(QWEN3_ADDED)
    raw = {
        "architectures": ["Qwen3ForSequenceClassification"], "model_type": "qwen3",
        "attention_bias": False, "attention_dropout": 0.0, "bos_token_id": ids["<|endoftext|>"],
        "eos_token_id": ids["<|im_end|>"], "pad_token_id": ids["<|endoftext|>"], "head_dim": 16,
        "hidden_act": "silu", "hidden_size": 64, "initializer_range": 0.2, "intermediate_size": 128,
        "max_position_embeddings": max_positions, "max_window_layers": 2, "num_attention_heads": 4,
        "num_hidden_layers": 2, "num_key_value_heads": 2, "rms_norm_eps": 1e-6, "rope_scaling": None,
        "rope_theta": 1_000_000.0, "sliding_window": None, "tie_word_embeddings": True, "use_cache": True,
        "use_sliding_window": False, "vocab_size": (n_tokens + 63) // 64 * 64,
        "id2label": {"0": "LABEL_0"}, "label2id": {"LABEL_0": 0},
        "torch_dtype": "bfloat16", "transformers_version": "4.51.0",
    }
    (directory / "config.json").write_text(json.dumps(raw, indent=2))
    config = transformers.Qwen3Config(**{k: v for k, v in raw.items()
                                         if k not in ("architectures", "model_type", "torch_dtype",
                                                      "transformers_version", "rope_scaling", "rope_theta")},
                                      rope_parameters={"rope_type": "default", "rope_theta": raw["rope_theta"]})
    model = models.seeded(seed, lambda: transformers.Qwen3ForSequenceClassification(config))
    state = {name: t.detach().clone().contiguous() for name, t in model.state_dict().items()
             if name != "lm_head.weight"}
    save_file(state, str(directory / "model.safetensors"), metadata={"format": "pt"})
    return raw
