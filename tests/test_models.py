"""Tests of `models.py` on tiny checkpoints written in the real checkpoints' shipped layouts.

What they prove (replicas from `tests/replicas.py`: Dream-v0-Instruct's files, with no
`tokenizer.json`, and Skywork-Reward-V2-Qwen3's):

* Dream's tokenizer loads without remote code as transformers' `Qwen2Tokenizer` from
  `vocab.json` + `merges.txt`, with the checkpoint's mask, end, pad and bos tokens and its
  chat template (default system turn included); it encodes a fixed set of strings (ASCII,
  unicode, emoji, code, whitespace runs, decomposed accents, added tokens in the text)
  exactly as a plain-Python byte-level BPE written from those two files does, decodes them
  back, and a re-saved copy with a `tokenizer.json` encodes identically;
* Dream's weights load from the sharded safetensors into `Qwen2ForCausalLM`, bit for bit,
  with the remote-code files never executed; the special ids (mask, the end set
  `<|im_end|>` + `<|endoftext|>` + the configs' EOS, pad) are read from the files;
* Skywork's checkpoint loads as a one-output `Qwen3ForSequenceClassification`; R's chat
  pieces end with Qwen3's empty think block; the Dream -> Skywork bridge maps every Dream
  token but `<|beginoftext|>` and `<|mask|>`;
* `--dry-run` on both layouts prints the plan (classes, ids, the bridge's unmapped tokens by
  name, R's prefix and suffix, the prompt's length, the predicted peak memory) and opens no
  weight file; the CLI runs end to end on both;
* R's differentiable input leaves out what the reported reward never shows R: the token
  score of a canonical response equals the discrete score of its decoded text with leading
  newlines, dropped special tokens and unmapped tokens in it (and differs without the
  exclusions); a `</think>` inside the response is a documented remaining difference;
* the tiny tokenizers are byte-level: all 256 bytes are tokens, and every UTF-8 string
  (newlines, digits, capitals, accents, emoji) encodes and decodes back to itself;
* the peak-memory prediction reproduces the one measured H100 breakdown, and the parameter
  count from the config equals the model's.

No network: the hub is offline in-process.
"""

from __future__ import annotations

import builtins
import functools
import json
import shutil
import sys
import unicodedata
from pathlib import Path

import pytest
import regex
import tokenizers
import torch
import transformers
from hypothesis import given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import models  # noqa: E402
import replicas  # noqa: E402
import rewards  # noqa: E402
import run  # noqa: E402

PROMPT = "Write a short poem about the sea."
TINY_RUN = ["--T", "4", "--max-new-tokens", "8", "--K", "2", "--no-progress", "--device", "cpu"]

STRINGS = [
    "Hello world",
    "The reward model reads the whole answer.",
    "Ünïcödé façade — naïve café, 東京, Москва",
    "emoji 🙂🚀 and 👩‍👩‍👧 family",
    "def guide(logits, steps=3):\n    return [x ** 2 for x in range(10)]  # code\n",
    "tabs\tand   runs of spaces   \n\n\n  and newlines\r\n",
    "e\u0301 decomposed accents (NFC: \u00e9)",
    "numbers 12345 and 3.14159, it's we'll THEY'RE",
    "turns <|im_start|>user\nhi<|im_end|> and a <|mask|> inside",
]

# Qwen2's pre-tokenizer pattern (contractions, letters, single digits, punctuation runs, newlines, spaces).
QWEN2_PATTERN = regex.compile(
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""")


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    replicas.hub_offline(monkeypatch)


@pytest.fixture(scope="module")
def dream(tmp_path_factory):
    directory = tmp_path_factory.mktemp("dream_shipped")
    raw, state = replicas.write_dream(directory)
    return directory, raw, state


@pytest.fixture(scope="module")
def skywork(tmp_path_factory):
    directory = tmp_path_factory.mktemp("skywork_shipped")
    return directory, replicas.write_skywork(directory)


# --------------------------------------------------------------------------- a byte-level BPE from the files


def byte_alphabet() -> dict[int, str]:
    """GPT-2's printable stand-in for each byte, as byte-level BPE vocabularies spell them."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {b: chr(b) for b in printable}, 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def reference_encode(directory: Path, text: str) -> list[int]:
    """Token ids of `text` from vocab.json + merges.txt + added_tokens.json alone, in plain Python."""
    vocab = json.loads((directory / "vocab.json").read_text())
    merges = (directory / "merges.txt").read_text().splitlines()[1:]  # first line: "#version: 0.2"
    rank = {tuple(line.split(" ")): i for i, line in enumerate(merges) if line}
    added = json.loads((directory / "added_tokens.json").read_text())
    alphabet = byte_alphabet()
    ids = []
    pieces = regex.split("(" + "|".join(regex.escape(t) for t in sorted(added, key=len, reverse=True)) + ")", text)
    for piece in pieces:
        if piece in added:
            ids.append(added[piece])
            continue
        for word in QWEN2_PATTERN.findall(unicodedata.normalize("NFC", piece)):
            symbols = [alphabet[b] for b in word.encode("utf-8")]
            while len(symbols) > 1:
                pairs = [(rank.get(pair, len(rank)), i) for i, pair in enumerate(zip(symbols, symbols[1:]))]
                best, i = min(pairs)
                if best == len(rank):
                    break
                first, second = symbols[i], symbols[i + 1]
                merged, j = [], 0
                while j < len(symbols):  # merge every occurrence of the best pair, left to right
                    if j < len(symbols) - 1 and symbols[j] == first and symbols[j + 1] == second:
                        merged.append(first + second)
                        j += 2
                    else:
                        merged.append(symbols[j])
                        j += 1
                symbols = merged
            ids.extend(vocab[s] for s in symbols)
    return ids


# --------------------------------------------------------------------------- Dream's tokenizer


@pytest.mark.filterwarnings("ignore:`rope_scaling` is deprecated:FutureWarning")  # the old loader's path, shown failing
def test_dream_replica_is_laid_out_as_shipped(dream):
    """The fixture itself: Dream's file names, no tokenizer.json, the remote-code tokenizer class."""
    directory, raw, _ = dream
    names = {p.name for p in directory.iterdir()}
    assert names == {"config.json", "generation_config.json", "model-00001-of-00002.safetensors",
                     "model-00002-of-00002.safetensors", "model.safetensors.index.json", "configuration_dream.py",
                     "modeling_dream.py", "generation_utils.py", "tokenization_dream.py", "vocab.json", "merges.txt",
                     "added_tokens.json", "special_tokens_map.json", "tokenizer_config.json"}
    tokenizer_config = json.loads((directory / "tokenizer_config.json").read_text())
    assert tokenizer_config["tokenizer_class"] == "DreamTokenizer" and "AutoTokenizer" in tokenizer_config["auto_map"]
    added = [entry["content"] for _, entry in sorted(tokenizer_config["added_tokens_decoder"].items(),
                                                      key=lambda kv: int(kv[0]))]
    assert added[0] == "<|endoftext|>" and added[-2:] == ["<|beginoftext|>", "<|mask|>"] and len(added) == 24
    assert (raw["model_type"], raw["rope_scaling"], raw["transformers_version"]) == ("Dream", None, "4.46.2")
    # The details of the real files: bos is <|endoftext|> in config.json, the special-tokens map names only
    # <|beginoftext|> and <|mask|> as additional specials, vocab.json is pretty-printed, the chat template
    # has a tools branch, and generation_config.json carries Dream's own sampler keys (temperature 0.0).
    endoftext = tokenizer_config["added_tokens_decoder"]
    assert endoftext[str(raw["bos_token_id"])]["content"] == "<|endoftext|>" == endoftext[str(raw["eos_token_id"])]["content"]
    specials = json.loads((directory / "special_tokens_map.json").read_text())
    assert specials["additional_special_tokens"] == ["<|beginoftext|>", "<|mask|>"]
    assert (directory / "vocab.json").read_text().startswith("{\n  ")
    assert "{%- if tools %}" in tokenizer_config["chat_template"]
    generation = json.loads((directory / "generation_config.json").read_text())
    assert generation["temperature"] == 0.0 and {"alg", "steps", "eps"} <= set(generation)
    with pytest.raises(ValueError, match="custom code"):  # what the old loader met first
        transformers.AutoTokenizer.from_pretrained(directory, trust_remote_code=False)


def test_dream_tokenizer_loads_without_remote_code(dream):
    """Qwen2's BPE from vocab.json + merges.txt, with Dream's special tokens and chat template."""
    directory, raw, _ = dream
    checkpoint = models.denoiser_checkpoint(str(directory))
    tokenizer = checkpoint.tokenizer
    assert type(tokenizer) is transformers.Qwen2Tokenizer
    added = json.loads((directory / "added_tokens.json").read_text())
    assert len(tokenizer) == len(json.loads((directory / "vocab.json").read_text())) + len(added)
    assert all(tokenizer.convert_tokens_to_ids(t) == i for t, i in added.items())
    assert (tokenizer.mask_token, tokenizer.eos_token, tokenizer.pad_token, tokenizer.bos_token) == (
        "<|mask|>", "<|endoftext|>", "<|endoftext|>", "<|beginoftext|>")
    ids = models.token_ids(tokenizer, checkpoint.config, checkpoint.generation_config)
    assert ids.mask == raw["mask_token_id"] == added["<|mask|>"]
    assert ids.ends == tuple(sorted({added["<|im_end|>"], added["<|endoftext|>"]}))
    assert ids.pad == raw["pad_token_id"]
    assert models.prompt_text(tokenizer, "hi") == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n"
        "<|im_start|>assistant\n")


def test_dream_decodes_as_its_own_tokenizer(dream):
    """Dream's DreamTokenizer.decode(skip_special_tokens=True) drops only <|beginoftext|>, <|endoftext|> and <|mask|>
    (its special-tokens map) and keeps <|im_start|>, <|im_end|> and the other added tokens as text; transformers 5's
    skip_special_tokens=True would drop all 16 flagged special."""
    tokenizer = models.denoiser_checkpoint(str(dream[0])).tokenizer
    pieces = ["<|im_start|>", "<|beginoftext|>", "<|endoftext|>", "<|mask|>", "<|im_end|>", "<|box_start|>", "<tool_call>"]
    ids = tokenizer.convert_tokens_to_ids(pieces)
    body = tokenizer("The sea", add_special_tokens=False)["input_ids"]
    assert rewards.decode_text(tokenizer, body + ids + body) == (
        "The sea<|im_start|><|im_end|><|box_start|><tool_call>The sea")
    assert tokenizer.decode(ids, skip_special_tokens=True) == "<tool_call>"  # transformers 5's own rule differs
    # run.py's responses follow the same rule, up to the first end token
    tokens = torch.tensor([body + ids[:2] + body + ids[4:]])
    assert run.decode_responses(tokenizer, tokens, [ids[4]]) == ["The sea<|im_start|>The sea"]


def test_loading_dream_prints_no_generation_config_warning(dream, capfd, caplog):
    """Dream's generation_config.json (temperature 0.0 and its sampler's keys) is never read: transformers' warning
    that its flags "are not valid and may be ignored" does not reach the user."""
    import logging

    from transformers.utils import logging as transformers_logging

    checkpoint = models.denoiser_checkpoint(str(dream[0]))
    transformers_logging.warning_once.cache_clear()  # a warning shown earlier in this process would be cached away
    with caplog.at_level(logging.INFO):
        models.load_weights(checkpoint, torch.float32)
    out, err = capfd.readouterr()
    shown = out + err + caplog.text
    assert "generation flags" not in shown and "temperature" not in shown
    # the fixture carries the trigger: transformers' own validation refuses the file's flags
    with pytest.raises(ValueError, match="temperature"):
        transformers.GenerationConfig.from_pretrained(dream[0]).validate(strict=True)


@pytest.mark.parametrize("text", STRINGS, ids=range(len(STRINGS)))
def test_dream_tokenizer_encodes_as_its_bpe_files_say(dream, text):
    """Encoding equals a plain-Python BPE written from vocab.json + merges.txt; decoding gives the (NFC) text back."""
    directory, _, _ = dream
    tokenizer = models.denoiser_checkpoint(str(directory)).tokenizer
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert ids == reference_encode(directory, text)
    assert tokenizer.decode(ids) == unicodedata.normalize("NFC", text)


def test_resaved_dream_with_tokenizer_json_encodes_the_same(dream, tmp_path):
    """A re-saved Dream (with a tokenizer.json, the vocab files gone) loads through the same path, same ids."""
    directory, _, _ = dream
    original = models.denoiser_checkpoint(str(directory))
    copy = tmp_path / "resaved"
    shutil.copytree(directory, copy)
    original.tokenizer.save_pretrained(copy)
    (copy / "vocab.json").unlink()
    (copy / "merges.txt").unlink()
    assert (copy / "tokenizer.json").exists()
    resaved = models.denoiser_checkpoint(str(copy)).tokenizer
    for text in STRINGS:
        assert resaved(text, add_special_tokens=False)["input_ids"] == \
            original.tokenizer(text, add_special_tokens=False)["input_ids"]
    assert models.prompt_text(resaved, "hi") == models.prompt_text(original.tokenizer, "hi")


def test_dream_weights_load_bit_for_bit_without_remote_code(dream):
    """The sharded safetensors load into Qwen2ForCausalLM exactly (the remote-code files raise if run)."""
    directory, raw, state = dream
    model, _ = models.load_dream(str(directory), torch.float32)
    assert type(model) is transformers.Qwen2ForCausalLM
    loaded = model.state_dict()
    assert set(loaded) == set(state)
    assert all(torch.equal(loaded[name], tensor) for name, tensor in state.items())
    assert model.config.rope_parameters["rope_theta"] == raw["rope_theta"]


# --------------------------------------------------------------------------- Skywork


def test_skywork_loads_and_reads_qwen3_template(skywork, dream):
    """One-output Qwen3 classifier; R's prefix ends with the empty think block; the bridge misses only Dream's two."""
    directory, raw = skywork
    checkpoint = models.reward_checkpoint(str(directory))
    assert checkpoint.config.num_labels == 1
    model = models.load_weights(checkpoint, torch.float32)
    assert type(model) is transformers.Qwen3ForSequenceClassification
    prefix, suffix = rewards.chat_pieces(checkpoint.tokenizer, "hi")
    decode = checkpoint.tokenizer.decode
    assert decode(prefix) == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    assert decode(suffix) == "<|im_end|>\n"
    text = rewards.chat_text(checkpoint.tokenizer, "hi", "\n\nmoved</think>kept")
    assert text.endswith("<|im_start|>assistant\n<think>\nmoved\n</think>\n\nkept<|im_end|>\n")

    dream_tokenizer = models.denoiser_checkpoint(str(dream[0])).tokenizer
    bridge = rewards.vocab_bridge(dream_tokenizer, checkpoint.tokenizer, dream[1]["vocab_size"])
    unmapped = [dream_tokenizer.convert_ids_to_tokens(i) for i in range(bridge.tokenizer_size) if bridge.index[i] < 0]
    assert unmapped == ["<|beginoftext|>", "<|mask|>"] and bridge.unmapped == 2


# --------------------------------------------------------------------------- --dry-run and the CLI


def test_dry_run_prints_the_plan_and_opens_no_weight_file(dream, skywork, capsys, monkeypatch):
    """--dry-run on both shipped layouts: exit 0, the plan on stdout, no safetensors file opened, no file written."""
    opened = []
    real_open = builtins.open

    def watching_open(file, *args, **kwargs):
        opened.append(str(file))
        return real_open(file, *args, **kwargs)

    import safetensors
    import safetensors.torch

    monkeypatch.setattr(builtins, "open", watching_open)
    monkeypatch.setattr(safetensors, "safe_open", lambda *a, **k: pytest.fail("a weight file was opened"))
    monkeypatch.setattr(safetensors.torch, "load_file", lambda *a, **k: pytest.fail("a weight file was opened"))
    monkeypatch.setattr(transformers.PreTrainedModel, "from_pretrained",
                        classmethod(lambda *a, **k: pytest.fail("weights were loaded")))
    status = run.main(["--prompt", PROMPT, "--dllm", str(dream[0]), "--reward-model", str(skywork[0]),
                       "--dry-run", "--device", "cpu", "--dtype", "bfloat16"])
    out, err = capsys.readouterr()
    assert status == 0, err
    assert not [f for f in opened if f.endswith(".safetensors")]
    raw = dream[1]
    assert f"<|mask|> = {raw['mask_token_id']}" in out
    assert "<|endoftext|> = " in out and "<|im_end|> = " in out
    assert "unmapped: <|beginoftext|>, <|mask|>" in out
    assert "Qwen2ForCausalLM" in out and "Qwen3 sequence classifier" in out
    assert "<think>\\n\\n</think>\\n\\n'" in out and "'<|im_end|>\\n'" in out
    tokenizer = models.denoiser_checkpoint(str(dream[0])).tokenizer
    n_prompt = len(tokenizer(models.prompt_text(tokenizer, PROMPT), add_special_tokens=False)["input_ids"])
    assert f"prompt        {n_prompt} tokens" in out
    assert "predicted for B = 1 x K = 4, L = 128, bfloat16" in out


def test_dry_run_without_weight_files(dream, skywork, tmp_path, capsys):
    """The plan needs no weights at all: copies with every safetensors file removed still dry-run."""
    copies = []
    for source in (dream[0], skywork[0]):
        copy = tmp_path / source.name
        shutil.copytree(source, copy)
        for weights in copy.glob("*.safetensors"):
            weights.unlink()
        copies.append(copy)
    status = run.main(["--prompt", PROMPT, "--dllm", str(copies[0]), "--reward-model", str(copies[1]), "--dry-run",
                       "--device", "cpu", "--output", str(tmp_path / "never.json")])
    out, err = capsys.readouterr()
    assert status == 0, err
    assert "vocab bridge" in out and not (tmp_path / "never.json").exists()


def test_cli_runs_on_both_shipped_layouts(dream, skywork, tmp_path, capsys):
    """The whole CLI, guided, on Dream's and Skywork's layouts: exit 0, both rewards per response in the JSON."""
    output = tmp_path / "result.json"
    status = run.main(["--prompt", PROMPT, "--dllm", str(dream[0]), "--reward-model", str(skywork[0]), *TINY_RUN,
                       "--output", str(output)])
    _, err = capsys.readouterr()
    assert status == 0, err
    result = json.loads(output.read_text())
    assert len(result["rewards"]) == len(result["token_rewards"]) == len(result["responses"]) == 2
    assert result["vocab_bridge"]["unmapped"] == 2


# --------------------------------------------------------------------------- what R reads


@pytest.fixture(scope="module")
def pair(dream, skywork):
    """Dream's tokenizer, Skywork's model and tokenizer, the bridge, the reading tables and E."""
    d = models.denoiser_checkpoint(str(dream[0]))
    r = models.reward_checkpoint(str(skywork[0]))
    reward = models.load_weights(r, torch.float32)
    ids = models.token_ids(d.tokenizer, d.config, d.generation_config)
    bridge = rewards.vocab_bridge(d.tokenizer, r.tokenizer, d.config.vocab_size)
    reading = rewards.response_reading(d.config.vocab_size, ids.ends, ids.pad, d.tokenizer, bridge)
    E = rewards.bridged_embeddings(reward.get_input_embeddings().weight, bridge)
    return d.tokenizer, reward, r.tokenizer, ids, reading, E


def _both_scores(pair, rows: list[list[int]], reading=None):
    """(token score as guidance reads the rows, discrete score of their decoded text)."""
    tokenizer, reward, reward_tokenizer, ids, default_reading, E = pair
    width = max(map(len, rows))
    tokens = torch.tensor([r + [ids.pad] * (width - len(r)) for r in rows])  # (N, L) padded at the end
    scorer = rewards.EmbeddingScorer(reward, reward_tokenizer, [PROMPT], K=len(rows), reading=reading or default_reading)
    with torch.no_grad():
        token_scores = scorer(E[tokens], tokens)
    texts = run.decode_responses(tokenizer, tokens, ids.ends)
    return token_scores, rewards.score_texts(reward, reward_tokenizer, [PROMPT] * len(rows), texts)


def test_token_score_equals_text_score_with_what_decoding_and_the_template_drop(pair):
    """Leading newlines, dropped special tokens and unmapped tokens are left out of R's differentiable input."""
    tokenizer = pair[0]
    encode = lambda s: tokenizer(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    token = tokenizer.convert_tokens_to_ids
    body = encode("The reward model reads the whole answer.")
    rows = [
        body,
        encode("\n\n") + body,  # leading newlines: Qwen3's template strips them
        encode("\n") + [token("<|im_start|>")] + encode("\n") + body,  # specials between leading newlines
        body[:3] + [token("<|box_start|>")] + body[3:],  # a special token Dream's decoding keeps: R reads it
        body[:2] + [token("<|beginoftext|>")] + body[2:],  # an unmapped (and dropped) token
        encode("The reward model reads the whole answer.\n\nmore") + [token("<|im_end|>")] + encode("after it"),
    ]
    token_scores, text_scores = _both_scores(pair, rows)
    torch.testing.assert_close(token_scores, text_scores, rtol=1e-5, atol=1e-5)
    assert "<|box_start|>" in run.decode_responses(tokenizer, torch.tensor([rows[3]]), pair[3].ends)[0]
    # Without the exclusions (only the end cut-off and pads), the rows with something to leave out read differently.
    _, _, _, ids, reading, _ = pair
    bare = rewards.ResponseReading(end=reading.end, hidden=torch.zeros_like(reading.hidden),
                                   newline=torch.zeros_like(reading.newline))
    excluding = [rows[1], rows[2], rows[4]]
    bare_scores, _ = _both_scores(pair, excluding, bare)
    assert ((bare_scores - text_scores[[1, 2, 4]]).abs() > 1e-3).all()


def test_think_close_inside_the_response_is_read_differently(pair):
    """A `</think>` in the response: Qwen3's template moves the text before it into the think block,
    so the token score and the text score differ (the README's remaining difference)."""
    tokenizer = pair[0]
    row = tokenizer("plan</think>answer", add_special_tokens=False)["input_ids"]
    token_scores, text_scores = _both_scores(pair, [row])
    assert (token_scores - text_scores).abs().item() > 1e-3


# --------------------------------------------------------------------------- memory prediction


def test_parameter_count_from_config_equals_the_model(dream, skywork):
    for checkpoint in (models.denoiser_checkpoint(str(dream[0])), models.reward_checkpoint(str(skywork[0]))):
        model = models.load_weights(checkpoint, torch.float32)
        assert models.parameter_count(checkpoint) == sum(p.numel() for p in model.parameters())


def test_peak_prediction_reproduces_the_measured_breakdown():
    """At Dream-7B + Skywork-1.7B shapes, K = 4, L = 128, bfloat16, the prediction is the one H100 measurement
    less what 15c5b31 removed (benchmarks/RESULTS.md): 22.47 GiB measured, with 7.07 instead of 4.57 blocks of
    4 x 128 x V float32 alive; its parts are the weights (17.97 GiB) and 2.45 GiB of reward activations."""
    dream = models.Checkpoint("dream", None, transformers.Qwen2Config(
        vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
        num_key_value_heads=4, tie_word_embeddings=False), None, transformers.Qwen2ForCausalLM)
    skywork = models.Checkpoint("skywork", None, transformers.Qwen3Config(
        vocab_size=151936, hidden_size=2048, intermediate_size=6144, num_hidden_layers=28, num_attention_heads=16,
        num_key_value_heads=8, head_dim=128, tie_word_embeddings=True, num_labels=1), None,
        transformers.Qwen3ForSequenceClassification)
    peak = models.predict_peak_bytes(dream, skywork, rows=4, length=128, reward_tokens=130, dtype=torch.bfloat16)
    gib = 2**30
    assert peak["weights"] / gib == pytest.approx(17.97, abs=0.05)
    assert peak["vocab_blocks"] == pytest.approx(4.57 * 4 * 128 * 152064 * 4, rel=1e-6)
    assert peak["reward_activations"] / gib == pytest.approx(2.45, abs=0.05)
    assert peak["prefix_cache"] == 0  # the bench's prefix is not counted in the calibration
    block = 4 * 128 * 151936 * 4  # the bench's V
    assert peak["total"] / gib == pytest.approx((22.47 * gib - (7.07 - 4.57) * block) / gib, abs=0.1)
    with_prefix = models.predict_peak_bytes(dream, skywork, rows=4, length=128, reward_tokens=130,
                                            dtype=torch.bfloat16, prefix_tokens=86)
    assert with_prefix["prefix_cache"] == 4 * 86 * 28 * 2 * 8 * 128 * 2  # rows x tokens x layers x (k, v) x heads x dim
    assert with_prefix["total"] == sum(with_prefix[k] for k in ("weights", "vocab_blocks", "reward_activations",
                                                                "prefix_cache"))


def test_a_hub_checkpoint_is_planned_without_its_weights(dream, tmp_path, monkeypatch):
    """A hub id: the plan fetches only configs and tokenizers (a --dry-run downloads no weight); the weights are
    fetched when the model is built. (The hub is simulated: snapshot_download serves a local copy.)"""
    import huggingface_hub
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(models, "_hub_reachable", lambda *a: True)
    served = tmp_path / "snapshot"
    asked = []

    def fake_snapshot(name, allow_patterns=None, local_files_only=False):
        asked.append((name, allow_patterns, local_files_only))
        if local_files_only and allow_patterns is None:
            raise OSError("not in the cache")  # the first look, in the local cache
        served.mkdir(exist_ok=True)
        for path in dream[0].iterdir():  # copy only the files the patterns name
            if any(path.match(pattern) for pattern in allow_patterns):
                shutil.copy(path, served / path.name)
        return str(served)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot)
    checkpoint = models.denoiser_checkpoint("Dream-org/Dream-v0-Instruct-7B")
    assert not list(served.glob("*.safetensors")) and asked[-1][1] == models.CONFIG_FILES
    model = models.load_weights(checkpoint, torch.float32)
    assert asked[-1][1] == models.WEIGHT_FILES and list(served.glob("*.safetensors"))
    assert torch.equal(model.state_dict()["lm_head.weight"], dream[2]["lm_head.weight"])


# --------------------------------------------------------------------------- the tiny tokenizers


@functools.lru_cache(maxsize=None)
def tiny_tokenizer(size: int):
    return models.tiny_tokenizer(size)


@pytest.mark.parametrize("size", [models.TINY_DLLM_VOCAB, models.TINY_REWARD_VOCAB])
def test_tiny_tokenizers_hold_every_byte(size):
    """Byte-level as Qwen's: each of the 256 bytes is a token of its own (ByteLevel's printable alphabet), so no
    character is ever dropped; the tiny models' embeddings have a row for every token."""
    tokenizer = tiny_tokenizer(size)
    vocab = tokenizer.get_vocab()
    alphabet = tokenizers.pre_tokenizers.ByteLevel.alphabet()
    assert len(alphabet) == 256 and set(alphabet) <= set(vocab)
    assert len(tokenizer) == len(vocab) <= size
    config = (models.tiny_dllm_config if size == models.TINY_DLLM_VOCAB else models.tiny_reward_config)(tokenizer)
    assert config.vocab_size >= len(tokenizer)


text_with_everything = st.lists(  # any Unicode, with what the old tiny tokenizers dropped made likely
    st.one_of(st.characters(codec="utf-8"), st.sampled_from(list("\n\r\t BCDFHIJKLMOPQRSUVXYZ0123456789!éàüñç")),
              st.sampled_from(["🙂", "🚀", "👩‍👩‍👧", "東京", "e\u0301"])), max_size=40).map("".join)


@settings(max_examples=150, deadline=None)
@given(text=text_with_everything)
@pytest.mark.parametrize("size", [models.TINY_DLLM_VOCAB, models.TINY_REWARD_VOCAB])
def test_tiny_tokenizers_round_trip_every_string(size, text):
    """Every UTF-8 string encodes and decodes back to itself (decode keeping every token)."""
    tokenizer = tiny_tokenizer(size)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids, skip_special_tokens=False) == text


def test_tiny_prompt_reaches_both_models_whole():
    """The reward model's chat prefix carries the prompt as typed (it once read 'Hi' as 'i')."""
    prefix, _ = rewards.chat_pieces(tiny_tokenizer(models.TINY_REWARD_VOCAB), "Hi! Zürich 42\n🙂")
    assert tiny_tokenizer(models.TINY_REWARD_VOCAB).decode(prefix) == \
        "<|im_start|>user\nHi! Zürich 42\n🙂<|im_end|>\n<|im_start|>assistant\n"
