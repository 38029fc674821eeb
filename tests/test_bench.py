"""The benchmark runs as the README says and reports every figure it documents.

No timing is asserted (performance is measured by `benchmarks/bench.py`, not by tests):
only that one round at tiny shapes completes, is internally consistent, and lands in JSON.
"""

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import bench  # noqa: E402

PARTS = ("step_s", "denoiser_s", "guidance_s", "sample_s", "reward_fwd_bwd_s", "filter_s", "softmax_s")


def test_bench_tiny_reports_every_figure(tmp_path, capsys):
    """--shape tiny on CPU: positive part times, the ratio from them, machine and shapes, same JSON."""
    out = tmp_path / "tiny.json"
    figures = bench.main(["--shape", "tiny", "--device", "cpu", "--warmup", "0", "--repeat", "1", "--json", str(out)])
    assert all(figures[name] > 0 for name in PARTS)
    M = figures["shapes"]["M"]
    expected = figures["step_s"] / (figures["denoiser_s"] + M * figures["reward_fwd_bwd_s"])
    assert figures["overhead_ratio"] == pytest.approx(expected)
    assert figures["filter_ratio"] == figures["filter_s"] / figures["softmax_s"]
    assert figures["filter_share"] == (M + 1) * figures["filter_s"] / figures["step_s"]  # M + 1 filters a step
    assert figures["shapes"]["V"] == 576  # the tiny denoiser's rows (its filters take the sort path)
    assert figures["shapes"]["filter_rows"] == 4 * 128  # the step's block: all 128 positions of 4 rows
    # one guided step, vocabulary-wide: M + 1 softmaxes forward (relaxations, guided q), the unguided q,
    # the M checkpointed recomputations; four top-p filters, each one sort (V = 576 < entrgi.SORT_BELOW: no
    # radix passes) and one masking of the bits (a shift and an and, in place)
    ops = figures["vocab_ops"]
    assert ops["sort"] == 4 and "index_add_" not in ops
    assert ops["bitwise_right_shift_"] == 4 and ops["bitwise_and_"] == 4 and "where" not in ops
    assert all(count > 0 for count in ops.values())
    assert figures["peak_mem_bytes"] > 0
    assert figures["host_syncs"] is None  # counted on CUDA only: on the CPU there is no device to wait for
    assert figures["machine"]["torch"] == torch.__version__
    assert {k: figures["shapes"][k] for k in ("K", "L", "masked", "prompt_tokens", "M", "top_p")} == {
        "K": 4, "L": 128, "masked": 128, "prompt_tokens": 64, "M": 3, "top_p": 0.95}
    assert json.loads(out.read_text()) == figures
    printed = capsys.readouterr().out
    assert all(name in printed for name in PARTS + ("overhead_ratio", "filter_ratio", "filter_share", "vocab_ops",
                                                   "peak_mem_bytes"))


@pytest.mark.parametrize("argv", [["--device", "cuda"], ["--shape", "vocab", "--repeat", "0"], ["--shape", "dream-7b", "--device", "cpu"],
                                  ["--repeat", "0"], ["--warmup", "-1"], ["--top-p", "0"], ["--top-p", "1.5"]])
def test_bench_bad_input_is_a_one_line_error(argv, capsys):
    """CUDA asked for where there is none, dream-7b shapes on the CPU, no timed round, a negative
    warm-up or a top-p outside (0, 1]: exit status 2, one line on stderr."""
    if argv[-1] == "cuda" and torch.cuda.is_available():
        pytest.skip("checks the error without a GPU")
    with pytest.raises(SystemExit) as exit_info:
        bench.main(argv)
    assert exit_info.value.code == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_bench_json_directory_is_a_one_line_error_before_any_work(tmp_path, capsys):
    """--json naming a directory: exit status 2 and one line on stderr, before any model is built."""
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["--device", "cpu", "--json", str(tmp_path)])
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert len(captured.err.strip().splitlines()) == 1 and "directory" in captured.err
    assert captured.out == ""  # no figures: nothing was timed


def test_bench_throughput_reports_records_per_second(tmp_path, capsys):
    """--throughput at tiny shapes, one round: records/s for B = 1, 4, 8, the B = 8 / B = 1 ratio from them, JSON."""
    out = tmp_path / "throughput.json"
    figures = bench.main(["--throughput", "--shape", "tiny", "--device", "cpu", "--warmup", "0", "--repeat", "1",
                          "--json", str(out)])
    rates = figures["records_per_s"]
    assert sorted(rates) == [1, 4, 8] and all(rate > 0 for rate in rates.values())
    assert figures["speedup_8_over_1"] == rates[8] / rates[1]
    predicted = figures["predicted_peak_bytes"]
    assert predicted[1] < predicted[4] < predicted[8]  # the dry-run's prediction grows with B
    assert figures["peak_mem_bytes"] == {1: None, 4: None, 8: None}  # measured on CUDA only
    assert json.loads(out.read_text())["speedup_8_over_1"] == figures["speedup_8_over_1"]
    assert "B = 8 / B = 1" in capsys.readouterr().out


def test_bench_throughput_scores_the_prompts_it_denoises(monkeypatch):
    """--throughput: the reward model reads the same 64-token prompts the denoiser is given (it once read
    the untruncated ~290-token texts, which made its attention, and so the B = 8 figure, pay for 369 keys),
    and its predicted peak per B is the one `run.py --dry-run` prints for the same prompts."""
    scored, denoised = [], []

    class Recording(bench.rewards.EmbeddingScorer):
        def __init__(self, model, tokenizer, prompts, **kwargs):
            scored.append(list(prompts))
            super().__init__(model, tokenizer, prompts, **kwargs)

    generate = bench.sampler.generate

    def recording_generate(denoise, ids, keep, *args, **kwargs):
        denoised.append([row[row_keep].tolist() for row, row_keep in zip(ids, keep)])  # the left pad dropped
        return generate(denoise, ids, keep, *args, **kwargs)

    monkeypatch.setattr(bench.rewards, "EmbeddingScorer", Recording)
    monkeypatch.setattr(bench.sampler, "generate", recording_generate)
    figures = bench.main(["--throughput", "--shape", "tiny", "--device", "cpu", "--warmup", "0", "--repeat", "1"])
    tokenizer = bench.models.tiny_dllm()[1]  # the denoiser's tokenizer, as bench.build("tiny") makes it
    assert [len(texts) for texts in scored] == [1, 4, 8] and len(denoised) == 3
    for texts, rows in zip(scored, denoised):
        assert all(len(row) == bench.PROMPT_TOKENS for row in rows)
        assert [tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts] == rows
        # its predicted peak is what `run.py --dry-run --batch-size B` prints for these prompts (3 digits)
        B = len(texts)
        shapes = figures["shapes"]
        config = bench.SamplingConfig(K=shapes["K"], max_new_tokens=shapes["L"], M=shapes["M"], T=shapes["T"])
        plan = bench.run.make_plan("tiny", "tiny", texts, config)
        printed = next(line for line in bench.run.describe_plan(plan, torch.float32, batch=B) if "peak memory" in line)
        assert f"{figures['predicted_peak_bytes'][B] / 2**30:.3g} GiB predicted for B = {B} " in printed


def test_gpu_checks_script_runs_every_check_and_writes_its_figures(tmp_path):
    """benchmarks/gpu_checks.sh, tried on the CPU as its header says (SHAPE=tiny): both benches run and leave
    their JSON and logs under OUT, with the machine's description, so a GPU session runs it unchanged."""
    import os
    import subprocess
    script = Path(bench.__file__).with_name("gpu_checks.sh")
    env = dict(os.environ, SHAPE="tiny", REPEAT="1", OUT=str(tmp_path / "out"), PYTHON=sys.executable)
    done = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["machine.txt", "step.json", "step.log", "throughput.json",
                                                      "throughput.log"]
    assert f"torch {torch.__version__}" in (out / "machine.txt").read_text()
    step, throughput = (json.loads((out / name).read_text()) for name in ("step.json", "throughput.json"))
    assert step["shapes"]["shape"] == throughput["shapes"]["shape"] == "tiny"
    assert step["shapes"]["repeat"] == throughput["shapes"]["repeat"] == 1
    assert "filter_share" in step and set(throughput["predicted_peak_bytes"]) == {"1", "4", "8"}
    assert "B = 8 / B = 1" in (out / "throughput.log").read_text()
