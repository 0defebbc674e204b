"""rkbench's ARD training against a re-implementation of the official ARD training loop
(Goldblum et al., AAAI 2020; goldblumm/AdversariallyRobustDistillation), same models, same data,
same machine, one process.

The reference is written here from the published structure of the official training step, not
copied, and nothing is fetched:
- data: a Dataset of uint8 HWC images that makes a PIL image per item and applies torchvision's
  RandomCrop(32, padding=4) + RandomHorizontalFlip + ToTensor, read through a torch DataLoader
  (shuffle, batch 128, ``--workers``, the official code uses 2);
- the attack: a wrapper module around the student, called with the student in train mode
  (BatchNorm statistics move during the attack): uniform random start in the eps ball (not
  clipped), K steps of signed gradient ascent on the summed CE to the labels, projected and
  clipped; it returns the student's logits on x_adv from one more forward, and x_adv;
- the teacher forward on the clean batch (eval mode, parameters frozen, no no_grad block);
- a clean student forward even at alpha=1, its CE term multiplied by (1 - alpha) = 0 (the
  backward still runs through it);
- loss = alpha * t^2 * nn.KLDivLoss()(log_softmax(S(x_adv)/t), softmax(T(x)/t)) (reduction
  'mean': batch x classes) + (1 - alpha) * CE(S(x), y); alpha=1, t=30; SGD lr 0.1, momentum 0.9,
  weight decay 2e-4.

rkbench runs method ``ard`` with the same settings (alpha=1, t=30, kl_reduction 'mean',
attack_mode 'train', 10 x 2/255 at 8/255, SGD weight decay 2e-4, constant schedule):
- per batch: the trainer's step (bench/_common.py ``trainer_step``) on the same batch tensor as
  the reference step, compute only (no data loading on either side), interleaved, median;
- per epoch: ``rkbench.train.Trainer.fit`` for one epoch over ``--n-train`` images (whole dataset
  as tensors, batched augmentation), against the reference's loop over its DataLoader (workers
  started per epoch, as the official loop does), data loading included. ``--n-train`` makes the
  "epoch" a subset so that it finishes in minutes on a CPU.
Known departures of rkbench's ARD, at equal loss: it skips the zero-weighted clean forward
(so BatchNorm running statistics move once less per batch) and clips the random start to [0, 1].
Each side runs with its own torch.use_deterministic_algorithms setting (the trainer turns it on
on CPU; the reference leaves it off). The trainer's glibc allocator tuning (malloc_tuning) is
process-wide: from the first warm-up step on, both sides run with it.

    python bench/ard_vs_reference.py                          # full size: MobileNetV2 <- ResNet-18
    python bench/ard_vs_reference.py --threads 1 --student-opt width_mult=0.5 \\
        --teacher-opt base_width=32 --n-train 512 --reps 3     # quick CPU run

Writes bench/results/ard_vs_reference.json. A benchmark, not a test.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from _common import (DEFAULT_NPZ, RESULTS, Phases, Probe, build, load_data, machine, median_ms, parse_options,
                     set_threads, timed_attacks, trainer_step, training_config, write_result)
from rkbench.data.augment import augment
from rkbench.methods import build_method, kl_divergence
from rkbench.models import count_parameters
from rkbench.performance import Performance
from rkbench.suite import OptimizerConfig, ScheduleConfig
from rkbench.threat import ThreatModel
from rkbench.train import Trainer, make_optimizer

WEIGHT_DECAY = 2e-4  # the official script's SGD weight decay (rkbench's default is 5e-4)


# ----------------------------------------------------------------------------------------------
# the reference: the official ARD training step's structure


class PilImages(Dataset):
    """uint8 HWC images and int labels; each item becomes a PIL image, then the transform runs
    (what torchvision's CIFAR10 dataset does)."""

    def __init__(self, images_hwc: np.ndarray, labels: list[int], transform):
        self.images, self.labels, self.transform = images_hwc, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        return self.transform(Image.fromarray(self.images[index])), self.labels[index]


REFERENCE_TRANSFORM = transforms.Compose([transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(),
                                          transforms.ToTensor()])


class PGDWrapper(nn.Module):
    """The official structure: a module around the student whose forward crafts x_adv (PGD on the
    summed CE, from a uniform start that is not clipped) and returns (student(x_adv), x_adv)."""

    def __init__(self, net: nn.Module, eps: float, step_size: float, steps: int):
        super().__init__()
        self.net, self.eps, self.step_size, self.steps = net, eps, step_size, steps

    def forward(self, inputs: torch.Tensor, targets: torch.Tensor):
        clean = inputs.detach()
        x = clean + torch.empty_like(clean).uniform_(-self.eps, self.eps)
        for _ in range(self.steps):
            x = x.requires_grad_()
            with torch.enable_grad():
                objective = F.cross_entropy(self.net(x), targets, reduction="sum")
            (grad,) = torch.autograd.grad(objective, [x])
            x = x.detach() + self.step_size * grad.detach().sign()
            x = torch.clamp(torch.min(torch.max(x, clean - self.eps), clean + self.eps), 0.0, 1.0)
        return self.net(x), x


def reference_optimizer(wrapper: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(wrapper.parameters(), lr=0.1, momentum=0.9, weight_decay=WEIGHT_DECAY)


def reference_step(wrapper: PGDWrapper, teacher: nn.Module, optimizer, inputs, targets, alpha: float,
                   t: float, channels_last: bool = False) -> float:
    kl_loss, ce_loss = nn.KLDivLoss(), nn.CrossEntropyLoss()  # KLDivLoss(): reduction 'mean'
    if channels_last:  # not in the official code: --ref-channels-last, to separate layout from structure
        inputs = inputs.contiguous(memory_format=torch.channels_last)
    optimizer.zero_grad()
    adv_logits, _ = wrapper(inputs, targets)
    teacher_logits = teacher(inputs)
    clean_logits = wrapper.net(inputs)  # run even at alpha = 1
    loss = (alpha * t * t * kl_loss(F.log_softmax(adv_logits / t, dim=1), F.softmax(teacher_logits / t, dim=1))
            + (1.0 - alpha) * ce_loss(clean_logits, targets))
    loss.backward()
    optimizer.step()
    return loss.item()


def reference_epoch(wrapper, teacher, optimizer, dataset, batch_size: int, workers: int, alpha: float,
                    t: float, channels_last: bool = False) -> int:
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers)
    wrapper.train()
    batches = 0
    for inputs, targets in loader:
        reference_step(wrapper, teacher, optimizer, inputs, targets, alpha, t, channels_last)
        batches += 1
    return batches


def reference_data_epoch(dataset, batch_size: int, workers: int) -> int:
    batches = 0
    for _ in DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers):
        batches += 1
    return batches


def rkbench_data_epoch(data, batch_size: int, generator: torch.Generator) -> int:
    """The trainer's data path alone: a permutation, whole-batch indexing, batched augmentation."""
    n = data.x_train.shape[0]
    order = torch.randperm(n, generator=generator)
    batches = 0
    for start in range(0, n, batch_size):
        index = order[start:start + batch_size]
        augment(data.x_train[index], data.augment, generator=generator)
        data.y_train[index]
        batches += 1
    return batches


# ----------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--student", default="mobilenetv2")
    parser.add_argument("--teacher", default="resnet18")
    parser.add_argument("--student-opt", action="append", default=[], metavar="KEY=VALUE",
                        help="student model option, e.g. width_mult=0.5 (repeatable)")
    parser.add_argument("--teacher-opt", action="append", default=[], metavar="KEY=VALUE",
                        help="teacher model option, e.g. base_width=32 (repeatable)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--n-train", type=int, default=512, help="images per 'epoch' (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=10, help="attack steps (official: 10)")
    parser.add_argument("--alpha", type=float, default=1.0)
    parser.add_argument("--t", type=float, default=30.0)
    parser.add_argument("--workers", default="2",
                        help="reference DataLoader workers, a comma list timed one after the other per epoch "
                             "(the first is the headline; official: 2), e.g. 2,0")
    parser.add_argument("--full-epoch", type=int, default=50_000, help="images of the projected full epoch")
    parser.add_argument("--warmup", type=int, default=1, help="per-batch warm-up steps per side")
    parser.add_argument("--reps", type=int, default=3, help="timed steps per side (interleaved)")
    parser.add_argument("--epoch-reps", type=int, default=1, help="timed epochs per side (interleaved)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    parser.add_argument("--training", action="append", default=[], metavar="KEY=VALUE",
                        help="rkbench's training-section speed options, e.g. channels_last=True (repeatable)")
    parser.add_argument("--ref-channels-last", action="store_true",
                        help="give the reference NHWC models and batches too (not in the official code)")
    parser.add_argument("--npz", type=Path, default=DEFAULT_NPZ, help="default: %(default)s (random data if absent)")
    parser.add_argument("--out", type=Path, default=RESULTS / "ard_vs_reference.json")
    args = parser.parse_args()
    # nn.KLDivLoss()'s reduction 'mean' is the official code's choice; torch warns about it on every call
    warnings.filterwarnings("ignore", message="reduction: 'mean' divides the total loss")
    workers_list = [int(w) for w in str(args.workers).split(",") if w.strip()]
    student_options, teacher_options = parse_options(args.student_opt), parse_options(args.teacher_opt)
    threads = set_threads(args.threads)
    torch.manual_seed(0)
    load_before = machine()["loadavg_1_5_15"]

    threat = ThreatModel(eps="8/255", steps=args.steps, step_size="2/255")
    params = {"alpha": args.alpha, "t": args.t, "kl_reduction": "mean"}
    training_options = parse_options(args.training)
    config = training_config(training_options, epochs=1, batch_size=args.batch_size, device="cpu",
                             optimizer=OptimizerConfig(name="sgd", lr=0.1, momentum=0.9,
                                                       weight_decay=WEIGHT_DECAY),
                             schedule=ScheduleConfig(name="constant"))
    performance = Performance.from_config(config, torch.device("cpu"))
    ref_layout = torch.channels_last if args.ref_channels_last else torch.contiguous_format

    # same data: rkbench's tensors (npz dataset) and, from the very same uint8 pixels, the reference's HWC images
    data, data_label = load_data(args.npz, args.n_train)
    pixels = (data.x_train * 255).round().to(torch.uint8)
    images_hwc = np.ascontiguousarray(pixels.permute(0, 2, 3, 1).numpy())
    labels = [int(v) for v in data.y_train.tolist()]
    reference_dataset = PilImages(images_hwc, labels, REFERENCE_TRANSFORM)

    # same models: one initialization for both students, one frozen teacher in eval mode
    init_student = build(args.student, student_options)
    init_state = {k: v.clone() for k, v in init_student.state_dict().items()}
    teacher = build(args.teacher, teacher_options)
    teacher.eval()
    teacher.requires_grad_(False)  # the trainer does this; the official code freezes the teacher's parameters
    # each side its own copy of the teacher: a layout option of one side must not reach the other
    rk_teacher = performance.place_model(copy.deepcopy(teacher))
    ref_teacher = copy.deepcopy(teacher).to(memory_format=ref_layout)

    def fresh_student():
        student = build(args.student, student_options)
        student.load_state_dict(init_state)
        return student

    n_student, n_teacher = count_parameters(init_student), count_parameters(teacher)
    print(f"ARD, student {args.student} {student_options} ({n_student / 1e6:.2f}M params) <- teacher {args.teacher} "
          f"{teacher_options} ({n_teacher / 1e6:.2f}M params); batch {args.batch_size}; attack {threat.steps} x "
          f"2/255 at 8/255; alpha {args.alpha}, t {args.t}; data {data_label}; torch threads {threads}; "
          f"reference DataLoader workers {workers_list}; rkbench training options {training_options}; "
          f"reference channels_last {args.ref_channels_last}; load average {load_before}")

    # -- loss formulas agree (same logits) --------------------------------------------------------
    generator = torch.Generator().manual_seed(1)
    s_logits, t_logits = torch.randn(64, 10, generator=generator) * 5, torch.randn(64, 10, generator=generator) * 5
    ours = args.t ** 2 * kl_divergence(s_logits, t_logits, args.t, "mean")
    theirs = args.t ** 2 * nn.KLDivLoss()(F.log_softmax(s_logits / args.t, dim=1), F.softmax(t_logits / args.t, dim=1))
    loss_formula_diff = float((ours - theirs).abs())

    # -- per batch, compute only -----------------------------------------------------------------
    x_batch = augment(data.x_train[:args.batch_size], data.augment, generator=torch.Generator().manual_seed(0))
    y_batch = data.y_train[:args.batch_size]
    rk_student = performance.place_model(fresh_student())
    rk_method = build_method("ard", params, threat, seed=0, attack_mode="train")
    rk_method.prepare(rk_student, rk_teacher)
    rk_optimizer = make_optimizer(rk_student, config)
    rk_base_lrs = [group["lr"] for group in rk_optimizer.param_groups]
    rk_student.train()
    ref_student = fresh_student().to(memory_format=ref_layout)
    wrapper = PGDWrapper(ref_student, threat.eps, threat.step_size, threat.steps)
    ref_optimizer = reference_optimizer(wrapper)
    wrapper.train()

    phases = Phases()
    probes = {"rkbench": (Probe(rk_student, phases), Probe(rk_teacher, phases)),
              "reference": (Probe(ref_student, phases), Probe(ref_teacher, phases))}
    batch_times: dict[str, list[float]] = {"rkbench": [], "reference": []}
    passes: dict[str, dict] = {}
    aug_generator = torch.Generator().manual_seed(0)

    def run_side(side: str, rep: int) -> float:
        student_probe, teacher_probe = probes[side]
        for probe in (p for pair in probes.values() for p in pair):
            probe.reset()
        if side == "rkbench":
            performance.apply_process_settings()  # the trainer's setting (on CPU by default)
            with timed_attacks(phases):
                parts = trainer_step(rk_student, rk_method, rk_teacher, rk_optimizer, rk_base_lrs, config, x_batch,
                                     y_batch, data.augment, aug_generator, phases, step=rep, augment_batch=False,
                                     performance=performance)
            seconds = parts["total"]
        else:
            torch.use_deterministic_algorithms(False)
            started = time.perf_counter()
            reference_step(wrapper, ref_teacher, ref_optimizer, x_batch, y_batch, args.alpha, args.t,
                           args.ref_channels_last)
            seconds = time.perf_counter() - started
        passes[side] = {"student_F": student_probe.total("F") + student_probe.total("F0"),
                        "student_B": student_probe.total("B"),
                        "teacher_F": teacher_probe.total("F") + teacher_probe.total("F0")}
        return seconds

    for rep in range(args.warmup + args.reps):
        sides = ("rkbench", "reference") if rep % 2 == 0 else ("reference", "rkbench")
        for side in sides:
            seconds = run_side(side, rep)
            if rep >= args.warmup:
                batch_times[side].append(seconds)
        if rep >= args.warmup:
            print(f"  batch {rep + 1 - args.warmup}/{args.reps}: rkbench {batch_times['rkbench'][-1]:.2f} s, "
                  f"reference {batch_times['reference'][-1]:.2f} s", flush=True)
    for pair in probes.values():
        for probe in pair:
            probe.remove()
    batch_ms = {side: median_ms(samples) for side, samples in batch_times.items()}

    # -- per epoch, data loading included ---------------------------------------------------------
    epoch_sides = ["rkbench"] + [f"reference/{w}w" for w in workers_list]
    epoch_times: dict[str, list[float]] = {side: [] for side in epoch_sides}
    epoch_batches: dict[str, int] = {}
    rk_epoch_student, ref_epoch_student = fresh_student(), fresh_student().to(memory_format=ref_layout)
    ref_epoch_wrapper = PGDWrapper(ref_epoch_student, threat.eps, threat.step_size, threat.steps)
    ref_epoch_optimizer = reference_optimizer(ref_epoch_wrapper)
    for rep in range(args.epoch_reps):
        shift = rep % len(epoch_sides)  # rotate the order so that no side always runs first
        for side in epoch_sides[shift:] + epoch_sides[:shift]:
            if side == "rkbench":
                method = build_method("ard", params, threat, seed=rep, attack_mode="train")
                started = time.perf_counter()  # the trainer turns deterministic algorithms on itself
                result = Trainer(config, torch.device("cpu")).fit(rk_epoch_student, method, data, rk_teacher,
                                                                  seed=rep)
                epoch_times[side].append(time.perf_counter() - started)
                epoch_batches[side] = result.steps
            else:
                workers = int(side.split("/")[1][:-1])
                torch.use_deterministic_algorithms(False)
                torch.manual_seed(rep)
                started = time.perf_counter()
                epoch_batches[side] = reference_epoch(ref_epoch_wrapper, ref_teacher, ref_epoch_optimizer,
                                                      reference_dataset, args.batch_size, workers, args.alpha, args.t,
                                                      args.ref_channels_last)
                epoch_times[side].append(time.perf_counter() - started)
            print(f"  epoch {rep + 1}/{args.epoch_reps} {side}: {epoch_times[side][-1]:.1f} s", flush=True)
    epoch_s = {side: median_ms(samples) / 1000 for side, samples in epoch_times.items()}

    # -- data loading alone, per epoch -------------------------------------------------------------
    torch.use_deterministic_algorithms(False)
    data_s = {}
    for side in epoch_sides:
        started = time.perf_counter()
        if side == "rkbench":
            rkbench_data_epoch(data, args.batch_size, torch.Generator().manual_seed(0))
        else:
            reference_data_epoch(reference_dataset, args.batch_size, int(side.split("/")[1][:-1]))
        data_s[side] = time.perf_counter() - started

    # -- ratios, and an epoch of the full training set projected from the subset --------------------
    n_batches = -(-args.n_train // args.batch_size)
    full_batches = -(-args.full_epoch // args.batch_size)
    compute_s = {side: batch_ms["rkbench" if side == "rkbench" else "reference"] / 1000 for side in epoch_sides}
    # what the subset epoch spent beyond its batches' compute: loader start-up, data loading, the first step's
    # extra cost after the workers fork (copy-on-write page faults), ... counted once per epoch below
    overhead_s = {side: epoch_s[side] - n_batches * compute_s[side] for side in epoch_sides}
    projected_s = {side: max(overhead_s[side], 0.0) + full_batches * compute_s[side] for side in epoch_sides}
    batch_ratio = batch_ms["rkbench"] / batch_ms["reference"]
    # each timed rep ran both sides back to back: the median of the per-rep ratios follows the load less
    paired = [a / b for a, b in zip(batch_times["rkbench"], batch_times["reference"])]
    paired_ratio = statistics.median(paired)
    ratios = {side: {"epoch": epoch_s["rkbench"] / epoch_s[side],
                     "projected_full_epoch": projected_s["rkbench"] / projected_s[side],
                     "data_only": data_s["rkbench"] / data_s[side]} for side in epoch_sides[1:]}
    official = f"reference/{workers_list[0]}w"
    epoch_ratio = ratios[official]["epoch"]
    load_after = machine()["loadavg_1_5_15"]

    print()
    rk_label = "rkbench" + "".join(f" {k}={v}" for k, v in training_options.items())
    width = max(16, len(rk_label))
    header = (f"{'':<{width}} {'S-F/S-B/T-F':>12} {'batch ms':>10} {'epoch s':>9} {'data-only s':>12} "
              f"{'overhead s':>11} {'full epoch s':>13}")
    print(header)
    print("-" * len(header))
    for side in epoch_sides:
        p = passes["rkbench" if side == "rkbench" else "reference"]
        counts = f"{p['student_F']}/{p['student_B']}/{p['teacher_F']}"
        label = (rk_label if side == "rkbench"
                 else f"reference {side.split('/')[1][:-1]}w" + (" NHWC" if args.ref_channels_last else ""))
        print(f"{label:<{width}} {counts:>12} {compute_s[side] * 1000:>10.0f} {epoch_s[side]:>9.2f} "
              f"{data_s[side]:>12.3f} {overhead_s[side]:>11.2f} {projected_s[side]:>13.0f}")
    for side in epoch_sides[1:]:
        r = ratios[side]
        label = f"ratio vs {side.split('/')[1][:-1]}w"
        print(f"{label:<{width}} {'':>12} {batch_ratio:>10.3f} {r['epoch']:>9.3f} {r['data_only']:>12.3f} "
              f"{'':>11} {r['projected_full_epoch']:>13.3f}")
    print(f"per-batch ratio from the {len(paired)} back-to-back pairs: median {paired_ratio:.3f} "
          f"(range {min(paired):.3f}-{max(paired):.3f})")
    print()
    print(f"batch ms: compute only, the same batch tensor on both sides, median of {args.reps} interleaved steps "
          f"after {args.warmup} warm-up. epoch s: a SUBSET epoch of {args.n_train} training images ({n_batches} "
          f"batches of {args.batch_size}), median of {args.epoch_reps}, data loading included (rkbench: "
          f"Trainer.fit, whole-dataset tensors + batched augmentation; reference: DataLoader over PIL images with "
          f"Nw workers, started each epoch). overhead s = epoch s - {n_batches} x batch compute. full epoch s: "
          f"projected for {args.full_epoch} images ({full_batches} batches) = overhead once + {full_batches} x "
          f"batch compute (per-batch data loading is then counted once, not per batch: a slight under-count for "
          f"both sides).")
    goal = "met" if epoch_ratio <= 0.8 else "not met"
    projected = ratios[official]["projected_full_epoch"]
    print(f"goal rkbench <= 0.8 x reference ({workers_list[0]} workers, the official setting) per epoch: {goal} on "
          f"the {args.n_train}-image subset ({epoch_ratio:.3f}); projected full epoch {projected:.3f} "
          f"({'met' if projected <= 0.8 else 'not met'}). Loss formulas agree to {loss_formula_diff:.1e}; "
          f"load average before {load_before}, after {load_after}")

    result = {"benchmark": "ard_vs_reference", "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "machine": machine(), "loadavg_before": load_before, "loadavg_after": load_after,
              "config": {"student": args.student, "student_options": student_options, "student_params": n_student,
                         "teacher": args.teacher, "teacher_options": teacher_options, "teacher_params": n_teacher,
                         "batch_size": args.batch_size, "n_train": args.n_train, "batches_per_epoch": n_batches,
                         "epoch_is_subset": True, "full_epoch_images": args.full_epoch, "data": data_label,
                         "threat": threat.model_dump(mode="json"), "ard_params": params,
                         "reference_workers": workers_list, "reference_channels_last": args.ref_channels_last,
                         "rkbench_training_options": training_options, "threads": threads, "warmup": args.warmup,
                         "reps": args.reps, "epoch_reps": args.epoch_reps, "training": config.model_dump(mode="json")},
              "passes_per_batch": passes,
              "batch_ms": batch_ms, "batch_samples_s": batch_times, "batch_ratio": batch_ratio,
              "batch_ratio_paired": paired, "batch_ratio_paired_median": paired_ratio,
              "epoch_s": epoch_s, "epoch_samples_s": epoch_times, "epoch_batches": epoch_batches,
              "data_only_epoch_s": data_s, "epoch_overhead_s": overhead_s, "projected_full_epoch_s": projected_s,
              "ratios_vs_reference": ratios, "epoch_ratio_official_workers": epoch_ratio,
              "goal_epoch_ratio": 0.8, "goal_met_subset_epoch": epoch_ratio <= 0.8,
              "goal_met_projected_full_epoch": projected <= 0.8, "loss_formula_max_abs_diff": loss_formula_diff}
    write_result(args.out, result)


if __name__ == "__main__":
    main()
