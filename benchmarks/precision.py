"""What bfloat16 costs on the guided path, place by place, against float32 (or float64) references.

    python benchmarks/precision.py                 # CPU, about a minute: tiny replicas + the V = 152k relaxation
    python benchmarks/precision.py --json precision.json --dim 2048

Both models run in bfloat16 on a GPU (as the authors run them). This measures, on the CPU:

    rope        Dream's logits at 1,700 tokens (the shipped-layout replica, init scale 0.02, and the tiny
                default, init scale 0.2; a left-padded batch): bf16 as transformers loads
                it (RoPE's inverse frequencies float32) and with those frequencies cast to bf16 (the old
                `model.to(bf16)`), each against float32: max |delta| and argmax agreement
    reward      the reward model's discrete score of 64-, 300- and 1,200-token responses (tiny Skywork
                replica): the same two bf16 loads against float32
    prefix      the differentiable score with R's chat prefix cached (keys and values computed once, bf16)
                and without the cache (the authors' way), each against float32: does the cache lose anything?
    bridge      E = E_R[bridge]: rows copied, so equal bitwise (max |delta| 0 expected)
    relax       soft = softmax(phi / tau) @ E at V = 152,064 rows, d = --dim, in bf16 as the guided path
                computes it (q rounded to bf16, a bf16 matmul) against float64; beside it, rounding the exact
                result to bf16 (R reads bf16 embeddings: the floor), and the gradient d(c . soft)/d phi
                (relative error, and the share of entries whose sign -- Adam's first step -- agrees)
    mix         e_hat = soft + sg(w (hard - soft)) with w rounded to bf16, against float64

Random weights; the figures are orders of magnitude, recorded in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
import entrgi  # noqa: E402
import models  # noqa: E402
import replicas  # noqa: E402
import rewards  # noqa: E402
import sampler  # noqa: E402

PROMPT = "Write a short poem about the sea."
V_DREAM = 152064


def with_cast_frequencies(model: torch.nn.Module) -> torch.nn.Module:
    """The old loader's result: every floating buffer (RoPE's inverse frequencies) cast to the parameters' dtype."""
    dtype = next(model.parameters()).dtype
    for module in model.modules():
        for name, buffer in module.named_buffers(recurse=False):
            if buffer.is_floating_point():
                setattr(module, name, buffer.to(dtype))
    return model


def rope(name: str, length: int = 1700) -> dict:
    checkpoint = models.denoiser_checkpoint(name)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(len(checkpoint.tokenizer) - 30, (2, length), generator=g)  # (N, S)
    keep = torch.ones(2, length, dtype=torch.bool)  # (N, S)
    keep[1, :500] = False
    positions = torch.arange(1, length).expand(2, -1)  # (N, S - 1) every position
    logits = {}
    for name, dtype, cast in (("float32", torch.float32, False), ("bf16", torch.bfloat16, False),
                              ("bf16_cast_rope", torch.bfloat16, True)):
        model = models.load_weights(checkpoint, dtype)
        model = with_cast_frequencies(model) if cast else model
        with torch.no_grad():
            logits[name] = sampler.dream_denoiser(model)(ids, keep, positions).float()  # (N, S - 1, V)
    real = keep[:, 1:]  # (N, S - 1) positions predicted from a real token
    out = {}
    for name in ("bf16", "bf16_cast_rope"):
        delta = (logits[name] - logits["float32"]).abs()[real]
        agree = (logits[name].argmax(-1) == logits["float32"].argmax(-1))[real].float().mean()
        out[name] = {"max_abs": delta.max().item(), "argmax_agreement": agree.item()}
    return out


def reward(directory: Path) -> dict:
    checkpoint = models.reward_checkpoint(str(directory))
    tokenizer = checkpoint.tokenizer
    sentence = " ".join(replicas.CORPUS).replace("\n", " ")
    tokens = tokenizer(sentence * 40, add_special_tokens=False)["input_ids"]
    lengths = (64, 300, 1200)
    responses = [tokenizer.decode(tokens[:n]) for n in lengths]
    scores = {}
    for name, dtype, cast in (("float32", torch.float32, False), ("bf16", torch.bfloat16, False),
                              ("bf16_cast_rope", torch.bfloat16, True)):
        model = models.load_weights(checkpoint, dtype)
        model = with_cast_frequencies(model) if cast else model
        scores[name] = rewards.score_texts(model, tokenizer, [PROMPT] * 3, responses)  # (3,)
    return {name: {str(n): abs(d) for n, d in zip(lengths, (scores[name] - scores["float32"]).tolist())}
            for name in ("bf16", "bf16_cast_rope")} | {"float32_scores": scores["float32"].tolist()}


def prefix(directory: Path) -> dict:
    checkpoint = models.reward_checkpoint(str(directory))
    tokenizer = checkpoint.tokenizer
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(len(tokenizer) - 30, (4, 128), generator=g)  # (N, L)
    long_prompt = PROMPT + " " + " ".join(replicas.CORPUS) * 4
    scores = {}
    for dtype in (torch.float32, torch.bfloat16):
        model = models.load_weights(checkpoint, dtype)
        reading = rewards.response_reading(model.get_input_embeddings().weight.shape[0], [tokenizer.eos_token_id])
        embeds = model.get_input_embeddings().weight[tokens]  # (N, L, d)
        for cache in (True, False):
            scorer = rewards.EmbeddingScorer(model, tokenizer, [long_prompt], K=4, reading=reading, cache=cache)
            with torch.no_grad():
                scores[dtype, cache] = scorer(embeds, tokens)  # (N,)
    reference = scores[torch.float32, False]
    error = lambda cache: (scores[torch.bfloat16, cache] - reference).abs().max().item()  # noqa: E731
    return {"max_abs_cached_vs_uncached_bf16": (scores[torch.bfloat16, True] - scores[torch.bfloat16, False]
                                                ).abs().max().item(),
            "bf16_cached_vs_float32": error(True), "bf16_uncached_vs_float32": error(False),
            "float32_scores": reference.tolist(),
            "prefix_tokens": len(rewards.chat_pieces(tokenizer, long_prompt)[0])}


def bridge(dream: Path, skywork: Path) -> dict:
    d, r = models.denoiser_checkpoint(str(dream)), models.reward_checkpoint(str(skywork))
    reward_model = models.load_weights(r, torch.bfloat16)
    vocab = rewards.vocab_bridge(d.tokenizer, r.tokenizer, d.config.vocab_size)
    E = rewards.bridged_embeddings(reward_model.get_input_embeddings().weight, vocab)  # (V, d)
    mapped = vocab.index >= 0
    rows = reward_model.get_input_embeddings().weight[vocab.index[mapped]]
    return {"dtype": str(E.dtype), "max_abs": (E[mapped] - rows).abs().max().item(),
            "unmapped_rows_zero": bool((E[~mapped] == 0).all())}


def relax(dim: int, rows: int = 64, temperature: float = 0.7) -> dict:
    g = torch.Generator().manual_seed(2)
    E = (torch.randn(V_DREAM, dim, generator=g) * 0.02).to(torch.bfloat16)  # (V, d) an embedding's scale
    spread = torch.cat([torch.full((rows // 2,), 2.0), torch.full((rows - rows // 2,), 8.0)])  # (R,) flat and peaked
    phi = torch.randn(rows, V_DREAM, generator=g) * spread[:, None]  # (R, V)
    c = torch.randn(dim, generator=g, dtype=torch.float64)  # (d,) a linear reward's direction

    q64 = torch.softmax(phi.double() / temperature, -1)  # (R, V)
    exact = q64 @ E.double()  # (R, d)
    floor = exact.to(torch.bfloat16).double()  # (R, d) the exact relaxation rounded to what R reads

    phi_bf = phi.clone().requires_grad_(True)
    soft, _ = entrgi.soft_embedding(phi_bf, E, temperature)  # (R, d) bf16, the guided path's computation
    (soft.double() @ c).sum().backward()
    phi_64 = phi.double().requires_grad_(True)
    (torch.softmax(phi_64 / temperature, -1) @ E.double() @ c).sum().backward()
    grad, grad64 = phi_bf.grad.double(), phi_64.grad  # (R, V)
    scale = exact.abs().max()
    relative = lambda x: ((x - exact).norm() / exact.norm()).item()  # noqa: E731
    large = grad64.abs() > 1e-6 * grad64.abs().amax(-1, keepdim=True)  # entries Adam's sign step is not noise on
    w = entrgi.entropy_weight(phi)  # (R,)
    hard = E[torch.argmax(phi, -1)]  # (R, d)
    mixed = entrgi.reward_inputs(phi, E, torch.argmax(phi, -1), "entrgi", temperature, soft=soft.detach(), weight=w)
    mixed64 = soft.detach().double() + w.double()[:, None] * (hard.double() - soft.detach().double())
    return {
        "V": V_DREAM, "d": dim, "rows": rows, "dtype": "bfloat16",
        "soft_max_abs_over_max": ((soft.double() - exact).abs().max() / scale).item(),
        "soft_relative_norm": relative(soft.double()),
        "floor_relative_norm": relative(floor),
        "grad_relative_norm": ((grad - grad64).norm() / grad64.norm()).item(),
        "grad_sign_agreement": (grad.sign() == grad64.sign())[large].double().mean().item(),
        "mix_relative_norm": ((mixed.double() - mixed64).norm() / mixed64.norm()).item(),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dim", type=int, default=2048, help="embedding width d (Skywork-1.7B: 2048)")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as scratch:
        dream, skywork = Path(scratch) / "dream", Path(scratch) / "skywork"
        replicas.write_dream(dream, max_positions=2048)
        replicas.write_skywork(skywork, max_positions=2048)
        figures = {"rope": {"replica": rope(str(dream)), "tiny": rope("tiny")}, "reward": reward(skywork),
                   "prefix": prefix(skywork),
                   "bridge": bridge(dream, skywork)}
    figures["relax"] = relax(args.dim)
    text = json.dumps(figures, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
