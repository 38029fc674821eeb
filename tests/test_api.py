"""Tests of api.Session: the models load once, and its records are the CLI's, bit for bit.

On the tiny seeded models on the CPU: `run.py --prompts` (which runs on `Session.run`) and
`Session.generate` over the same prompts, methods, seeds and batch size give equal records --
every field but the batch's measured cost (wall time, memory), floats compared with ==; strings
become prompts with their list index as id; bad settings and prompts too long for the models
fail before any generation; and two calls share one load of the weights.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import api  # noqa: E402
import experiment  # noqa: E402
import replicas  # noqa: E402
import run  # noqa: E402
from models import UsageError  # noqa: E402

PROMPTS = [{"prompt": "Write a short poem about the sea.", "id": "sea", "topic": "poetry"},
           {"prompt": "Explain why the sky is blue, in two sentences or three."},
           {"prompt": "Why?", "id": 7}]
SAMPLING = {"K": 2, "T": 4, "max_new_tokens": 6}


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    replicas.hub_offline(monkeypatch)


@pytest.fixture(scope="module")
def session():
    return api.Session("tiny", "tiny", eval_reward_model="tiny", device="cpu")


def without_cost(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "cost"} for r in records]


def test_api_records_equal_the_cli_records_bit_for_bit(session, tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in PROMPTS))
    out = tmp_path / "out"
    assert run.main(["--prompts", str(path), "--output-dir", str(out), "--dllm", "tiny", "--reward-model", "tiny",
                     "--eval-reward-model", "tiny", "--device", "cpu", "--T", "4", "--max-new-tokens", "6", "--K", "2",
                     "--methods", "entrgi,bon", "--seeds", "5", "--batch-size", "2", "--no-progress"]) == 0
    cli = {experiment.record_key(r): r for r in map(json.loads, (out / "records.jsonl").read_text().splitlines())}
    prompts = experiment.read_prompts(str(path))
    mine = []
    for method in ("entrgi", "bon"):
        mine += session.generate(prompts, method=method, seeds=[5], batch_size=2, **SAMPLING)
    assert len(mine) == len(cli) == 6
    assert without_cost(mine) == without_cost([cli[experiment.record_key(r)] for r in mine])
    assert [experiment.record_key(r) for r in mine[:3]] == [(p.key, "entrgi", 5) for p in prompts]
    two = session.generate(prompts[:1], method="bon", seeds=[5, 0], **SAMPLING)  # prompts in order, then seeds
    assert [experiment.record_key(r) for r in two] == [(prompts[0].key, "bon", 5), (prompts[0].key, "bon", 0)]


def test_strings_are_prompts_with_their_index_as_id(session):
    records = session.generate(["Why?", "Say hello."], method="aps", seeds=[3], **SAMPLING)
    assert [(r["id"], r["prompt"], r["fields"], r["method"], r["seed"]) for r in records] == [
        (0, "Why?", {}, "aps", 3), (1, "Say hello.", {}, "aps", 3)]
    assert all(len(r["responses"]) == 2 and r["top1_reward"] == max(r["rewards"]) for r in records)


def test_bad_settings_fail_before_any_work(session, monkeypatch):
    monkeypatch.setattr(run, "generate_batch", lambda *a, **k: pytest.fail("generated"))
    with pytest.raises(ValueError, match="method"):
        session.generate(["hi"], method="nope")
    with pytest.raises(ValueError, match="K"):
        session.generate(["hi"], K=0)
    with pytest.raises(ValueError, match="batch_size"):
        session.generate(["hi"], batch_size=0)
    with pytest.raises(UsageError, match=r"prompt 1: prompt \("):
        session.generate(["hi", "the sea " * 300], **SAMPLING)


def test_models_load_once(monkeypatch):
    loads = []
    real = run.load
    monkeypatch.setattr(run, "load", lambda *a: loads.append(1) or real(*a))
    session = api.Session("tiny", "tiny", device="cpu")
    session.generate(["Why?"], method="bon", **SAMPLING)
    session.generate(["Why?"], method="entrgi", seeds=[1, 2], **SAMPLING)
    assert len(loads) == 1


def test_api_records_equal_the_cli_records_of_a_dataset_run(session, tmp_path):
    """prompt_sets' selection through the API: the records of `run.py --dataset`, bit for bit."""
    datasets = pytest.importorskip("datasets", reason="the experiments extra (datasets) is not installed")
    import prompt_sets

    datasets.Dataset.from_list([{"prompt": f"Tell me about item {i}.", "kind": "ab"[i % 2]} for i in range(12)]
                               ).save_to_disk(str(tmp_path / "bench"))
    out = tmp_path / "out"
    assert run.main(["--dataset", str(tmp_path / "bench"), "--subset-size", "2", "--output-dir", str(out), "--dllm",
                     "tiny", "--reward-model", "tiny", "--eval-reward-model", "tiny", "--device", "cpu", "--T", "4",
                     "--max-new-tokens", "6", "--K", "2", "--methods", "entrgi", "--seeds", "1,2", "--no-progress"]) == 0
    cli = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    source = prompt_sets.resolve(str(tmp_path / "bench"), subset_size=2)
    mine = []
    for seed, prompts in prompt_sets.selections(source, [1, 2]).items():
        mine += session.generate(prompts, method="entrgi", seeds=[seed], dataset=source.name, **SAMPLING)
    key = experiment.record_key
    assert sorted(without_cost(mine), key=key) == sorted(without_cost(cli), key=key) and len(cli) == 4


def test_prompts_too_long_for_the_eval_model_are_refused_before_any_work(session, monkeypatch):
    """Session.generate makes the CLI's checks (run.check_batchable): a prompt that fits the guiding models but
    not the eval reward model's context is a UsageError naming it, before any batch runs."""
    from types import SimpleNamespace

    evaluator = SimpleNamespace(config=SimpleNamespace(max_position_embeddings=40), tokenizer=session.plan.reward.tokenizer)
    monkeypatch.setattr(session, "evaluator", evaluator)
    monkeypatch.setattr(run, "generate_batch", lambda *a, **k: pytest.fail("a batch ran before the check"))
    with pytest.raises(UsageError, match=r"prompt 1: the eval reward model reads \d+ \+ 8 \+ \d+ tokens, beyond its "
                                         r"context of 40"):
        session.generate(["Hi", "a longer prompt " * 4], K=2, T=2, max_new_tokens=8)
    with pytest.raises(ValueError, match="seeds must be integers"):
        session.generate(["Hi"], seeds=[-1], K=2, T=2, max_new_tokens=8)


@pytest.mark.parametrize("prompts, seeds, message", [
    ([""], (0,), "prompt 0: the prompt is empty"), (["Hi", "   "], (0,), "prompt 1: the prompt is empty"),
    ([3], (0,), "prompt 0: the prompt is not a string"), ("Hi", (0,), "prompts must be a list"),
    (["Hi"], 5, "seeds must be a list of integers"),
])
def test_bad_prompts_and_seeds_are_value_errors_before_any_work(session, monkeypatch, prompts, seeds, message):
    """What the CLI refuses with one line, the API refuses with a ValueError, before any batch runs."""
    monkeypatch.setattr(run, "generate_batch", lambda *a, **k: pytest.fail("a batch ran before the check"))
    with pytest.raises(ValueError, match=message):
        session.generate(prompts, seeds=seeds, K=2, T=2, max_new_tokens=8)
