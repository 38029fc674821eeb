"""Tests of `run.py`, the command line: a prompt in, K guided responses and their rewards out.

What they prove, on the tiny seeded models (`--dllm tiny --reward-model tiny`) and on tiny
checkpoints written to disk:

* the CLI works end to end for every method (entrgi, aps, expectation, bon), in-process
  through `run.main` and as a script (`python run.py`, progress bar on stderr only): it
  exits 0, prints each response with its reward and Top@1 / Avg@N, and writes a JSON
  record whose rewards are the discrete rewards of its responses, whose Top@1 / Avg@N /
  best response follow from them, and whose config records every SamplingConfig field,
  the models, seed, device, dtype and versions; the same seed gives the same result, a
  different seed a different one; greedy Best-of-N gives K identical responses;
* every bad input (empty prompt, out-of-range or non-finite K, T, M, eta, temperature,
  top-p, max-new-tokens, a seed torch cannot take, unknown method, CUDA without CUDA, an
  output path below a file, a missing model, a reward model with two outputs, a denoiser
  without a mask token, a denoiser or reward tokenizer without a working chat template, a
  prompt beyond the denoiser's context) exits with status 2 and exactly one `error:` line
  on stderr, no traceback and no output file -- before any weights are loaded where the
  config and tokenizer already tell; a checkpoint whose config does not fit its weights or
  names an unknown RoPE type, and a reward model without a decoder and a score head, exit 2
  with the error as the last line (after transformers' own load report); any other
  exception (a ValueError from inside generation) is a bug and propagates with its traceback;
* a re-saved Dream (Dream's config.json -- model_type "Dream", remote-code `auto_map`s for
  the model and the tokenizer, Qwen2 parameter names -- but a `tokenizer.json` and one
  safetensors file, as `save_pretrained` writes them; the layout as shipped is
  tests/replicas.py's, tested in test_models.py) loads through `models.load_dream` into
  transformers' own Qwen2ForCausalLM without remote code and without prompting for it,
  with exactly the saved weights, Dream's RoPE base, its mask token, tokenizer and chat
  template; `sampler.dream_denoiser` on it equals a directly built Qwen2ForCausalLM run
  with a full bidirectional mask, logits shifted right by one; and the CLI runs on it.

No network: the hub is switched to offline mode in-process and in every subprocess.
"""

from __future__ import annotations

import builtins
import contextlib
import dataclasses
import io
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import models  # noqa: E402
import replicas  # noqa: E402
import rewards  # noqa: E402
import run  # noqa: E402
import sampler  # noqa: E402
from sampler import SamplingConfig  # noqa: E402

ROOT = Path(run.__file__).resolve().parent
METHODS = ("entrgi", "aps", "expectation", "bon")
PROMPT = "Write a short poem about the sea."
K, T, L = 3, 8, 8
TINY = ["--dllm", "tiny", "--reward-model", "tiny", "--T", str(T), "--max-new-tokens", str(L), "--K", str(K),
        "--no-progress", "--device", "cpu"]  # the CPU on every machine: the expectations are float32 CPU ones


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """Hub offline: nothing may be downloaded (huggingface_hub reads the variable at import, so patch both)."""
    replicas.hub_offline(monkeypatch)


@pytest.fixture
def no_remote_code_prompt(monkeypatch):
    """Fail if transformers asks on stdin whether to run a repository's custom code."""
    asked = []

    def fake_input(prompt=""):
        asked.append(prompt)
        return ""  # "no"

    monkeypatch.setattr(builtins, "input", fake_input)
    yield
    assert not asked, f"transformers prompted for remote code: {asked[0]!r}"


def subprocess_env() -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}


def cli(argv: list[str], capsys) -> tuple[int, str, str]:
    """run.main in-process: (exit status, stdout, stderr)."""
    status = run.main(argv)
    out, err = capsys.readouterr()
    return status, out, err


def result_of(argv: list[str], capsys, path: Path) -> tuple[dict, str, str]:
    """Run the CLI with --output `path`; require exit 0; return (JSON record, stdout, stderr)."""
    status, out, err = cli(argv + ["--output", str(path)], capsys)
    assert status == 0, err
    return json.loads(path.read_text()), out, err


# --------------------------------------------------------------------------- tiny checkpoints on disk


@pytest.fixture(scope="module")
def dream_checkpoint(tmp_path_factory):
    """A tiny re-saved Dream: Dream's config.json and tokenizer class, a tokenizer.json and one safetensors file
    (the shipped layout is tests/replicas.py's). Returns (directory, saved state dict, raw config)."""
    from safetensors.torch import save_file

    directory = tmp_path_factory.mktemp("dream")
    tokenizer = models.tiny_tokenizer(models.TINY_DLLM_VOCAB)
    tokenizer.save_pretrained(directory)
    # Dream's tokenizer_config.json names its own class, loadable only with remote code,
    # and carries the chat template itself (transformers 4.4x layout).
    tokenizer_config_path = directory / "tokenizer_config.json"
    tokenizer_config = json.loads(tokenizer_config_path.read_text())
    template = directory / "chat_template.jinja"
    if template.exists():
        tokenizer_config["chat_template"] = template.read_text()
        template.unlink()
    else:
        tokenizer_config["chat_template"] = models.QWEN_CHAT_TEMPLATE
    tokenizer_config["tokenizer_class"] = "DreamTokenizer"
    tokenizer_config["auto_map"] = {"AutoTokenizer": ["tokenization_dream.DreamTokenizer", None]}
    tokenizer_config_path.write_text(json.dumps(tokenizer_config, indent=2))

    mask = tokenizer.convert_tokens_to_ids(models.MASK_TOKEN)
    raw = replicas.dream_config_json(len(tokenizer), mask=mask, pad=tokenizer.pad_token_id,
                                     bos=tokenizer.eos_token_id, eos=tokenizer.eos_token_id)
    (directory / "config.json").write_text(json.dumps(raw, indent=2))

    config = replicas.qwen2_config(raw)
    model = models.seeded(7, lambda: transformers.Qwen2ForCausalLM(config))
    with torch.no_grad():  # random biases too, so that a dropped bias would show
        for name, param in model.named_parameters():
            if name.endswith(".bias"):
                param.copy_(models.seeded(8, lambda: torch.randn(param.shape)) * 0.1)
    state = {name: tensor.detach().clone().contiguous() for name, tensor in model.state_dict().items()}
    save_file(state, str(directory / "model.safetensors"), metadata={"format": "pt"})
    return directory, state, raw


@pytest.fixture(scope="module")
def two_output_reward(tmp_path_factory):
    """A tiny Qwen3 sequence classifier with num_labels=2, saved with its tokenizer."""
    directory = tmp_path_factory.mktemp("reward2")
    tokenizer = models.tiny_tokenizer(models.TINY_REWARD_VOCAB)
    config = transformers.Qwen3Config(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, head_dim=16, num_labels=2, pad_token_id=tokenizer.pad_token_id,
    )
    models.seeded(0, lambda: transformers.Qwen3ForSequenceClassification(config)).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module", params=["none", "raises"])
def templateless_reward(request, tmp_path_factory):
    """A tiny one-output Qwen3 sequence classifier saved with a tokenizer that has no chat template,
    or one that raises when applied (jinja's raise_exception, as real templates do on bad roles)."""
    directory = tmp_path_factory.mktemp(f"reward_template_{request.param}")
    model, tokenizer = models.tiny_reward()
    tokenizer.chat_template = None if request.param == "none" else "{{ raise_exception('roles must alternate') }}"
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def maskless_denoiser(tmp_path_factory):
    """A tiny Qwen2 checkpoint whose tokenizer has no <|mask|> and no mask_token, config without mask_token_id."""
    from tokenizers import Tokenizer, decoders, pre_tokenizers, trainers
    from tokenizers.models import BPE

    directory = tmp_path_factory.mktemp("nomask")
    bpe = Tokenizer(BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    specials = [t for t in models.TINY_SPECIALS if t != models.MASK_TOKEN]
    bpe.train_from_iterator(models.TINY_CORPUS, trainers.BpeTrainer(vocab_size=300, special_tokens=specials,
                                                                  show_progress=False))
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token=models.EOS_TOKEN,
                                                     pad_token=models.EOS_TOKEN)
    tokenizer.chat_template = models.QWEN_CHAT_TEMPLATE
    config = transformers.Qwen2Config(
        vocab_size=320, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=512, pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    models.seeded(0, lambda: transformers.Qwen2ForCausalLM(config)).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    saved = json.loads((directory / "config.json").read_text())
    assert "mask_token_id" not in saved and models.MASK_TOKEN not in tokenizer.get_vocab()
    assert tokenizer.mask_token is None
    return directory


# --------------------------------------------------------------------------- the CLI on tiny models


@pytest.fixture(scope="module")
def tiny_scorer():
    """The tiny reward model, to recompute the discrete rewards of reported responses."""
    return models.tiny_reward()


def method_argv(method: str) -> list[str]:
    return ["--prompt", PROMPT, *TINY, "--method", method, "--seed", "3"]


@pytest.fixture(scope="module")
def method_runs(tmp_path_factory):
    """method -> (exit status, output path, stdout, stderr) of one in-process run, each run once per module."""
    cache = {}

    def get(method: str):
        if method not in cache:
            path = tmp_path_factory.mktemp(method) / "sub" / "x.json"
            out, err = io.StringIO(), io.StringIO()
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                status = run.main(method_argv(method) + ["--output", str(path)])
            cache[method] = status, path, out.getvalue(), err.getvalue()
        return cache[method]

    return get


@pytest.mark.parametrize("method", METHODS)
def test_cli_result_record_for_every_method(method, method_runs, tiny_scorer):
    """Every method: exit 0, a JSON record whose rewards, Top@1, Avg@N, best response, config and diagnostics are right."""
    argv = method_argv(method)
    status, path, out, err = method_runs(method)
    assert status == 0, err
    result = json.loads(path.read_text())

    responses, scores = result["responses"], result["rewards"]
    assert len(responses) == K and len(scores) == K
    assert all(isinstance(r, str) for r in responses) and all(isinstance(s, float) for s in scores)
    assert any(responses), "every response is empty"
    # The rewards are the discrete rewards of the returned texts, through R's chat template.
    model, tokenizer = tiny_scorer
    expected = rewards.score_texts(model, tokenizer, [PROMPT] * K, responses)
    torch.testing.assert_close(torch.tensor(scores), expected, rtol=0, atol=1e-5)
    assert result["top1_reward"] == max(scores)
    assert result["avgN_reward"] == pytest.approx(sum(scores) / K, abs=1e-12)
    assert result["best_response"] == responses[max(range(K), key=scores.__getitem__)]

    config = result["config"]
    parsed = run.build_parser().parse_args(argv)
    for f in dataclasses.fields(SamplingConfig):
        assert f.name in config, f.name
        assert config[f.name] == getattr(parsed, f.name), f.name
    assert (config["method"], config["K"], config["T"], config["max_new_tokens"]) == (method, K, T, L)
    assert config["prompt"] == PROMPT
    assert (config["dllm"], config["reward_model"], config["seed"]) == ("tiny", "tiny", 3)
    assert (config["device"], config["dtype"]) == ("cpu", "float32")
    assert config["versions"]["torch"] == torch.__version__
    assert config["versions"]["transformers"] == transformers.__version__
    assert config["versions"]["python"] == ".".join(map(str, sys.version_info[:3]))

    bridge = result["vocab_bridge"]
    assert 0 < bridge["coverage"] <= 1
    assert bridge["coverage"] == pytest.approx(1 - bridge["unmapped"] / bridge["tokenizer_size"])
    assert bridge["tokenizer_size"] == len(models.tiny_tokenizer(models.TINY_DLLM_VOCAB))
    weight = result["mean_entropy_weight"]
    if method == "bon":
        assert weight is None
    else:
        assert isinstance(weight, float) and 0 <= weight <= 1 and math.isfinite(weight)
    assert result["wall_seconds"] > 0

    # stdout: each response with its reward, then Top@1 and Avg@N.
    for k, (text, score, as_tokens) in enumerate(zip(responses, scores, result["token_rewards"])):
        assert f"--- response {k}  reward {score:+.4f}  (as tokens {as_tokens:+.4f})\n{text}\n" in out
    assert f"Top@1 {max(scores):+.4f}" in out and f"Avg@N {sum(scores) / K:+.4f}" in out
    assert "denoising" not in err, "progress bar drawn despite --no-progress"
    assert [p.name for p in path.parent.iterdir()] == ["x.json"], "temporary file left beside the output"


@pytest.mark.parametrize("method", METHODS)
def test_cli_same_seed_same_result(method, method_runs, capsys, tmp_path):
    """The same seed gives the same responses and rewards (and nothing depends on the global torch RNG)."""
    status, path, _, err = method_runs(method)
    assert status == 0, err
    first = json.loads(path.read_text())
    torch.manual_seed(12345)  # the global RNG must not matter
    torch.rand(7)
    second, _, _ = result_of(method_argv(method), capsys, tmp_path / "b.json")
    assert first["responses"] == second["responses"]
    assert first["rewards"] == second["rewards"]
    assert first["mean_entropy_weight"] == second["mean_entropy_weight"]


@pytest.mark.parametrize("method", ["entrgi", "bon"])
def test_cli_different_seed_different_result(method, method_runs, capsys, tmp_path):
    """Another seed gives other responses: the seed reaches the sampler (and the guidance)."""
    status, path, _, err = method_runs(method)
    assert status == 0, err
    first = json.loads(path.read_text())
    second, _, _ = result_of(method_argv(method) + ["--seed", "4"], capsys, tmp_path / "b.json")
    assert first["responses"] != second["responses"]


def test_cli_greedy_best_of_n(capsys, tmp_path):
    """--temperature 0 is fine for bon and is greedy: the K responses are identical."""
    argv = ["--prompt", PROMPT, *TINY, "--method", "bon", "--temperature", "0"]
    result, _, _ = result_of(argv, capsys, tmp_path / "x.json")
    assert result["config"]["temperature"] == 0
    assert len(set(result["responses"])) == 1
    # K identical texts scored in one batch: the same score up to float32 reduction order (~2e-7 seen).
    assert max(result["rewards"]) - min(result["rewards"]) <= 1e-5


def test_script_entry_point_and_progress_bar(tmp_path):
    """`python run.py` works as a script: exit 0, results on stdout, the progress bar on stderr only."""
    output = tmp_path / "x.json"
    argv = ["--prompt", PROMPT, *[a for a in TINY if a != "--no-progress"], "--output", str(output)]
    done = subprocess.run([sys.executable, str(ROOT / "run.py"), *argv], cwd=tmp_path, env=subprocess_env(),
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert "denoising: 100%" in done.stderr and f"| {T}/{T} [" in done.stderr  # tqdm's bar, to the end
    assert "denoising" not in done.stdout
    result = json.loads(output.read_text())
    assert len(result["responses"]) == K
    assert f"Top@1 {result['top1_reward']:+.4f}" in done.stdout
    assert done.stdout.count("--- response ") == K


# --------------------------------------------------------------------------- bad input


def assert_usage_error(argv: list[str], capsys, tmp_path: Path, *words: str) -> str:
    """Exit 2, exactly one `error:` line on stderr (mentioning `words`), no traceback, no output file."""
    output = tmp_path / "out" / "result.json"
    status, out, err = cli(argv + ["--output", str(output)], capsys)
    assert status == 2, (status, err)
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for word in words:
        assert word in lines[0], (word, lines[0])
    assert "Top@1" not in out
    assert not output.exists() and not output.parent.exists()
    return lines[0]


@pytest.mark.parametrize(("flags", "words"), [
    (["--prompt", ""], ["prompt"]),
    (["--prompt", "   "], ["prompt"]),
    (["--prompt", " \n\t "], ["prompt"]),
    (["--K", "0"], ["K"]),
    (["--K", "-2"], ["K"]),
    (["--T", "0"], ["T"]),
    (["--M", "-1"], ["M"]),
    (["--eta", "0"], ["eta"]),
    (["--eta", "-0.5"], ["eta"]),
    (["--eta", "inf"], ["eta"]),
    (["--temperature", "nan"], ["temperature"]),
    (["--seed", str(2**64)], ["seed"]),
    (["--seed", str(-2**63 - 1)], ["seed"]),
    (["--seed", "-1"], ["seed", "[0, 2**64)"]),  # torch would alias it to 2**64 - 1
    (["--temperature", "-0.1"], ["temperature"]),
    (["--temperature", "0"], ["temperature", "entrgi"]),
    (["--temperature", "0", "--method", "aps"], ["temperature", "aps"]),
    (["--temperature", "0", "--method", "expectation"], ["temperature", "expectation"]),
    (["--top-p", "0"], ["--top-p"]),
    (["--top-p", "1.5"], ["--top-p"]),
    (["--top-p", "-0.2"], ["--top-p"]),
    (["--max-new-tokens", "0"], ["--max-new-tokens"]),
    (["--max-new-tokens", "600"], ["context", "512"]),
    (["--prompt", "word " * 600], ["context", "512"]),
    # Fits the denoiser (263 + 8 of 512 positions) but not the reward model, whose smaller
    # tokenizer reads the prompt in more tokens: 507 + 8 + 2 of its 512.
    (["--prompt", "masked diffusion language model " * 61, "--max-new-tokens", "8"], ["reward model", "512"]),
], ids=lambda v: " ".join(v)[:40] if isinstance(v, list) else None)
def test_bad_sampling_input(flags, words, capsys, tmp_path):
    """An out-of-range option or an unusable prompt: one error line, exit 2, no output file."""
    argv = ["--prompt", PROMPT, *TINY, *flags]
    assert_usage_error(argv, capsys, tmp_path, *words)


@pytest.mark.parametrize("flags, start", [
    (["--K", "0"], "--K must be >= 1"),
    (["--T", "0"], "--T must be >= 1"),
    (["--M", "-1"], "--M must be >= 0"),
    (["--eta", "0"], "--eta must be finite and > 0"),
    (["--max-new-tokens", "0"], "--max-new-tokens must be >= 1"),
    (["--temperature", "-1"], "--temperature must be finite and >= 0"),
    (["--temperature", "1e-40"], "--temperature must be 0 or >="),
    (["--temperature", "0"], "--method entrgi needs --temperature > 0"),
    (["--top-p", "1.5"], "--top-p must be in (0, 1]"),
    (["--top-k", "0"], "--top-k must be >= 1"),
    (["--eps", "1"], "--eps must be in (0, 1)"),
    (["--max-new-tokens", "600"], "prompt (23 tokens) + --max-new-tokens (600)"),
], ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_errors_name_the_option_typed(flags, start, capsys, tmp_path):
    """An out-of-range sampling option is reported under the option's name as typed (--top-p, not top_p)."""
    line = assert_usage_error(["--prompt", PROMPT, *TINY, *flags], capsys, tmp_path)
    assert line.startswith("error: " + start), line


def test_unknown_method(capsys, tmp_path):
    """An unknown --method is rejected by argparse with exit status 2 and no traceback."""
    output = tmp_path / "x.json"
    with pytest.raises(SystemExit) as exit_info:
        run.main(["--prompt", PROMPT, *TINY, "--method", "guess", "--output", str(output)])
    _, err = capsys.readouterr()
    assert exit_info.value.code == 2
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and "guess" in err
    assert not output.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cuda_without_cuda(capsys, tmp_path):
    """--device cuda on a machine without CUDA is a usage error."""
    assert_usage_error(["--prompt", PROMPT, *TINY, "--device", "cuda"], capsys, tmp_path, "cuda")


@pytest.mark.parametrize(("flag", "name"), [
    ("--dllm", "/nonexistent/dir"),
    ("--reward-model", "/nonexistent/dir"),
    ("--dllm", "some-org/missing-model"),
    ("--reward-model", "some-org/missing-model"),
])
def test_missing_model(flag, name, capsys, tmp_path):
    """A model that is neither a local directory nor reachable (offline hub) is a usage error naming it: a path
    that does not exist says so, a hub id that is not cached names the way out."""
    argv = ["--prompt", PROMPT, *TINY, flag, name]
    line = assert_usage_error(argv, capsys, tmp_path, name)
    assert ("no such directory" in line) == name.startswith("/"), line


@pytest.mark.parametrize("flag", ["--dllm", "--reward-model"])
def test_empty_model_directory(flag, capsys, tmp_path):
    """A local directory without a checkpoint in it is a usage error."""
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_usage_error(["--prompt", PROMPT, *TINY, flag, str(empty)], capsys, tmp_path, str(empty))


def test_reward_model_with_two_outputs(two_output_reward, capsys, tmp_path, no_remote_code_prompt):
    """A sequence classifier with two outputs cannot be a reward model (rejected before loading its weights)."""
    argv = ["--prompt", PROMPT, *TINY, "--reward-model", str(two_output_reward)]
    assert_usage_error(argv, capsys, tmp_path, "2 outputs")


def test_denoiser_without_mask_token(maskless_denoiser, capsys, tmp_path, no_remote_code_prompt):
    """A denoiser without any mask token is rejected (before loading its weights)."""
    argv = ["--prompt", PROMPT, *TINY, "--dllm", str(maskless_denoiser)]
    assert_usage_error(argv, capsys, tmp_path, "mask token")


def test_reward_tokenizer_without_chat_template(templateless_reward, capsys, tmp_path, no_remote_code_prompt,
                                                monkeypatch):
    """A reward model whose tokenizer has no (working) chat template is a usage error, raised before its weights load."""
    monkeypatch.setattr(run.sampler, "generate", lambda *a, **k: pytest.fail("generation started"))
    monkeypatch.setattr(models.AutoModelForSequenceClassification, "from_pretrained",
                        lambda *a, **k: pytest.fail("the weights were loaded first"))
    for method in ("entrgi", "bon"):  # bon scores only at the end: the check must still come first
        argv = ["--prompt", PROMPT, *TINY, "--reward-model", str(templateless_reward), "--method", method]
        assert_usage_error(argv, capsys, tmp_path, "reward model's tokenizer", "chat template")


def test_denoiser_tokenizer_without_chat_template(dream_checkpoint, capsys, tmp_path, no_remote_code_prompt):
    """A re-saved Dream whose tokenizer has no chat template is a usage error, before its weights load."""
    directory = tmp_path / "dream_no_template"
    shutil.copytree(dream_checkpoint[0], directory)
    (directory / "model.safetensors").unlink()  # the check must come first: there are no weights to load
    tokenizer_config = json.loads((directory / "tokenizer_config.json").read_text())
    del tokenizer_config["chat_template"]
    (directory / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    argv = ["--prompt", PROMPT, *TINY, "--dllm", str(directory)]
    assert_usage_error(argv, capsys, tmp_path, "denoiser's tokenizer", "chat template")


def test_output_below_a_file(capsys, tmp_path):
    """--output inside a path whose "directory" is a file: exit 2 and one line, before any work."""
    (tmp_path / "file").write_text("")
    status, out, err = cli(["--prompt", PROMPT, *TINY, "--output", str(tmp_path / "file" / "sub" / "x.json")], capsys)
    assert status == 2 and err.startswith("error: ") and len(err.splitlines()) == 1 and "is a file" in err
    assert out == ""


def _edited_dream(dream_checkpoint, tmp_path, **changes) -> Path:
    """A copy of the re-saved Dream checkpoint with its config.json fields changed."""
    directory = tmp_path / "dream_edited"
    shutil.copytree(dream_checkpoint[0], directory)
    raw = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**raw, **changes}))
    return directory


def test_mask_token_outside_the_denoiser_vocabulary(dream_checkpoint, capsys, tmp_path, no_remote_code_prompt):
    """A tokenizer whose mask id is not a row of the model (vocab_size too small): one line, exit 2, before the weights."""
    mask = dream_checkpoint[2]["mask_token_id"]  # the tokenizer's mask id too (test_load_dream_layout)
    directory = _edited_dream(dream_checkpoint, tmp_path, vocab_size=mask)  # rows 0 .. mask - 1
    (directory / "model.safetensors").unlink()  # the check must come first: there are no weights to load
    argv = ["--prompt", PROMPT, *TINY, "--dllm", str(directory)]
    assert_usage_error(argv, capsys, tmp_path, "mask token id", "outside")


@pytest.mark.parametrize("changes", [
    {"vocab_size": 448},  # weights that do not fit the config: transformers raises RuntimeError
    {"num_key_value_heads": 1},  # likewise
    {"rope_scaling": {"type": "bogus"}},  # an unknown RoPE type: KeyError while building the model
], ids=lambda c: next(iter(c)))
def test_malformed_denoiser_checkpoint(changes, dream_checkpoint, capsys, tmp_path, no_remote_code_prompt):
    """A checkpoint whose config does not fit its weights, or names an unknown RoPE type: exit 2, no traceback,
    no file; the error line (last on stderr, after transformers' own load report) names the model."""
    directory = _edited_dream(dream_checkpoint, tmp_path, **changes)
    output = tmp_path / "x.json"
    status, out, err = cli(["--prompt", PROMPT, *TINY, "--dllm", str(directory), "--output", str(output)], capsys)
    assert status == 2, err
    assert err.splitlines()[-1].startswith(f"error: cannot load model '{directory}'"), err
    assert "Traceback" not in err and "Top@1" not in out and not output.exists()


def test_reward_model_without_a_decoder_and_score_head(tmp_path, capsys, no_remote_code_prompt):
    """A one-output sequence classifier of another layout (GPT-2: no `.model`) cannot be driven by embeddings: exit 2."""
    directory = tmp_path / "gpt2_reward"
    _, tokenizer = models.tiny_reward()
    config = transformers.GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=1, n_head=2, num_labels=1,
                                     pad_token_id=tokenizer.pad_token_id)
    models.seeded(0, lambda: transformers.GPT2ForSequenceClassification(config)).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    output = tmp_path / "x.json"
    status, out, err = cli(["--prompt", PROMPT, *TINY, "--reward-model", str(directory), "--output", str(output)],
                           capsys)
    assert status == 2, err
    assert err.splitlines()[-1].startswith("error: ") and "score" in err.splitlines()[-1], err
    assert "Traceback" not in err and "Top@1" not in out and not output.exists()


def test_internal_value_error_is_not_reported_as_bad_input(monkeypatch, capsys):
    """Only bad input becomes a one-line exit 2: a ValueError raised inside generation propagates, traceback and all."""
    def broken(*args, **kwargs):
        raise ValueError("a bug, not bad input")

    monkeypatch.setattr(run.sampler, "generate", broken)
    with pytest.raises(ValueError, match="a bug, not bad input"):
        run.main(["--prompt", PROMPT, *TINY])
    assert "error:" not in capsys.readouterr().err


def test_script_bad_input(two_output_reward, tmp_path):
    """As a script, bad input (a two-output reward model) exits 2 with one `error:` line as its whole stderr, no file."""
    output = tmp_path / "x.json"
    argv = ["--prompt", PROMPT, *TINY, "--reward-model", str(two_output_reward), "--output", str(output)]
    done = subprocess.run([sys.executable, str(ROOT / "run.py"), *argv], cwd=tmp_path, env=subprocess_env(),
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert "Traceback" not in done.stderr
    assert not output.exists()


# --------------------------------------------------------------------------- a re-saved Dream


def test_load_dream_layout(dream_checkpoint, no_remote_code_prompt):
    """A re-saved Dream loads into transformers' Qwen2ForCausalLM with its exact weights, RoPE base, mask token and tokenizer."""
    directory, state, raw = dream_checkpoint
    model, tokenizer = models.load_dream(str(directory), torch.float32)

    assert type(model) is transformers.Qwen2ForCausalLM
    assert model.dtype == torch.float32
    loaded = model.state_dict()
    assert set(loaded) == set(state)
    for name, tensor in state.items():
        assert torch.equal(loaded[name], tensor), name
    assert model.config.rope_parameters["rope_theta"] == raw["rope_theta"]
    assert model.config.vocab_size == raw["vocab_size"] and model.config.max_position_embeddings == 512

    mask = models.token_ids(tokenizer, model.config).mask
    assert mask == raw["mask_token_id"] == tokenizer.convert_tokens_to_ids(models.MASK_TOKEN)
    assert tokenizer.eos_token_id == raw["eos_token_id"]
    text = "The quick brown fox jumps over the lazy dog."
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(ids) > 1 and tokenizer.decode(ids) == text
    chat = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True,
                                         tokenize=False)
    assert chat == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert tokenizer.convert_ids_to_tokens(tokenizer(chat, add_special_tokens=False)["input_ids"])[0] == "<|im_start|>"


def test_dream_denoiser_equals_bidirectional_qwen2(dream_checkpoint):
    """dream_denoiser on the loaded model = a directly built Qwen2 with a full bidirectional mask, shifted right by one."""
    directory, state, raw = dream_checkpoint
    model, _ = models.load_dream(str(directory), torch.float32)
    reference = models.seeded(99, lambda: transformers.Qwen2ForCausalLM(replicas.qwen2_config(raw))).eval()
    reference.load_state_dict(state, strict=True)

    N, P, S = 2, 5, 13
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(4, 300, (N, S), generator=generator)
    ids[:, P + 2] = raw["mask_token_id"]
    positions = torch.arange(P, S).expand(N, -1)  # (N, S - P): the response positions
    keep = torch.ones(N, S, dtype=torch.bool)
    with torch.no_grad():
        got = sampler.dream_denoiser(model)(ids, keep, positions)  # (N, S - P, V)
        full = reference(input_ids=ids, attention_mask=torch.ones(N, 1, S, S, dtype=torch.bool),
                         position_ids=torch.arange(S).expand(N, -1)).logits  # (N, S, V)
        torch.testing.assert_close(got, full[:, P - 1:S - 1], rtol=0, atol=1e-5)
        # Bidirectional: the logits of the first response position depend on the last token.
        changed = ids.clone()
        changed[:, -1] = (changed[:, -1] + 1) % 300
        later = sampler.dream_denoiser(model)(changed, keep, positions)
    assert (later[:, 0] - got[:, 0]).abs().max() > 1e-4


def test_cli_on_dream_layout(dream_checkpoint, capsys, tmp_path, no_remote_code_prompt):
    """The full CLI runs on the re-saved Dream (guided, end to end)."""
    directory, _, _ = dream_checkpoint
    argv = ["--prompt", PROMPT, *TINY, "--dllm", str(directory)]
    result, out, _ = result_of(argv, capsys, tmp_path / "dream.json")
    assert result["config"]["dllm"] == str(directory)
    assert len(result["responses"]) == K and len(result["rewards"]) == K
    assert 0 < result["vocab_bridge"]["coverage"] <= 1
    assert 0 <= result["mean_entropy_weight"] <= 1
    assert f"Top@1 {result['top1_reward']:+.4f}" in out


# --------------------------------------------------------------------------- what a new user runs into


@pytest.mark.parametrize(("output", "words"), [
    ("", ["--output is empty"]),
    ("/proc/entrgi-result.json", ["cannot be written"]),
    ("/sys/entrgi/result.json", ["cannot be written"]),
])
def test_output_that_cannot_be_written(output, words, capsys, monkeypatch):
    """An empty --output, or one on a file system where nothing can be created: one line, exit 2, before any work."""
    monkeypatch.setattr(run, "make_plan", lambda *a, **k: pytest.fail("the run started"))
    status, out, err = cli(["--prompt", PROMPT, *TINY, "--output", output], capsys)
    assert status == 2 and err.startswith("error: ") and len(err.splitlines()) == 1, err
    assert all(word in err for word in words), err
    assert out == ""


def test_a_file_as_a_model(tmp_path, capsys):
    """A file passed as --dllm / --reward-model is neither a checkpoint directory nor a hub id: one line."""
    (tmp_path / "weights.bin").write_text("")
    for flag in ("--dllm", "--reward-model"):
        argv = ["--prompt", PROMPT, *TINY, flag, str(tmp_path / "weights.bin")]
        line = assert_usage_error(argv, capsys, tmp_path, "is a file", "neither a checkpoint directory nor a hub id")
        assert flag in line


def test_causal_lm_as_the_reward_model(tmp_path, capsys, no_remote_code_prompt):
    """A causal LM is no reward model: named as such ("not a sequence classifier"), before its weights load."""
    directory = tmp_path / "causal"
    _, tokenizer = models.tiny_reward()
    config = models.tiny_reward_config(tokenizer)
    models.seeded(0, lambda: transformers.Qwen3ForCausalLM(config)).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    capsys.readouterr()  # the save's own progress bar
    argv = ["--prompt", PROMPT, *TINY, "--reward-model", str(directory)]
    assert_usage_error(argv, capsys, tmp_path, "Qwen3ForCausalLM", "not a sequence classifier with one output")


@pytest.mark.parametrize("flag", ["--dllm", "--reward-model"])
def test_default_hub_ids_fail_fast_offline(flag, capsys, tmp_path, monkeypatch):
    """With the hub offline (HF_HUB_OFFLINE) and nothing cached, the default ids fail at once in one line that
    says how to point at a local directory -- no retries (transformers used to retry for ~28 s)."""
    monkeypatch.setattr(models, "_hub_reachable", lambda *a: pytest.fail("the network was probed while offline"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    import huggingface_hub.constants
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    other = ["--reward-model", "tiny"] if flag == "--dllm" else ["--dllm", "tiny"]
    argv = ["--prompt", PROMPT, "--T", "2", "--no-progress", "--device", "cpu", *other]
    line = assert_usage_error(argv, capsys, tmp_path, "HF_HUB_OFFLINE is set")
    name = models.DEFAULT_DLLM if flag == "--dllm" else models.DEFAULT_REWARD
    assert line.endswith(f"download it where there is network (hf download {name} --local-dir DIR), "
                         f"then pass {flag} DIR"), line


def test_unreachable_hub_fails_fast(capsys, tmp_path, monkeypatch):
    """Online but the hub does not answer (no network): one line naming the way out, no download attempted."""
    import huggingface_hub
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(models, "_hub_reachable", lambda *a: False)
    real = huggingface_hub.snapshot_download

    def local_only(*args, **kwargs):
        assert kwargs.get("local_files_only"), "a download was attempted"
        return real(*args, **kwargs)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", local_only)
    argv = ["--prompt", PROMPT, *TINY, "--dllm", "some-org/some-model"]
    line = assert_usage_error(argv, capsys, tmp_path, "unreachable")
    assert line.endswith("(hf download some-org/some-model --local-dir DIR), then pass --dllm DIR"), line
    assert "HF_HUB_OFFLINE" not in line  # offline mode cannot fetch what is not cached: no way out
    status, _, err = cli(["--prompts", str(write_lines(tmp_path / "p.txt", [PROMPT])), *TINY, "--output-dir",
                          str(tmp_path / "o"), "--eval-reward-model", "some-org/reward"], capsys)
    assert status == 2 and err.count("\n") == 1 and err.endswith("then pass --eval-reward-model DIR\n"), err


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


def test_help_text(capsys):
    """--help: no "(default: None)" for the required prompt, top-k's default once, help for every option."""
    with pytest.raises(SystemExit):
        run.main(["--help"])
    text = capsys.readouterr().out
    assert "(default: None)" not in text
    flat = " ".join(text.split())
    assert flat.count("default: off") == 1 and "--top-k" in flat
    parser = run.build_parser()
    assert all(action.help for action in parser._actions), [a.dest for a in parser._actions if not a.help]


def test_decode_responses_stops_at_the_first_end_token():
    """Each row's text ends before its first end token, whichever of the end set it is; specials dropped."""
    tokenizer = models.tiny_tokenizer(models.TINY_DLLM_VOCAB)
    encode = lambda s: tokenizer(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    im_end, endoftext = (tokenizer.convert_tokens_to_ids(t) for t in models.END_TOKENS)
    im_start = tokenizer.convert_tokens_to_ids("<|im_start|>")
    rows = [encode("the sea") + [im_end] + encode(" more"), encode("the") + [im_start] + encode(" sun") + [endoftext],
            encode("no end at all")]
    width = max(map(len, rows))
    tokens = torch.tensor([r + [endoftext] * (width - len(r)) for r in rows])
    assert run.decode_responses(tokenizer, tokens, [im_end, endoftext]) == ["the sea", "the sun", "no end at all"]


@pytest.mark.parametrize("method", METHODS)
def test_tiny_temperature_gives_real_responses_or_one_line(method, capsys, tmp_path):
    """--temperature 1e-37 (phi / tau overflows float32): responses of real tokens, never NaN rows and empty
    output at exit 0 -- or, where guidance's gradient overflows, one error line, exit 2 and no file."""
    output = tmp_path / "x.json"
    status, out, err = cli(["--prompt", PROMPT, *TINY, "--method", method, "--temperature", "1e-37",
                            "--output", str(output)], capsys)
    if status == 0:
        result = json.loads(output.read_text())
        # A NaN row's inverse-CDF draw runs past the end and is clamped to the last row, V - 1 (the tiny model's
        # padding rows below it are random, not untrained, so its argmax may land on them legitimately).
        V = models.tiny_dllm_config(models.tiny_tokenizer(models.TINY_DLLM_VOCAB)).vocab_size
        assert all(0 <= t < V - 1 for row in result["response_tokens"] for t in row)  # no NaN row drawn
        assert all(math.isfinite(r) for r in result["rewards"]) and any(result["responses"])
    else:
        assert status == 2 and len(err.splitlines()) == 1 and "NaN or inf" in err, err
        assert not output.exists()
    if method == "bon":
        assert status == 0  # unguided: the argmax limit, computed stably


def test_temperature_below_float32s_smallest_normal_is_rejected(capsys, tmp_path):
    """--temperature 1e-40: 1 / tau overflows float32; a one-line usage error before any work."""
    assert_usage_error(["--prompt", PROMPT, *TINY, "--temperature", "1e-40"], capsys, tmp_path, "temperature",
                       "1.18e-38")


def test_non_finite_denoiser_logits_are_a_clear_error(monkeypatch, capsys, tmp_path):
    """A denoiser whose logits turn NaN: one line naming the problem, exit 2, no output -- not empty responses."""
    real = sampler.dream_denoiser

    def broken(model):
        denoise = real(model)
        return lambda *args: denoise(*args) * float("nan")

    monkeypatch.setattr(sampler, "dream_denoiser", broken)
    output = tmp_path / "x.json"
    status, out, err = cli(["--prompt", PROMPT, *TINY, "--method", "bon", "--output", str(output)], capsys)
    assert status == 2 and len(err.splitlines()) == 1 and "NaN or inf" in err, err
    assert not output.exists() and "Top@1" not in out


@pytest.mark.parametrize("argv", [[], ["--prompt", PROMPT, "--prompts", "x.txt"], ["--prompt", PROMPT, "--K", "four"]],
                         ids=["no prompt", "both", "not an int"])
def test_argparse_errors_are_one_line(argv, capsys):
    """What argparse rejects (no prompt, --prompt with --prompts, a non-integer) is one `error:` line, exit 2."""
    with pytest.raises(SystemExit) as exit_info:
        run.main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1 and err.startswith("error: "), err


# The single-prompt command's tokens at --seed 3 (TINY settings), pinned: a change to the sampler, the guidance
# or the random stream that moves them must be deliberate (they were the same before and after --prompts
# folded the single run into generate_batch).
PINNED_TOKENS = {  # re-pinned when the tiny tokenizers took in all 256 bytes (the tiny models changed with them)
    "entrgi": [[407, 326, 252, 142, 179, 491, 107, 291], [179, 158, 458, 499, 1, 275, 530, 101],
               [498, 530, 98, 420, 86, 179, 555, 5]],
    "bon": [[179, 165, 1, 1, 8, 530, 1, 569], [208, 560, 307, 401, 520, 433, 1, 131],
            [275, 1, 179, 254, 1, 91, 1, 407]],
}


@pytest.mark.parametrize("method", sorted(PINNED_TOKENS))
def test_single_prompt_command_is_unchanged(method, method_runs):
    """`run.py --prompt` (one torch.Generator seeded with --seed) gives exactly the pinned tokens."""
    status, path, _, err = method_runs(method)
    assert status == 0, err
    assert json.loads(path.read_text())["response_tokens"] == PINNED_TOKENS[method]
