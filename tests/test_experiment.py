"""Tests of `run.py --prompts`: the paper's experiment, many prompts per model load.

What they prove, on the tiny seeded models on the CPU (tiny T, L, K, so each run takes seconds):

* `rng.CounterRNG` is splitmix64 as written in its docstring (checked against a pure-Python
  reference), its numbers for one prompt do not depend on the other prompts drawn with it,
  and `entrgi.uniform` with a torch.Generator is exactly torch.rand (the single-run path);
* batch invariance: B = 1, 2, 3 give the same records -- the same tokens, texts and best
  response bit for bit; the rewards and the mean entropy weight agree to 1e-5 (float32
  sums over a batch of left-padded rows differ in the last bits, in the denoiser and the
  reward model, docs/outputs.md); a 2-process torchrun (gloo) run merges into the
  same records;
* prompts files as editors write them (a UTF-8 BOM, CRLF, blank lines between prompts and
  after the last) read as plain ones, in both formats, with line numbers counting blank lines;
* every bad prompts file (not JSON, not an object, no / an empty / a non-string prompt, a
  bad or duplicate id, a prompt beyond the context, no prompt at all, only blank lines, a
  wrong suffix) and every bad experiment option is one `error:` line naming the line, exit
  2, before any weight loads, with nothing written;
* resume: a run killed with SIGKILL before its first record or after it, and a directory whose last line
  is torn, end after `--resume` with exactly the records of an uninterrupted run (none
  missing, none twice, no torn line); resuming under other settings (the error names them,
  old -> new), reusing a non-empty directory without --resume, or a second run on a
  directory whose lock is held, is a one-line error that leaves the directory as it was;
* Ctrl-C (injected mid-run, or SIGINT to the process group as a terminal sends it, alone and
  under torchrun): exit 130 and one line saying how many records are kept and to go on with
  --resume, which then ends with the uninterrupted run's records; a --prompt run says nothing
  was written;
* summary.json's means, bootstrap intervals and paired differences to bon follow from
  records.jsonl (recomputed here with the documented bootstrap), and --eval-reward-model
  scores every response with the second model (here the same tiny model: the same scores);
* the paper's aggregation: per seed the mean over its prompts, then mean and standard error
  over seeds, recomputed here with `statistics`; the printed table fits 100 columns, explains
  n, and shows the eval model's columns only when it differs from the guiding model; the plot's
  bars and error bars, read back from matplotlib's artists, are the summary's numbers (and
  summary.plot.json holds them); the published Top@1 is drawn only for the paper's
  configuration; `--report` merges run directories from their records of the run's methods and
  seeds, and refuses --dry-run and files this program did not write with one line;
* every output file gets the umask's mode; a resumed finished run says nothing is left and
  loads no model; --method in an experiment run is refused (it takes --methods).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import entrgi  # noqa: E402
import experiment  # noqa: E402
import rng  # noqa: E402
import replicas  # noqa: E402
import run  # noqa: E402
import summaries  # noqa: E402

ROOT = Path(run.__file__).resolve().parent
PROMPTS = [  # different lengths, so batches are left-padded
    {"prompt": "Write a short poem about the sea.", "id": "sea", "topic": "poetry"},
    {"prompt": "Explain why the sky is blue, in two sentences or three."},
    {"prompt": "Why?", "id": 7},
]
BASE = ["--dllm", "tiny", "--reward-model", "tiny", "--device", "cpu", "--T", "4", "--max-new-tokens", "6", "--K", "2",
        "--no-progress"]
TINY = BASE + ["--methods", "entrgi,bon", "--seeds", "0", "--eval-reward-model", "tiny"]
EXACT = ("id", "prompt", "fields", "method", "seed", "fingerprint", "responses", "response_tokens", "best_response")
FLOATS = ("mean_entropy_weight", "rewards", "token_rewards", "eval_rewards", "top1_reward", "avgN_reward", "eval_top1_reward",
          "eval_avgN_reward")


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    replicas.hub_offline(monkeypatch)


def env() -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def write_prompts(path: Path, items=PROMPTS) -> Path:
    path.write_text("".join(json.dumps(item) + "\n" for item in items))
    return path


def experiment_run(prompts: Path, out: Path, *extra: str) -> int:
    return run.main(["--prompts", str(prompts), "--output-dir", str(out), *TINY, *extra])


def records(out: Path) -> list[dict]:
    text = (out / "records.jsonl").read_text()
    assert text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


def assert_same_records(these: list[dict], those: list[dict], exact_floats: bool) -> None:
    """Same keys in the same order; EXACT fields equal; FLOATS equal (or to 1e-5: batch effects)."""
    assert [experiment.record_key(r) for r in these] == [experiment.record_key(r) for r in those]
    for a, b in zip(these, those):
        assert {k: a[k] for k in EXACT} == {k: b[k] for k in EXACT}
        for name in FLOATS:
            if exact_floats:
                assert a[name] == b[name], name
            else:
                assert (a[name] is None) == (b[name] is None), name  # (bon has no entropy weight)
                if a[name] is not None:
                    assert torch.allclose(torch.tensor(a[name]), torch.tensor(b[name]), rtol=0, atol=1e-5), name


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The experiment at B = 1, 2, 3 (one model load each), in-process: {B: output directory}."""
    root = tmp_path_factory.mktemp("runs")
    prompts = write_prompts(root / "prompts.jsonl")
    outs = {}
    for B in (1, 2, 3):
        outs[B] = root / f"B{B}"
        assert experiment_run(prompts, outs[B], "--batch-size", str(B)) == 0
    return prompts, outs


# --------------------------------------------------------------------------- the random streams


def reference_uniform(key: int, counter: int, j: int) -> float:
    """rng.CounterRNG's formula in Python integers (unsigned 64-bit arithmetic)."""
    mask, golden = (1 << 64) - 1, 0x9E3779B97F4A7C15

    def mix(x):
        x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & mask
        x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & mask
        return x ^ (x >> 31)

    stream = mix((key + counter * golden) & mask)
    return (mix((stream + (j + 1) * golden) & mask) >> 40) / 2**24


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**64 - 1), names=st.lists(st.text(max_size=5), min_size=1, max_size=4, unique=True),
       K=st.integers(1, 3), width=st.integers(1, 4), draws=st.integers(1, 3))
def test_counter_rng_is_its_formula_and_per_prompt(seed, names, K, width, draws):
    keys = [rng.stream_key(seed, name) for name in names]
    together = rng.CounterRNG(torch.tensor(keys))
    alone = [rng.CounterRNG(torch.tensor([key])) for key in keys]
    for c in range(1, draws + 1):
        u = entrgi.uniform((len(keys) * K, width), together)  # (B K, width)
        assert u.dtype == torch.float32 and 0 <= u.min() and u.max() < 1
        for b, key in enumerate(keys):
            block = u[b * K:(b + 1) * K]  # (K, width)
            assert torch.equal(block, alone[b].uniform((K, width)))  # not depending on the other prompts
            assert block.flatten().tolist() == [reference_uniform(key % 2**64, c, j) for j in range(K * width)]


def test_uniform_with_a_torch_generator_is_torch_rand():
    a = entrgi.uniform((3, 5), torch.Generator().manual_seed(11))
    assert torch.equal(a, torch.rand((3, 5), generator=torch.Generator().manual_seed(11)))


def test_counter_rng_is_uniform():
    u = rng.CounterRNG(torch.tensor([rng.stream_key(0, "a"), rng.stream_key(0, "b")])).uniform((2, 50_000))
    counts = torch.histc(u, bins=10, min=0, max=1)  # 10,000 expected per bin
    chi2 = ((counts - 10_000) ** 2 / 10_000).sum().item()
    assert chi2 < 40  # 9 degrees of freedom: P(chi2 > 40) < 1e-5


# --------------------------------------------------------------------------- batch invariance


def test_records_do_not_depend_on_the_batch_size(runs):
    _, outs = runs
    one = records(outs[1])
    assert len(one) == len(PROMPTS) * 2
    for B in (2, 3):
        assert_same_records(records(outs[B]), one, exact_floats=False)


def test_two_processes_equal_one(runs, tmp_path):
    """torchrun with 2 gloo processes on the CPU: each writes its shard, rank 0 merges."""
    prompts, outs = runs
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "ddp"
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--master_port", str(port), str(ROOT / "run.py"), "--prompts", str(prompts),
                           "--output-dir", str(out), "--batch-size", "2", *TINY],
                          env=env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == [".lock", "config.json", "records.jsonl", "summary.json",
                                                   "summary.md", "summary.plot.json", "summary.png"]
    assert_same_records(records(out), records(outs[2]), exact_floats=False)
    assert json.loads((out / "config.json").read_text())["processes"] == 2


# --------------------------------------------------------------------------- records and summary


def test_records_carry_the_prompt_the_result_and_the_cost(runs):
    _, outs = runs
    for record in records(outs[2]):
        assert len(record["responses"]) == len(record["rewards"]) == 2
        assert record["top1_reward"] == max(record["rewards"])
        assert record["best_response"] == record["responses"][record["rewards"].index(max(record["rewards"]))]
        assert record["eval_rewards"] == record["rewards"]  # the eval model is the same tiny model here
        assert (record["mean_entropy_weight"] is None) == (record["method"] == "bon")
        cost = record["cost"]
        assert cost["denoiser_forwards"] == 4  # T, shared by the batch
        assert cost["reward_forward_backward"] == (4 * 3 if record["method"] == "entrgi" else 0)  # T x M
        assert cost["reward_forwards"] == 3 and cost["wall_seconds"] > 0 and cost["peak_memory_bytes"] > 0
    first = records(outs[2])[0]
    assert (first["id"], first["fields"]) == ("sea", {"topic": "poetry"})
    config = json.loads((outs[2] / "config.json").read_text())
    assert config["versions"]["torch"] == torch.__version__ and config["settings"]["sampling"]["T"] == 4


def bootstrap_again(values: list[float]) -> tuple[float, list[float]]:
    """The module docstring's bootstrap, written out again."""
    x = torch.tensor(values, dtype=torch.float64)
    index = torch.randint(len(x), (10_000, len(x)), generator=torch.Generator().manual_seed(0))
    means = x[index].mean(1)
    return x.mean().item(), [torch.quantile(means, q).item() for q in (0.025, 0.975)]


def test_summary_follows_from_the_records(runs, capsys):
    _, outs = runs
    rows = records(outs[1])
    summary = json.loads((outs[1] / "summary.json").read_text())["methods"]
    bon = {(r["id"], r["seed"]): r for r in rows if r["method"] == "bon"}
    for method in ("entrgi", "bon"):
        mine = [r for r in rows if r["method"] == method]
        for metric in ("top1_reward", "avgN_reward", "eval_top1_reward"):
            mean, ci = bootstrap_again([r[metric] for r in mine])
            assert summary[method][metric]["mean"] == pytest.approx(mean, abs=1e-12)
            assert summary[method][metric]["ci95"] == pytest.approx(ci, abs=1e-12)
            assert ci[0] <= mean <= ci[1]
    diff = [r["top1_reward"] - bon[(r["id"], r["seed"])]["top1_reward"] for r in rows if r["method"] == "entrgi"]
    mean, ci = bootstrap_again(diff)
    assert summary["entrgi"]["minus_bon"]["top1_reward"]["mean"] == pytest.approx(mean, abs=1e-12)
    assert summary["entrgi"]["minus_bon"]["top1_reward"]["ci95"] == pytest.approx(ci, abs=1e-12)
    assert "minus_bon" not in summary["bon"]
    table = experiment.table(summary)
    assert "eval Top@1" in table and f"{summary['entrgi']['top1_reward']['mean']:+.3f}" in table


# --------------------------------------------------------------------------- resume


@pytest.mark.parametrize("moment", ["config written", "first record"])
def test_resume_after_sigkill(moment, runs, tmp_path):
    """SIGKILL once config.json is written (before any record: models loading, first batch running) or once the
    first record is on disk, then --resume: the records of the uninterrupted run."""
    prompts, outs = runs
    out = tmp_path / "killed"
    child = subprocess.Popen([sys.executable, str(ROOT / "run.py"), "--prompts", str(prompts), "--output-dir",
                              str(out), "--batch-size", "1", *TINY], env=env(),
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    target = out / "records.jsonl"
    trigger = out / "config.json" if moment == "config written" else target
    deadline = time.time() + 300
    while time.time() < deadline and child.poll() is None and not (trigger.exists() and trigger.read_bytes()):
        time.sleep(0.02)
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert child.returncode == -signal.SIGKILL, child.stderr.read().decode()[-2000:]
    written = target.read_bytes() if target.exists() else b""
    assert written.count(b"\n") < len(PROMPTS) * 2  # killed mid-run (the last line may be torn)
    assert experiment_run(prompts, out, "--batch-size", "1", "--resume") == 0
    assert_same_records(records(out), records(outs[1]), exact_floats=True)


def test_resume_drops_a_torn_last_line(runs, tmp_path):
    prompts, outs = runs
    out = tmp_path / "torn"
    shutil.copytree(outs[2], out)
    lines = (out / "records.jsonl").read_bytes().split(b"\n")[:-1]
    torn = b"\n".join(lines[:-2]) + b"\n" + lines[-2][: len(lines[-2]) // 2]  # last record gone, one torn
    (out / "records.jsonl").write_bytes(torn)
    (out / "summary.json").unlink()
    assert experiment_run(prompts, out, "--batch-size", "2", "--resume") == 0
    assert_same_records(records(out), records(outs[2]), exact_floats=False)


def test_resume_under_other_settings_is_refused(runs, tmp_path, capsys):
    prompts, outs = runs
    out = tmp_path / "other"
    shutil.copytree(outs[2], out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    capsys.readouterr()
    assert experiment_run(prompts, out, "--resume", "--temperature", "0.9", "--top-k", "5") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: --resume:") and "other settings" in err
    assert "other settings: --temperature 0.7 -> 0.9, --top-k None -> 5 (fingerprint " in err, err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert experiment_run(prompts, out) == 2  # no --resume
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not empty" in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_a_second_run_on_a_directory_in_use_is_refused(runs, tmp_path, capsys, monkeypatch):
    """While a run holds DIR's lock (taken here as another process would, fcntl.flock on DIR/.lock), a second
    run on DIR -- resumed or new -- is one error line, exit 2, before any model loads, DIR unchanged; the lock
    is free again when its holder lets go (the kernel frees it at any exit, kill -9 included: see
    test_resume_after_sigkill)."""
    import fcntl

    prompts, outs = runs
    out = tmp_path / "busy"
    shutil.copytree(outs[1], out)
    (out / "summary.json").unlink()
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    monkeypatch.setattr(run, "load", lambda *a: pytest.fail("models loaded"))
    capsys.readouterr()
    with open(out / ".lock", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert experiment_run(prompts, out, "--resume", "--batch-size", "1") == 2
        err = capsys.readouterr().err
        assert err == f"error: --output-dir {out} is in use by another run (it holds {out / '.lock'}); " \
                      "wait for that run to end\n"
        assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert experiment_run(prompts, out, "--resume", "--batch-size", "1", "--no-progress") == 0  # free again
    assert experiment_run(prompts, out, "--resume", "--batch-size", "1", "--no-progress") == 0  # and released
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / ".lock").touch()
    with open(fresh / ".lock", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert experiment_run(prompts, fresh) == 2 and "in use by another run" in capsys.readouterr().err
    assert [p.name for p in fresh.iterdir()] == [".lock"]


def test_resume_of_a_complete_run_changes_no_record(runs, tmp_path, capsys, monkeypatch):
    """--resume of a finished run: no record changes, no model loads, no empty progress bar ('0record'); one line
    says that nothing is left to do and where the summary is, which is written again (here it was lost)."""
    prompts, outs = runs
    out = tmp_path / "again"
    shutil.copytree(outs[3], out)
    (out / "summary.json").unlink()
    monkeypatch.setattr(run, "load", lambda *a: pytest.fail("models loaded with nothing left to do"))
    capsys.readouterr()
    assert experiment_run(prompts, out, "--resume", "--batch-size", "2", "--no-progress") == 0
    assert records(out) == records(outs[3])
    assert json.loads((out / "summary.json").read_text()) == json.loads((outs[3] / "summary.json").read_text())
    assert capsys.readouterr().err == (f"--resume: nothing left to do: {out} holds all {len(PROMPTS) * 2} records; "
                                       f"the summary is in {out / 'summary.json'}\n")
    done = subprocess.run([sys.executable, str(ROOT / "run.py"), "--prompts", str(prompts), "--output-dir", str(out),
                           *TINY, "--resume"], env=env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and "record" not in done.stderr.replace("all 6 records", ""), done.stderr


# --------------------------------------------------------------------------- Ctrl-C


def interrupt_on_call(monkeypatch, n: int) -> None:
    """run.generate_batch raises KeyboardInterrupt (Ctrl-C) on its n-th call, as if it came mid-batch."""
    real, calls = run.generate_batch, []

    def generate_batch(*args, **kwargs):
        calls.append(1)
        if len(calls) == n:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(run, "generate_batch", generate_batch)


def interrupted_main(argv: list[str]) -> int:
    try:
        return run.main(argv)
    except KeyboardInterrupt:
        pytest.fail("Ctrl-C went through run.main (a traceback for the user)")


def test_ctrl_c_keeps_the_records_and_says_how_to_go_on(runs, tmp_path, capsys, monkeypatch):
    """Ctrl-C in the third batch (B = 1): exit 130, one line naming the 2 records kept and --resume; the resumed
    run ends with the uninterrupted run's records."""
    prompts, outs = runs
    out = tmp_path / "ctrl-c"
    interrupt_on_call(monkeypatch, 3)
    capsys.readouterr()
    assert interrupted_main(["--prompts", str(prompts), "--output-dir", str(out), *TINY, "--batch-size", "1"]) == 130
    assert capsys.readouterr().err == \
        f"interrupted: 2 complete records kept in {out}; to go on, run the same command with --resume\n"
    monkeypatch.undo()
    assert experiment_run(prompts, out, "--batch-size", "1", "--resume") == 0
    assert_same_records(records(out), records(outs[1]), exact_floats=True)


def test_ctrl_c_of_a_single_prompt(tmp_path, capsys, monkeypatch):
    interrupt_on_call(monkeypatch, 1)
    status = interrupted_main(["--prompt", "Hi", *BASE, "--output", str(tmp_path / "x.json")])
    assert status == 130 and not (tmp_path / "x.json").exists()
    assert capsys.readouterr().err == \
        "interrupted: nothing written (a --prompt run writes its result only at its end); run it again\n"


def wait_for_a_record(out: Path, child: subprocess.Popen) -> None:
    deadline = time.time() + 300
    while time.time() < deadline and child.poll() is None and not any(
            p.name.startswith("records") and p.stat().st_size for p in (out.iterdir() if out.is_dir() else [])):
        time.sleep(0.05)


@pytest.mark.parametrize("processes", [1, 2])
def test_ctrl_c_as_a_terminal_sends_it(processes, runs, tmp_path):
    """SIGINT to the whole process group, as a terminal's Ctrl-C, once a record is on disk: the run's processes
    print one line (rank 0) and no traceback; one process exits 130. Under torchrun the launcher itself reports
    the signal (its own SignalException, exit 1: not this program's output)."""
    prompts, _ = runs
    out = tmp_path / "sigint"
    launcher = [sys.executable]
    if processes == 2:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        launcher += ["-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port)]
    child = subprocess.Popen([*launcher, str(ROOT / "run.py"), "--prompts", str(prompts), "--output-dir", str(out),
                              "--batch-size", "1", *TINY, "--T", "64", "--max-new-tokens", "64"],
                             env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             start_new_session=True)
    wait_for_a_record(out, child)
    os.killpg(child.pid, signal.SIGINT)
    _, err = child.communicate(timeout=300)
    ours = [line for line in err.splitlines() if line.startswith("interrupted: ")]
    assert len(ours) == 1 and ours[0].endswith(f"kept in {out}; to go on, run the same command with --resume"), err
    assert "KeyboardInterrupt" not in err and f'File "{ROOT}' not in err, err  # no traceback through this program
    if processes == 1:
        assert child.returncode == 130 and err == ours[0] + "\n", err


# --------------------------------------------------------------------------- file modes


@pytest.fixture
def umask():
    """Set the process's umask for a test (put back after it)."""
    before = os.umask(0o022)
    yield os.umask
    os.umask(before)


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002, 0o027])
def test_json_files_get_the_mode_open_gives(mask, umask, tmp_path):
    """write_json_atomically's file has the mode of a file open() creates under the same umask (not mkstemp's 0600)."""
    umask(mask)
    run.write_json_atomically(tmp_path / "a.json", {"x": 1})
    with open(tmp_path / "plain", "w"):
        pass
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == (tmp_path / "plain").stat().st_mode & 0o777 == 0o666 & ~mask
    assert json.loads((tmp_path / "a.json").read_text()) == {"x": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "plain"]


def test_every_output_file_gets_the_umasks_mode(umask, tmp_path, capsys):
    """Under umask 027: records.jsonl, config.json, the summary files and a --prompt run's --output are all 0640."""
    umask(0o027)
    out = tmp_path / "out"
    assert run.main(["--prompts", str(write_prompts(tmp_path / "p.jsonl", PROMPTS[2:])), "--output-dir", str(out),
                     *BASE, "--methods", "bon"]) == 0
    assert run.main(["--prompt", "Hi", *BASE, "--method", "bon", "--output", str(tmp_path / "one.json")]) == 0
    modes = {p.name: p.stat().st_mode & 0o777 for p in [*out.iterdir(), tmp_path / "one.json"]}
    assert modes == {name: 0o640 for name in ["records.jsonl", "config.json", "summary.json", "summary.md",
                                              "summary.png", "summary.plot.json", "one.json", ".lock"]}


# --------------------------------------------------------------------------- bad input


BAD_FILES = {
    "not JSON": ('{"prompt": "a"}\n{"prompt": \n', ".jsonl", "line 2: not JSON"),
    "not an object": ('{"prompt": "a"}\n["b"]\n', ".jsonl", "line 2: expected a JSON object"),
    "no prompt": ('{"id": 1}\n', ".jsonl", "line 1: no \"prompt\" field"),
    "empty prompt": ('{"prompt": "a"}\n{"prompt": "  "}\n', ".jsonl", "line 2: the prompt is empty"),
    "prompt not a string": ('{"prompt": 3}\n', ".jsonl", "line 1: the prompt is not a string"),
    "bad id": ('{"prompt": "a", "id": [1]}\n', ".jsonl", "line 1: the id must be"),
    "duplicate id": ('{"prompt": "a", "id": "x"}\n{"prompt": "b"}\n{"prompt": "c", "id": "x"}\n', ".jsonl",
                     "line 3: duplicate id 'x' (first on line 1)"),
    "id equal to a line number": ('{"prompt": "a", "id": 2}\n{"prompt": "b"}\n', ".jsonl", "line 2: duplicate id 2"),
    "bad line after blank lines": ('\n{"prompt": "a"}\n \n\n{"prompt": \n', ".jsonl", "line 5: not JSON"),
    "empty prompt after a BOM and CRLF": ('\ufeff{"prompt": "a"}\r\n\r\n{"prompt": ""}\r\n', ".jsonl",
                                          "line 3: the prompt is empty"),
    "only blank lines": ("\n  \n\t\n", ".txt", "holds no prompt"),
    "too long": ('{"prompt": "a"}\n' + json.dumps({"prompt": "the sea " * 300}) + "\n", ".jsonl",
                 "line 2: prompt ("),
    "no prompt at all": ("", ".txt", "holds no prompt"),
    "wrong suffix": ("a\n", ".csv", "expected a .jsonl or .txt file"),
}


EDITED = ["Write a poem.", "Ünïcödé, 東京 🙂", "Why?"]


@pytest.mark.parametrize("suffix", [".jsonl", ".txt"])
@pytest.mark.parametrize("bom", [False, True], ids=["no BOM", "BOM"])
@pytest.mark.parametrize("newline", ["\n", "\r\n"], ids=["LF", "CRLF"])
@pytest.mark.parametrize("blank", ["none", "interior", "trailing", "both"])
def test_prompts_files_as_editors_write_them(suffix, bom, newline, blank, tmp_path):
    """A byte-order mark, CRLF line ends and blank lines (empty or whitespace only, between prompts or after the
    last) are read as a plain file: the same prompts, no BOM in the first; a .txt prompt's id still counts every
    line, blank ones too."""
    lines = [json.dumps({"prompt": p}, ensure_ascii=False) if suffix == ".jsonl" else p for p in EDITED]
    if blank in ("interior", "both"):
        lines = [lines[0], "", " \t", lines[1], lines[2]]
    if blank in ("trailing", "both"):
        lines += ["", "  "]
    path = tmp_path / f"p{suffix}"
    path.write_bytes((("\ufeff" if bom else "") + newline.join(lines) + newline).encode())
    prompts = experiment.read_prompts(str(path))
    assert [p.text for p in prompts] == EDITED
    if suffix == ".txt":
        assert [p.id for p in prompts] == ([1, 4, 5] if blank in ("interior", "both") else [1, 2, 3])


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_prompts_file(case, tmp_path, capsys, monkeypatch):
    text, suffix, words = BAD_FILES[case]
    path = tmp_path / f"prompts{suffix}"
    path.write_bytes(text.encode())  # as written: CRLF stays CRLF
    monkeypatch.setattr(run, "load", lambda *a: pytest.fail("weights loaded before the file was checked"))
    out = tmp_path / "out"
    assert run.main(["--prompts", str(path), "--output-dir", str(out), *TINY]) == 2
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and captured.err.startswith("error: ") and words in captured.err, captured.err
    assert not out.exists() and captured.out == ""


@pytest.mark.parametrize("flags, words", [
    (["--output-dir", "{out}", "--methods", "entrgi,foo"], "error: --methods must be one of"),
    (["--output-dir", "{out}", "--methods", "bon,aps", "--temperature", "0"], "error: --methods aps needs --temperature"),
    (["--output-dir", "{out}", "--methods", "bon,bon"], "distinct"),
    (["--output-dir", "{out}", "--seeds", "0,x"], "--seeds must be"),
    (["--output-dir", "{out}", "--seeds", "-1"], "--seeds must be in"),
    (["--output-dir", "{out}", "--batch-size", "0"], "--batch-size must be >= 1"),
    (["--output-dir", "{out}", "--output", "{out}.json"], "is for --prompt runs"),
    ([], "--prompts needs --output-dir"),
])
def test_bad_experiment_options(flags, words, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(run, "load", lambda *a: pytest.fail("weights loaded"))
    prompts = write_prompts(tmp_path / "p.jsonl")
    out = tmp_path / "out"
    argv = ["--prompts", str(prompts), *[f.format(out=out) for f in flags], *BASE]
    assert run.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and words in err, err
    assert not out.exists()


def test_single_run_refuses_experiment_options_and_both_sources(tmp_path, capsys):
    assert run.main(["--prompt", "hi", "--output-dir", str(tmp_path / "o"), "--dllm", "tiny"]) == 2
    assert capsys.readouterr().err == "error: --output-dir is for --prompts runs\n"
    with pytest.raises(SystemExit) as exit_:
        run.main(["--prompt", "hi", "--prompts", "p.txt"])
    assert exit_.value.code == 2 and "not allowed with argument" in capsys.readouterr().err


def test_dry_run_of_a_prompts_file_predicts_the_batch_and_writes_nothing(tmp_path, capsys):
    """--dry-run --prompts: the whole file checked, the plan printed for one batch of B prompts (its predicted
    peak grows with B), exit 0, and no directory or file written."""
    prompts = write_prompts(tmp_path / "prompts.jsonl")
    totals = {}
    for B in (1, 3):
        status = run.main(["--prompts", str(prompts), "--output-dir", str(tmp_path / "out"), *BASE, "--dry-run",
                           "--batch-size", str(B)])
        out, err = capsys.readouterr()
        assert status == 0, err
        assert f"predicted for B = {B} x K = 2" in out and f"prompts       {len(PROMPTS)}, " in out
        totals[B] = float(out.split("peak memory")[1].split("GiB")[0])
    assert totals[3] > totals[1]
    assert not (tmp_path / "out").exists()
    # An eval reward model stays resident: its weights count.
    status = run.main(["--prompts", str(prompts), *BASE, "--dry-run", "--batch-size", "1", "--eval-reward-model", "tiny"])
    out, err = capsys.readouterr()
    assert status == 0, err
    assert float(out.split("peak memory")[1].split("GiB")[0]) > totals[1]


# --------------------------------------------------------------------------- the paper's aggregation and the report


@pytest.fixture(scope="module")
def seeded(tmp_path_factory):
    """Three seeds over the three prompts (the paper's shape in small): the output directory."""
    root = tmp_path_factory.mktemp("seeded")
    out = root / "three-seeds"
    assert run.main(["--prompts", str(write_prompts(root / "p.jsonl")), "--output-dir", str(out), *BASE,
                     "--methods", "entrgi,bon", "--seeds", "1,2,3"]) == 0
    return out


def test_mean_and_standard_error_over_seeds_follow_from_the_records(seeded):
    import statistics

    rows = records(seeded)
    summary = json.loads((seeded / "summary.json").read_text())
    bon = {(r["id"], r["seed"]): r for r in rows if r["method"] == "bon"}
    for method in ("entrgi", "bon"):
        for metric in ("top1_reward", "avgN_reward"):
            got = summary["methods"][method][metric]
            per_seed = [statistics.fmean(r[metric] for r in rows if r["method"] == method and r["seed"] == s)
                        for s in (1, 2, 3)]
            assert got["per_seed"] == pytest.approx({str(s): m for s, m in zip((1, 2, 3), per_seed)}, abs=1e-12)
            assert got["seed_mean"] == pytest.approx(statistics.fmean(per_seed), abs=1e-12)
            assert got["sem"] == pytest.approx(statistics.stdev(per_seed) / 3 ** 0.5, abs=1e-12)
            assert (got["seeds"], got["n"]) == (3, 9)
            mean, ci = bootstrap_again([r[metric] for r in rows if r["method"] == method])
            assert (got["mean"], got["ci95"]) == (pytest.approx(mean, abs=1e-12), pytest.approx(ci, abs=1e-12))
    diffs = [statistics.fmean(r["top1_reward"] - bon[(r["id"], s)]["top1_reward"]
                              for r in rows if r["method"] == "entrgi" and r["seed"] == s) for s in (1, 2, 3)]
    got = summary["methods"]["entrgi"]["minus_bon"]["top1_reward"]
    assert got["seed_mean"] == pytest.approx(statistics.fmean(diffs), abs=1e-12)
    assert got["sem"] == pytest.approx(statistics.stdev(diffs) / 3 ** 0.5, abs=1e-12)
    assert (summary["benchmark"], summary["seeds"]) == ("p", [1, 2, 3])


def test_table_fits_100_columns_explains_n_and_shows_eval_columns_only_when_they_differ(seeded, runs):
    _, outs = runs
    for directory in (seeded, outs[1]):
        summary = json.loads((directory / "summary.json").read_text())
        text = summaries.text_table(summary)
        assert max(map(len, text.splitlines())) <= 100 and "n: records (prompts x seeds)" in text
    same = json.loads((outs[1] / "summary.json").read_text())  # eval model "tiny" = the guiding "tiny"
    assert not same["eval_columns"] and "eval" not in summaries.text_table(same)
    wide = experiment.table(same["methods"], eval_columns=True)  # what a different eval model adds
    assert "eval Top@1" in wide and "eval Avg@N" in wide and max(map(len, wide.splitlines())) <= 100
    config = {"settings": {"reward_model": "a", "eval_reward_model": "b"}}
    assert summaries.eval_differs(config) and not summaries.eval_differs({"settings": {"reward_model": "a"}})
    md = (seeded / "summary.md").read_text()
    top1 = json.loads((seeded / "summary.json").read_text())["methods"]["entrgi"]["top1_reward"]
    assert f"| entrgi | 9 (3 seeds) | {top1['seed_mean']:+.3f} ± {top1['sem']:.3f} |" in md


def bar_series(ax) -> list:
    from matplotlib.container import BarContainer

    return [c for c in ax.containers if isinstance(c, BarContainer)]


def bars(ax) -> tuple[list[float], list[tuple[float, float]]]:
    """The first bar series of an axis: heights, and each error bar's (bottom, top) as drawn."""
    container = bar_series(ax)[0]
    heights = [patch.get_height() for patch in container.patches]
    segments = container.errorbar.lines[2][0].get_segments()
    return heights, [(float(s[0][1]), float(s[1][1])) for s in segments]


def test_plot_draws_the_summary(seeded):
    summary = json.loads((seeded / "summary.json").read_text())
    assert (seeded / "summary.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    figure, panels = summaries.plot([summary])
    assert json.loads((seeded / "summary.plot.json").read_text()) == panels
    for ax, panel in zip(figure.axes, panels):
        heights, errors = bars(ax)
        stats = [summary["methods"][m][panel["metric"]] for m in ("entrgi", "bon")]
        assert panel["methods"] == ["entrgi", "bon"] and panel["error"] == "standard error over seeds"
        assert heights == pytest.approx([s["seed_mean"] for s in stats], abs=1e-12)
        drawn = [v for pair in errors for v in pair]
        assert drawn == pytest.approx([v for s in stats for v in (s["seed_mean"] - s["sem"], s["seed_mean"] + s["sem"])],
                                      abs=1e-9)
        assert len(bar_series(ax)) == 1  # no published bars: not the paper's configuration


def test_published_top1_is_drawn_for_the_papers_configuration():
    import dataclasses as dc

    from sampler import SamplingConfig

    config = {"benchmark": "judgebench", "methods": ["entrgi", "bon"], "seeds": [1, 2, 3],
              "dataset": {"name": "judgebench", "kind": "hub", "path": "ScalerLab/JudgeBench", "split": "gpt",
                          "prompt_field": "question", "subset_size": 64, "subset_field": None, "subset_seed": None},
              "settings": {"sampling": {k: v for k, v in dc.asdict(SamplingConfig()).items() if k != "method"},
                           "dllm": "Dream-org/Dream-v0-Instruct-7B",
                           "reward_model": "Skywork/Skywork-Reward-V2-Qwen3-1.7B", "dtype": "bfloat16"}}
    rows = [{"id": i, "seed": s, "method": m, "top1_reward": i + s + (m == "entrgi"), "avgN_reward": i - s}
            for i in range(4) for s in (1, 2, 3) for m in ("entrgi", "bon")]
    summary = summaries.benchmark_summary(config, rows)
    assert summary["published_top1"] == {"entrgi": 2.44, "bon": 1.65}
    figure, panels = summaries.plot([summary])
    top1 = figure.axes[0]
    assert [p.get_height() for p in bar_series(top1)[1].patches] == [2.44, 1.65]
    assert len(bar_series(figure.axes[1])) == 1  # Avg@N has no published figure
    assert "| entrgi | 12 (3 seeds) |" in summaries.markdown([summary]) and "published Top@1" in summaries.markdown(
        [summary])
    other = {**config, "settings": {**config["settings"], "sampling": {**config["settings"]["sampling"], "T": 64}}}
    assert summaries.benchmark_summary(other, rows)["published_top1"] is None
    assert summaries.benchmark_summary({**config, "seeds": [0, 1, 2]}, rows)["published_top1"] is None  # not its seeds
    float32 = {**config, "settings": {**config["settings"], "dtype": "float32"}}
    assert summaries.benchmark_summary(float32, rows)["published_top1"] is None  # not the authors' bfloat16


def test_report_merges_run_directories(seeded, runs, tmp_path, capsys):
    _, outs = runs
    second = tmp_path / "second"
    shutil.copytree(outs[1], second)
    config = json.loads((second / "config.json").read_text())
    (second / "config.json").write_text(json.dumps({**config, "benchmark": "second"}))
    (second / "summary.json").unlink()  # the report reads records, not summaries
    report = tmp_path / "report"
    capsys.readouterr()
    assert run.main(["--report", str(seeded), str(second), "--output-dir", str(report)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("p (18 records") and "\nsecond (6 records" in out
    merged = json.loads((report / "summary.json").read_text())["benchmarks"]
    assert list(merged) == ["p", "second"]
    assert merged["p"]["methods"] == json.loads((seeded / "summary.json").read_text())["methods"]
    assert "## p" in (report / "summary.md").read_text() and "## second" in (report / "summary.md").read_text()
    assert len(json.loads((report / "summary.plot.json").read_text())) == 4  # 2 benchmarks x (Top@1, Avg@N)
    assert run.main(["--report", str(seeded), str(seeded), "--output-dir", str(tmp_path / "r2")]) == 2
    assert "two directories hold the benchmark 'p'" in capsys.readouterr().err and not (tmp_path / "r2").exists()
    assert run.main(["--report", str(tmp_path), "--output-dir", str(tmp_path / "r3")]) == 2
    assert "not a run directory" in capsys.readouterr().err and not (tmp_path / "r3").exists()
    before = (second / "config.json").read_bytes()
    assert run.main(["--report", str(seeded), "--output-dir", str(second)]) == 2  # a run's own directory
    assert "holds a run" in capsys.readouterr().err and not (second / "summary.json").exists()
    assert (second / "config.json").read_bytes() == before


def test_report_refuses_dry_run_and_foreign_directories(seeded, tmp_path, capsys):
    """--report --dry-run writes nothing (it is refused); a config.json or a record this program did not write
    is one error line, not a traceback; records outside the run's methods and seeds are not summarised."""
    capsys.readouterr()
    assert run.main(["--report", str(seeded), "--output-dir", str(tmp_path / "r"), "--dry-run"]) == 2
    assert "--dry-run is not for --report" in capsys.readouterr().err and not (tmp_path / "r").exists()
    assert run.main(["--report", str(seeded), "--output-dir", str(tmp_path / "r"), "--K", "9"]) == 2
    assert "--K is not for --report" in capsys.readouterr().err and not (tmp_path / "r").exists()
    config = json.loads((seeded / "config.json").read_text())
    foreign = [("list", [], None), ("no top1", None, "top1_reward"), ("dataset str", {**config, "dataset": "x"}, None),
               ("settings list", {**config, "settings": []}, None), ("methods nested", {**config, "methods": [["a"]]}, None),
               ("seeds dicts", {**config, "seeds": [{}]}, None)]
    for name, config, record in foreign:
        broken = tmp_path / name
        shutil.copytree(seeded, broken)
        if config is not None:
            (broken / "config.json").write_text(json.dumps(config))
        if record is not None:
            rows = [json.loads(line) for line in (broken / "records.jsonl").read_text().splitlines()]
            del rows[0][record]
            (broken / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        assert run.main(["--report", str(broken)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: --report ") and len(err.splitlines()) == 1
    extra = tmp_path / "extra"
    shutil.copytree(seeded, extra)
    rows = [json.loads(line) for line in (extra / "records.jsonl").read_text().splitlines()]
    stray = {**rows[0], "seed": 99, "top1_reward": 1e6, "avgN_reward": 1e6}  # a seed the run does not have
    (extra / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [*rows, stray]))
    assert run.main(["--report", str(extra), "--output-dir", str(tmp_path / "r4")]) == 0
    assert json.loads((tmp_path / "r4" / "summary.json").read_text())["benchmarks"]["p"]["methods"] == \
        json.loads((seeded / "summary.json").read_text())["methods"]


def test_method_is_refused_in_experiment_runs(tmp_path, capsys):
    prompts = write_prompts(tmp_path / "p.jsonl", PROMPTS[:1])
    assert run.main(["--prompts", str(prompts), "--method", "bon", "--dry-run", *BASE]) == 2
    assert capsys.readouterr().err == \
        "error: --method is for --prompt runs (--prompts and --dataset runs take --methods)\n"
