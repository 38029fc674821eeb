"""EntRGi in a notebook or a script: load the models once, then records for lists of prompts.

    import api
    session = api.Session("tiny", "tiny", device="cpu")            # or Dream-7B + Skywork (the defaults) on CUDA
    records = session.generate(["Write a haiku about gradients.", "Why is the sky blue?"],
                               method="entrgi", seeds=[1, 2, 3], K=4, T=32)
    best = max(records, key=lambda r: r["top1_reward"])["best_response"]

`Session.generate` returns exactly the records `run.py --prompts/--dataset` writes to
records.jsonl (docs/outputs.md, "Many prompts"): one per (prompt, seed), each with its K responses, their
discrete rewards, Top@1 / Avg@N, the best response, the mean entropy weight, the sampling
settings' fingerprint and the batch's cost. The CLI's experiment runs on this class
(`Session.run`), so a prompt's record is the same from either, bit for bit, for the same
prompts, batch size and settings (the cost's timings aside). Draws come from one
`rng.CounterRNG` stream per (seed, prompt id): a record does not depend on the other prompts
of its batch beyond float32 summation order (docs/outputs.md, "Batch invariance").

Prompts are strings (id = their index in the list) or `experiment.Prompt`s (their own ids and
fields, as `experiment.read_prompts` and `prompt_sets.selections` give). Sampling settings are
SamplingConfig's fields as keyword arguments (K, T, M, eta, max_new_tokens, temperature, ...);
bad ones, a bad seed or batch size raise ValueError; a prompt too long for any model (the eval
reward model's included), or prompts whose reward turns end differently, raise
models.UsageError; all before any work.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence

import torch

import experiment
import models
import run
from experiment import Prompt
from rng import CounterRNG, stream_key
from sampler import SamplingConfig

RNG_NAME = "rng.CounterRNG/splitmix64/v1"


def settings(dllm: str, reward_model: str, eval_reward_model: str | None, config: SamplingConfig,
             device: torch.device, dtype: torch.dtype) -> dict:
    """Every setting that changes a record's result (the method aside: it is in the record's key); their
    fingerprint is every record's `fingerprint`. Not in it: the batch size, the number of processes."""
    sampling = {k: v for k, v in dataclasses.asdict(config).items() if k != "method"}
    return {"sampling": sampling, "dllm": dllm, "reward_model": reward_model, "eval_reward_model": eval_reward_model,
            "device": device.type, "dtype": str(dtype).removeprefix("torch."), "rng": RNG_NAME}


class Session:
    """Both models (and an optional eval reward model) loaded once, on one device.

    dllm, reward_model: hub ids, local directories, or "tiny" (models.py's in-process models).
    device: "auto" | "cpu" | "cuda" (or a torch.device); dtype: "auto" (bfloat16 on CUDA, float32
    on the CPU) | "float32" | "bfloat16" | "float16" (or a torch.dtype).
    """

    def __init__(self, dllm: str = models.DEFAULT_DLLM, reward_model: str = models.DEFAULT_REWARD, *,
                 eval_reward_model: str | None = None, device: str | torch.device = "auto",
                 dtype: str | torch.dtype = "auto"):
        device = device if isinstance(device, torch.device) else run.resolve_device(device)
        dtype = dtype if isinstance(dtype, torch.dtype) else run.resolve_dtype(dtype, device)
        plan = run.make_plan(dllm, reward_model, [], SamplingConfig())
        evaluator = None
        if eval_reward_model is not None:
            evaluator = models.reward_checkpoint(eval_reward_model, "eval_reward_model")
        self._start(plan, dllm, reward_model, eval_reward_model, evaluator, device, dtype)

    @classmethod
    def from_plan(cls, plan: run.Plan, dllm: str, reward_model: str, eval_reward_model: str | None,
                  evaluator: models.Checkpoint | None, device: torch.device, dtype: torch.dtype) -> "Session":
        """A session on checkpoints already read and checked (the CLI's plan): only the weights load here."""
        session = cls.__new__(cls)
        session._start(plan, dllm, reward_model, eval_reward_model, evaluator, device, dtype)
        return session

    def _start(self, plan, dllm, reward_model, eval_reward_model, evaluator, device, dtype) -> None:
        self.plan, self.device, self.dtype = plan, device, dtype
        self.names, self.evaluator = (dllm, reward_model, eval_reward_model), evaluator
        self.loaded = run.load(plan, device, dtype)
        self.eval_reward = None
        if evaluator is not None:
            self.eval_reward = (models.load_weights(evaluator, dtype).to(device), evaluator.tokenizer)

    def config(self, **sampling) -> SamplingConfig:
        """SamplingConfig's defaults with `sampling` applied, validated (ValueError if out of range)."""
        return SamplingConfig(**sampling).validate()

    def fingerprint(self, config: SamplingConfig) -> str:
        return experiment.fingerprint(settings(*self.names, config, self.device, self.dtype))

    def generate(self, prompts: Sequence[str | Prompt], *, method: str = "entrgi", seeds: Sequence[int] = (0,),
                 batch_size: int | None = None, dataset: str | None = None, **sampling) -> list[dict]:
        """The records of every prompt under `method`, per seed: prompts in order, then seeds.

        batch_size: prompts per forward (B x K rows; default run.DEFAULT_BATCH_SIZE, 4).
        dataset: the benchmark's name, for prompts from `prompt_sets.selections`: each record then
        carries `dataset` and `index` (= its id, the row's index), as the CLI's `--dataset` records do.
        """
        config = self.config(**sampling, method=method)
        batch_size = run.DEFAULT_BATCH_SIZE if batch_size is None else batch_size
        if isinstance(prompts, str) or not isinstance(prompts, Sequence):
            raise ValueError(f"prompts must be a list of strings or experiment.Prompts, got {type(prompts).__name__}")
        if isinstance(seeds, (str, bytes)) or not isinstance(seeds, Sequence):
            raise ValueError(f"seeds must be a list of integers, got {seeds!r}")
        items = [p if isinstance(p, Prompt) else Prompt(i, p, {}, f"prompt {i}") for i, p in enumerate(prompts)]
        for item in items:  # the prompts files' rule (experiment.read_prompts): a non-empty string
            if not isinstance(item.text, str) or not item.text.strip():
                raise ValueError(f"{item.where}: the prompt is " + ("empty" if isinstance(item.text, str) else
                                                                    "not a string"))
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        for seed in seeds:
            if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**64:
                raise ValueError(f"seeds must be integers in [0, 2**64), got {seed!r}")
        prompt_ids = self.tokenize(items, config)
        extra = (lambda p: {"dataset": dataset, "index": p.id}) if dataset is not None else (lambda p: {})
        done = self.run({(method, seed): items for seed in seeds}, {method: config}, prompt_ids, batch_size, extra)
        by_key = {experiment.record_key(r): r for r in done}
        return [by_key[(p.key, method, seed)] for p in items for seed in seeds]

    def tokenize(self, prompts: Sequence[Prompt], config: SamplingConfig) -> dict[str, list[int]]:
        """Each prompt's ids in the denoiser's chat template, by key; UsageError if too long for any model."""
        texts, labels = [p.text for p in prompts], [p.where for p in prompts]
        ids, pieces = run.tokenize_prompts(self.plan.dllm, self.plan.reward, texts, config.max_new_tokens, labels)
        run.check_batchable(pieces, self.evaluator, texts, labels, config.max_new_tokens)
        return {p.key: i for p, i in zip(prompts, ids)}

    def run(self, work: dict[tuple[str, int], list[Prompt]], configs: dict[str, SamplingConfig],
            prompt_ids: dict[str, list[int]], batch_size: int,
            extra: Callable[[Prompt], dict] = lambda prompt: {},
            on_batch: Callable[[list[dict]], None] | None = None,
            on_step: Callable[[str, int, int], None] | None = None) -> list[dict]:
        """The engine of `generate` and of the CLI: per (method, seed), its prompts in batches of `batch_size`.

        `extra(prompt)` adds fields to each record (the CLI's dataset and row index); `on_batch`
        gets each batch's records as soon as they exist (the CLI writes them to disk);
        `on_step(method, seed, step)` follows the denoising steps.
        """
        fingerprints = {m: self.fingerprint(c) for m, c in configs.items()}
        records = []
        for (method, seed), prompts in work.items():
            config = configs[method]
            for start in range(0, len(prompts), batch_size):
                batch = prompts[start:start + batch_size]
                rng = CounterRNG(torch.tensor([stream_key(seed, p.key) for p in batch], device=self.device))  # (B,)
                counts = {"denoiser_forwards": 0, "reward_forward_backward": 0, "reward_forwards": 0}
                if self.device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(self.device)
                started = time.perf_counter()
                step = None if on_step is None else (lambda i, _ids, m=method, s=seed: on_step(m, s, i))
                results = run.generate_batch(self.loaded, [p.text for p in batch], [prompt_ids[p.key] for p in batch],
                                             config, rng, counts, eval_reward=self.eval_reward, on_step=step)
                peak, peak_kind = run.peak_memory(self.device)
                cost = {**counts, "wall_seconds": time.perf_counter() - started, "peak_memory_bytes": peak,
                        "peak_memory": peak_kind, "batch_prompts": len(batch), "note": "the whole batch's cost"}
                made = [{"id": p.id, **extra(p), "prompt": p.text, "fields": p.fields, "method": method, "seed": seed,
                         "fingerprint": fingerprints[method], **result, "cost": cost}
                        for p, result in zip(batch, results)]
                if on_batch is not None:
                    on_batch(made)
                records += made
        return records
