"""bfloat16 and float16, the dtypes the job runs in: both models load as transformers loads them.

The authors load Dream and the reward model with `from_pretrained(..., torch_dtype=bfloat16)`,
and `run.py` runs bfloat16 on CUDA by default. transformers keeps RoPE's inverse frequencies
in float32 under that call; a `model.to(bfloat16)` would cast them too, and RoPE's angles
(position x frequency) would carry bfloat16's 3 significant digits, the error growing with
the position. Every comparison below is exact (torch.equal), against the *standard* load --
`Qwen2ForCausalLM.from_pretrained(dir, dtype=...)`,
`AutoModelForSequenceClassification.from_pretrained(dir, dtype=...)` -- of tiny checkpoints
written in the shipped layouts (tests/replicas.py), in bfloat16 and float16, on the CPU:

* every parameter and buffer of `models.load_weights`'s models equals the standard load's,
  dtype and value (the tiny in-process models: against saving their float32 weights and
  loading them back in the dtype);
* Dream's logits through `sampler.dream_denoiser` equal a plain bidirectional forward of the
  standard load, shifted as Dream shifts them, on a long (1,700-token) left-padded batch;
* the reward model's discrete scores (`rewards.score_texts`, and a plain unpadded forward as a
  Skywork user calls it) and the differentiable score of one-hot inputs
  (`rewards.EmbeddingScorer`, prefix cache and all) equal the standard load's, up to 1,200 tokens;
* the tiny default runs end to end with `--dtype bfloat16`.

With the old `model.to(dtype)` put back in `load_weights`, every one of these but the last fails.
"""

from __future__ import annotations

import json
import math
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

DTYPES = [torch.bfloat16, torch.float16]
LONG = 1700  # tokens in the long denoiser input: RoPE's angles reach 1,700 x its largest frequency
PROMPT = "Write a short poem about the sea."


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    replicas.hub_offline(monkeypatch)


@pytest.fixture(scope="module")
def dream(tmp_path_factory):
    directory = tmp_path_factory.mktemp("dream_long")
    replicas.write_dream(directory, max_positions=2048)
    return directory


@pytest.fixture(scope="module")
def skywork(tmp_path_factory):
    directory = tmp_path_factory.mktemp("skywork_long")
    replicas.write_skywork(directory, max_positions=2048)
    return directory


def standard_dream(directory: Path, dtype: torch.dtype) -> transformers.Qwen2ForCausalLM:
    """What a transformers user gets from Dream's files without remote code (the config's Qwen2 fields)."""
    config = models.denoiser_checkpoint(str(directory)).config  # Dream's config.json names model_type "Dream"
    return transformers.Qwen2ForCausalLM.from_pretrained(directory, config=config, dtype=dtype).eval()


def standard_reward(directory: Path, dtype: torch.dtype):
    return transformers.AutoModelForSequenceClassification.from_pretrained(directory, dtype=dtype).eval()


def assert_same_tensors(ours: torch.nn.Module, theirs: torch.nn.Module) -> None:
    """Every parameter and buffer: the same names, dtypes and values (bitwise)."""
    for kind in ("named_parameters", "named_buffers"):
        mine, standard = dict(getattr(ours, kind)()), dict(getattr(theirs, kind)())
        assert mine.keys() == standard.keys(), kind
        for name, tensor in standard.items():
            assert mine[name].dtype == tensor.dtype, f"{name}: {mine[name].dtype} != {tensor.dtype}"
            assert torch.equal(mine[name], tensor), name


# --------------------------------------------------------------------------- parameters and buffers


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_shipped_checkpoints_load_as_the_standard_load(dream, skywork, dtype):
    """Dream's and Skywork's replicas: parameters in the dtype, buffers (RoPE's float32 frequencies) as transformers'."""
    denoiser = models.load_weights(models.denoiser_checkpoint(str(dream)), dtype)
    assert_same_tensors(denoiser, standard_dream(dream, dtype))
    assert denoiser.model.rotary_emb.inv_freq.dtype == torch.float32  # the buffer the old cast reached
    reward = models.load_weights(models.reward_checkpoint(str(skywork)), dtype)
    assert_same_tensors(reward, standard_reward(skywork, dtype))
    assert {p.dtype for p in reward.parameters()} == {dtype}


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_tiny_models_load_as_their_saved_weights_would(tmp_path, dtype):
    """The in-process tiny models in a dtype equal their float32 weights saved and loaded back by from_pretrained."""
    for checkpoint, cls in ((models.denoiser_checkpoint("tiny"), transformers.Qwen2ForCausalLM),
                            (models.reward_checkpoint("tiny"), transformers.Qwen3ForSequenceClassification)):
        directory = tmp_path / cls.__name__
        models.load_weights(checkpoint, torch.float32).save_pretrained(directory)
        standard = cls.from_pretrained(directory, dtype=dtype).eval()
        assert_same_tensors(models.load_weights(checkpoint, dtype), standard)


# --------------------------------------------------------------------------- Dream's logits


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_dream_logits_equal_the_standard_load_on_a_long_left_padded_batch(dream, dtype):
    """sampler.dream_denoiser on the project's load = the standard load's own forward with a bidirectional mask,
    shifted right by one, on 1,700 real tokens and on a row left-padded by 500; at early and late positions."""
    checkpoint = models.denoiser_checkpoint(str(dream))
    ours = models.load_weights(checkpoint, dtype)
    theirs = standard_dream(dream, dtype)
    ids = models.token_ids(checkpoint.tokenizer, checkpoint.config, checkpoint.generation_config)
    g = torch.Generator().manual_seed(0)
    ids_ = torch.randint(len(checkpoint.tokenizer) - 30, (2, LONG), generator=g)  # (N, S) ordinary tokens
    keep = torch.ones(2, LONG, dtype=torch.bool)  # (N, S)
    keep[1, :500] = False  # row 1: left padding
    ids_[1, :500] = ids.pad
    positions = torch.cat([torch.arange(501, 565), torch.arange(LONG - 128, LONG)]).expand(2, -1)  # (N, n)

    logits = sampler.dream_denoiser(ours)(ids_, keep, positions)  # (N, n, V)

    attention = keep[:, None, None, :].expand(2, 1, LONG, LONG)  # (N, 1, S, S) every real key, both directions
    position_ids = (keep.long().cumsum(-1) - 1).clamp(min=0)  # (N, S)
    with torch.no_grad():
        full = theirs(input_ids=ids_, attention_mask=attention, position_ids=position_ids).logits  # (N, S, V)
    expected = full.gather(1, (positions - 1).unsqueeze(-1).expand(-1, -1, full.shape[-1]))  # Dream's shift
    assert logits.dtype == expected.dtype == dtype
    assert torch.equal(logits, expected)


# --------------------------------------------------------------------------- the reward model's scores


def _responses(tokenizer) -> list[str]:
    """Responses of about 64, 300 and 1,200 tokens."""
    sentence = " ".join(replicas.CORPUS).replace("\n", " ")
    tokens = tokenizer(sentence * 40, add_special_tokens=False)["input_ids"]
    return [tokenizer.decode(tokens[:n]) for n in (64, 300, 1200)]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_reward_scores_equal_the_standard_load(skywork, dtype):
    """Discrete scores of the project's load = the standard load's, batched (left-padded) and as a Skywork user
    calls it (one unpadded row, no position ids); the one-hot differentiable score through the prefix cache = the
    same scorer on the standard load."""
    checkpoint = models.reward_checkpoint(str(skywork))
    tokenizer = checkpoint.tokenizer
    ours = models.load_weights(checkpoint, dtype)
    theirs = standard_reward(skywork, dtype)
    responses = _responses(tokenizer)
    prompts = [PROMPT] * len(responses)
    scores = rewards.score_texts(ours, tokenizer, prompts, responses)  # (3,)
    assert torch.equal(scores, rewards.score_texts(theirs, tokenizer, prompts, responses))
    for response, score in zip(responses, scores):
        row = tokenizer(rewards.chat_text(tokenizer, PROMPT, response), add_special_tokens=False,
                        return_tensors="pt")["input_ids"]  # (1, S)
        with torch.no_grad():
            user = theirs(input_ids=row).logits[0, 0].float()  # how a Skywork user scores one conversation
        assert torch.equal(rewards.score_ids(ours, row, torch.ones_like(row, dtype=torch.bool))[0], user)

    # The differentiable score of one-hot inputs: R's own vocabulary as the denoiser's (identity bridge).
    rows = [tokenizer(r, add_special_tokens=False)["input_ids"] for r in responses]
    width = max(map(len, rows))
    pad, end = tokenizer.pad_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>")
    tokens = torch.tensor([r + [pad] * (width - len(r)) for r in rows])  # (N, L) padded at the end
    vocab_size = ours.get_input_embeddings().weight.shape[0]
    reading = rewards.response_reading(vocab_size, [end], pad)

    def one_hot_scores(model) -> torch.Tensor:
        scorer = rewards.EmbeddingScorer(model, tokenizer, [PROMPT] * 3, K=1, reading=reading)
        embeds = model.get_input_embeddings().weight[tokens].detach().requires_grad_(True)  # (N, L, d)
        return scorer(embeds, tokens)  # (N,) differentiable

    mine = one_hot_scores(ours)
    assert mine.requires_grad and torch.equal(mine, one_hot_scores(theirs))


# --------------------------------------------------------------------------- the CLI


def test_tiny_default_runs_in_bfloat16(tmp_path, capsys):
    """The tiny default, guided, end to end in bfloat16 on the CPU: exit 0, finite rewards, the dtype recorded."""
    output = tmp_path / "result.json"
    status = run.main(["--prompt", PROMPT, "--dllm", "tiny", "--reward-model", "tiny", "--dtype", "bfloat16",
                       "--device", "cpu", "--T", "4", "--max-new-tokens", "8", "--K", "2", "--no-progress",
                       "--output", str(output)])
    _, err = capsys.readouterr()
    assert status == 0, err
    result = json.loads(output.read_text())
    assert result["config"]["dtype"] == "bfloat16"
    assert len(result["responses"]) == 2
    assert all(math.isfinite(x) for x in result["rewards"] + result["token_rewards"])
