"""Step efficiency of rkbench's training methods: time per training batch split into attack /
teacher / update, passes per batch counted with hooks, and efficiency = ideal / actual.

One batch (CIFAR-sized by default: 128 x 3 x 32 x 32, real images from the cifar10-slice npz
through rkbench's ``npz`` dataset when present, else random), one student and one teacher from
rkbench's model registry (MobileNetV2 <- ResNet-18 by default). Each method runs rkbench's
per-batch training step (bench/_common.py ``trainer_step``: the trainer's augment, Batch,
teacher forward once under no_grad in eval mode, ``method.loss``, backward, optimizer step)
``--warmup`` times, then ``--reps`` times timed; the table shows medians.

- attack ms: time inside ``pgd_attack`` / ``kl_attack`` (monkeypatched where rkbench.methods
  calls them: ``rkbench.methods.adversarial`` for ``craft``/``craft_kl``, FGSM-RS's own import);
- teacher ms: the trainer's teacher forward, plus teacher calls inside ``method.loss`` outside the
  attack (IAD, KDIGA);
- update ms: the rest of ``method.loss`` + backward + optimizer step;
- total ms: the whole step, augmentation included (data ms in the JSON);
- passes S-F/S-B/T-F: student forwards (with and without a graph), student backward traversals
  (a backward through two forwards counts 2), teacher forwards, per batch (all replays).
- ideal ms: the passes the method needs, each at its cost measured in this process on this
  batch, on a copy of the student with the same initial weights: one sample of each single pass
  right beside each timed step (after it, or before it every other step), so that a step and its
  ideal share a window of time on a machine whose load drifts; eff is the median over the timed
  steps of ideal / actual, "eff range" its smallest and largest value. The ideal is
      K x (student forward + input-only backward, in the method's attack BatchNorm mode)
    + U x (student forward + full backward, train mode)     U = forwards the update loss needs
    + N x (student forward under no_grad)                     e.g. TRADES's target S(x), eval mode
    + T x (teacher forward under no_grad, eval mode)
  Known methods (natural, kd, at, ard, trades, rslad) declare what they need (e.g. ARD at
  alpha=1: K, U=1, T=1, no clean student forward; TRADES: K, U=2, N=1, T=0), so a wasted pass
  lowers the efficiency; other methods use the passes observed (marked "obs"). The optimizer step
  is in the actual time, not in the ideal (its cost is in the JSON).

    python bench/step_efficiency.py                                   # full size, all cores
    python bench/step_efficiency.py --threads 1 --student-opt width_mult=0.5 \\
        --teacher-opt base_width=32 --reps 3                          # quick CPU run
    python bench/step_efficiency.py --methods ard,trades --steps 5 --param ard.alpha=0.9

Writes bench/results/step_efficiency.json. A benchmark, not a test.
"""
from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from _common import (DEFAULT_NPZ, RESULTS, Phases, Probe, build, load_data, machine, median_ms, parse_options,
                     set_threads, timed_attacks, trainer_step, write_result)
from rkbench.methods import METHODS, build_method, model_mode
from rkbench.methods.adversarial import AdversarialMethod
from rkbench.models import count_parameters
from rkbench.performance import Performance
from rkbench.suite import TrainingConfig
from rkbench.threat import ThreatModel
from rkbench.train import make_optimizer


@dataclass
class Need:
    attack: int = 0  # input-only attack steps (student forward + input-only backward)
    attack_mode: str = "eval"
    update: int = 0  # student forwards the update backward runs through
    nograd: int = 0  # student forwards under no_grad
    nograd_mode: str = "eval"
    teacher: int = 0  # teacher forwards under no_grad
    teacher_grad: int = 0  # teacher forwards + input-only backward (observed only, e.g. AdaAD)
    backward_only: int = 0  # further backward traversals of an update forward (observed only, e.g. Fast-ARD)
    source: str = "declared"


def declared_need(name: str, method) -> Need | None:
    """What each known method needs per batch; None: use the observed passes."""
    p = method.params
    k = method.attack_settings()[0] if isinstance(method, AdversarialMethod) else 0
    mode = method.attack_mode if method.attack_mode in ("train", "eval") else "eval"
    if name == "natural":
        return Need(update=1)
    if name == "kd":
        return Need(update=1, teacher=1)
    if name == "at":
        return Need(attack=k, attack_mode=mode, update=1)
    if name == "ard":  # at alpha=1 no clean student forward; at alpha=0 no attack, no teacher
        adv = p.alpha > 0
        return Need(attack=k if adv else 0, attack_mode=mode, update=int(adv) + int(p.alpha < 1), teacher=int(adv))
    if name == "trades":  # the attack's target S(x) (no grad, attack mode), then S(x) and S(x_adv) in the loss
        return Need(attack=k, attack_mode=mode, update=2, nograd=1, nograd_mode=mode)
    if name == "rslad":
        return Need(attack=k, attack_mode=mode, update=1 + int(p.clean_weight > 0), teacher=1)
    return None


def observed_need(method, student_probe: Probe, teacher_probe: Probe | None) -> Need:
    mode = method.attack_mode if method.attack_mode in ("train", "eval") else "eval"
    attack_b = student_probe.total("B", "attack")
    update = student_probe.total("F") - attack_b  # graph-building forwards outside the attack
    return Need(attack=attack_b, attack_mode=mode, update=update,
                backward_only=max(student_probe.total("B") - attack_b - update, 0),
                nograd=student_probe.total("F0"), nograd_mode=mode,
                teacher=teacher_probe.total("F0") if teacher_probe else 0,
                teacher_grad=teacher_probe.total("F") if teacher_probe else 0, source="observed")


class Primitives:
    """Single passes on the bench batch, on a separate copy of the student (same architecture and
    initial weights) and the same teacher, each timed once per call of ``sample``."""

    def __init__(self, student, teacher, x, y):
        self.student, self.teacher, self.x, self.y = student, teacher, x, y
        self.samples: dict[str, list[float]] = {}  # seconds, pooled over every method

    def _student_input(self, train: bool):
        with model_mode(self.student, train):
            x_adv = self.x.detach().clone().requires_grad_(True)
            loss = F.cross_entropy(self.student(x_adv), self.y, reduction="sum")
            torch.autograd.grad(loss, x_adv)

    def _student_full(self):
        with model_mode(self.student, True):
            self.student.zero_grad(set_to_none=True)
            loss = F.cross_entropy(self.student(self.x), self.y)
            loss.backward()
        self.student.zero_grad(set_to_none=True)

    def _student_nograd(self, train: bool):
        with torch.no_grad(), model_mode(self.student, train):
            self.student(self.x)

    def _student_graph(self):
        with model_mode(self.student, True):
            self.student(self.x.detach().clone().requires_grad_(True))

    def _teacher_nograd(self):
        with torch.no_grad():
            self.teacher(self.x)

    def _teacher_input(self):
        x_adv = self.x.detach().clone().requires_grad_(True)
        torch.autograd.grad(self.teacher(x_adv).logsumexp(1).sum(), x_adv)

    def _optimizer_step(self):
        if not hasattr(self, "_optimizer"):
            self._optimizer = torch.optim.SGD(self.student.parameters(), lr=1e-9, momentum=0.9, weight_decay=5e-4)
            for p in self.student.parameters():
                p.grad = torch.zeros_like(p)
        self._optimizer.step()

    RUNNERS = {"student_fwd_bwd_input_train": lambda self: self._student_input(True),
               "student_fwd_bwd_input_eval": lambda self: self._student_input(False),
               "student_fwd_bwd_full_train": lambda self: self._student_full(),
               "student_fwd_nograd_train": lambda self: self._student_nograd(True),
               "student_fwd_nograd_eval": lambda self: self._student_nograd(False),
               "student_fwd_graph_train": lambda self: self._student_graph(),
               "teacher_fwd_nograd_eval": lambda self: self._teacher_nograd(),
               "teacher_fwd_bwd_input_eval": lambda self: self._teacher_input(),
               "optimizer_step": lambda self: self._optimizer_step()}

    def sample(self, key: str, record: bool = True) -> float:
        started = time.perf_counter()
        self.RUNNERS[key](self)
        seconds = time.perf_counter() - started
        if record:
            self.samples.setdefault(key, []).append(seconds)
        return seconds

    def done_with_optimizer(self) -> None:
        if hasattr(self, "_optimizer"):
            del self._optimizer
            self.student.zero_grad(set_to_none=True)


def ideal_parts(need: Need, ms: Callable[[str], float]) -> dict:
    """The ideal step in ms, by part, from single-pass costs ``ms(key)``."""
    parts = {"attack": need.attack * ms(f"student_fwd_bwd_input_{need.attack_mode}") if need.attack else 0.0,
             "update": need.update * ms("student_fwd_bwd_full_train") if need.update else 0.0,
             "nograd": need.nograd * ms(f"student_fwd_nograd_{need.nograd_mode}") if need.nograd else 0.0,
             "teacher": need.teacher * ms("teacher_fwd_nograd_eval") if need.teacher else 0.0}
    if need.backward_only:  # an input-only backward alone: (forward + input-only backward) - forward
        parts["backward_only"] = need.backward_only * max(
            ms("student_fwd_bwd_input_train") - ms("student_fwd_graph_train"), 0.0)
    if need.teacher_grad:
        parts["teacher_grad"] = need.teacher_grad * ms("teacher_fwd_bwd_input_eval")
    parts["total"] = sum(parts.values())
    return parts


def needed_keys(need: Need) -> list[str]:
    keys: list[str] = []
    ideal_parts(need, lambda key: keys.append(key) or 0.0)
    return list(dict.fromkeys(keys))


def run_method(name: str, params: dict, args, threat, config, init_state, teacher, x, y, augment_kind,
               prims: Primitives) -> dict:
    """Warm-up and timed steps of one method; after (or, every other step, before) each step, one
    sample of each single pass the method needs, so that each step's ideal is measured in the same
    window of time as the step (the machine's load drifts)."""
    student = build(args.student, args.student_options)
    student.load_state_dict(init_state)
    method = build_method(name, params, threat, seed=0)
    if teacher is None and (method.uses_teacher or method.uses_teacher_features):
        raise SystemExit(f"method {name} needs a teacher")
    method.prepare(student, teacher)  # as the trainer: before the optimizer is built
    optimizer = make_optimizer(student, config)
    base_lrs = [group["lr"] for group in optimizer.param_groups]
    student.train()
    phases = Phases()
    student_probe = Probe(student, phases)
    teacher_probe = Probe(teacher, phases) if teacher is not None else None
    generator = torch.Generator().manual_seed(0)
    times, counts, ideals, finite = [], [], [], True
    need, keys = None, []

    def one_step(rep: int) -> dict:
        student_probe.reset()
        if teacher_probe:
            teacher_probe.reset()
        phases.attack_seconds = 0.0
        parts = trainer_step(student, method, teacher, optimizer, base_lrs, config, x, y, augment_kind,
                             generator, phases, step=rep, steps_per_epoch=max(args.warmup + args.reps, 1))
        teacher_in_loss = teacher_probe.seconds.get("update", 0.0) if teacher_probe else 0.0
        parts["teacher"] = parts["teacher_block"] + teacher_in_loss
        parts["update"] = parts["loss_phase"] - parts["attack"] - teacher_in_loss
        sp, tp = student_probe, teacher_probe  # counted now: the single passes below use the same teacher
        parts["passes"] = {
            "student_F": sp.total("F") + sp.total("F0"), "student_F_nograd": sp.total("F0"),
            "student_B": sp.total("B"), "student_B_attack": sp.total("B", "attack"),
            "student_weight_grads_in_attack": sp.total("W", "attack"),
            "teacher_F": (tp.total("F") + tp.total("F0")) if tp else 0, "teacher_B": tp.total("B") if tp else 0,
            "by_phase": {"student": sp.by_phase(), "teacher": tp.by_phase() if tp else {}}}
        return parts

    with timed_attacks(phases) as patched:
        for rep in range(args.warmup + args.reps):
            timed = rep >= args.warmup
            single = {}
            if rep % 2 and keys:  # odd steps: single passes first
                single = {key: prims.sample(key, timed) for key in keys}
            parts = one_step(rep)
            if need is None:  # from the first step's passes when the method declares none
                need = declared_need(name, method) or observed_need(method, student_probe, teacher_probe)
                keys = needed_keys(need)
            if not single:
                single = {key: prims.sample(key, timed) for key in keys}
            finite = finite and parts.pop("finite")
            step_passes = parts.pop("passes")
            if timed:
                times.append(parts)
                counts.append(step_passes)
                ideals.append(ideal_parts(need, lambda key: 1000 * single[key]))
    student_probe.remove()
    if teacher_probe:
        teacher_probe.remove()
    stable = all(c == counts[0] for c in counts)
    passes = counts[-1]  # of the last timed step (identical across steps when "passes_stable")
    needed = {"student_F": need.attack + need.update + need.nograd,
              "student_B": need.attack + need.update + need.backward_only,
              "teacher_F": need.teacher + need.teacher_grad}
    extra = {k: passes[k] - needed[k] for k in needed if passes[k] != needed[k]}
    med = {k: median_ms([t[k] for t in times]) for k in ("attack", "teacher", "update", "data", "total")}
    ratios = [ideal["total"] / (1000 * t["total"]) for ideal, t in zip(ideals, times)]
    ideal_med = {k: statistics.median(i[k] for i in ideals) for k in ideals[0]}
    return {"method": name, "params": method.params.model_dump(mode="json"), "replays": method.replays,
            "attack_steps": method.attack_settings()[0] if isinstance(method, AdversarialMethod) else 0,
            "attack_functions_patched": patched, "passes": passes, "passes_stable": stable,
            "needed": asdict(need), "needed_passes": needed, "passes_over_needed": extra,
            "ms": med, "ms_samples": [{k: round(1000 * v, 2) for k, v in t.items()} for t in times],
            "ideal_ms": ideal_med, "ideal_ms_samples": [{k: round(v, 2) for k, v in i.items()} for i in ideals],
            "efficiency": statistics.median(ratios), "efficiency_samples": ratios,
            "efficiency_of_medians": ideal_med["total"] / med["total"], "loss_finite": finite}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default="natural,kd,at,ard,trades",
                        help="comma-separated registered method names (default: %(default)s)")
    parser.add_argument("--param", action="append", default=[], metavar="METHOD.KEY=VALUE",
                        help="a method parameter, e.g. ard.alpha=0.9 (repeatable)")
    parser.add_argument("--student", default="mobilenetv2")
    parser.add_argument("--teacher", default="resnet18", help="'none' for no teacher")
    parser.add_argument("--student-opt", action="append", default=[], metavar="KEY=VALUE",
                        help="student model option, e.g. width_mult=0.5 (repeatable)")
    parser.add_argument("--teacher-opt", action="append", default=[], metavar="KEY=VALUE",
                        help="teacher model option, e.g. base_width=32 (repeatable)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=None, help="attack steps (default: the threat model's 10)")
    parser.add_argument("--eps", default="8/255")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    parser.add_argument("--npz", type=Path, default=DEFAULT_NPZ, help="default: %(default)s (random data if absent)")
    parser.add_argument("--out", type=Path, default=RESULTS / "step_efficiency.json")
    args = parser.parse_args()
    args.student_options, args.teacher_options = parse_options(args.student_opt), parse_options(args.teacher_opt)
    threads = set_threads(args.threads)
    torch.manual_seed(0)
    load_before = machine()["loadavg_1_5_15"]

    method_params: dict[str, dict] = {}
    for pair in args.param:
        dotted, _, value = pair.partition("=")
        method_name, _, key = dotted.partition(".")
        method_params.setdefault(method_name, {}).update(parse_options([f"{key}={value}"]))
    names = [n.strip() for n in args.methods.split(",") if n.strip()]
    for name in names:
        METHODS.get(name)  # unknown names fail here, with the registry's list
    threat = ThreatModel(eps=args.eps, **({"steps": args.steps} if args.steps else {}))
    config = TrainingConfig(batch_size=args.batch_size, device="cpu")
    Performance.from_config(config, torch.device("cpu")).apply_process_settings()  # as the trainer does on CPU

    data, data_label = load_data(args.npz, args.batch_size)
    x, y = data.x_train[:args.batch_size], data.y_train[:args.batch_size]
    student = build(args.student, args.student_options)
    init_state = {k: v.clone() for k, v in student.state_dict().items()}
    teacher = None
    if args.teacher != "none":
        teacher = build(args.teacher, args.teacher_options)
        teacher.eval()
        teacher.requires_grad_(False)  # as the trainer does
    n_student = count_parameters(student)
    n_teacher = count_parameters(teacher) if teacher is not None else 0
    print(f"batch {tuple(x.shape)} from {data_label}; student {args.student} {args.student_options} "
          f"({n_student / 1e6:.2f}M params), teacher {args.teacher} {args.teacher_options} "
          f"({n_teacher / 1e6:.2f}M params); attack {threat.steps} steps; torch threads {threads}; "
          f"median of {args.reps} after {args.warmup} warm-up; load average {load_before}")

    # single passes on the same batch, on a copy of the student with the same initial weights
    prims = Primitives(build(args.student, args.student_options), teacher, x.clone(), y)
    prims.student.load_state_dict(init_state)
    rows = []
    for name in names:
        rows.append(run_method(name, method_params.get(name, {}), args, threat, config, init_state, teacher, x, y,
                               data.augment, prims))
        print(f"  measured {name}: {rows[-1]['ms']['total']:.0f} ms", flush=True)
    for rep in range(args.warmup + args.reps):
        prims.sample("optimizer_step", rep >= args.warmup)
    prims.done_with_optimizer()

    header = (f"{'method':<10} {'S-F/S-B/T-F':>12} {'needed':>10} {'attack ms':>10} {'teacher ms':>10} "
              f"{'update ms':>10} {'total ms':>10} {'ideal ms':>10} {'eff':>6} {'eff range':>11}")
    print()
    print(header)
    print("-" * len(header))
    for row in rows:
        p, n = row["passes"], row["needed_passes"]
        observed = f"{p['student_F']}/{p['student_B']}/{p['teacher_F']}"
        needed = f"{n['student_F']}/{n['student_B']}/{n['teacher_F']}" + \
                 ("" if row["needed"]["source"] == "declared" else " obs")
        m = row["ms"]
        print(f"{row['method']:<10} {observed:>12} {needed:>10} {m['attack']:>10.0f} {m['teacher']:>10.0f} "
              f"{m['update']:>10.0f} {m['total']:>10.0f} {row['ideal_ms']['total']:>10.0f} {row['efficiency']:>6.2f} "
              f"{min(row['efficiency_samples']):>5.2f}-{max(row['efficiency_samples']):<5.2f}")
    print()
    unit = {k: round(median_ms(v), 1) for k, v in prims.samples.items()}
    print("single-pass costs (ms, median): " + ", ".join(f"{k} {v}" for k, v in unit.items()))
    print("ms: medians over the timed steps; ideal: per step, from single passes sampled right beside that step; "
          "eff: median over the steps of ideal / actual (eff range: its smallest and largest)")
    notes = []
    for row in rows:
        if row["passes_over_needed"]:
            notes.append(f"{row['method']}: passes differ from needed by {row['passes_over_needed']}")
        if row["passes"]["student_weight_grads_in_attack"]:
            notes.append(f"{row['method']}: the attack computed weight gradients "
                         f"({row['passes']['student_weight_grads_in_attack']} times)")
        if not row["passes_stable"]:
            notes.append(f"{row['method']}: pass counts differed between timed steps")
        if not row["loss_finite"]:
            notes.append(f"{row['method']}: the loss was not finite in a timed step (the trainer would stop)")
    if any(row["needed"]["source"] == "observed" for row in rows):
        notes.append("'obs': no declared needs; the ideal charges the passes observed (double backward, as in "
                     "KDIGA's input-gradient matching, is not modelled: its efficiency is not meaningful)")
    for note in notes:
        print("note: " + note)
    load_after = machine()["loadavg_1_5_15"]
    print(f"load average before {load_before}, after {load_after}")

    result = {"benchmark": "step_efficiency", "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "machine": machine(), "loadavg_before": load_before, "loadavg_after": load_after,
              "config": {"methods": names, "method_params": method_params, "student": args.student,
                         "student_options": args.student_options, "student_params": n_student,
                         "teacher": args.teacher, "teacher_options": args.teacher_options, "teacher_params": n_teacher,
                         "batch_shape": list(x.shape), "data": data_label, "threat": threat.model_dump(mode="json"),
                         "warmup": args.warmup, "reps": args.reps, "threads": threads,
                         "training": config.model_dump(mode="json"), "deterministic_algorithms": True},
              "single_pass_ms": unit,
              "single_pass_samples_ms": {k: [round(1000 * v, 2) for v in s] for k, s in prims.samples.items()},
              "methods": rows, "notes": notes}
    write_result(args.out, result)


if __name__ == "__main__":
    main()
