"""Write the conformance vectors (conformance/vectors/<kind>.json) from the project's own code.

    python -m conformance.make_vectors           rewrite the files
    python -m conformance.make_vectors --check   exit 1 if a committed file differs from what the code gives now

Every case's inputs are fixed here (small shapes, fixed seeds, hand-made ties and exact
dyadic boundaries); its expected outputs are what `conformance.project.Project` -- entrgi and
sampler, called as run.py calls them -- returns. Random draws are 24-bit uniforms made by a
seeded NumPy generator as the project asks for them, and written into the case's inputs
(`uniforms`, in the order consumed), so a port replays them instead of matching a generator.
Random (non-dyadic) inputs are checked for a margin: no top-p mass and no draw falls within
float32 rounding of its boundary, so that any correct float32 port gives the same sets and
tokens. Tolerances: exact for integers, booleans, filtered probabilities and the schedule;
stated per output for the rest (see docs/porting.md).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from conformance.project import PROJECT, Project
from conformance.runner import KINDS, VECTORS, dumps

EXACT = "exact"
F32 = np.float32


def _case(name, kind, inputs, tolerance, seed=None):
    """Run the project on `inputs`; seed: record the draws it asks for (24-bit uniforms from that seed)."""
    impl = PROJECT if seed is None else Project(record=np.random.default_rng(seed))
    outputs = getattr(impl, kind)(**inputs)
    if "uniforms" in outputs:
        inputs = {**inputs, "uniforms": outputs.pop("uniforms")}
    return {"name": name, "inputs": inputs, "expected": outputs, "tolerance": tolerance}


def _normal(rng, shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(F32)


def entropy_weight_cases():
    rng = np.random.default_rng(1)
    tol = {"w": {"atol": 2e-6, "rtol": 0.0}}
    with_inf = _normal(rng, (2, 6), 2.0)
    with_inf[0, [1, 4]] = -np.inf
    with_inf[1, 1:] = -np.inf  # one finite entry: one-hot, w = 0
    return [
        _case("random", "entropy_weight", {"logits": _normal(rng, (3, 7), 3.0)}, tol),
        _case("neg_inf_entries", "entropy_weight", {"logits": with_inf}, tol),
        _case("uniform_rows", "entropy_weight", {"logits": np.full((2, 5), 0.75, F32)}, tol),
        _case("batch_of_positions", "entropy_weight", {"logits": _normal(rng, (2, 3, 40), 1.5)}, tol),
    ]


def relax_cases():
    rng = np.random.default_rng(2)
    tol = {"e_hat": {"atol": 1e-6, "rtol": 1e-5}, "grad": {"atol": 1e-6, "rtol": 1e-4}}
    cases = []
    for method in ("entrgi", "aps", "expectation"):
        for tau in (1.0, 0.7):
            logits = _normal(rng, (2, 3, 6), 2.0)
            logits[1, 2, 0] = -np.inf  # a filtered-out token: probability 0, no gradient
            inputs = {"logits": logits, "E": _normal(rng, (6, 4)), "hard": rng.integers(0, 6, (2, 3)),
                      "method": method, "tau": tau, "a": _normal(rng, (2, 3, 4))}
            cases.append(_case(f"{method}_tau{tau}", "relax", inputs, tol))
    return cases


def _top_p_margin(probs, top_p):
    """The smallest |S(q_j) - top_p T| / T over a row set (float64, exact-ish): rounding cannot cross it if large."""
    q = probs.astype(np.float64)
    order = np.sort(q, -1)[..., ::-1]  # (..., V) descending
    before = np.cumsum(order, -1) - order  # (..., V) mass ranked before each sorted entry
    first = np.argmax(order[..., None, :] == q[..., :, None], -1)  # (..., V) the first sorted slot of q_j's value
    above = np.take_along_axis(before, first, -1)  # (..., V) S(q_j): mass strictly above q_j
    total = q.sum(-1, keepdims=True)
    return float((np.abs(above - top_p * total) / total).min())


def filter_cases():
    rng = np.random.default_rng(3)
    tol = {"filtered": EXACT}
    dyadic = np.array([[0.5, 0.25, 0.125, 0.0625, 0.0625]], F32)
    ties = np.array([[0.25, 0.125, 0.25, 0.125, 0.25]], F32)
    cases = []
    for top_p in (0.5, 0.74, 0.75, 0.875, 0.9375, 0.95):  # S = 0.5, 0.75, 0.875, 0.875 exactly at some of these
        cases.append(_case(f"dyadic_boundary_p{top_p}", "filter", {"probs": dyadic, "top_p": top_p, "top_k": None},
                           tol))
    cases += [
        _case("tie_group_kept_together", "filter", {"probs": ties, "top_p": 0.3, "top_k": None}, tol),
        _case("tie_group_at_boundary", "filter", {"probs": ties, "top_p": 0.75, "top_k": None}, tol),
        _case("top_k_ties_kept", "filter", {"probs": np.array([[0.3, 0.2, 0.1, 0.2, 0.2]], F32), "top_p": None,
                                             "top_k": 2}, tol),
        _case("top_p_then_top_k", "filter", {"probs": dyadic, "top_p": 0.875, "top_k": 2}, tol),
        _case("zeros_and_scale_3", "filter", {"probs": 3 * np.array([[0.0, 0.5, 0.0, 0.25, 0.25]], F32),
                                              "top_p": 0.5, "top_k": None}, tol),
        _case("no_op", "filter", {"probs": dyadic, "top_p": 1.0, "top_k": None}, tol),
    ]
    for name, shape, top_p, top_k, seed in (("random", (2, 3, 50), 0.9, None, 0), ("random_top_k", (4, 30), 0.95, 5, 1),
                                           ("radix_size_V2100", (1, 2100), 0.95, None, 2)):
        local = np.random.default_rng(100 + seed)
        while True:  # multiples of 2^-20 summing to 1: every partial sum exact in float32, in any order
            weights = np.exp(local.standard_normal(shape) * 2.0)
            weights = np.floor(weights / weights.sum(-1, keepdims=True) * 2**20)
            weights[..., 0] += 2**20 - weights.sum(-1)
            probs = (weights * 2.0**-20).astype(F32)
            if _top_p_margin(probs.reshape(-1, shape[-1]), top_p) > 1e-5:
                break
        cases.append(_case(name, "filter", {"probs": probs, "top_p": top_p, "top_k": top_k}, tol))
    del rng
    return cases


def draw_cases():
    tol = {"index": EXACT}
    probs = np.tile(np.array([0.0, 0.5, 0.0, 0.25, 0.25], F32), (5, 1))  # (5, V) the same row five times
    u = np.array([0.0, 0.5, 0.75, 0.99999994, 0.25], F32)  # u * C_V exactly on C_i: the next nonzero token
    cases = [_case("boundaries_and_zeros", "draw", {"probs": probs, "uniforms": [u]}, tol)]
    local = np.random.default_rng(4)
    for seed in range(20):
        probs = (local.random((3, 4, 9)) * (local.random((3, 4, 9)) > 0.3) * 5).astype(F32)  # unnormalised, zeros
        probs[..., 0] += 0.01
        case = _case("random_unnormalised", "draw", {"probs": probs}, tol, seed=40 + seed)
        target = case["inputs"]["uniforms"][0][..., None] * probs.astype(np.float64).sum(-1, keepdims=True)
        if np.abs(np.cumsum(probs.astype(np.float64), -1) - target).min() > 1e-4:
            return cases + [case]
    raise RuntimeError("no draw case with a margin")


def schedule_cases():
    tol = {"ratios": EXACT, "n_masked": EXACT, "n_fill": EXACT}
    grid = ((148, 16, 0.3), (110, 11, 0.3), (128, 128, 1e-3), (6, 3, 1e-3), (7, 6, 0.3), (5, 2, 1e-3), (1, 1, 1e-3),
            (200, 37, 0.05), (64, 9, 0.5), (33, 64, 1e-3))
    return [_case(f"L{L}_T{T}_eps{eps}", "schedule", {"L": L, "T": T, "eps": eps}, tol) for L, T, eps in grid]


def guide_cases():
    rng = np.random.default_rng(5)
    tol = {"phi": {"atol": 1e-4, "rtol": 1e-5}}
    cases = []
    for method in ("entrgi", "aps", "expectation"):
        for reward in ("linear", "tanh"):
            for top_k, tau in ((None, 0.7), (3, 1.0)):
                inputs = {"logits": _normal(rng, (2, 3, 6), 1.5), "masked": np.array([[1, 1, 0], [1, 1, 1]], bool),
                          "tokens": rng.integers(0, 6, (2, 3)), "E": _normal(rng, (6, 4)),
                          "reward": {"kind": reward, "a": _normal(rng, (3, 4))}, "method": method, "M": 3,
                          "eta": 0.5, "tau": tau, "top_p": 0.95, "top_k": top_k}
                cases.append(_case(f"{method}_{reward}_topk{top_k}_tau{tau}", "guide", inputs, tol,
                                   seed=len(cases)))
    return cases


def step_cases():
    """One step, n_fill = 2 of L = 5 (T = 2): identical rows tie, EOS-heavy rows tie at -inf."""
    rng = np.random.default_rng(6)
    tol = {"response": EXACT}
    V, mask_id, eos = 7, 6, 5
    logits = _normal(rng, (6, 5, V), 1.0)
    logits[0, 1:4] = np.array([6.0, 0.0, 0.5, -1.0, 0.0, 0.0, 0.0], F32)  # three identical, confident rows
    logits[1, :, eos] = 9.0  # row 1: EOS at every position (ties at -inf)
    logits[1, 3, :] = np.array([0.0, 0.0, 8.0, 0.0, 0.0, 0.0, 0.0], F32)  # one confident non-EOS
    logits[2, 0, eos] = 9.0
    # Row 3 tells the sources apart. Position 0 (A) is the less confident before the filter and the
    # more confident after it (top_p drops its tail): entropy 0.858 vs 0.777 for B at 1 and 2, 0.662 vs
    # 0.777 filtered. Guidance leaves 0-2 alone and makes the flat 3 and 4 sharp. So entropy fills
    # {1, 2} reading p (authors), {0, 1} reading q (unguided), {3, 4} reading q_g (filtered).
    a_probs, b_probs = [0.6, 0.36, 0.01, 0.01, 0.01, 0.01], [0.8, 0.05, 0.05, 0.05, 0.05, 1e-4]
    logits[3, 0, :6] = F32(0.7) * np.log(np.array(a_probs, F32))  # tau = 0.7: p = the probabilities
    logits[3, 1:3, :6] = F32(0.7) * np.log(np.array(b_probs, F32))
    logits[3, 3:] = 0.0
    # Rows 4 and 5 do the same for maskgit_plus and topk_margin between p and q: top_p drops
    # the tail of D and F (renormalising them up) but keeps all of C and G: r(x) 0.49 > 0.48 unfiltered,
    # 0.49 < 0.5 filtered; margins 0.305 > 0.30 unfiltered, 0.305 < 0.3125 filtered.
    for row, (first, second) in ((4, ([0.49] + [0.1275] * 4 + [1e-4], [0.48, 0.48] + [0.01] * 4)),
                                 (5, ([0.505, 0.2] + [0.0983] * 3 + [1e-4], [0.63, 0.33] + [0.01] * 4))):  # EOS (5) improbable in C, G
        logits[row, 0, :6] = F32(0.7) * np.log(np.array(first, F32))
        logits[row, 1:3, :6] = F32(0.7) * np.log(np.array(second, F32))
        logits[row, 3:] = 0.0
    guided = logits + _normal(rng, logits.shape, 0.5)
    guided[0, 1:4] = guided[0, 1]  # ties survive guidance
    guided[3:] = logits[3:]
    guided[3, 3:, 0] = 12.0
    guided[..., mask_id] = -np.inf  # as guide leaves it: zero gradient at -inf, so Adam never moves it
    common = {"logits": logits, "tau": 0.7, "top_p": 0.95, "top_k": None, "eos_last": True, "eos_ids": [eos],
              "mask_id": mask_id, "T": 2, "eps": 1e-3}
    cases = []
    for alg in ("entropy", "maskgit_plus", "topk_margin", "origin"):
        for confidence in (("authors", "filtered", "unguided") if alg != "origin" else ("authors",)):
            cases.append(_case(f"{alg}_{confidence}", "step", {**common, "guided": guided, "alg": alg,
                                                                "confidence": confidence}, tol, seed=60 + len(cases)))
    cases.append(_case("unguided_entropy_eos_first", "step", {**common, "guided": None, "alg": "entropy",
                                                               "confidence": "authors", "eos_last": False}, tol,
                       seed=80))
    greedy = logits.copy()
    greedy[:, :, [1, 3]] = 4.0  # argmax ties: the lowest id (1)
    cases.append(_case("greedy_argmax_ties", "step", {**common, "logits": greedy, "guided": None, "tau": 0.0,
                                                      "alg": "maskgit_plus", "confidence": "filtered"}, tol, seed=81))
    return cases


def generate_cases():
    """Whole generations: a toy denoiser (a table read at the token left of each position) and reward."""
    rng = np.random.default_rng(7)
    V, L, mask_id, eos = 8, 6, 7, 6
    toy = {"prompt": np.array([[1, 2], [3, 0]]), "mask_id": mask_id, "eos_ids": [eos], "L": L, "K": 2,
           "table": _normal(rng, (L, V, V), 2.0), "E": _normal(rng, (V, 4)), "a": _normal(rng, (L, 4)),
           "T": 3, "M": 2, "eta": 0.5, "tau": 0.7, "top_p": 0.95, "top_k": None, "eps": 1e-3, "eos_last": True,
           "alg": "entropy", "confidence": "authors", "method": "entrgi"}
    tol = {"response": EXACT}
    variants = [{"method": m} for m in ("entrgi", "aps", "expectation", "bon")]
    variants += [{"alg": a} for a in ("maskgit_plus", "topk_margin", "origin")]
    variants += [{"confidence": c} for c in ("filtered", "unguided")]
    variants += [{"top_k": 3, "T": 4, "L": 5}, {"method": "bon", "tau": 0.0, "alg": "topk_margin"}]
    cases = []
    for i, change in enumerate(variants):
        name = "_".join(f"{k}{v}" for k, v in change.items())
        inputs = {**toy, **change}
        inputs["table"], inputs["a"] = toy["table"][:inputs["L"]], toy["a"][:inputs["L"]]
        cases.append(_case(name, "generate", inputs, tol, seed=90 + i))
    return cases


BUILDERS = {"entropy_weight": entropy_weight_cases, "relax": relax_cases, "filter": filter_cases,
            "draw": draw_cases, "schedule": schedule_cases, "guide": guide_cases, "step": step_cases,
            "generate": generate_cases}


def texts() -> dict[str, str]:
    """{kind: the file's text} as the code gives it now."""
    return {kind: dumps(kind, BUILDERS[kind]()) for kind in KINDS}


def main(argv: list[str]) -> int:
    if argv not in ([], ["--check"]):
        print("error: usage: python -m conformance.make_vectors [--check]", file=sys.stderr)
        return 2
    stale = []
    for kind, text in texts().items():
        path = Path(VECTORS) / f"{kind}.json"
        if argv:
            if not path.exists() or path.read_text() != text:
                stale.append(kind)
        else:
            path.write_text(text)
    if stale:
        print(f"stale: {', '.join(stale)} (run python -m conformance.make_vectors)")
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
