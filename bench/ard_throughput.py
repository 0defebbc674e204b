"""Images per second of rkbench's ARD training step under the training section's speed options.

One batch (``--batch-size``, CIFAR-sized), rkbench's per-batch step (bench/_common.py
``trainer_step``: the teacher once under no_grad, the 10-step attack on the student, the update),
ResNet-18 student and teacher by default, on ``--device`` (CUDA when there is one). Each variant is
a set of training-section options; every variant starts from the same initial weights and runs
``--warmup`` untimed and ``--reps`` timed steps, the variants interleaved step by step so that a
drift in the machine's load reaches all of them alike:

- ``fp32``: the defaults;
- ``channels_last``: NHWC models and batches (same arithmetic);
- ``bf16``: ``amp: bf16`` (the step under autocast; parameters, backward and optimizer in float32);
- ``channels_last+bf16``: both;
- ``compile`` (with ``--compile``): ``torch.compile`` of student and teacher, after a warm-up that
  includes the compilation.

The table gives ms per step, images/s (batch / step time) and the speedup over fp32. On CUDA the
timing synchronizes the device around each step.

    python bench/ard_throughput.py                                                # CUDA if present
    python bench/ard_throughput.py --device cpu --threads 1 --student-opt base_width=32 \\
        --teacher-opt base_width=32 --reps 3                                      # a CPU run

Writes bench/results/ard_throughput_<device>.json. A benchmark, not a test.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time
from pathlib import Path

import torch

from _common import (DEFAULT_NPZ, RESULTS, Phases, build, load_data, machine, parse_options, set_threads,
                     trainer_step, training_config, write_result)
from rkbench.methods import build_method
from rkbench.performance import Performance
from rkbench.threat import ThreatModel
from rkbench.train import make_optimizer

VARIANTS = {"fp32": {}, "channels_last": {"channels_last": True}, "bf16": {"amp": "bf16"},
            "channels_last+bf16": {"channels_last": True, "amp": "bf16"}, "compile": {"compile": True}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--student", default="resnet18")
    parser.add_argument("--teacher", default="resnet18")
    parser.add_argument("--student-opt", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--teacher-opt", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--variants", default="fp32,channels_last,bf16,channels_last+bf16",
                        help=f"comma list of {', '.join(VARIANTS)}")
    parser.add_argument("--compile", action="store_true", help="add the 'compile' variant")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10, help="attack steps")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--npz", type=Path, default=DEFAULT_NPZ)
    parser.add_argument("--out", type=Path, default=None, help="default: bench/results/ard_throughput_<device>.json")
    args = parser.parse_args()
    names = [v.strip() for v in args.variants.split(",") if v.strip()] + (["compile"] if args.compile else [])
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; known: {list(VARIANTS)}")
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else ("cpu" if args.device == "auto" else args.device))
    threads = set_threads(args.threads)
    student_options, teacher_options = parse_options(args.student_opt), parse_options(args.teacher_opt)
    data, data_label = load_data(args.npz, args.batch_size)
    x, y = data.x_train[:args.batch_size].to(device), data.y_train[:args.batch_size].to(device)
    threat = ThreatModel(eps="8/255", step_size="2/255", steps=args.steps)
    params = {"t": 30.0, "alpha": 1.0, "kl_reduction": "mean"}
    torch.manual_seed(0)
    init_student = build(args.student, student_options)
    teacher = build(args.teacher, teacher_options).eval().requires_grad_(False)
    load_before = machine()["loadavg_1_5_15"]
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    print(f"ARD step: student {args.student} {student_options} <- teacher {args.teacher} {teacher_options}; batch "
          f"{args.batch_size}; attack {args.steps} steps; device {device} {gpu or ''}; threads {threads}; "
          f"data {data_label}; load {load_before}")

    sides = {}
    for name in names:
        config = training_config(VARIANTS[name], epochs=1, batch_size=args.batch_size, device=device.type,
                                 schedule={"name": "constant"})
        performance = Performance.from_config(config, device)
        student = performance.place_model(copy.deepcopy(init_student))
        side_teacher = performance.place_model(copy.deepcopy(teacher))
        method = build_method("ard", params, threat, seed=0)
        method.prepare(student, side_teacher)
        optimizer = make_optimizer(student, config)
        student.train()
        sides[name] = {"config": config, "performance": performance,
                       "runnable": performance.runnable(student), "teacher": performance.runnable(side_teacher),
                       "method": method, "optimizer": optimizer,
                       "base_lrs": [g["lr"] for g in optimizer.param_groups], "times": []}

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    phases = Phases()
    generator = torch.Generator().manual_seed(0)
    for rep in range(args.warmup + args.reps):
        for name in (names if rep % 2 == 0 else list(reversed(names))):
            side = sides[name]
            side["performance"].apply_process_settings()
            sync()
            started = time.perf_counter()
            parts = trainer_step(side["runnable"], side["method"], side["teacher"], side["optimizer"],
                                 side["base_lrs"], side["config"], x, y, data.augment, generator, phases, step=rep,
                                 augment_batch=False, performance=side["performance"])
            sync()
            if not parts["finite"]:
                raise SystemExit(f"{name}: the loss was not finite")
            if rep >= args.warmup:
                side["times"].append(time.perf_counter() - started)
        if rep >= args.warmup:
            print(f"  step {rep + 1 - args.warmup}/{args.reps}: " +
                  ", ".join(f"{n} {sides[n]['times'][-1]:.2f} s" for n in names), flush=True)
    load_after = machine()["loadavg_1_5_15"]

    base = statistics.median(sides[names[0]]["times"])
    rows = []
    for name in names:
        seconds = statistics.median(sides[name]["times"])
        rows.append({"variant": name, "options": VARIANTS[name], "step_ms": 1000 * seconds,
                     "images_per_s": args.batch_size / seconds, "speedup_vs_first": base / seconds,
                     "samples_s": sides[name]["times"]})
    print()
    header = f"{'variant':<20} {'ms/step':>9} {'images/s':>9} {'speedup vs ' + names[0]:>18}"
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['variant']:<20} {r['step_ms']:>9.0f} {r['images_per_s']:>9.1f} {r['speedup_vs_first']:>18.2f}")
    print(f"\nmedian of {args.reps} after {args.warmup} warm-up; load average before {load_before}, after {load_after}")
    out = args.out or RESULTS / f"ard_throughput_{device.type}.json"
    result = {"benchmark": "ard_throughput", "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine(),
              "device": str(device), "gpu": gpu, "loadavg_before": load_before, "loadavg_after": load_after,
              "config": {"student": args.student, "student_options": student_options, "teacher": args.teacher,
                         "teacher_options": teacher_options, "batch_size": args.batch_size, "attack_steps": args.steps,
                         "ard_params": params, "warmup": args.warmup, "reps": args.reps, "threads": threads,
                         "data": data_label},
              "rows": rows}
    write_result(out, result)


if __name__ == "__main__":
    main()
