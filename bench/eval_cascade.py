"""Time the evaluation cascade against running every attack on every example.

For each finished run in a results directory: evaluate with the full protocol twice, once
cascaded (each attack on the examples still robust) and once exact (every attack everywhere),
check that the per-example worst case is the same, and print the time ratio.

    python bench/eval_cascade.py results/digits [--attacks pgd20,pgd1000,pgd20-r10,autoattack] [--eps 0.1]

Writes bench/results/eval_cascade.json. A benchmark, not a test: it takes minutes.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from rkbench.api import evaluate
from rkbench.record import read_record
from rkbench.store import iter_result_dirs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results_dir", type=Path)
    parser.add_argument("--attacks", default="pgd20,pgd1000,pgd20-r10,autoattack")
    parser.add_argument("--eps", default="0.1")
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--max-runs", type=int, default=None)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "eval_cascade.json")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    attacks = args.attacks.split(",")
    rows = []
    records = [(d, read_record(d)[0]) for d in iter_result_dirs(args.results_dir)]
    runs = [(d, record) for d, record in records if record is not None and record.finished][: args.max_runs]
    print(f"{'run':<40} {'cascade s':>10} {'exact s':>10} {'ratio':>7}  same worst case")
    for run, record in runs:
        name = f"{record.student} <- {record.method}"
        timings, worst = {}, {}
        for cascade in (True, False):
            started = time.perf_counter()
            evaluation = evaluate(str(run), args.dataset, attacks, threat={"eps": args.eps}, cascade=cascade,
                                  cache_dir=None)
            timings[cascade] = time.perf_counter() - started
            worst[cascade] = evaluation.result.worst_case()
        same = bool(np.array_equal(worst[True], worst[False]))
        differing = int((worst[True] != worst[False]).sum())
        rows.append({"run": run.name, "name": name, "cascade_s": timings[True], "exact_s": timings[False],
                     "ratio": timings[True] / timings[False], "same_worst_case": same,
                     "differing_examples": differing, "worst_case_cascade": float(worst[True].mean()),
                     "worst_case_exact": float(worst[False].mean())})
        print(f"{name:<40} {timings[True]:>10.1f} {timings[False]:>10.1f} {rows[-1]['ratio']:>7.2f}  "
              f"{'yes' if same else f'no ({differing} examples differ)'}")
    total_cascade = sum(r["cascade_s"] for r in rows)
    total_exact = sum(r["exact_s"] for r in rows)
    print(f"{'total':<40} {total_cascade:>10.1f} {total_exact:>10.1f} {total_cascade / total_exact:>7.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"attacks": attacks, "eps": args.eps, "runs": rows,
                                    "total_cascade_s": total_cascade, "total_exact_s": total_exact,
                                    "ratio": total_cascade / total_exact,
                                    "torch_threads": torch.get_num_threads()}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
