"""The paper's prompts by name: a benchmark's split through Hugging Face `datasets`, chosen per seed as the authors do.

    resolve(NAME | PATH, split, prompt_field, subset_size, ...)  -> Source   (a preset, or what the user gave)
    load_split(source)                                          -> the split (a datasets.Dataset)
    select(split, source, seed)                                 -> the rows a seed runs, in order
    selections(source, seeds)                                   -> {seed: [experiment.Prompt]}

Presets (SPEC §6): name -> hub id, split, prompt field, and the published Top@1 (Dream-7B guided
by Skywork-Reward-V2-Qwen3-1.7B, tau = 0.7, 64 prompts per seed, seeds 1, 2, 3; SPEC §4):

    reward-bench-2   allenai/reward-bench-2   test    prompt      EntRGi 3.91   BoN 2.99
    judgebench       ScalerLab/JudgeBench     gpt     question    EntRGi 2.44   BoN 1.65
    rm-bench         THU-KEG/RM-Bench         train   prompt      EntRGi 5.70   BoN 5.11

The selection of a seed is the authors' rule, in their order:

    rows(seed) = load_dataset(path, split=split).shuffle(seed=seed)
                 .select(range(min(subset_size, len)))           the first subset_size rows (64)
                 .filter(row[subset_field] == subset_name)       only when a subset is named

so each seed draws its own prompts (the default). With `subset_seed = S` every seed runs the
one selection rows(S) instead: the paired design, where seeds differ only in their draws.
The row's index in the split travels with it: a column holding range(len) is added before the
shuffle (shuffle's permutation depends only on the seed and the number of rows, which the
column does not change; tests/test_datasets.py re-derives every selection without it).

Where the split comes from (all of them work offline):
    a preset name or a hub id   load_dataset(id, split=split): the hub, or its cache with HF_DATASETS_OFFLINE=1
    a save_to_disk directory    datasets.load_from_disk (a DatasetDict: its `split`; a Dataset: itself)
    a directory of data files   load_dataset(DIR, split=split) (split names from the file names, else "train")
    a .parquet/.jsonl/.json/.csv file   load_dataset(format, data_files={split: FILE}, split=split)

A record's prompt is the row's `prompt_field` (a non-empty string); its id is the row's index;
its `fields` are the row's other fields made JSON-serialisable (`jsonable`). `datasets` is an
optional extra (`pip install -e ".[experiments]"`), imported only when a dataset is asked for.
Every failure (no such dataset offline, a missing split or field, an empty selection) is a
UsageError: one `error:` line, exit 2, before any weight is read.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
from pathlib import Path

from experiment import Prompt
from models import UsageError, first_line

DEFAULT_SUBSET_SIZE = 64  # the authors' subset_size
PAPER_SEEDS = (1, 2, 3)
INDEX_COLUMN = "__row_index__"
FILE_FORMATS = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".csv": "csv"}
EXTRA_HINT = 'pip install -e ".[experiments]"'


@dataclasses.dataclass(frozen=True)
class Preset:
    hub_id: str
    split: str
    prompt_field: str
    published_top1: dict  # method -> the published Top@1 (SPEC §4)


PRESETS = {
    "reward-bench-2": Preset("allenai/reward-bench-2", "test", "prompt", {"entrgi": 3.91, "bon": 2.99}),
    "judgebench": Preset("ScalerLab/JudgeBench", "gpt", "question", {"entrgi": 2.44, "bon": 1.65}),
    "rm-bench": Preset("THU-KEG/RM-Bench", "train", "prompt", {"entrgi": 5.70, "bon": 5.11}),
}


@dataclasses.dataclass(frozen=True)
class Source:
    """What `--dataset` and its options name: where the split is, and how a seed's rows are chosen."""

    dataset: str  # as given: a preset name, a hub id or a local path
    name: str  # the benchmark's name in records and reports (the preset's name, else the id or path's stem)
    kind: str  # "hub", "disk" (save_to_disk), "dir" (data files), "file"
    path: str  # what is loaded: the hub id or the local path
    split: str
    prompt_field: str
    subset_size: int = DEFAULT_SUBSET_SIZE
    subset_field: str | None = None
    subset_name: str | None = None
    subset_seed: int | None = None  # one selection for every seed (the paired design); None: each seed its own

    @property
    def preset(self) -> Preset | None:
        """The paper's benchmark this is, with the paper's split and field; None otherwise."""
        preset = PRESETS.get(self.name)
        if preset is None or self.kind != "hub" or (self.split, self.prompt_field) != (preset.split, preset.prompt_field):
            return None
        return preset

    def describe(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items()}


def resolve(dataset: str, split: str | None = None, prompt_field: str | None = None,
            subset_size: int | None = None, subset_field: str | None = None, subset_name: str | None = None,
            subset_seed: int | None = None) -> Source:
    """A Source from the command line's words: presets fill the split and field the user left out."""
    if not dataset.strip():
        raise UsageError("--dataset is empty")
    size = DEFAULT_SUBSET_SIZE if subset_size is None else subset_size
    if size < 1:
        raise UsageError(f"--subset-size must be >= 1, got {size}")
    if (subset_field is None) != (subset_name is None):
        raise UsageError("--subset-field and --subset-name go together (the rows whose FIELD equals NAME)")
    preset = PRESETS.get(dataset.lower())
    local = Path(dataset).expanduser()
    if preset is not None:
        name, kind, path = dataset.lower(), "hub", preset.hub_id
    elif local.exists():
        path = str(local)
        if local.is_dir():
            saved = any((local / f).exists() for f in ("dataset_dict.json", "dataset_info.json", "state.json"))
            kind = "disk" if saved else "dir"
        elif local.suffix.lower() in FILE_FORMATS:
            kind = "file"
        else:
            raise UsageError(f"--dataset {dataset}: expected a directory or a {'/'.join(FILE_FORMATS)} file")
        name = local.stem if kind == "file" else local.resolve().name
    elif dataset.count("/") == 1 and not dataset.startswith((".", "/", "~")):
        kind, path = "hub", dataset
        name = next((n for n, p in PRESETS.items() if p.hub_id == dataset), dataset)
        preset = PRESETS.get(name)
    else:
        raise UsageError(f"--dataset {dataset}: not a benchmark name ({', '.join(PRESETS)}), a hub id (owner/name) "
                         f"or an existing path")
    split = split if split is not None else preset.split if preset else "train"
    field = prompt_field if prompt_field is not None else preset.prompt_field if preset else "prompt"
    return Source(dataset, name, kind, path, split, field, size, subset_field, subset_name, subset_seed)


def _datasets():
    try:
        import datasets
    except ImportError:
        raise UsageError(f"--dataset needs the Hugging Face `datasets` library, an optional extra: {EXTRA_HINT}") from None
    datasets.disable_progress_bars()  # a selection takes a moment; its bars would bury the run's own
    return datasets


def load_split(source: Source):
    """The split as a datasets.Dataset, its fields checked; any failure is a UsageError."""
    datasets = _datasets()
    where = f"--dataset {source.dataset}"
    try:
        if source.kind == "disk":
            loaded = datasets.load_from_disk(source.path)
            if isinstance(loaded, datasets.DatasetDict):
                if source.split not in loaded:
                    raise UsageError(f"{where} has no split {source.split!r} (its splits: {', '.join(loaded)})")
                loaded = loaded[source.split]
        elif source.kind == "file":
            builder = FILE_FORMATS[Path(source.path).suffix.lower()]
            loaded = datasets.load_dataset(builder, data_files={source.split: source.path}, split=source.split)
        else:  # "hub", "dir": the authors' call
            loaded = datasets.load_dataset(source.path, split=source.split)
    except UsageError:
        raise
    except Exception as error:  # datasets raises many kinds (FileNotFoundError, ValueError, ConnectionError, ...)
        offline = datasets.config.HF_HUB_OFFLINE
        hint = ""
        if source.kind == "hub":
            hint = (" (offline: only the hub cache is read; download it where there is network, or pass a "
                    "save_to_disk directory or parquet/jsonl files)" if offline else
                    " (no network? set HF_DATASETS_OFFLINE=1 to read the hub cache, or pass a local copy)")
        raise UsageError(f"{where} split {source.split!r} cannot be loaded: {first_line(error)}{hint}") from None
    columns = loaded.column_names
    for flag, field in (("--prompt-field", source.prompt_field), ("--subset-field", source.subset_field)):
        if field is not None and field not in columns:
            raise UsageError(f"{where} split {source.split!r} has no field {field!r} for {flag} "
                             f"(its fields: {', '.join(columns)})")
    if len(loaded) == 0:
        raise UsageError(f"{where} split {source.split!r} has no rows")
    return loaded


def with_index(split):
    """The split with INDEX_COLUMN = each row's index in it (the shuffle does not read it)."""
    if INDEX_COLUMN in split.column_names:
        raise UsageError(f"--dataset: the field {INDEX_COLUMN!r} is reserved")
    return split.add_column(INDEX_COLUMN, list(range(len(split))))


def select(indexed, source: Source, seed: int):
    """The authors' rule on a split carrying INDEX_COLUMN: shuffle(seed), the first subset_size rows, then the filter."""
    rows = indexed.shuffle(seed=seed, keep_in_memory=True)
    rows = rows.select(range(min(source.subset_size, len(rows))), keep_in_memory=True)
    if source.subset_field is not None:
        wanted = source.subset_name
        rows = rows.filter(lambda value: value == wanted, input_columns=source.subset_field, keep_in_memory=True)
    return rows


def jsonable(value):
    """A value from a row as JSON can carry it: containers recursively, dates as ISO text, bytes as
    their length, non-finite floats and anything else as its str()."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, (bytes, bytearray)):
        return f"<{len(value)} bytes>"
    if hasattr(value, "tolist"):  # numpy scalars and arrays
        return jsonable(value.tolist())
    return str(value)


def selections(source: Source, seeds: list[int]) -> dict[int, list[Prompt]]:
    """Each seed's prompts (rows in selection order), checked: a string prompt in every row, no empty selection."""
    indexed = with_index(load_split(source))
    drawn: dict[int, list[Prompt]] = {}
    for seed in seeds:
        draw_seed = seed if source.subset_seed is None else source.subset_seed
        if draw_seed not in drawn:
            drawn[draw_seed] = prompts_of(select(indexed, source, draw_seed), source, draw_seed)
    return {seed: drawn[seed if source.subset_seed is None else source.subset_seed] for seed in seeds}


def prompts_of(rows, source: Source, seed: int) -> list[Prompt]:
    where = f"--dataset {source.dataset}"
    if len(rows) == 0:
        subset = f" with {source.subset_field} == {source.subset_name!r}" if source.subset_field is not None else ""
        raise UsageError(f"{where}: seed {seed} selects no row (the first {source.subset_size} of the shuffled "
                         f"split{subset})")
    prompts = []
    for row in rows:
        index = row[INDEX_COLUMN]
        text = row[source.prompt_field]
        label = f"{source.name} row {index}"
        if not isinstance(text, str) or not text.strip():
            raise UsageError(f"{label}: the {source.prompt_field!r} field is "
                             + ("not a string" if not isinstance(text, str) else "empty"))
        fields = {k: jsonable(v) for k, v in row.items() if k not in (INDEX_COLUMN, source.prompt_field)}
        prompts.append(Prompt(index, text, fields, label))
    return prompts
