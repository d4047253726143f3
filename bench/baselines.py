"""The linear baseline's solvers side by side on the default run's split.

    python bench/baselines.py                      # the embedded corpus, 3 rounds
    python bench/baselines.py --data rt.csv        # any run_study.py data arguments

Phase 0 of ``run_study.py`` makes the split (same seed, same rows as the pipeline's), the
TF-IDF character 1-4-grams are fitted once, then each solver fits the C path (10, 100,
1000) and C is chosen on val: one-vs-rest liblinear primal (the baseline now), dual (the
baseline before: it stops unconverged at max_iter from C = 1000), and multinomial saga and
lbfgs with warm starts along the C path. Prints each solver's median seconds over the
rounds, its ratio to the primal fit, the C chosen and its val and test accuracy.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.multiclass import OneVsRestClassifier

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from run_study import parse_config  # noqa: E402
from storage import read_json  # noqa: E402
from tuner.prepare import load_data  # noqa: E402

GRID = (10.0, 100.0, 1000.0)
SOLVERS = {
    "ovr liblinear primal (now)": lambda c: OneVsRestClassifier(
        LogisticRegression(C=c, solver="liblinear", max_iter=1000, random_state=0)),
    "ovr liblinear dual (before)": lambda c: OneVsRestClassifier(
        LogisticRegression(C=c, solver="liblinear", dual=True, max_iter=1000,
                           random_state=0)),
    "multinomial saga, warm starts": lambda c: LogisticRegression(
        C=c, solver="saga", max_iter=100, tol=1e-3, warm_start=True),
    "multinomial lbfgs, warm starts": lambda c: LogisticRegression(
        C=c, solver="lbfgs", max_iter=300, warm_start=True),
}
WARM = ("multinomial saga, warm starts", "multinomial lbfgs, warm starts")


def split(argv: list[str]) -> tuple[dict[str, list[str]], dict[str, np.ndarray]]:
    work = Path(tempfile.mkdtemp(prefix="bench-baselines-"))
    subprocess.run([sys.executable, str(ROOT / "run_study.py"), *argv, "--backup-dir", str(work),
                    "--study", "b", "--stop-after", "0", "--no-progress"], cwd=ROOT, check=True,
                   capture_output=True)
    dataset = load_data(parse_config(argv))
    state = read_json(work / "b" / "preprocessing" / "phase0_state.json")
    rows = {k: [dataset.records[i] for i in v] for k, v in state["splits"].items()}
    label = dataset.fields[0].field
    return ({k: [r[dataset.text_field] for r in v] for k, v in rows.items()},
            {k: np.array([str(r[label]) for r in v]) for k, v in rows.items()})


def fit_path(name: str, x: dict, y: dict) -> tuple[float, float, float, float]:
    """(seconds, chosen C, val acc, test acc) of one solver along the C path."""
    start, model, scores = time.perf_counter(), None, []
    for c in GRID:
        if name in WARM and model is not None:
            model.set_params(C=c)  # warm start: from the previous C's solution
        else:
            model = SOLVERS[name](c)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            model.fit(x["train"], y["train"])
        scores.append((c, float((model.predict(x["val"]) == y["val"]).mean()),
                       float((model.predict(x["test"]) == y["test"]).mean())))
    best = max(scores, key=lambda s: s[1])  # ties keep the smaller C, like the pipeline
    return time.perf_counter() - start, *best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    args, run_args = p.parse_known_args()
    texts, y = split(run_args)
    vec = TfidfVectorizer(analyzer="char", ngram_range=(1, 4), sublinear_tf=True,
                          lowercase=False, dtype=np.float32)
    x = {"train": vec.fit_transform(texts["train"])}
    x.update({k: vec.transform(texts[k]) for k in ("val", "test")})
    print(f"{x['train'].shape[0]} train rows x {x['train'].shape[1]} n-grams, "
          f"{len(set(y['train']))} classes; {args.rounds} rounds, solvers interleaved")
    times: dict[str, list[float]] = {n: [] for n in SOLVERS}
    found: dict[str, tuple] = {}
    for _ in range(args.rounds):
        for name in SOLVERS:
            seconds, *found[name] = fit_path(name, x, y)
            times[name].append(seconds)
    base = statistics.median(times[next(iter(SOLVERS))])
    print(f"{'solver':<32} {'median s':>9} {'ratio':>7}   C      val acc  test acc")
    for name in SOLVERS:
        m = statistics.median(times[name])
        c, val, test = found[name]
        print(f"{name:<32} {m:9.1f} {m / base:7.2f}   {c:<6g} {val:.4f}   {test:.4f}")


if __name__ == "__main__":
    main()
