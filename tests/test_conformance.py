"""The conformance vectors (conformance/vectors/*.json): the project reproduces them, they are not stale,
and a NumPy port written from docs/porting.md passes every one of them.

What this module proves:
  * the project (the fast path run.py runs) and spec.py (the plain reference), fed each case's
    inputs and given uniforms, return every expected output within the case's tolerance (exact
    for tokens, kept sets and the schedule);
  * the committed files are exactly what `conformance.make_vectors` writes from today's code
    (a change of behaviour, inputs or schema without regenerating them fails here);
  * `conformance.numpy_port` (NumPy only: importing it loads no torch) passes every case, so the
    documents are enough to port the method, ties, schedule and draw order included;
  * the vectors have teeth: ports with one rule broken each (a tie order, the schedule's
    rounding, the draw's boundary, the top-p boundary, Adam's eps, the confidence source, the
    draw order) fail the kind that pins that rule.
The project runs with one intra-op thread here: the cases are tiny, and on a busy machine torch's
thread pool costs more than the arithmetic (10 s against 2 s).
"""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from conformance import make_vectors, numpy_port, runner
from conformance.project import PROJECT, SPEC

ROOT = runner.VECTORS.parent.parent  # the repository root: conformance/ imports from there


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("kind", runner.KINDS)
def test_project_reproduces_every_vector(kind):
    assert runner.check(PROJECT, [kind]) == []


@pytest.mark.parametrize("kind", runner.KINDS)
def test_the_plain_reference_spec_py_passes_every_vector(kind):
    assert runner.check(SPEC, [kind]) == []


def test_committed_vectors_are_fresh():
    texts = make_vectors.texts()
    stale = [kind for kind, text in texts.items() if (runner.VECTORS / f"{kind}.json").read_text() != text]
    assert not stale, f"regenerate with python -m conformance.make_vectors: {stale}"


def test_vector_files_are_small():
    sizes = {path.name: path.stat().st_size for path in runner.VECTORS.glob("*.json")}
    assert set(sizes) == {f"{kind}.json" for kind in runner.KINDS}
    assert sum(sizes.values()) < 400_000, sizes


@pytest.mark.parametrize("kind", runner.KINDS)
def test_numpy_port_passes_every_vector(kind):
    assert runner.check(numpy_port.PORT, [kind]) == []


def test_numpy_port_does_not_load_torch():
    code = "import sys, conformance.numpy_port, conformance.runner; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_runner_cli():
    total = sum(len(runner.load(kind)) for kind in runner.KINDS)
    done = subprocess.run([sys.executable, "-m", "conformance.runner", "conformance.numpy_port:PORT"],
                          capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0 and done.stdout.startswith(f"all {total} cases pass"), done.stdout + done.stderr
    failing = subprocess.run([sys.executable, "-m", "conformance.runner", "conformance.numpy_port:NumpyPort"],
                             capture_output=True, text=True, cwd=ROOT)  # the class, not an instance: every case raises
    assert failing.returncode == 1 and failing.stdout.count("raised") == total, failing.stdout[-500:]
    usage = subprocess.run([sys.executable, "-m", "conformance.runner"], capture_output=True, text=True, cwd=ROOT)
    assert usage.returncode != 0 and "usage" in usage.stderr


def test_mismatch_rules():
    inf = np.float32(np.inf)
    expected = np.array([1.0, -inf, 2.0], np.float32)
    assert runner.mismatch(expected.copy(), expected, "exact") is None
    assert runner.mismatch(np.nextafter(expected, 3, dtype=np.float32), expected, "exact")
    assert runner.mismatch(expected + np.float32(1e-6) * np.isfinite(expected), expected,
                           {"atol": 1e-5, "rtol": 0}) is None
    assert runner.mismatch(np.array([1.0, 0.0, 2.0], np.float32), expected, {"atol": 1e9, "rtol": 0})  # inf != finite
    assert runner.mismatch(np.array([1, 2]), np.array([1, 3]), "exact")
    assert runner.mismatch(np.zeros(2, np.float32), np.zeros(3, np.float32), "exact")


def test_encoding_round_trips_every_bit():
    values = np.array([[0.0, -0.0, np.inf], [-np.inf, np.float32(1) / 3, np.finfo(np.float32).tiny]], np.float32)
    back = runner.decode(runner.encode(values))
    assert back.dtype == np.float32 and np.array_equal(back.view(np.int32), values.view(np.int32))
    ints = np.arange(6).reshape(2, 3)
    assert np.array_equal(runner.decode(runner.encode(ints)), ints)


# ---------------------------------------------------------------- the vectors have teeth: broken ports fail


BROKEN = {
    # rule broken -> (the port's function replaced, its replacement, the kinds that must fail)
    "linspace_separate_rounding": ("fma32", lambda a, b, c: float(np.float32(np.float32(a) * np.float32(b)) + np.float32(c)),
                                   ["schedule"]),
    "draw_boundary_inclusive": ("draw", lambda probs, u: np.minimum(
        (np.cumsum(probs.astype(np.float64), -1).astype(np.float32) < (u * probs.sum(-1))[..., None]).sum(-1),
        probs.shape[-1] - 1), ["draw"]),
    "entropy_weight_in_bits": ("entropy_weight", lambda phi: numpy_port.entropy_weight(phi) * np.float32(math.log(2)),
                                ["entropy_weight", "relax", "guide"]),
    "argmax_highest_id": ("argmax_lowest", lambda x: x.shape[-1] - 1 - np.argmax(np.flip(x, -1), -1), ["step"]),
    # equal scores to the HIGHEST position first (a stable order of the reversed row, mapped back)
    "fill_ties_highest_position": ("fill_order", lambda score: score.shape[-1] - 1 - np.argsort(
        np.flip(-score, -1), -1, kind="stable"), ["step"]),
    "adam_eps_inside_the_root": ("adam_denominator", lambda v, t: np.sqrt(
        v / np.float32(1 - numpy_port.BETA2 ** t) + np.float32(numpy_port.ADAM_EPS)), ["guide"]),
}


@pytest.mark.parametrize("rule", sorted(BROKEN))
def test_a_port_that_breaks_a_rule_fails(rule, monkeypatch):
    name, replacement, kinds = BROKEN[rule]
    monkeypatch.setattr(numpy_port, name, replacement)
    for kind in kinds:
        assert runner.check(numpy_port.PORT, [kind]), f"{rule}: {kind} still passes"


def test_a_port_that_cuts_inside_a_tie_group_fails(monkeypatch):
    def cut_by_sort_order(probs, top_p, top_k):  # Dream's rule: the mass ranked before j (sort order inside ties)
        q = np.asarray(probs, np.float32)
        order = np.argsort(-q, -1, kind="stable")
        ranked = np.take_along_axis(q, order, -1).astype(np.float64)
        keep_sorted = (np.cumsum(ranked, -1) - ranked) <= (top_p or 1.0) * ranked.sum(-1, keepdims=True)
        keep = np.zeros_like(keep_sorted)
        np.put_along_axis(keep, order, keep_sorted, -1)
        return np.where(keep, q, np.float32(0)).astype(np.float32)

    monkeypatch.setattr(numpy_port, "filter_probs", cut_by_sort_order)
    assert runner.check(numpy_port.PORT, ["filter"])


@pytest.mark.parametrize("source, alg, wrong", [
    (source, alg, wrong) for source, reads in numpy_port.READS.items() for alg, right in reads.items()
    for wrong in ("p", "q", "q_g") if wrong != right])
def test_a_port_reading_another_confidence_source_fails(source, alg, wrong, monkeypatch):
    """Each (source, alg) reads one of p, q, q_g: the step vectors catch a port that reads another."""
    monkeypatch.setitem(numpy_port.READS, source, {**numpy_port.READS[source], alg: wrong})
    assert runner.check(numpy_port.PORT, ["step"])


def test_a_port_that_consumes_the_draws_in_another_order_fails(monkeypatch):
    class Swapped(numpy_port.Draws):  # the draws taken in pairs swapped: 1 <-> 2 (guide's first two), 3 <-> 4, ...
        def take(self, shape):
            pair = self.next + 1
            if self.next % 2 == 0 and pair < len(self.arrays) and np.size(self.arrays[pair]) == np.prod(shape):
                self.arrays[self.next], self.arrays[pair] = self.arrays[pair], self.arrays[self.next]
            return super().take(shape)

    monkeypatch.setattr(numpy_port, "Draws", Swapped)
    assert runner.check(numpy_port.PORT, ["guide"]) and runner.check(numpy_port.PORT, ["generate"])


def test_the_porting_guide_example_runs(monkeypatch):
    """docs/porting.md's standalone runner (written for JAX) passes the vectors with NumPy standing in for jax.numpy."""
    monkeypatch.chdir(ROOT)  # the example reads conformance/vectors/ from the repository root
    text = (ROOT / "docs" / "porting.md").read_text()
    code = text.split("```python\n")[1].split("```")[0]
    assert "import jax.numpy as jnp" in code and len(code.splitlines()) <= 35
    exec(code.replace("import jax.numpy as jnp", "jnp = np"), {"__name__": "porting_example"})
