"""What the trainer's process-wide CPU settings do to the passes a training step is made of.

rkbench's trainer, on CPU, turns ``torch.use_deterministic_algorithms`` on (a resumed run then ends
bit-equal) without torch's NaN filling of new tensors, and tunes glibc's allocator
(``malloc_tuning``: large tensors from the heap, freed memory kept; rkbench/performance.py). This
script times, on one batch, each setting in its own fresh processes (the switches are
process-wide), the processes run ``--rounds`` times with the settings interleaved:

- ``pair``: a forward + input-only backward, then a forward + full backward (what every step of an
  adversarial method is made of);
- ``two_graph``: two forwards (clean and perturbed) and one backward through both (TRADES' update).

Settings: ``off`` (torch's defaults), ``deterministic+nan_fill`` (deterministic, torch's default NaN
filling), ``deterministic`` (without the filling), ``rkbench`` (deterministic without the filling,
and malloc_tuning: what the trainer runs).

    python bench/process_settings.py --threads 1 --model-opt width_mult=0.5
    python bench/process_settings.py --threads 2                      # full-size MobileNetV2

Writes bench/results/process_settings.json. A benchmark, not a test.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

# setting: (deterministic algorithms, NaN filling, malloc tuning)
SETTINGS = {"off": (False, True, False), "deterministic+nan_fill": (True, True, False),
            "deterministic": (True, False, False), "rkbench": (True, False, True)}
PASSES = ("pair", "two_graph")


def child(args) -> None:
    import torch
    import torch.nn.functional as F

    from _common import build, parse_options, set_threads
    from rkbench.performance import tune_malloc

    set_threads(args.threads)
    deterministic, fill, malloc = SETTINGS[args.child]
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = fill
    if malloc and not tune_malloc():
        raise SystemExit("malloc tuning is not available here (not glibc)")
    torch.manual_seed(0)
    model = build(args.model, parse_options(args.model_opt)).train()
    x, y = torch.rand(args.batch_size, 3, 32, 32), torch.randint(0, 10, (args.batch_size,))
    x_other = (x + 0.01).clamp(0, 1)

    def pair():
        x_adv = x.clone().requires_grad_(True)
        torch.autograd.grad(F.cross_entropy(model(x_adv), y), x_adv)
        F.cross_entropy(model(x), y).backward()

    def two_graph():
        clean, other = model(x), model(x_other)
        (F.cross_entropy(clean, y) + F.kl_div(F.log_softmax(other, 1), F.softmax(clean, 1),
                                              reduction="batchmean")).backward()

    times = {}
    for name, fn in (("pair", pair), ("two_graph", two_graph)):
        times[name] = []
        for rep in range(args.warmup + args.reps):
            started = time.perf_counter()
            fn()
            if rep >= args.warmup:
                times[name].append(time.perf_counter() - started)
    print(json.dumps({"setting": args.child, "samples_s": times}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="mobilenetv2")
    parser.add_argument("--model-opt", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=2, help="each setting's process runs this many times, "
                                                              "the settings interleaved")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--child", choices=list(SETTINGS), help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" /
                        "process_settings.json")
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    from _common import machine, write_result

    load_before = machine()["loadavg_1_5_15"]
    samples = {name: {p: [] for p in PASSES} for name in SETTINGS}
    passthrough = ["--model", args.model, "--batch-size", str(args.batch_size), "--warmup", str(args.warmup),
                   "--reps", str(args.reps), *[f"--model-opt={o}" for o in args.model_opt],
                   *(["--threads", str(args.threads)] if args.threads else [])]
    for _ in range(args.rounds):
        for name in SETTINGS:
            output = subprocess.run([sys.executable, __file__, *passthrough, "--child", name], check=True,
                                    capture_output=True, text=True, cwd=Path(__file__).resolve().parent).stdout
            for p, values in json.loads(output.strip().splitlines()[-1])["samples_s"].items():
                samples[name][p] += values
    print(f"{args.model} {args.model_opt}, batch {args.batch_size}, threads {args.threads}; pair: forward + "
          f"input-only backward, then forward + full backward; two_graph: two forwards, one backward through "
          f"both; median of {len(samples['off']['pair'])} per cell; load {load_before}")
    print(f"  {'setting':<24} {'pair ms':>9} {'x off':>6} {'two_graph ms':>13} {'x off':>6}")
    rows = []
    for name in SETTINGS:
        row = {"setting": name}
        for p in PASSES:
            median = statistics.median(samples[name][p])
            row[f"{p}_ms"] = 1000 * median
            row[f"{p}_relative_to_off"] = median / statistics.median(samples["off"][p])
        rows.append(row)
        print(f"  {name:<24} {row['pair_ms']:>9.0f} {row['pair_relative_to_off']:>6.2f} "
              f"{row['two_graph_ms']:>13.0f} {row['two_graph_relative_to_off']:>6.2f}")
    result = {"benchmark": "process_settings", "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "machine": machine(), "loadavg_before": load_before, "loadavg_after": machine()["loadavg_1_5_15"],
              "config": {"model": args.model, "model_opt": args.model_opt, "batch_size": args.batch_size,
                         "reps": args.reps, "rounds": args.rounds, "threads": args.threads},
              "rows": rows, "samples_s": samples}
    write_result(args.out, result)


if __name__ == "__main__":
    main()
