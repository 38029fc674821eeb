"""Time one reward-guided denoising step and its parts; report the overhead beyond the models.

    python benchmarks/bench.py --shape vocab                     # CPU headline: Dream's V, tiny models
    python benchmarks/bench.py --shape tiny                      # CPU smoke shape, seconds
    python benchmarks/bench.py --shape dream-7b --json out.json  # CUDA: Dream-7B + Skywork-1.7B shapes
    python benchmarks/bench.py --top-p 1                         # the same without the top-p filters

Per prompt, guidance costs T denoiser forwards plus T * M reward forward+backward passes;
everything else (softmax and entropy over V, the top-p sort, the soft-embedding matmul,
masks, Python) is overhead:

    overhead_ratio = step_s / (denoiser_s + M * reward_fwd_bwd_s)

Parts, each the median over --repeat rounds after --warmup rounds (a round runs every part
once, in turn), at the first denoising step of the block (tiny, dream-7b: all L = 128
positions masked; vocab: 64 masked, see below):
    step_s           one full guided step: denoiser + guidance + sampling and unmasking
    denoiser_s       the denoiser forward at the masked positions
    guidance_s       the hook: M x (relaxation + reward forward/backward + Adam)
    sample_s         sampling, confidence and unmasking from given logits
    reward_fwd_bwd_s one reward forward + backward to the input embeddings, alone
    filter_s         one filter_probs(q, top_p) on the step's (N * n, V) block of probabilities
    softmax_s        one softmax over the same (N * n, V) block of logits, same rounds
    filter_ratio     filter_s / softmax_s: what the exact top-p filter costs, in softmaxes
    filter_share     (M + 1) * filter_s / step_s: the step's share spent in its M + 1 filters (the
                     unguided q, the draws of Adam steps 2..M, the guided q), timed apart
Also, from untimed steps run first, with only the models resident (as in run.py):
    peak_mem_bytes   peak GPU memory allocated, models included (CPU: the process's peak resident set)
    host_syncs       CUDA only: each place the step made the host wait for the GPU (want: none)
    vocab_ops        per op name, the ops of one guided step that read or write a tensor whose last
                     dim is V (a TorchDispatchMode; views and bare allocations not counted): the vocabulary-wide passes

`dream-7b` builds randomly initialised models with the exact Dream-v0-Instruct-7B and
Skywork-Reward-V2-Qwen3-1.7B configurations directly on the GPU in bfloat16 (nothing is
downloaded). Shapes: K = 4 trajectories, L = 128, a 64-token prompt, M = 3.

`vocab` builds the `models.tiny_*` architectures (hidden 64, 2 layers) with a vocabulary of
Dream's size, V = 151 936 (Qwen3's rows; Dream has 152 064), so that the vocabulary-wide work is what is measured. Half the response is
masked: its first 64 tokens are already placed and ride in the denoiser's prompt block, and
one step (T = 1) fills the other 64 (N * n = 256 rows of V); the reward model reads those 64
positions as the response.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import math
import platform
import statistics
import sys
import time
import traceback
import warnings
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from transformers import Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForSequenceClassification

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import models  # noqa: E402
import rewards  # noqa: E402
import run  # noqa: E402
import sampler  # noqa: E402
from entrgi import filter_probs  # noqa: E402
from sampler import SamplingConfig  # noqa: E402

PROMPT_TOKENS = 64
PROMPT = ("Explain, step by step and with care, why the sky is blue during the day, why sunsets look red, "
          "and what a masked diffusion language model would need to write a good answer to this question.")

DREAM_7B = dict(  # Dream-org/Dream-v0-Instruct-7B (Qwen2 layout; 152064 embedding rows for 151667 tokens)
    vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
    num_key_value_heads=4, max_position_embeddings=131072, rope_theta=1e6, rms_norm_eps=1e-6,
    tie_word_embeddings=False,
)
SKYWORK_1_7B = dict(  # Skywork/Skywork-Reward-V2-Qwen3-1.7B (Qwen3-1.7B with a one-logit score head)
    vocab_size=151936, hidden_size=2048, intermediate_size=6144, num_hidden_layers=28, num_attention_heads=16,
    num_key_value_heads=8, head_dim=128, max_position_embeddings=40960, rope_theta=1e6, rms_norm_eps=1e-6,
    tie_word_embeddings=True, num_labels=1,
)
DREAM_MASK_ID = 151666
VOCAB_SHAPE_V = 151936  # --shape vocab: Qwen3's and Skywork's rows, within 0.1 % of Dream's 152064 (the recorded figures use it)
VOCAB_PLACED = 64  # --shape vocab: response tokens already placed (the other L - 64 are masked)


def build(shape: str, device: torch.device):
    """(denoiser, its tokenizer, reward model, its tokenizer, mask id, dtype) at the given shape.

    At dream-7b shapes both models read the tiny tokenizer's ids (valid in both vocabularies).
    """
    if shape == "tiny":
        dllm, dllm_tokenizer = models.tiny_dllm()
        reward, reward_tokenizer = models.tiny_reward()
        return dllm, dllm_tokenizer, reward, reward_tokenizer, dllm_tokenizer.mask_token_id, torch.float32
    if shape == "vocab":  # the tiny architectures, Dream's vocabulary (both read the tiny tokenizer's ids)
        dllm, tokenizer = models.tiny_dllm()
        reward, _ = models.tiny_reward()
        built = []
        for model, cls, seed in ((dllm, Qwen2ForCausalLM, 0), (reward, Qwen3ForSequenceClassification, 1)):
            config = model.config
            config.vocab_size = VOCAB_SHAPE_V
            built.append(models.seeded(seed, lambda: cls(config)).eval())
        return built[0], tokenizer, built[1], tokenizer, tokenizer.mask_token_id, torch.float32
    tokenizer = models.tiny_tokenizer(models.TINY_DLLM_VOCAB)
    dtype = torch.bfloat16
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            pad = dict(pad_token_id=tokenizer.pad_token_id)
            dllm = Qwen2ForCausalLM(Qwen2Config(**DREAM_7B, **pad))
            reward = Qwen3ForSequenceClassification(Qwen3Config(**SKYWORK_1_7B, **pad))
    finally:
        torch.set_default_dtype(previous)
    return dllm, tokenizer, reward, tokenizer, DREAM_MASK_ID, dtype


def timed(parts: dict, warmup: int, repeat: int, device: torch.device) -> dict[str, float]:
    """Median wall-clock seconds of each part over `repeat` rounds, after `warmup` rounds.

    Every round runs each part once, in turn, so that slow drifts in the speed of a shared
    machine reach all parts alike (the ratio of medians stays steady).
    """
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        for fn in parts.values():
            fn()
    times = {name: [] for name in parts}
    for _ in range(repeat):
        for name, fn in parts.items():
            sync()
            start = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def peak_memory(fn, device: torch.device) -> int:
    """Peak bytes while fn runs: GPU memory allocated (models included), or on CPU the process's peak resident set."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device)
    import resource
    fn()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def host_syncs(fn, device: torch.device) -> list[str] | None:
    """Where fn makes the host wait for the GPU: one "op site <- nearest frame in this repo" per sync.

    torch.cuda.set_sync_debug_mode("warn") turns every synchronising CUDA call into a warning,
    caught here with the Python stack it was raised from. A known sync (`.item()`) is caught
    first, as a control: None if it is missed (the count would mean nothing), and on CPU.
    """
    if device.type != "cuda":
        return None
    repo = str(Path(__file__).resolve().parent.parent)
    sites = []

    def record(message, category, filename, lineno, file=None, line=None):
        if "synchroniz" not in str(message):
            return  # another warning, not a sync
        ours = [f for f in traceback.extract_stack()[:-1]
                if f.filename.startswith(repo) and "site-packages" not in f.filename]  # a venv may live in the repo
        where = f"{Path(ours[-1].filename).name}:{ours[-1].lineno}" if ours else "?"
        sites.append(f"{Path(filename).name}:{lineno} <- {where}")

    def caught(work) -> list[str]:
        sites.clear()
        torch.cuda.synchronize(device)
        torch.cuda.set_sync_debug_mode("warn")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("always")
                warnings.showwarning = record
                work()
        finally:
            torch.cuda.set_sync_debug_mode("default")
        return list(sites)

    if not caught(lambda: torch.zeros((), device=device).item()):
        return None
    return caught(fn)


class VocabOps(TorchDispatchMode):
    """Counts, by op name, the ops that read or write a tensor whose last dim is V, or a flattened (R * V,)
    one (views, bare allocations and empty tensors excluded: a (0,) tensor's numel is a multiple of V, and
    16 `cat`s of the step were counted for one before). Lookups into (V,) tables (`index`) count too."""

    ALLOCATIONS = {"empty", "empty_like", "empty_strided", "new_empty", "new_zeros"}  # no pass over the data

    def __init__(self, vocab_size: int):
        super().__init__()
        self.vocab_size = vocab_size
        self.counts = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if not func.is_view and func.overloadpacket.__name__ not in self.ALLOCATIONS:
            tensors = [t for t in tree_leaves((args, kwargs, out)) if isinstance(t, torch.Tensor)]
            V = self.vocab_size
            if any(t.dim() and t.numel() and (t.shape[-1] == V or t.dim() == 1 and t.numel() % V == 0)
                   for t in tensors):  # (..., V), or a flattened (R * V,) block; not an empty (0,) tensor
                self.counts[func.overloadpacket.__name__] += 1
        return out


def vocab_ops(fn, vocab_size: int) -> dict[str, int]:
    """{op name: count} of the vocabulary-wide ops while fn runs (see VocabOps)."""
    with VocabOps(vocab_size) as mode:
        fn()
    return dict(sorted(mode.counts.items(), key=lambda item: (-item[1], item[0])))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", choices=("tiny", "vocab", "dream-7b"), default="tiny")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--top-p", type=float, default=SamplingConfig.top_p,
                        help="nucleus mass (1 = no top-p filter: what the exact filters cost)")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    parser.add_argument("--throughput", action="store_true",
                        help="instead: records per second of whole batched generations at B = 1, 4, 8 (throughput())")
    args = parser.parse_args(argv)
    try:
        if args.repeat < 1 or args.warmup < 0:
            raise run.UsageError(f"--repeat must be >= 1 and --warmup >= 0, got {args.repeat} and {args.warmup}")
        if not 0 < args.top_p <= 1:
            raise run.UsageError(f"--top-p must be in (0, 1], got {args.top_p}")
        device = run.resolve_device(args.device)
        if args.shape == "dream-7b" and device.type != "cuda":
            raise run.UsageError("--shape dream-7b needs a CUDA GPU (it builds 9 B parameters in bfloat16)")
        if args.json is not None:
            run.check_output_path(args.json, "--json")
    except run.UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    if args.throughput:
        return throughput(args, device)
    dllm, tokenizer, reward, reward_tokenizer, mask_id, dtype = build(args.shape, device)
    for model in (dllm, reward):
        models.cast_parameters(model, dtype).to(device).eval().requires_grad_(False)  # buffers (RoPE) stay float32

    placed = VOCAB_PLACED if args.shape == "vocab" else 0  # response tokens already placed
    config = SamplingConfig(K=4, max_new_tokens=128 - placed, M=3, T=1, top_p=args.top_p)  # T = 1: one step, all masks
    K, L = config.K, config.max_new_tokens
    prompt_ids = tokenizer(PROMPT * 8, add_special_tokens=False)["input_ids"][:PROMPT_TOKENS + placed]
    prompt = torch.tensor([prompt_ids], device=device)  # (1, P)
    prompt_keep = torch.ones_like(prompt, dtype=torch.bool)  # (1, P)
    bridge = rewards.vocab_bridge(tokenizer, reward_tokenizer, dllm.config.vocab_size)
    embed_matrix = rewards.bridged_embeddings(reward.get_input_embeddings().weight, bridge)  # (V, d)
    reading = rewards.response_reading(dllm.config.vocab_size, [tokenizer.eos_token_id], tokenizer.pad_token_id)
    scorer = rewards.EmbeddingScorer(reward, reward_tokenizer, [PROMPT], K=K, reading=reading)
    denoise = sampler.dream_denoiser(dllm)

    def fresh_generator():
        return torch.Generator(device=device).manual_seed(0)

    def step():
        hook = sampler.reward_guidance(scorer, embed_matrix, config, fresh_generator())
        with torch.no_grad():
            sampler.generate(denoise, prompt, prompt_keep, config, mask_id=mask_id, eos_id=tokenizer.eos_token_id,
                             guidance=hook, generator=fresh_generator())

    # One step with only the models, the bridged embeddings and the reward prefix resident (as in
    # run.py), before this script holds tensors of its own; it also warms up.
    peak_mem_bytes = peak_memory(step, device)
    syncs = host_syncs(step, device)

    N = K
    P = prompt.shape[1]
    ids = torch.cat([prompt.repeat(N, 1), torch.full((N, L), mask_id, device=device)], 1)  # (N, S)
    keep = torch.ones_like(ids, dtype=torch.bool)  # (N, S)
    positions = torch.arange(L, device=device).repeat(N, 1)  # (N, L)
    response = ids[:, P:]  # (N, L)
    masked = torch.ones(N, L, dtype=torch.bool, device=device)  # (N, L)
    with torch.no_grad():
        logits = denoise(ids, keep, positions + P)  # (N, L, V)
    logits = logits.index_fill(-1, torch.tensor([mask_id], device=device), -math.inf)  # as generate passes them on

    def denoiser():
        with torch.no_grad():
            denoise(ids, keep, positions + P)

    def guidance():
        sampler.reward_guidance(scorer, embed_matrix, config, fresh_generator())(logits, probs, masked, positions, response)

    def sample():
        unguided = dataclasses.replace(config, method="bon")
        with torch.no_grad():
            sampler.generate(lambda *_: logits, prompt, prompt_keep, unguided, mask_id=mask_id,
                             eos_id=tokenizer.eos_token_id, generator=fresh_generator())

    probs = sampler.token_probs(logits, config.temperature, config.top_p, config.top_k)  # (N, L, V) unguided q
    embeds = embed_matrix[logits.argmax(-1)].detach()  # (N, L, d)
    tokens = logits.argmax(-1)  # (N, L)

    def reward_fwd_bwd():
        leaf = embeds.clone().requires_grad_(True)
        with torch.enable_grad():
            scorer(leaf, tokens).sum().backward()

    block_logits = (logits.float() / config.temperature).reshape(-1, logits.shape[-1])  # (N * L, V)
    block_probs = torch.softmax(block_logits, -1)  # (N * L, V)

    def filter_block():
        filter_probs(block_probs, config.top_p, config.top_k)

    def softmax_block():
        torch.softmax(block_logits, -1)

    parts = {"step_s": step, "denoiser_s": denoiser, "guidance_s": guidance, "sample_s": sample,
             "reward_fwd_bwd_s": reward_fwd_bwd, "filter_s": filter_block, "softmax_s": softmax_block}
    figures = timed(parts, args.warmup, args.repeat, device)
    figures["overhead_ratio"] = figures["step_s"] / (figures["denoiser_s"] + config.M * figures["reward_fwd_bwd_s"])
    figures["filter_ratio"] = figures["filter_s"] / figures["softmax_s"]
    figures["filter_share"] = (config.M + 1) * figures["filter_s"] / figures["step_s"]
    figures["vocab_ops"] = vocab_ops(step, dllm.config.vocab_size)
    figures["peak_mem_bytes"] = peak_mem_bytes
    figures["host_syncs"] = syncs
    figures["machine"] = {
        "platform": platform.platform(), "processor": platform.processor() or platform.machine(),
        "cpu_threads": torch.get_num_threads(), "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "torch": torch.__version__,
    }
    figures["shapes"] = {"shape": args.shape, "K": K, "L": L + placed, "masked": L, "prompt_tokens": PROMPT_TOKENS,
                         "M": config.M, "top_p": config.top_p, "filter_rows": block_probs.shape[0],
                         "V": dllm.config.vocab_size, "reward_prefix_tokens": scorer.prefix_ids.shape[1],
                         "dtype": str(dtype).removeprefix("torch."), "warmup": args.warmup, "repeat": args.repeat}
    for name in ("step_s", "denoiser_s", "guidance_s", "sample_s", "reward_fwd_bwd_s", "filter_s", "softmax_s"):
        print(f"{name:<18} {figures[name] * 1e3:10.2f} ms")
    print(f"{'overhead_ratio':<18} {figures['overhead_ratio']:10.3f}")
    print(f"{'filter_ratio':<18} {figures['filter_ratio']:10.3f}  (filter_s / softmax_s, {block_probs.shape[0]} rows of V)")
    print(f"{'filter_share':<18} {figures['filter_share']:10.3f}  ({config.M + 1} filters x filter_s / step_s)")
    print(f"{'vocab_ops':<18} {sum(figures['vocab_ops'].values()):10d}  (ops on a last dim of V in one guided step)")
    for name, count in figures["vocab_ops"].items():
        print(f"    {count:3d} x {name}")
    print(f"{'peak_mem_bytes':<18} {figures['peak_mem_bytes'] / 2**30:10.2f} GiB")
    if device.type == "cuda" and syncs is None:
        print(f"{'host_syncs':<18} {'unknown':>10}  (sync debug mode missed a known sync)")
    if syncs is not None:
        print(f"{'host_syncs':<18} {len(syncs):10d}  (in one guided step)")
        for site in sorted(set(syncs)):
            print(f"    {syncs.count(site):3d} x {site}")
    if args.json is not None:
        run.write_json_atomically(args.json, figures)
    return figures


THROUGHPUT_BATCHES = (1, 4, 8)


def throughput(args, device: torch.device) -> dict:
    """Records per second of `run.py --prompts`'s batches: B prompts x K trajectories per forward.

    One record = one prompt's K guided (entrgi) responses, generated whole: T denoising
    steps, each one denoiser forward and M reward forward+backward passes over the B x K
    rows, with per-prompt random streams (rng.CounterRNG), as `run.generate_batch` does (the
    generation only: its final decoding and scoring, a few per cent of a batch, are not timed).
    Shapes: K = 4, M = 3, B different 64-token prompts (the reward model reads the same ones;
    its chat prefixes are left-padded), L = 32 and T = 8 at `tiny` on the CPU, L = 128 and T = 8 at `dream-7b` on CUDA (a 128-step record
    costs about 16 times as long). Each B: --warmup untimed batches, then the median of
    --repeat; records_per_s = B / median seconds. The Bs take turns within every round (as the
    step's parts do in `timed`), so that a burst of load on the shared machine reaches them alike.
    Per B also: on CUDA the peak GPU memory allocated over its batches (models included), and
    the peak `run.py --dry-run --batch-size B` predicts for these shapes (models.predict_peak_bytes).
    """
    from rng import CounterRNG, stream_key

    dllm, tokenizer, reward, reward_tokenizer, mask_id, dtype = build(args.shape, device)
    for model in (dllm, reward):
        models.cast_parameters(model, dtype).to(device).eval().requires_grad_(False)  # buffers (RoPE) stay float32
    L = 32 if args.shape == "tiny" else 128
    config = SamplingConfig(K=4, max_new_tokens=L, M=3, T=8, top_p=args.top_p)
    bridge = rewards.vocab_bridge(tokenizer, reward_tokenizer, dllm.config.vocab_size)
    embed_matrix = rewards.bridged_embeddings(reward.get_input_embeddings().weight, bridge)  # (V, d)
    reading = rewards.response_reading(dllm.config.vocab_size, [tokenizer.eos_token_id], tokenizer.pad_token_id)
    denoise = sampler.dream_denoiser(dllm)
    words = (PROMPT * 4).split()
    rows = [tokenizer(" ".join(words[i:]), add_special_tokens=False)["input_ids"][:PROMPT_TOKENS]
            for i in range(max(THROUGHPUT_BATCHES))]  # B different 64-token prompts
    texts = [tokenizer.decode(row) for row in rows]  # the same prompts as the reward model reads them

    def batch(B: int) -> None:
        ids, keep = rewards.left_pad(rows[:B], tokenizer.pad_token_id)  # (B, P)
        scorer = rewards.EmbeddingScorer(reward, reward_tokenizer, texts[:B], K=config.K, reading=reading)
        streams = CounterRNG(torch.tensor([stream_key(0, str(i)) for i in range(B)], device=device))  # (B,)
        guidance = sampler.reward_guidance(scorer, embed_matrix, config, streams)
        with torch.no_grad():
            sampler.generate(denoise, ids.to(device), keep.to(device), config, mask_id=mask_id,
                             eos_id=[tokenizer.eos_token_id], guidance=guidance, generator=streams)
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def predicted_peak(B: int) -> int:  # what `run.py --dry-run --batch-size B` predicts for these shapes
        pieces = [rewards.chat_pieces(reward_tokenizer, text) for text in texts[:B]]  # R's (prefix, suffix) ids

        def checkpoint(model, its_tokenizer):
            return models.Checkpoint(args.shape, None, model.config, its_tokenizer, type(model))
        return models.predict_peak_bytes(
            checkpoint(dllm, tokenizer), checkpoint(reward, reward_tokenizer), rows=B * config.K, length=L,
            reward_tokens=L + len(pieces[0][1]), dtype=dtype,
            prefix_tokens=max(len(prefix) for prefix, _ in pieces))["total"]

    figures = {"machine": {"platform": platform.platform(), "processor": platform.processor(),
                           "torch": torch.__version__, "device": str(device),
                           "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None},
               "shapes": {"shape": args.shape, "K": config.K, "L": L, "T": config.T, "M": config.M,
                          "prompt_tokens": PROMPT_TOKENS, "warmup": args.warmup, "repeat": args.repeat},
               "records_per_s": {}, "peak_mem_bytes": {}, "predicted_peak_bytes": {}}
    times = {B: [] for B in THROUGHPUT_BATCHES}
    peaks = {B: 0 for B in THROUGHPUT_BATCHES}
    for round_ in range(args.warmup + args.repeat):
        for B in THROUGHPUT_BATCHES:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            started = time.perf_counter()
            batch(B)
            if round_ >= args.warmup:
                times[B].append(time.perf_counter() - started)
            if device.type == "cuda":
                peaks[B] = max(peaks[B], torch.cuda.max_memory_allocated(device))
    for B in THROUGHPUT_BATCHES:
        figures["records_per_s"][B] = B / statistics.median(times[B])
        figures["predicted_peak_bytes"][B] = predicted_peak(B)
        figures["peak_mem_bytes"][B] = peaks[B] if device.type == "cuda" else None
        measured = f"{peaks[B] / 2**30:.2f} GiB" if device.type == "cuda" else "not measured on CPU"
        print(f"B = {B}:  {figures['records_per_s'][B]:8.3f} records/s  (median of {args.repeat});  peak memory "
              f"{measured}, predicted {figures['predicted_peak_bytes'][B] / 2**30:.2f} GiB", flush=True)
    figures["speedup_8_over_1"] = figures["records_per_s"][8] / figures["records_per_s"][1]
    print(f"B = 8 / B = 1:  {figures['speedup_8_over_1']:.2f}x")
    if args.json is not None:
        run.write_json_atomically(args.json, figures)
    return figures


if __name__ == "__main__":
    main()
