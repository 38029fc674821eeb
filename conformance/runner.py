"""Read the conformance vectors and hold an implementation to them. NumPy and the standard library only.

A vector file (conformance/vectors/<kind>.json) is

    {"schema": 1, "kind": "<kind>", "cases": [case, ...]}
    case = {"name": str, "inputs": {name: value}, "expected": {name: array}, "tolerance": {name: tol}}

A value is a JSON number, string, boolean, null, list of values, or an array:

    {"dtype": "float32", "shape": [d0, d1, ...], "base64": "<little-endian float32 bytes, row-major>"}
    {"dtype": "int64" | "bool", "shape": [...], "data": [flat row-major list of ints / booleans]}

float32 arrays are base64 so that every bit (-inf, signed zeros, the last place) survives
JSON. A tolerance is "exact" (equal as float32 values, -inf == -inf, -0.0 == 0.0; equal
integers / booleans) or {"atol": a, "rtol": r}: |got - expected| <= a + r |expected|
elementwise, and infinities must match exactly.

An implementation is any object with one method per kind, `impl.<kind>(**inputs) -> dict`
of outputs (arrays or anything np.asarray takes). `check(impl)` runs every case of every
file and returns the list of failures (empty: the implementation conforms).

Shapes: as each kind's section of docs/porting.md states.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np

VECTORS = Path(__file__).resolve().parent / "vectors"
KINDS = ("entropy_weight", "relax", "filter", "draw", "schedule", "guide", "step", "generate")


def encode(value):
    """A JSON-ready value: numpy arrays become array objects (float32 as base64), the rest recursively."""
    if isinstance(value, np.ndarray):
        if value.dtype == np.float32:
            data = np.ascontiguousarray(value).astype("<f4").tobytes()
            return {"dtype": "float32", "shape": list(value.shape), "base64": base64.b64encode(data).decode()}
        if value.dtype == np.bool_:
            return {"dtype": "bool", "shape": list(value.shape), "data": [bool(x) for x in value.reshape(-1)]}
        if np.issubdtype(value.dtype, np.integer):
            return {"dtype": "int64", "shape": list(value.shape), "data": [int(x) for x in value.reshape(-1)]}
        raise TypeError(f"no encoding for dtype {value.dtype}")
    if isinstance(value, dict):
        return {k: encode(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [encode(v) for v in value]
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    return value


def decode(value):
    """The inverse of `encode`: array objects become numpy arrays (float32, int64, bool), the rest recursively."""
    if isinstance(value, dict):
        if set(value) in ({"dtype", "shape", "base64"}, {"dtype", "shape", "data"}):
            shape = tuple(value["shape"])
            if value["dtype"] == "float32":
                return np.frombuffer(base64.b64decode(value["base64"]), dtype="<f4").astype(np.float32).reshape(shape)
            return np.array(value["data"], dtype=np.bool_ if value["dtype"] == "bool" else np.int64).reshape(shape)
        return {k: decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [decode(v) for v in value]
    return value


def dumps(kind: str, cases: list[dict]) -> str:
    """The text of one vector file (stable: sorted keys, one case per line block)."""
    return json.dumps({"schema": 1, "kind": kind, "cases": encode(cases)}, indent=1, sort_keys=True) + "\n"


def load(kind: str, directory: Path = VECTORS) -> list[dict]:
    """The decoded cases of one kind."""
    document = json.loads((Path(directory) / f"{kind}.json").read_text())
    if document.get("schema") != 1 or document.get("kind") != kind:
        raise ValueError(f"{kind}.json: not a schema-1 file of kind {kind!r}")
    return decode(document["cases"])


def mismatch(got, expected: np.ndarray, tolerance) -> str | None:
    """None if `got` meets `expected` within `tolerance`, else a one-line reason."""
    got = np.asarray(got)
    if got.shape != expected.shape:
        return f"shape {got.shape} != {expected.shape}"
    if expected.dtype != np.float32:
        bad = got.astype(expected.dtype) != expected
        return f"{int(bad.sum())} of {bad.size} entries differ" if bad.any() else None
    got = got.astype(np.float32)
    if np.isnan(got).any():
        return "NaN"
    same = got == expected
    if tolerance == "exact":
        bad = ~same
    else:
        finite = np.isfinite(expected)
        with np.errstate(invalid="ignore", over="ignore"):  # inf - inf: decided by `same` above
            close = np.abs(got.astype(np.float64) - expected) <= tolerance["atol"] + tolerance["rtol"] * np.abs(
                expected.astype(np.float64))
        bad = ~(same | (finite & close))
    if not bad.any():
        return None
    with np.errstate(invalid="ignore"):
        worst = np.abs(got.astype(np.float64) - expected)[bad].max()
    return f"{int(bad.sum())} of {bad.size} entries outside {tolerance} (largest |difference| {worst:.3g})"


def check_case(impl, kind: str, case: dict) -> list[str]:
    """The failures of one case: '<kind>/<name>: <output>: <reason>'."""
    label = f"{kind}/{case['name']}"
    try:
        outputs = getattr(impl, kind)(**case["inputs"])
    except Exception as error:  # a port that raises fails the case, and the run goes on
        return [f"{label}: raised {type(error).__name__}: {error}"]
    failures = []
    for name, expected in case["expected"].items():
        if name not in outputs:
            failures.append(f"{label}: no output {name!r}")
            continue
        reason = mismatch(outputs[name], expected, case["tolerance"][name])
        if reason:
            failures.append(f"{label}: {name}: {reason}")
    return failures


def check(impl, kinds=KINDS, directory: Path = VECTORS) -> list[str]:
    """Run every case of every kind against `impl`; the list of failures (empty: it conforms)."""
    failures = []
    for kind in kinds:
        for case in load(kind, directory):
            failures += check_case(impl, kind, case)
    return failures


if __name__ == "__main__":  # python -m conformance.runner module:attr  (an object with the kinds' methods)
    import importlib
    import sys

    if len(sys.argv) != 2 or ":" not in sys.argv[1]:
        sys.exit("usage: python -m conformance.runner MODULE:OBJECT   e.g. conformance.numpy_port:PORT")
    module, name = sys.argv[1].split(":")
    found = check(getattr(importlib.import_module(module), name))
    total = sum(len(load(kind)) for kind in KINDS)
    print("\n".join(found) or f"all {total} cases pass")
    sys.exit(1 if found else 0)
