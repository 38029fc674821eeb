"""The report of one or more benchmarks: summary.json, summary.md (a Markdown table), summary.png (a plot).

A run directory of `run.py --prompts/--dataset` gets its own report when the run ends; several
directories (one benchmark each) merge into one with

    python run.py --report DIR [DIR ...] --output-dir REPORT

which re-reads every DIR's config.json and records.jsonl (never its summary) and loads no model.

    benchmark_summary(config, records)   one benchmark: experiment.summarise + what the plot and table need
    markdown(benchmarks)                 summary.md: one table per benchmark, mean ± SEM over seeds first
    plot(benchmarks)                     the figure and the arrays drawn (one panel per benchmark and metric)
    write(directory, benchmarks, summary) summary.json, summary.md, summary.png, summary.plot.json (atomic)

The plot: for each benchmark a panel per metric (Top@1, Avg@N of the guiding reward model), one bar per
method at its mean over seeds, error bars = the standard error over the seeds (the 95 % bootstrap
interval when there is one seed). With m_s a seed's mean over its prompts and S seeds:

    mean = (1/S) Σ_s m_s      SEM = sqrt(Σ_s (m_s − mean)² / (S − 1)) / sqrt(S)

and the 95 % interval is the percentile bootstrap over the records (experiment.bootstrap). When the configuration is the paper's (`paper_configuration`:
Dream-v0-Instruct-7B guided by Skywork-Reward-V2-Qwen3-1.7B, SamplingConfig's defaults, a preset
benchmark with the authors' selection, seeds 1, 2, 3), the published Top@1 (SPEC §4) is drawn as a hatched bar
beside the method's. summary.plot.json holds exactly the arrays given to matplotlib.
matplotlib (the `experiments` extra) is imported only here, with the Agg backend.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import experiment
import models
import prompt_sets
from models import UsageError
from sampler import SamplingConfig

SUMMARY_MD = "summary.md"
SUMMARY_PNG = "summary.png"
PLOT_DATA = "summary.plot.json"
PLOTTED = ("top1_reward", "avgN_reward")


def paper_configuration(config: dict) -> dict | None:
    """The published Top@1 per method when `config` (a run's config.json) is the paper's setting, else None."""
    settings, dataset = config.get("settings", {}), config.get("dataset")
    if dataset is None:
        return None
    sampling = {k: v for k, v in dataclasses.asdict(SamplingConfig()).items() if k != "method"}
    preset = prompt_sets.PRESETS.get(dataset.get("name"))
    if (preset is None or dataset.get("kind") != "hub" or dataset.get("path") != preset.hub_id
            or (dataset.get("split"), dataset.get("prompt_field")) != (preset.split, preset.prompt_field)
            or dataset.get("subset_size") != prompt_sets.DEFAULT_SUBSET_SIZE
            or dataset.get("subset_field") is not None or dataset.get("subset_seed") is not None
            or settings.get("sampling") != sampling or settings.get("dllm") != models.DEFAULT_DLLM
            or settings.get("reward_model") != models.DEFAULT_REWARD
            or sorted(config.get("seeds") or []) != list(prompt_sets.PAPER_SEEDS)
            or settings.get("dtype") != "bfloat16"):  # the authors' dtype
        return None
    return dict(preset.published_top1)


def eval_differs(config: dict) -> bool:
    """Whether the eval model's columns say anything: one was given and it is not the guiding model."""
    settings = config.get("settings", {})
    return settings.get("eval_reward_model") not in (None, settings.get("reward_model"))


def benchmark_summary(config: dict, records: list[dict]) -> dict:
    """One benchmark's summary from its run's config.json and records (the order of config's methods)."""
    with_eval = bool(records) and "eval_top1_reward" in records[0]
    settings = config.get("settings", {})
    return {"benchmark": config.get("benchmark"), "fingerprint": config.get("fingerprint"), "records": len(records),
            "seeds": config.get("seeds"), "reward_model": settings.get("reward_model"),
            "eval_reward_model": settings.get("eval_reward_model"), "eval_columns": eval_differs(config),
            "published_top1": paper_configuration(config),
            "bootstrap": {"seed": experiment.BOOTSTRAP_SEED, "resamples": experiment.BOOTSTRAP_RESAMPLES},
            "methods": experiment.summarise(records, config.get("methods", []), with_eval)}


def read_run(directory: Path) -> dict:
    """A finished run directory's benchmark summary, recomputed from its records."""
    config_path, records_path = directory / experiment.CONFIG, directory / experiment.RECORDS
    if not config_path.is_file() or not records_path.is_file():
        raise UsageError(f"--report {directory}: not a run directory (no {experiment.CONFIG} and {experiment.RECORDS})")
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError):
        raise UsageError(f"--report {config_path} is not a configuration this program wrote") from None
    foreign = UsageError(f"--report {config_path} is not a configuration this program wrote")
    if not isinstance(config, dict):
        raise foreign
    methods, seeds = config.get("methods"), config.get("seeds")
    if not (isinstance(methods, list) and all(isinstance(m, str) for m in methods)
            and isinstance(seeds, list) and all(isinstance(s, int) for s in seeds)
            and isinstance(config.get("settings", {}), dict) and isinstance(config.get("dataset") or {}, dict)):
        raise foreign
    records = [r for r in experiment.read_records(records_path)[0] if r.get("fingerprint") == config.get("fingerprint")
               and r.get("method") in set(methods) and r.get("seed") in set(seeds)]  # the run's records only
    if not records:
        raise UsageError(f"--report {directory} holds no record of its configuration")
    try:
        return benchmark_summary(config, records)
    except (AttributeError, KeyError, TypeError, ValueError) as error:
        raise UsageError(f"--report {directory} holds a record or setting this program did not write "
                         f"({error!r})") from None


def merge(directories: list[str]) -> list[dict]:
    benchmarks = [read_run(Path(d)) for d in directories]
    names = [b["benchmark"] for b in benchmarks]
    twice = next((n for n in names if names.count(n) > 1), None)
    if twice is not None:
        raise UsageError(f"--report: two directories hold the benchmark {twice!r} (one directory per benchmark)")
    return benchmarks


# --------------------------------------------------------------------------- text


def text_table(benchmark: dict) -> str:
    title = f"{benchmark['benchmark']} ({benchmark['records']} records, guided by {benchmark['reward_model']})"
    return title + "\n" + experiment.table(benchmark["methods"], eval_columns=benchmark["eval_columns"])


def markdown(benchmarks: list[dict]) -> str:
    """summary.md: per benchmark, one row per method (mean ± SEM over seeds, the 95 % interval, - bon)."""
    out = ["# Results", ""]
    for b in benchmarks:
        metrics = experiment.shown_metrics(b["methods"], b["eval_columns"])
        published = b["published_top1"]
        header = ["method", "n"]
        for m in metrics:
            name = experiment.METRIC_NAMES[m]
            header += [f"{name} (mean ± SEM)", f"{name} 95 % CI", f"{name} − BoN"]
        if published:
            header.append("published Top@1")
        out += [f"## {b['benchmark']}", "", f"Guided by `{b['reward_model']}`; seeds {b['seeds']}.", "",
                "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for method, entry in b["methods"].items():
            row = [method, experiment.n_cell(entry[metrics[0]])]
            for m in metrics:
                d = entry.get("minus_bon", {}).get(m)
                row += [experiment.seed_cell(entry[m]), experiment.interval_cell(entry[m]),
                        f"{experiment.seed_cell(d)} {experiment.interval_cell(d)}" if d else "–"]
            if published:
                row.append(f"{published[method]:.2f}" if method in published else "–")
            out.append("| " + " | ".join(row) + " |")
        out.append("")
    out += [experiment.TABLE_NOTE.replace("- bon", "− BoN") + ". Published Top@1: SPEC §4 (Dream-v0-Instruct-7B, "
            "Skywork-Reward-V2-Qwen3-1.7B, τ = 0.7, 64 prompts per seed, seeds 1, 2, 3), shown only when the "
            "configuration is the paper's.", ""]
    return "\n".join(out)


# --------------------------------------------------------------------------- the plot


def plot_data(benchmarks: list[dict]) -> list[dict]:
    """The arrays the plot draws, one panel per (benchmark, metric)."""
    panels = []
    for b in benchmarks:
        for metric in PLOTTED:
            methods = list(b["methods"])
            stats = [b["methods"][m][metric] for m in methods]
            if all(s["sem"] is not None for s in stats):
                low = high = [s["sem"] for s in stats]
                error = "standard error over seeds"
            else:
                low = [s["seed_mean"] - s["ci95"][0] for s in stats]
                high = [s["ci95"][1] - s["seed_mean"] for s in stats]
                error = "95 % bootstrap interval"
            published = b["published_top1"] if metric == "top1_reward" and b["published_top1"] else {}
            panels.append({"benchmark": b["benchmark"], "metric": metric, "methods": methods,
                           "values": [s["seed_mean"] for s in stats], "error_low": list(low),
                           "error_high": list(high), "error": error,
                           "published": {m: published[m] for m in methods if m in published}})
    return panels


def plot(benchmarks: list[dict]):
    """(matplotlib Figure, plot_data): bars per method with error bars, published Top@1 beside where known."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = plot_data(benchmarks)
    columns = len(PLOTTED)
    rows = len(benchmarks)
    figure, axes = plt.subplots(rows, columns, figsize=(5.5 * columns, 3.2 * rows), squeeze=False)
    for panel, ax in zip(panels, axes.flatten()):
        x = list(range(len(panel["methods"])))
        shift = 0.2 if panel["published"] else 0.0
        ax.bar([i - shift for i in x], panel["values"], width=0.4 if shift else 0.6, label="this run",
               yerr=[panel["error_low"], panel["error_high"]], capsize=4, color="tab:blue")
        if panel["published"]:
            where = [i for i, m in enumerate(panel["methods"]) if m in panel["published"]]
            ax.bar([i + shift for i in where], [panel["published"][panel["methods"][i]] for i in where], width=0.4,
                   label="published (SPEC §4)", color="white", edgecolor="tab:gray", hatch="//")
            ax.legend(fontsize=8)
        ax.set_xticks(x, panel["methods"])
        ax.axhline(0, color="black", linewidth=0.5)
        ax.set_title(f"{panel['benchmark']}: {experiment.METRIC_NAMES[panel['metric']]}", fontsize=10)
        ax.set_ylabel(f"reward (error: {panel['error']})", fontsize=7)
    figure.tight_layout()
    return figure, panels


# --------------------------------------------------------------------------- files


def write(directory: Path, benchmarks: list[dict], summary: dict) -> str | None:
    """summary.json (`summary`), summary.md, summary.png and summary.plot.json into `directory`.

    Without matplotlib the plot is left out and the returned note says so (the rest is written).
    """
    directory.mkdir(parents=True, exist_ok=True)
    text = lambda data: (lambda tmp: Path(tmp).write_text(data))  # noqa: E731
    experiment.atomic_write(directory / experiment.SUMMARY, text(json.dumps(summary, indent=2)))
    experiment.atomic_write(directory / SUMMARY_MD, text(markdown(benchmarks)))
    try:
        figure, panels = plot(benchmarks)
    except ImportError:
        return f"note: {SUMMARY_PNG} not written: the plot needs matplotlib ({prompt_sets.EXTRA_HINT})"
    import matplotlib.pyplot as plt

    try:
        experiment.atomic_write(directory / SUMMARY_PNG, lambda tmp: figure.savefig(tmp, format="png", dpi=120))
    finally:
        plt.close(figure)
    experiment.atomic_write(directory / PLOT_DATA, text(json.dumps(panels, indent=2)))
    return None
