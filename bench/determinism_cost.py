"""What torch's deterministic mode costs a training step on this machine, with and without the
NaN filling of new tensors (``torch.utils.deterministic.fill_uninitialized_memory``).

rkbench's trainer turns ``torch.use_deterministic_algorithms`` on for CPU training (a resumed run
then ends bit-equal) and turns the NaN filling off (rkbench/performance.py). This script times
one student pass pair that every adversarial step is made of (a forward + input-only backward,
then a forward + full backward) on one batch, each setting in its own fresh process because the
switches are process-wide:

- ``off``: deterministic algorithms off (torch's default);
- ``deterministic+nan_fill``: on, with torch's default NaN filling;
- ``deterministic`` (rkbench): on, NaN filling off.

    python bench/determinism_cost.py --threads 1 --model-opt width_mult=0.5

Writes bench/results/determinism_cost.json. A benchmark, not a test.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

SETTINGS = {"off": (False, True), "deterministic+nan_fill": (True, True), "deterministic": (True, False)}


def child(args) -> None:
    import torch
    import torch.nn.functional as F

    from _common import build, parse_options, set_threads

    set_threads(args.threads)
    deterministic, fill = SETTINGS[args.child]
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = fill
    torch.manual_seed(0)
    model = build(args.model, parse_options(args.model_opt)).train()
    x, y = torch.rand(args.batch_size, 3, 32, 32), torch.randint(0, 10, (args.batch_size,))
    times = []
    for rep in range(args.warmup + args.reps):
        started = time.perf_counter()
        x_adv = x.clone().requires_grad_(True)
        torch.autograd.grad(F.cross_entropy(model(x_adv), y), x_adv)
        F.cross_entropy(model(x), y).backward()
        if rep >= args.warmup:
            times.append(time.perf_counter() - started)
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
                        "determinism_cost.json")
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    from _common import machine

    load_before = machine()["loadavg_1_5_15"]
    samples: dict[str, list[float]] = {name: [] for name in SETTINGS}
    passthrough = ["--model", args.model, "--batch-size", str(args.batch_size), "--warmup", str(args.warmup),
                   "--reps", str(args.reps), *[f"--model-opt={o}" for o in args.model_opt],
                   *(["--threads", str(args.threads)] if args.threads else [])]
    for _ in range(args.rounds):
        for name in SETTINGS:
            output = subprocess.run([sys.executable, __file__, *passthrough, "--child", name], check=True,
                                    capture_output=True, text=True, cwd=Path(__file__).resolve().parent).stdout
            samples[name] += json.loads(output.strip().splitlines()[-1])["samples_s"]
    base = statistics.median(samples["off"])
    print(f"{args.model} {args.model_opt}, batch {args.batch_size}: forward + input-only backward, then forward + "
          f"full backward; median of {len(samples['off'])} per setting; load {load_before}")
    rows = []
    for name, values in samples.items():
        median = statistics.median(values)
        rows.append({"setting": name, "ms": 1000 * median, "relative_to_off": median / base})
        print(f"  {name:<24} {1000 * median:8.0f} ms  {median / base:5.2f} x off")
    result = {"benchmark": "determinism_cost", "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "machine": machine(), "loadavg_before": load_before, "loadavg_after": machine()["loadavg_1_5_15"],
              "config": {"model": args.model, "model_opt": args.model_opt, "batch_size": args.batch_size,
                         "reps": args.reps, "rounds": args.rounds, "threads": args.threads},
              "rows": rows, "samples_s": samples}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
