"""Near-duplicate removal: tuner.data_quality against the strategy's double loop.

Both run on the same embedded rows in this one process; the kept sets are compared,
then the fast path runs alone on the whole corpus (seconds and peak memory).

    python bench/dedup.py --rows 10000 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from storage import load_embedded
from tuner.data_quality import reference_remove_near_duplicates, remove_near_duplicates

_CHILD = """
import json, re, sys, time
from tuner.data_quality import remove_near_duplicates
records = json.load(open(sys.argv[1], encoding="utf-8"))
start = time.perf_counter()
kept, _ = remove_near_duplicates(records, float(sys.argv[2]), progress=False)
seconds = time.perf_counter() - start
# VmHWM: this process' peak RSS (ru_maxrss would carry the parent's over the exec).
hwm = int(re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1))
print(json.dumps({"seconds": seconds, "kept": len(kept), "peak_rss_mib": hwm / 1024}))
"""


def _whole_corpus_in_a_child(threshold: float) -> dict:
    """Dedup the whole corpus in a fresh process, so its peak RSS is the job's alone
    (Python + torch imported by the package + the records + the dedup)."""
    records = load_embedded(None).records
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "corpus.json"
        path.write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
        out = subprocess.run([sys.executable, "-c", _CHILD, str(path), str(threshold)],
                             capture_output=True, text=True, check=True)
    return json.loads(out.stdout) | {"rows": len(records)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=10_000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threshold", type=float, default=0.92)
    args = p.parse_args()

    records = load_embedded(args.rows, seed=0).records
    fast_s, seed_s = [], []
    for r in range(args.repeats):
        start = time.perf_counter()
        kept, stats = remove_near_duplicates(records, args.threshold, progress=False)
        fast_s.append(time.perf_counter() - start)
        start = time.perf_counter()
        reference = reference_remove_near_duplicates(records, args.threshold)
        seed_s.append(time.perf_counter() - start)
        same = [id(x) for x in kept] == [id(records[i]) for i in reference]
        print(f"round {r + 1}: fast {fast_s[-1]:.3f} s  seed loop {seed_s[-1]:.2f} s  "
              f"speed-up {seed_s[-1] / fast_s[-1]:.0f}x  same kept rows: {same}")
    ratios = [s / f for s, f in zip(seed_s, fast_s, strict=True)]
    print(f"{len(records)} rows -> {stats['cleaned_count']} kept; median fast "
          f"{statistics.median(fast_s):.3f} s, seed loop {statistics.median(seed_s):.2f} s; "
          f"median speed-up {statistics.median(ratios):.0f}x (target >= 100x)")

    runs = [_whole_corpus_in_a_child(args.threshold) for _ in range(args.repeats)]
    print(f"whole corpus: {runs[0]['rows']} rows -> {runs[0]['kept']} kept, median "
          f"{statistics.median(r['seconds'] for r in runs):.2f} s (target <= 20 s), peak RSS of "
          f"the whole process {max(r['peak_rss_mib'] for r in runs):.0f} MiB (target < 1 GiB)")


if __name__ == "__main__":
    main()
