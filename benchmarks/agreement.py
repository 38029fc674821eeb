"""How often the reward of a response's token sequence equals the reward of its decoded text.

    python benchmarks/agreement.py                     # tiny replicas of Dream + Skywork, CPU, ~1 min
    python benchmarks/agreement.py --json agreement.json

Guidance scores the response as the denoiser's token sequence (one-hot rows of R's
embedding through `rewards.EmbeddingScorer`); the reported reward scores its decoded text
re-tokenised by R through R's chat template (`rewards.score_texts`). `rewards.ResponseReading`
leaves out of the first what the second never shows R (leading newlines, special tokens
that decoding drops, tokens without a counterpart), so the two agree whenever R's
tokenizer would split the decoded text into the same tokens. What remains:
    non-canonical  re-encoding the decoded text gives other tokens (independently sampled
                   tokens need not be how a BPE would split their text)
    think          the response holds `</think>` (Qwen3's template moves the text before it)
As a control, each decoded text is also scored as its canonical token sequence (the
denoiser's own BPE encoding of it, the same BPE as R's): `canonical_agreement_rate`.

The models are tiny replicas of the shipped checkpoints (tests/replicas.py: Dream's BPE
and chat template, Skywork's Qwen3 template) with random weights, so their responses are
random token strings: the rate measured here is that of random tokens, a floor, not of
a trained model's fluent text.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
import replicas  # noqa: E402
import rewards  # noqa: E402
import run  # noqa: E402
from sampler import SamplingConfig  # noqa: E402

PROMPTS = ["Write a short poem about the sea.", "Explain why the sky is blue.", "Give three tips for sleeping well."]


def measure(seeds: range, config: SamplingConfig, tolerance: float = 1e-4) -> dict:
    with tempfile.TemporaryDirectory() as scratch:
        replicas.write_dream(Path(scratch) / "dream")
        replicas.write_skywork(Path(scratch) / "skywork")
        plan = run.make_plan(str(Path(scratch) / "dream"), str(Path(scratch) / "skywork"), PROMPTS, config)
        loaded = run.load(plan, torch.device("cpu"), torch.float32)
        counts = {"responses": 0, "agree": 0, "non_canonical": 0, "think": 0, "other": 0, "canonical_agree": 0}
        gaps = []
        for seed in seeds:
            for prompt, prompt_ids in zip(plan.prompts, plan.prompt_ids):
                result = run.generate(loaded, prompt, prompt_ids, config, seed, progress=False)
                for text, tokens, by_text, by_tokens in zip(result["responses"], result["response_tokens"],
                                                            result["rewards"], result["token_rewards"]):
                    counts["responses"] += 1
                    gaps.append(abs(by_text - by_tokens))
                    kept = plan.reading.keep(torch.tensor([tokens]))[0]  # (L,)
                    shown = [t for t, k in zip(tokens, kept.tolist()) if k]
                    canonical = plan.reward.tokenizer(text.lstrip("\n"), add_special_tokens=False)["input_ids"]
                    # Control: the same text as the canonical token sequence (the denoiser's BPE encoding of it).
                    canonical_ids = plan.dllm.tokenizer(text, add_special_tokens=False)["input_ids"] or [plan.ids.ends[0]]
                    control = torch.tensor([canonical_ids])  # (1, L')
                    scorer = rewards.EmbeddingScorer(loaded.reward, plan.reward.tokenizer, [prompt], K=1,
                                                     reading=plan.reading)
                    with torch.no_grad():
                        control_score = scorer(loaded.embed_matrix[control], control).item()
                    counts["canonical_agree"] += abs(control_score - by_text) <= tolerance
                    if gaps[-1] <= tolerance:
                        counts["agree"] += 1
                    elif "</think>" in text:
                        counts["think"] += 1
                    elif [int(plan.bridge.index[t]) for t in shown] != canonical:
                        counts["non_canonical"] += 1
                    else:
                        counts["other"] += 1
    return {**counts, "agreement_rate": counts["agree"] / counts["responses"],
            "canonical_agreement_rate": counts["canonical_agree"] / counts["responses"], "tolerance": tolerance,
            "median_gap": sorted(gaps)[len(gaps) // 2], "max_gap": max(gaps)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=2, help="seeds per prompt (3 prompts, K = 4 responses each)")
    parser.add_argument("--method", default="entrgi", choices=("entrgi", "aps", "expectation", "bon"))
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    config = SamplingConfig(method=args.method, T=16, max_new_tokens=16).validate()
    figures = measure(range(args.seeds), config)
    figures["config"] = {"method": args.method, "T": config.T, "L": config.max_new_tokens, "K": config.K,
                         "seeds": args.seeds, "prompts": len(PROMPTS)}
    for key, value in figures.items():
        print(f"{key:<16} {value}")
    if args.json is not None:
        run.write_json_atomically(args.json, figures)
    return figures


if __name__ == "__main__":
    main()
