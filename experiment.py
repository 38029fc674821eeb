"""The paper's experiment around `run.py --prompts`: the prompts file, the records on disk, the summary.

`run.py` holds the loop (models load once; per (method, seed) the prompts run in batches
of B); this module holds what the loop reads and writes, as plain functions:

    read_prompts(FILE)            .jsonl ({"prompt": ..., "id": ..., other fields carried}) or .txt (id = line number);
                                  UTF-8 with or without a BOM, LF or CRLF, blank lines skipped
    fingerprint(settings)         sha256 of every setting that changes a record's result
    Store(DIR, rank, world)       records appended one whole line at a time, fsync'ed; resume; merge
    summarise(records, ...)       per method: Top@1 / Avg@N as mean ± standard error over the seeds (the
                                  paper's figure), the mean over prompts x seeds with its 95 % bootstrap
                                  interval, and the paired difference to `bon` (same prompt and seed)
    table(summary)                the summary as text within 100 columns, one block per metric
    Distributed.from_env()        torchrun's RANK / WORLD_SIZE / LOCAL_RANK, gloo process group

Files in DIR:

    .lock                    flock'ed by the run using DIR (a second run on DIR is refused)
    config.json              the full configuration, its fingerprint, library versions (atomic write)
    records.jsonl            one record per (prompt, method, seed), in the prompts file's order,
                             then methods, then seeds; rewritten atomically at the end of a run
    records.rank<R>.jsonl    a torchrun rank's records while the run is going (merged, then removed)

A record's key is (prompt id, method, seed); its `fingerprint` field must equal the run's.
With one process the records are appended to records.jsonl itself. A line without its
newline (a process killed in the middle of a write) is torn: it is dropped on reading and
cut off before the next append, so a resumed run redoes exactly the missing records.

Bootstrap: R = 10,000 resamples with replacement of the n values (records in the file's
order), drawn by `torch.randint(n, (R, n), generator=torch.Generator().manual_seed(0))`,
fresh for each statistic; the interval is the 2.5 % and 97.5 % quantiles of the R means.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
from pathlib import Path

import torch

from models import UsageError, first_line

RECORDS = "records.jsonl"
CONFIG = "config.json"
SUMMARY = "summary.json"
BOOTSTRAP_SEED = 0
BOOTSTRAP_RESAMPLES = 10_000


# --------------------------------------------------------------------------- the prompts file


@dataclasses.dataclass(frozen=True)
class Prompt:
    id: str | int  # as written in the file (a .txt prompt's id is its line number)
    text: str
    fields: dict  # the .jsonl object's other fields, carried into the records
    where: str  # "FILE line N", for error messages

    @property
    def key(self) -> str:
        """The id as records are keyed by (so 3 and "3" are the same id)."""
        return str(self.id)


def read_prompts(path: str) -> list[Prompt]:
    """Every prompt of a .jsonl or .txt file, or a UsageError naming the first bad line.

    Files as editors write them: UTF-8 with or without a byte-order mark (read as utf-8-sig),
    lines ending in LF or CRLF, and blank lines (empty or whitespace only) anywhere, which are
    skipped in both formats. Line numbers count every line, blank ones too: they are what an
    error names and a .txt prompt's id.
    """
    file = Path(path)
    if file.suffix not in (".jsonl", ".txt"):
        raise UsageError(f"--prompts {path}: expected a .jsonl or .txt file")
    try:
        text = file.read_text(encoding="utf-8-sig")  # a leading BOM is not part of the first prompt
    except (OSError, UnicodeDecodeError) as error:
        raise UsageError(f"--prompts {path} cannot be read: {first_line(error)}") from None
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()  # the newline ending the last line
    prompts, seen = [], {}
    for number, line in enumerate(lines, start=1):
        where = f"{path} line {number}"
        line = line.removesuffix("\r")
        if not line.strip():
            continue  # a blank line: no prompt, but it keeps its number
        if file.suffix == ".txt":
            item = {"prompt": line}
        else:
            try:
                item = json.loads(line)
            except json.JSONDecodeError as error:
                raise UsageError(f"{where}: not JSON ({error.msg})") from None
            if not isinstance(item, dict):
                raise UsageError(f"{where}: expected a JSON object with a \"prompt\" field")
        prompt = item.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise UsageError(f"{where}: " + ("no \"prompt\" field" if "prompt" not in item else
                                             "the prompt is empty" if isinstance(prompt, str) else
                                             "the prompt is not a string"))
        prompt_id = item.get("id", number)
        if isinstance(prompt_id, bool) or not isinstance(prompt_id, (int, str)) or str(prompt_id).strip() == "":
            raise UsageError(f"{where}: the id must be a non-empty string or an integer, got {prompt_id!r}")
        if str(prompt_id) in seen:
            raise UsageError(f"{where}: duplicate id {prompt_id!r} (first on line {seen[str(prompt_id)]})")
        seen[str(prompt_id)] = number
        fields = {k: v for k, v in item.items() if k not in ("prompt", "id")}
        prompts.append(Prompt(prompt_id, prompt, fields, where))
    if not prompts:
        raise UsageError(f"--prompts {path} holds no prompt")
    return prompts


# --------------------------------------------------------------------------- records on disk


def fingerprint(settings: dict) -> str:
    """sha256 of the canonical JSON of `settings` (first 16 hex digits)."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def differences(old: dict | None, new: dict | None) -> str:
    """The settings that differ between two `settings` dicts, as the options that set them:
    "--temperature 0.7 -> 0.9, --dllm tiny -> DIR" (sampling fields flattened; "" if none can be told)."""
    def flat(settings) -> dict:
        if not isinstance(settings, dict):
            return {}
        out = {}
        for key, value in settings.items():
            if key == "sampling" and isinstance(value, dict):
                out.update(value)
            else:
                out[key] = value
        return out

    old, new = flat(old), flat(new)
    if not old or not new:
        return ""
    name = lambda key: key if key == "rng" else "--" + key.replace("_", "-")  # noqa: E731
    return ", ".join(f"{name(key)} {old.get(key)!r} -> {new.get(key)!r}"
                     for key in sorted(set(old) | set(new), key=lambda k: (list(new) + list(old)).index(k))
                     if old.get(key) != new.get(key))


LOCK = ".lock"
_held: list[int] = []  # this process's lock file descriptors


def lock(directory: Path) -> None:
    """Take the exclusive lock of an output directory (fcntl.flock on DIR/.lock, created if need be) for the
    run's lifetime: a second run on it is a UsageError. The kernel drops it when the process ends, however it
    ends (kill -9 included); the file stays (removing it would let a waiting run lock a file no longer there)."""
    import fcntl

    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory / LOCK, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise UsageError(f"--output-dir {directory} is in use by another run (it holds {directory / LOCK}); "
                         "wait for that run to end") from None
    _held.append(fd)


def unlock_all() -> None:
    """Release every lock this process took (the end of a run; in-process callers run again)."""
    while _held:
        os.close(_held.pop())


def record_key(record: dict) -> tuple[str, str, int]:
    return str(record["id"]), record["method"], record["seed"]


def read_records(path: Path) -> tuple[list[dict], int]:
    """The complete records of one file and the number of bytes they fill; a torn last line is left out.

    Records are appended as one write of a JSON object and its newline, and json.dumps writes
    no raw newline, so every newline-terminated line is whole: what follows the last newline
    is a torn write (dropped), and a newline-terminated line that is not a record is an error.
    """
    data = path.read_bytes() if path.exists() else b""
    lines = data.split(b"\n")[:-1]  # the last piece follows the last newline: torn, or empty
    records = []
    for number, line in enumerate(lines, start=1):
        try:
            record = json.loads(line)
            record_key(record)
        except (ValueError, KeyError, TypeError):
            raise UsageError(f"{path} line {number} is not a record") from None
        records.append(record)
    return records, sum(len(line) + 1 for line in lines)


class Store:
    """The records of one output directory, as seen by one process (`rank` of `world`)."""

    def __init__(self, directory: Path, rank: int = 0, world: int = 1):
        self.directory, self.rank, self.world = directory, rank, world
        self.own = directory / (RECORDS if world == 1 else f"records.rank{rank}.jsonl")
        self._handle = None

    def files(self) -> list[Path]:
        return [self.directory / RECORDS] + sorted(self.directory.glob("records.rank*.jsonl"))

    def read(self) -> dict[tuple, dict]:
        """Every complete record in the directory by key (the first copy of a key wins)."""
        found: dict[tuple, dict] = {}
        for path in self.files():
            for record in read_records(path)[0]:
                found.setdefault(record_key(record), record)
        return found

    def prepare(self, fingerprint: str, resume: bool, settings: dict | None = None) -> dict[tuple, dict]:
        """Lock the directory, check it for a (resumed) run with `fingerprint`; return the records already done.

        The lock (`lock`) is taken first and held until the process ends or `unlock_all`.
        Without --resume the directory must be new or empty. With it, config.json and every
        record must carry the same fingerprint; where config.json's differs, the error names
        the settings that differ (old -> new), given this run's `settings`.
        """
        d = self.directory
        if d.exists() and not d.is_dir():
            raise UsageError(f"--output-dir {d} is a file")
        entries = lambda: [p for p in d.iterdir() if not p.name.startswith(".")] if d.exists() else []  # noqa: E731
        for step in ("before", "after"):  # before: a foreign directory gets no lock file; after: a run just ended
            if entries() and not resume:
                raise UsageError(f"--output-dir {d} is not empty; pass --resume to continue the run it holds")
            if step == "before":
                lock(d)
        entries = entries()
        if not entries:
            return {}
        config = d / CONFIG
        if config.exists():
            try:
                theirs = json.loads(config.read_text()).get("fingerprint")
            except (OSError, ValueError, AttributeError):
                raise UsageError(f"{config} is not a configuration this program wrote") from None
            if theirs != fingerprint:
                changed = differences(json.loads(config.read_text()).get("settings"), settings)
                raise UsageError(f"--resume: {d} was written with other settings: "
                                 + (f"{changed} " if changed else "")
                                 + f"(fingerprint {theirs}, these give {fingerprint}; {CONFIG} lists them)")
        done = self.read()
        other = next((r for r in done.values() if r.get("fingerprint") != fingerprint), None)
        if other is not None:
            raise UsageError(f"--resume: {d} holds records written with other settings "
                             f"(fingerprint {other.get('fingerprint')}, these give {fingerprint})")
        return done

    def append(self, records: list[dict]) -> None:
        """Append each record as one whole line, then flush and fsync (before the next batch starts)."""
        if self._handle is None:
            _, good = read_records(self.own)
            self._handle = open(self.own, "ab")
            self._handle.truncate(good)  # a torn last line is cut off before anything follows it
        for record in records:
            self._handle.write((json.dumps(record) + "\n").encode())
        self._handle.flush()
        os.fsync(self._handle.fileno())

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def merge(self, order: list[tuple]) -> list[dict]:
        """Rewrite records.jsonl atomically with every record in the directory, keys of `order` first
        in that order (then any others, as found), and remove the rank files. Returns `order`'s records."""
        self.close()
        found = self.read()
        ordered = [found[key] for key in order if key in found]
        wanted = set(order)
        rest = [record for key, record in found.items() if key not in wanted]

        def write(tmp: str) -> None:
            with open(tmp, "wb") as handle:
                for record in ordered + rest:
                    handle.write((json.dumps(record) + "\n").encode())
                handle.flush()
                os.fsync(handle.fileno())

        atomic_write(self.directory / RECORDS, write)
        for path in self.files()[1:]:
            path.unlink()
        return ordered


def atomic_write(path: Path, write) -> None:
    """write(tmp_path) then rename: no partial file; the file gets the mode open() would give (umask).

    The one writer of every output file (records.jsonl's merge, config.json, the summaries, --output)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# --------------------------------------------------------------------------- summary


def bootstrap(values: list[float]) -> dict:
    """Mean and 95 % percentile bootstrap interval (module docstring: seed, resamples)."""
    x = torch.tensor(values, dtype=torch.float64)  # (n,)
    generator = torch.Generator().manual_seed(BOOTSTRAP_SEED)
    index = torch.randint(len(x), (BOOTSTRAP_RESAMPLES, len(x)), generator=generator)  # (R, n)
    means = x[index].mean(1)  # (R,)
    low, high = torch.quantile(means, torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
    return {"mean": x.mean().item(), "ci95": [low, high], "n": len(values)}


METRIC_NAMES = {"top1_reward": "Top@1", "avgN_reward": "Avg@N", "eval_top1_reward": "eval Top@1",
                "eval_avgN_reward": "eval Avg@N"}


def over_seeds(rows: list[dict], metric: str) -> dict:
    """The paper's figure: each seed's mean over its prompts, then their mean and standard error.

    sem = s / sqrt(S) with s the sample standard deviation (divisor S - 1) of the S seeds' means;
    None with one seed. (With the same number of prompts per seed, the mean equals the mean
    over the records.)
    """
    seeds: dict[int, list[float]] = {}
    for r in rows:
        seeds.setdefault(r["seed"], []).append(r[metric])
    means = torch.tensor([sum(v) / len(v) for v in seeds.values()], dtype=torch.float64)  # (S,)
    S = len(means)
    sem = (means.std(correction=1) / S ** 0.5).item() if S > 1 else None
    return {"seed_mean": means.mean().item(), "sem": sem, "seeds": S,
            "per_seed": {str(seed): m for seed, m in zip(seeds, means.tolist())}}


def statistics(rows: list[dict], metric: str) -> dict:
    """Mean, 95 % bootstrap interval and n over the records; mean and SEM over the seeds (`over_seeds`)."""
    return {**bootstrap([r[metric] for r in rows]), **over_seeds(rows, metric)}


def summarise(records: list[dict], methods: list[str], with_eval: bool) -> dict:
    """Per method: Top@1 and Avg@N (and the eval model's) over its records, and paired differences to bon.

    Each metric: `statistics` (mean, ci95, n over the records; seed_mean, sem, seeds, per_seed).
    minus_bon: the same of the paired differences (same prompt and seed as a bon record).
    """
    metrics = ["top1_reward", "avgN_reward"] + (["eval_top1_reward", "eval_avgN_reward"] if with_eval else [])
    by_method = {m: [r for r in records if r["method"] == m] for m in methods}
    bon = {(str(r["id"]), r["seed"]): r for r in by_method.get("bon", [])}
    summary = {}
    for method, rows in by_method.items():
        if not rows:
            continue
        entry = {metric: statistics(rows, metric) for metric in metrics}
        pairs = [(r, bon[(str(r["id"]), r["seed"])]) for r in rows if (str(r["id"]), r["seed"]) in bon]
        if method != "bon" and pairs:
            entry["minus_bon"] = {metric: statistics([{"seed": r["seed"], metric: r[metric] - b[metric]}
                                                      for r, b in pairs], metric) for metric in metrics}
        summary[method] = entry
    return summary


def shown_metrics(summary: dict, eval_columns: bool = True) -> list[str]:
    """The metrics a table shows: Top@1 and Avg@N, and the eval model's when asked for and present."""
    present = [m for m in METRIC_NAMES if any(m in e for e in summary.values())]
    return [m for m in present if eval_columns or not m.startswith("eval_")]


def seed_cell(s: dict) -> str:
    """mean ± SEM over the seeds (mean alone with one seed)."""
    return f"{s['seed_mean']:+.3f} ± {s['sem']:.3f}" if s["sem"] is not None else f"{s['seed_mean']:+.3f}"


def interval_cell(s: dict) -> str:
    return f"[{s['ci95'][0]:+.3f}, {s['ci95'][1]:+.3f}]"


def n_cell(s: dict) -> str:
    return f"{s['n']} ({s['seeds']} seed{'s' if s['seeds'] != 1 else ''})"


TABLE_NOTE = ("n: records (prompts x seeds); mean ± SEM: the seeds' means, their mean and standard error "
              "(the paper's figure); 95 % CI: percentile bootstrap over the n records; - bon: paired by "
              "prompt and seed")


def table(summary: dict, eval_columns: bool = True, width: int = 100) -> str:
    """The summary as text, one block per metric (so that it fits `width` columns), and what the columns mean.

    `eval_columns`: show the eval model's metrics (run.py passes False when no eval model was
    given, or it is the guiding model: its columns would repeat the others).
    """
    header = ["method", "n", "mean ± SEM", "95 % CI", "- bon", "- bon 95 % CI"]
    blocks = []
    for metric in shown_metrics(summary, eval_columns):
        rows = [header]
        for method, entry in summary.items():
            s, d = entry[metric], entry.get("minus_bon", {}).get(metric)
            rows.append([method, n_cell(s), seed_cell(s), interval_cell(s),
                         seed_cell(d) if d else "-", interval_cell(d) if d else "-"])
        widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
        blocks.append("\n".join([METRIC_NAMES[metric]] + ["  " + line for line in lines]))
    note = wrap(TABLE_NOTE, width)
    return "\n\n".join(blocks + [note])


def wrap(text: str, width: int) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, width))


# --------------------------------------------------------------------------- torchrun


class Rank0Error(UsageError):
    """Another rank's copy of rank 0's error (rank 0 reports it; a crash there keeps its traceback)."""

    def __init__(self, message: str, usage: bool):
        super().__init__(message)
        self.usage = usage


@dataclasses.dataclass
class Distributed:
    """This process's place under torchrun (rank 0 of 1 without it). Only control messages cross
    processes (the work list, barriers), so the gloo backend serves on CPU and GPU alike."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> "Distributed":
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world == 1:
            return cls()
        import torch.distributed as dist

        dist.init_process_group("gloo")
        return cls(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))

    def from_rank0(self, compute):
        """compute() on rank 0, its value (or its error) on every rank.

        Rank 0 re-raises its own exception; the other ranks raise `Rank0Error` (a UsageError
        when rank 0's was one), so that no rank is left waiting on a broadcast that never comes.
        """
        outcome, failure = [None], None
        if self.rank == 0:
            try:
                outcome = [("ok", compute())]
            except Exception as error:  # every failure must reach the other ranks before it propagates
                failure = error
                outcome = [("usage" if isinstance(error, UsageError) else "crash", first_line(error))]
        if self.world > 1:
            import torch.distributed as dist

            dist.broadcast_object_list(outcome, src=0)
        if failure is not None:
            raise failure
        kind, value = outcome[0]
        if kind != "ok":
            raise Rank0Error(value, usage=kind == "usage")
        return value

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()

    def close(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.destroy_process_group()
