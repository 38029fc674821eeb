"""Tests of `run.py --dataset`: the paper's prompts by name, chosen per seed as the authors do.

What they prove, on small datasets built in-process (no hub) and the tiny models on the CPU:

* the selection of every seed equals the authors' rule re-derived here from `datasets` alone
  (shuffle(seed), select the first subset_size rows, then filter -- in that order) for several
  seeds, sizes (below, at and beyond the split's length) and with or without a subset filter;
  `--subset-seed` gives every seed one shared selection; each prompt's id is its row index and
  its fields are the row's other fields;
* each offline form gives that same selection: a save_to_disk Dataset and DatasetDict, a
  parquet file, a jsonl file, a directory of data files, and the hub cache read with
  HF_DATASETS_OFFLINE=1 (a cache built here by load_dataset of local files, laid out where the
  hub's copy of a preset would be, so `--dataset reward-bench-2` itself is exercised);
* every bad input (no such dataset offline, a missing split or field, an empty selection, a
  prompt too long for the models, a non-string prompt, options without --dataset, the extra
  not installed) is one `error:` line, exit 2, nothing written, no weight read;
* --dry-run reports the selection; a dataset run's records carry the dataset, the row's index
  and fields; a resumed run (more seeds added, or a torn last line) equals an uninterrupted one.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import prompt_sets  # noqa: E402
import replicas  # noqa: E402
import run  # noqa: E402

datasets = pytest.importorskip("datasets", reason="the experiments extra (datasets) is not installed")

ROWS = [{"prompt": f"Tell me about item {i}." + " Why?" * (i % 4), "subset": "abc"[i % 3], "uid": i, "tags": [i, -i]}
        for i in range(40)]
TINY = ["--dllm", "tiny", "--reward-model", "tiny", "--device", "cpu", "--T", "3", "--max-new-tokens", "5", "--K", "2",
        "--no-progress", "--methods", "entrgi,bon"]


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    replicas.hub_offline(monkeypatch)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)


def authors_rule(split, seed: int, size: int, field: str | None = None, name: str | None = None) -> list[dict]:
    """The authors' selection written out again from `datasets`: shuffle, select, then filter."""
    rows = split.shuffle(seed=seed)
    rows = rows.select(range(min(size, len(rows))))
    if field is not None:
        rows = rows.filter(lambda row: row[field] == name)
    return list(rows)


def as_rows(prompts) -> list[dict]:
    """experiment.Prompts back to the dataset's rows (the uid column is each row's index by construction)."""
    return [{"prompt": p.text, **p.fields} for p in prompts]


def source(path, **options) -> prompt_sets.Source:
    return prompt_sets.resolve(str(path), **options)


# --------------------------------------------------------------------------- the selection rule


@pytest.mark.parametrize("seeds", [[1, 2, 3], [0, 17, 123456]])
@pytest.mark.parametrize("size", [1, 7, 40, 64])
@pytest.mark.parametrize("subset", [None, ("subset", "b")])
def test_selection_is_the_authors_rule(seeds, size, subset, tmp_path):
    split = datasets.Dataset.from_list(ROWS)
    split.save_to_disk(str(tmp_path / "ds"))
    field, name = subset or (None, None)
    options = {"subset_size": size, **({"subset_field": field, "subset_name": name} if subset else {})}
    if any(not authors_rule(split, seed, size, field, name) for seed in seeds):  # a seed whose filter keeps nothing
        with pytest.raises(prompt_sets.UsageError, match="selects no row"):
            prompt_sets.selections(source(tmp_path / "ds", **options), seeds)
        return
    chosen = prompt_sets.selections(source(tmp_path / "ds", **options), seeds)
    assert list(chosen) == seeds
    for seed in seeds:
        expected = authors_rule(split, seed, size, field, name)
        assert as_rows(chosen[seed]) == expected
        assert [p.id for p in chosen[seed]] == [row["uid"] for row in expected]  # the row's index in the split
        assert len(chosen[seed]) == (min(size, 40) if subset is None else len(expected))
    if size < 40:  # each seed draws its own prompts
        assert len({tuple(p.id for p in chosen[s]) for s in seeds}) == len(seeds)


def test_subset_seed_shares_one_selection(tmp_path):
    split = datasets.Dataset.from_list(ROWS)
    split.save_to_disk(str(tmp_path / "ds"))
    chosen = prompt_sets.selections(source(tmp_path / "ds", subset_size=5, subset_seed=9), [1, 2, 3])
    for seed in (1, 2, 3):
        assert as_rows(chosen[seed]) == authors_rule(split, 9, 5)


def test_fields_are_made_json_serialisable():
    import datetime

    value = {"when": datetime.date(2025, 1, 2), "raw": b"abc", "x": float("nan"), "n": [1, (2, 3)], "k": None}
    assert prompt_sets.jsonable(value) == {"when": "2025-01-02", "raw": "<3 bytes>", "x": "nan", "n": [1, [2, 3]],
                                           "k": None}
    json.dumps(prompt_sets.jsonable(value), allow_nan=False)


def test_presets_name_the_papers_benchmarks():
    assert {n: (p.hub_id, p.split, p.prompt_field) for n, p in prompt_sets.PRESETS.items()} == {
        "reward-bench-2": ("allenai/reward-bench-2", "test", "prompt"),
        "judgebench": ("ScalerLab/JudgeBench", "gpt", "question"),
        "rm-bench": ("THU-KEG/RM-Bench", "train", "prompt")}
    s = prompt_sets.resolve("JudgeBench")
    assert (s.name, s.kind, s.path, s.split, s.prompt_field, s.subset_size) == (
        "judgebench", "hub", "ScalerLab/JudgeBench", "gpt", "question", 64)
    assert s.preset is not None and prompt_sets.resolve("judgebench", split="claude").preset is None


# --------------------------------------------------------------------------- the offline forms


def hub_cache(root: Path, hub_id: str, split_name: str, rows: list[dict]) -> Path:
    """A hub cache holding `hub_id`, built offline: load_dataset of a local parquet file writes its cache, which
    is then laid out where load_dataset(hub_id) looks for it offline (owner___name/default/0.0.0/HASH)."""
    cache = root / "hf-datasets-cache"
    data = root / "hub-source" / f"{split_name}.parquet"
    data.parent.mkdir(parents=True)
    datasets.Dataset.from_list(rows).to_parquet(str(data))
    datasets.load_dataset("parquet", data_files={split_name: str(data)}, split=split_name, cache_dir=str(cache))
    built = next((cache / "parquet").glob("*/*/*/dataset_info.json")).parent
    owner, name = hub_id.split("/")
    target = cache / f"{owner}___{name}" / "default" / "0.0.0" / built.name
    target.mkdir(parents=True)
    for f in built.iterdir():
        shutil.copy(f, target / f.name.replace("parquet-", f"{name}-"))
    return cache


def offline_forms(root: Path) -> dict[str, tuple[str, dict]]:
    """Each form on disk: name -> (the --dataset argument, options), all holding ROWS as split 'test'."""
    split = datasets.Dataset.from_list(ROWS)
    forms = {}
    split.save_to_disk(str(root / "saved-dataset"))
    forms["save_to_disk Dataset"] = (str(root / "saved-dataset"), {})
    datasets.DatasetDict({"test": split, "train": split.select(range(3))}).save_to_disk(str(root / "saved-dict"))
    forms["save_to_disk DatasetDict"] = (str(root / "saved-dict"), {"split": "test"})
    split.to_parquet(str(root / "rows.parquet"))
    forms["parquet file"] = (str(root / "rows.parquet"), {"split": "test"})
    split.to_json(str(root / "rows.jsonl"))
    forms["jsonl file"] = (str(root / "rows.jsonl"), {})
    (root / "files").mkdir()
    split.to_parquet(str(root / "files" / "test.parquet"))
    forms["directory of files"] = (str(root / "files"), {"split": "test"})
    return forms


@pytest.mark.parametrize("form", ["save_to_disk Dataset", "save_to_disk DatasetDict", "parquet file", "jsonl file",
                                  "directory of files"])
def test_each_local_form_gives_the_same_selection(form, tmp_path):
    dataset, options = offline_forms(tmp_path)[form]
    chosen = prompt_sets.selections(prompt_sets.resolve(dataset, subset_size=6, **options), [1, 2])
    split = datasets.Dataset.from_list(ROWS)
    for seed in (1, 2):
        assert as_rows(chosen[seed]) == authors_rule(split, seed, 6)


def test_hub_cache_offline_serves_a_preset_by_name(tmp_path, monkeypatch, capsys):
    cache = hub_cache(tmp_path, "allenai/reward-bench-2", "test", ROWS)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    chosen = prompt_sets.selections(prompt_sets.resolve("reward-bench-2", subset_size=5), [1, 2, 3])
    split = datasets.Dataset.from_list(ROWS)
    for seed in (1, 2, 3):
        assert as_rows(chosen[seed]) == authors_rule(split, seed, 5)
    monkeypatch.setattr(run, "load", lambda *a: pytest.fail("weights loaded by --dry-run"))
    assert run.main(["--dataset", "reward-bench-2", "--seeds", "1,2,3", *TINY, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "dataset       reward-bench-2 (allenai/reward-bench-2, split test, field prompt)" in out
    assert "prompts per seed 1: 40, 2: 40, 3: 40 (40 distinct)" in out
    assert "longest       denoiser: reward-bench-2 row " in out
    # T = 3 steps x (120 entrgi records x 490 ms + 120 bon records x 51 ms) = 194.76 s
    assert "work          240 records (2 methods x 120); about 0.0541 h on one H100 at B = 1" in out


# --------------------------------------------------------------------------- errors


@pytest.fixture
def saved(tmp_path):
    datasets.DatasetDict({"test": datasets.Dataset.from_list(ROWS)}).save_to_disk(str(tmp_path / "saved"))
    (tmp_path / "long").mkdir()
    datasets.Dataset.from_list([{"prompt": "a short one"}, {"prompt": "the sea " * 300}]).to_parquet(
        str(tmp_path / "long" / "train.parquet"))
    datasets.Dataset.from_list([{"prompt": 3}]).to_json(str(tmp_path / "numbers.jsonl"))
    return tmp_path


ERRORS = {
    "not found offline": (["--dataset", "nobody/nothing"], "--dataset nobody/nothing split 'train' cannot be loaded"),
    "preset not cached": (["--dataset", "judgebench"], "offline: only the hub cache is read"),
    "no such path": (["--dataset", "{root}/missing"], "not a benchmark name"),
    "missing split": (["--dataset", "{root}/saved", "--split", "gpt"], "has no split 'gpt' (its splits: test)"),
    "missing field": (["--dataset", "{root}/saved", "--split", "test", "--prompt-field", "question"],
                      "has no field 'question' for --prompt-field (its fields: prompt, subset, uid, tags)"),
    "missing subset field": (["--dataset", "{root}/saved", "--split", "test", "--subset-field", "kind",
                              "--subset-name", "x"], "has no field 'kind' for --subset-field"),
    "empty selection": (["--dataset", "{root}/saved", "--split", "test", "--subset-field", "subset", "--subset-name",
                         "z"], "seed 0 selects no row"),
    "too long": (["--dataset", "{root}/long"], "long row 1: prompt ("),
    "not a string": (["--dataset", "{root}/numbers.jsonl"], "numbers row 0: the 'prompt' field is not a string"),
    "subset size": (["--dataset", "{root}/saved", "--subset-size", "0"], "--subset-size must be >= 1"),
    "field without name": (["--dataset", "{root}/saved", "--subset-field", "subset"], "go together"),
    "bad subset seed": (["--dataset", "{root}/saved", "--split", "test", "--subset-seed", "-1"], "--subset-seed must be"),
    "dataset option with --prompts": (["--prompts", "{root}/p.txt", "--split", "test"],
                                      "--split is for --dataset runs, not --prompts"),
    "dataset option with --prompt": (["--prompt", "hi", "--subset-size", "3"], "--subset-size is for --dataset runs"),
}


@pytest.mark.parametrize("case", sorted(ERRORS))
def test_bad_dataset_input_is_one_line(case, saved, capsys, monkeypatch):
    flags, words = ERRORS[case]
    (saved / "p.txt").write_text("a prompt\n")
    monkeypatch.setattr(run, "load", lambda *a: pytest.fail("weights loaded before the dataset was checked"))
    out = saved / "out"
    argv = [f.format(root=saved) for f in flags]
    argv += TINY[:4] if case == "dataset option with --prompt" else TINY + ["--output-dir", str(out)]
    assert run.main(argv) == 2
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and captured.err.startswith("error: ") and words in captured.err, captured.err
    assert not out.exists() and captured.out == ""


def test_missing_extra_names_it(saved, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # `import datasets` raises ImportError
    assert run.main(["--dataset", str(saved / "saved"), *TINY, "--output-dir", str(saved / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and 'pip install -e ".[experiments]"' in err and not (saved / "out").exists()


# --------------------------------------------------------------------------- dataset runs


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]


def without_cost(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "cost"} for r in rows]


@pytest.fixture(scope="module")
def dataset_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("dsrun")
    datasets.Dataset.from_list(ROWS).save_to_disk(str(root / "bench"))
    out = root / "whole"
    argv = ["--dataset", str(root / "bench"), "--subset-size", "3", "--seeds", "1,2", "--batch-size", "2", *TINY]
    assert run.main([*argv, "--output-dir", str(out)]) == 0
    return root, argv, out


def test_dataset_records_carry_the_row(dataset_run):
    root, _, out = dataset_run
    rows = records(out)
    split = datasets.Dataset.from_list(ROWS)
    expected = {seed: [r["uid"] for r in authors_rule(split, seed, 3)] for seed in (1, 2)}
    assert len(rows) == 2 * 3 * 2  # seeds x prompts x methods
    for seed in (1, 2):
        assert sorted({r["index"] for r in rows if r["seed"] == seed}) == sorted(expected[seed])
    for r in rows:
        assert r["dataset"] == "bench" and r["id"] == r["index"]
        assert {"prompt": r["prompt"], **r["fields"]} == ROWS[r["index"]]
    config = json.loads((out / "config.json").read_text())
    assert config["selection"] == {str(s): expected[s] for s in (1, 2)} and config["benchmark"] == "bench"


def test_resumed_dataset_run_equals_an_uninterrupted_one(dataset_run, tmp_path):
    root, argv, whole = dataset_run
    out = tmp_path / "part"
    assert run.main([*argv, "--output-dir", str(out), "--seeds", "1"]) == 0  # seed 1 only
    lines = (out / "records.jsonl").read_bytes().split(b"\n")[:-1]
    (out / "records.jsonl").write_bytes(b"\n".join(lines[:-1]) + b"\n" + lines[-1][:40])  # and its last one torn
    assert run.main([*argv, "--output-dir", str(out), "--resume"]) == 0
    assert without_cost(records(out)) == without_cost(records(whole))


def test_ctrl_c_of_a_dataset_run_says_what_is_kept(dataset_run, tmp_path, capsys, monkeypatch):
    """Ctrl-C in the second batch of a --dataset run: exit 130 and the --prompts line (records kept, --resume),
    not the --prompt run's 'nothing written'."""
    from test_experiment import interrupt_on_call, interrupted_main

    _, argv, _ = dataset_run
    out = tmp_path / "ctrl-c"
    interrupt_on_call(monkeypatch, 2)
    capsys.readouterr()
    assert interrupted_main([*argv, "--output-dir", str(out), "--no-progress"]) == 130
    assert capsys.readouterr().err == \
        f"interrupted: 2 complete records kept in {out}; to go on, run the same command with --resume\n"
