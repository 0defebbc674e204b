"""What N students cost when they share one teacher (``--share-teacher``), against N separate runs.

For each method (default ``kd,ard``) and each N (default ``1,2,4``) the script trains N students
for one epoch over ``--n-train`` images from one frozen teacher, twice, with rkbench's own trainer:

- **separate**: N calls of ``Trainer.fit``, one student each (the teacher runs N times per batch);
- **shared**: one call of ``Trainer.fit_many`` with N jobs in lock-step (the path
  ``rkbench run --share-teacher`` takes): each batch is drawn, augmented and passed through the
  teacher once for all N students.

Hooks on the teacher count its forwards and time them, inside the very runs being timed. From the
separate runs, a student's own cost per epoch is ``student = (separate - teacher time) / N``; the
table then sets the shared time against the two models of cost:

- ``N x student + 1 x teacher`` (teacher paid once: the goal), and
- ``N x (student + teacher)`` (what separate runs pay).

Students are MobileNetV2 (``--student-opt``), each with its own initialization; the teacher is a
ResNet-18 (``--teacher-opt``), randomly initialized (timings do not depend on its weights).

    python bench/shared_teacher.py --threads 1 --student-opt width_mult=0.5          # about 5 minutes
    python bench/shared_teacher.py --methods kd --n 1,2,4,8

Writes bench/results/shared_teacher.json. A benchmark, not a test.
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from _common import (DEFAULT_NPZ, RESULTS, build, load_data, machine, parse_options, set_threads, training_config,
                     write_result)
from rkbench.methods import build_method
from rkbench.threat import ThreatModel
from rkbench.train import Trainer, TrainJob


class TeacherMeter:
    """Counts and times the teacher's top-level forwards."""

    def __init__(self, teacher: torch.nn.Module):
        self.calls, self.seconds, self._started = 0, 0.0, []
        self._handles = [teacher.register_forward_pre_hook(lambda m, a: self._started.append(time.perf_counter())),
                         teacher.register_forward_hook(self._done)]

    def _done(self, module, inputs, output):
        self.calls += 1
        self.seconds += time.perf_counter() - self._started.pop()

    def reset(self) -> None:
        self.calls, self.seconds = 0, 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default="kd,ard")
    parser.add_argument("--n", default="1,2,4", help="numbers of students, a comma list")
    parser.add_argument("--student", default="mobilenetv2")
    parser.add_argument("--teacher", default="resnet18")
    parser.add_argument("--student-opt", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--teacher-opt", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--training", action="append", default=[], metavar="KEY=VALUE",
                        help="training-section options, e.g. channels_last=True")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--n-train", type=int, default=256, help="images per epoch (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=10, help="attack steps of the adversarial methods")
    parser.add_argument("--reps", type=int, default=1, help="timed repetitions of each (method, N, mode)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--npz", type=Path, default=DEFAULT_NPZ)
    parser.add_argument("--out", type=Path, default=RESULTS / "shared_teacher.json")
    args = parser.parse_args()
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    counts = [int(n) for n in args.n.split(",") if n.strip()]
    student_options, teacher_options = parse_options(args.student_opt), parse_options(args.teacher_opt)
    threads = set_threads(args.threads)
    load_before = machine()["loadavg_1_5_15"]
    data, data_label = load_data(args.npz, args.n_train)
    threat = ThreatModel(eps="8/255", step_size="2/255", steps=args.steps)
    config = training_config(parse_options(args.training), epochs=1, batch_size=args.batch_size, device="cpu",
                             schedule={"name": "constant"})
    device = torch.device("cpu")
    torch.manual_seed(0)
    teacher = build(args.teacher, teacher_options).eval()
    meter = TeacherMeter(teacher)
    batches = -(-args.n_train // args.batch_size)
    print(f"students {args.student} {student_options} <- teacher {args.teacher} {teacher_options}; {batches} batches "
          f"of {args.batch_size} ({data_label}); attack {args.steps} steps; threads {threads}; load {load_before}")

    def students(n: int) -> list[torch.nn.Module]:
        out = []
        for index in range(n):
            torch.manual_seed(100 + index)  # each student its own initialization
            out.append(build(args.student, student_options))
        return out

    def separate(method_name: str, n: int) -> tuple[float, int, float]:
        meter.reset()
        started = time.perf_counter()
        for student in students(n):
            Trainer(config, device).fit(student, build_method(method_name, {}, threat, seed=0), data, teacher, seed=0)
        return time.perf_counter() - started, meter.calls, meter.seconds

    def shared(method_name: str, n: int) -> tuple[float, int, float]:
        jobs = [TrainJob(student, build_method(method_name, {}, threat, seed=0), seed=0) for student in students(n)]
        meter.reset()
        started = time.perf_counter()
        Trainer(config, device).fit_many(jobs, data, teacher)
        elapsed = time.perf_counter() - started
        failed = [job.error for job in jobs if job.error is not None]
        if failed:
            raise failed[0]
        return elapsed, meter.calls, meter.seconds

    separate(methods[0], 1)  # warm-up: first allocations, thread pools
    rows = []
    for method_name in methods:
        for n in counts:
            samples = {"separate": [], "shared": []}
            for rep in range(args.reps):
                order = ("separate", "shared") if rep % 2 == 0 else ("shared", "separate")
                for mode in order:
                    samples[mode].append((separate if mode == "separate" else shared)(method_name, n))
            sep_s = statistics.median(s[0] for s in samples["separate"])
            shr_s = statistics.median(s[0] for s in samples["shared"])
            sep_teacher_s = statistics.median(s[2] for s in samples["separate"])
            shr_teacher_s = statistics.median(s[2] for s in samples["shared"])
            teacher_once_s = sep_teacher_s / n  # one teacher pass over the epoch
            student_s = (sep_s - sep_teacher_s) / n
            once = n * student_s + teacher_once_s
            every = n * (student_s + teacher_once_s)
            row = {"method": method_name, "n_students": n, "separate_s": sep_s, "shared_s": shr_s,
                   "teacher_forwards_separate": samples["separate"][0][1],
                   "teacher_forwards_shared": samples["shared"][0][1],
                   "teacher_s_separate": sep_teacher_s, "teacher_s_shared": shr_teacher_s,
                   "student_s": student_s, "teacher_once_s": teacher_once_s,
                   "model_teacher_once_s": once, "model_teacher_every_s": every,
                   "shared_over_teacher_once": shr_s / once, "shared_over_separate": shr_s / sep_s,
                   "samples": samples}
            rows.append(row)
            print(f"  {method_name} N={n}: separate {sep_s:.1f} s ({row['teacher_forwards_separate']} teacher "
                  f"forwards), shared {shr_s:.1f} s ({row['teacher_forwards_shared']})", flush=True)
    load_after = machine()["loadavg_1_5_15"]

    print()
    header = (f"{'method':<8} {'N':>3} {'T-F sep/shared':>15} {'student s':>10} {'teacher s':>10} "
              f"{'separate s':>11} {'shared s':>9} {'N*S+T s':>8} {'shared/(N*S+T)':>15} {'shared/separate':>16}")
    print(header)
    print("-" * len(header))
    for r in rows:
        forwards = f"{r['teacher_forwards_separate']}/{r['teacher_forwards_shared']}"
        print(f"{r['method']:<8} {r['n_students']:>3} {forwards:>15} {r['student_s']:>10.2f} "
              f"{r['teacher_once_s']:>10.2f} {r['separate_s']:>11.2f} {r['shared_s']:>9.2f} "
              f"{r['model_teacher_once_s']:>8.2f} {r['shared_over_teacher_once']:>15.3f} "
              f"{r['shared_over_separate']:>16.3f}")
    print(f"\nper epoch of {args.n_train} images ({batches} batches). student s = (separate - teacher time) / N; "
          f"teacher s = one teacher pass over the epoch, timed by hooks; N*S+T = N x student + 1 x teacher. "
          f"load average before {load_before}, after {load_after}")
    result = {"benchmark": "shared_teacher", "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine(),
              "loadavg_before": load_before, "loadavg_after": load_after,
              "config": {"student": args.student, "student_options": student_options, "teacher": args.teacher,
                         "teacher_options": teacher_options, "batch_size": args.batch_size, "n_train": args.n_train,
                         "batches": batches, "attack_steps": args.steps, "reps": args.reps, "threads": threads,
                         "data": data_label, "training": config.model_dump(mode="json")},
              "rows": rows}
    write_result(args.out, result)


if __name__ == "__main__":
    main()
