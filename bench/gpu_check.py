"""The CUDA checks that the CPU tests (tests/test_gpu_paths.py) can only prove with stand-ins, run
for real on the day a GPU is lent (docs/gpu.md). One script, a few minutes on one GPU:

1. ``pin_memory``: training with ``pin_memory: true``, data on the device (the crash of issue 23)
   and on the host (pinned, non-blocking copies);
2. ``resume``: a run killed after its first epoch and resumed ends bit-equal to an uninterrupted
   one, with ``deterministic: true`` (must hold) and ``deterministic: false`` (reported);
3. ``tf32``: one PGD-20 evaluation with TF32 on (torch's cuDNN default) against rkbench's
   evaluation (IEEE float32): how many examples change their verdict, the largest logit change;
4. ``pgd_memory``: the peak GPU memory and the time of PGD-20 at batch 500 on a WRN-34-10
   (CIFAR-10 shape), the suites' evaluation batch, and whether the evaluation's out-of-memory
   fallback had to halve it.

    python bench/gpu_check.py                    # on the GPU: under 10 minutes (docs/gpu.md)
    python bench/gpu_check.py --cpu-smoke        # tiny sizes on the CPU: proves it runs (seconds)

Writes bench/results/gpu_check.json (``--out``); exits 1 when a check that must hold fails. Data:
the CIFAR-10 slice (../shared/data/cifar10-slice.npz) when present, else random CIFAR-shaped
tensors (the checks compare runs with each other, not with published numbers).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rkbench.device import cuda_determinism_env  # noqa: E402

cuda_determinism_env()  # before the first matmul: cuBLAS reads it once

import torch  # noqa: E402

from rkbench.attacks import build_attack  # noqa: E402
from rkbench.data import TensorDataset  # noqa: E402
from rkbench.device import device_info, ieee_fp32  # noqa: E402
from rkbench.evaluator import attack_correct, evaluate  # noqa: E402
from rkbench.methods import build_method  # noqa: E402
from rkbench.models import build_model  # noqa: E402
from rkbench.suite import TrainingConfig  # noqa: E402
from rkbench.threat import ThreatModel  # noqa: E402
from rkbench.train import Trainer  # noqa: E402

SLICE = ROOT.parent / "shared" / "data" / "cifar10-slice.npz"
THREAT = ThreatModel(norm="linf", eps=8 / 255, step_size=2 / 255, steps=10)

FULL = {"device": "cuda", "model": ("resnet18", {}), "n_train": 2048, "n_test": 500, "epochs": 2, "batch": 128,
        "wrn": {"depth": 34, "width": 10}, "pgd_batch": 500, "pgd_steps": 20, "image": 32}
SMOKE = {"device": "cpu", "model": ("cnn_tiny", {}), "n_train": 64, "n_test": 16, "epochs": 2, "batch": 32,
         "wrn": {"depth": 10, "width": 1}, "pgd_batch": 8, "pgd_steps": 2, "image": 8}


def dataset(sizes: dict) -> TensorDataset:
    """CIFAR-10 slice examples when the file is there (full size), else random CIFAR-shaped tensors."""
    n_train, n_test, image = sizes["n_train"], sizes["n_test"], sizes["image"]
    if image == 32 and SLICE.is_file():
        import numpy as np

        with np.load(SLICE) as arrays:
            keys = {k.lower(): k for k in arrays.files}
            x = torch.from_numpy(arrays[keys.get("x_train", "x_train")][:n_train]).float()
            y = torch.from_numpy(arrays[keys.get("y_train", "y_train")][:n_train]).long()
            xt = torch.from_numpy(arrays[keys.get("x_test", "x_test")][:n_test]).float()
            yt = torch.from_numpy(arrays[keys.get("y_test", "y_test")][:n_test]).long()
        if x.dim() == 4 and x.shape[-1] == 3:  # NHWC files
            x, xt = x.permute(0, 3, 1, 2).contiguous(), xt.permute(0, 3, 1, 2).contiguous()
        if x.max() > 1.5:
            x, xt = x / 255.0, xt / 255.0
        return TensorDataset("cifar10-slice", x, y, xt, yt, 10)
    generator = torch.Generator().manual_seed(0)
    channels = 3 if image == 32 else 1
    shape = (channels, image, image)
    return TensorDataset("random", torch.rand(n_train, *shape, generator=generator),
                         torch.randint(0, 10, (n_train,), generator=generator),
                         torch.rand(n_test, *shape, generator=generator),
                         torch.randint(0, 10, (n_test,), generator=generator), 10)


def train(sizes: dict, data: TensorDataset, device: torch.device, work_dir: Path | None = None,
          stop_after: int | None = None, **options) -> torch.nn.Module:
    """The trainer on ``data`` (seed 0); ``stop_after``: killed after that many epochs (checkpoint kept)."""
    name, model_options = sizes["model"]
    torch.manual_seed(0)
    model = build_model(name, 10, data.input_shape, **model_options)
    config = TrainingConfig(epochs=sizes["epochs"], batch_size=sizes["batch"], optimizer={"lr": 0.05}, **options)

    def on_epoch(epoch, epochs, loss):
        if stop_after is not None and epoch >= stop_after:
            raise KeyboardInterrupt  # what a Slurm time limit is to the run

    trainer = Trainer(config, device, work_dir, on_epoch=on_epoch)
    try:
        trainer.fit(model, build_method("natural", {}, THREAT), data, seed=0)
    except KeyboardInterrupt:
        pass
    return model


def check_pin_memory(sizes, data, device) -> dict:
    out = {}
    for on_device in (True, False):
        key = "data_on_device" if on_device else "host_batches"
        try:
            train(sizes, data, device, pin_memory=True, data_on_device=on_device)
            out[key] = "ok"
        except Exception as exc:  # the check reports it, the script goes on
            out[key] = f"FAILED: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    out["ok"] = all(value == "ok" for value in out.values())
    return out


def check_resume(sizes, data, device) -> dict:
    out = {}
    for deterministic in (True, False):
        whole = train(sizes, data, device, deterministic=deterministic)
        with tempfile.TemporaryDirectory() as work:
            train(sizes, data, device, Path(work), stop_after=1, deterministic=deterministic)
            resumed = train(sizes, data, device, Path(work), deterministic=deterministic)
        differing = [key for key, value in whole.state_dict().items()
                     if not torch.equal(value, resumed.state_dict()[key])]
        out[f"deterministic_{str(deterministic).lower()}"] = {"bit_equal": not differing,
                                                             "tensors_differing": len(differing)}
    out["ok"] = out["deterministic_true"]["bit_equal"]  # promised; without determinism it is reported
    return out


def check_tf32(sizes, data, device, model: torch.nn.Module) -> dict:
    model = model.to(device).eval()
    x, y = data.x_test.to(device), data.y_test.to(device)
    attack = build_attack("pgd", THREAT, steps=sizes["pgd_steps"])
    ieee = evaluate(model, x, y, {"pgd": attack}, batch_size=sizes["pgd_batch"])
    precision, cudnn_tf32 = torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        with torch.no_grad():
            tf32_logits = model(x)
        tf32 = attack_correct(model, build_attack("pgd", THREAT, steps=sizes["pgd_steps"]), x, y, sizes["pgd_batch"],
                              example_ids=torch.arange(x.shape[0]))
    finally:
        torch.set_float32_matmul_precision(precision)
        torch.backends.cudnn.allow_tf32 = cudnn_tf32
    with ieee_fp32(), torch.no_grad():
        logits = model(x)
    return {"examples": int(x.shape[0]), "pgd_accuracy_ieee": float(ieee.correct["pgd"].mean()),
            "pgd_accuracy_tf32": float(tf32.mean()),
            "verdicts_changed_by_tf32": int((tf32 != ieee.correct["pgd"]).sum()),
            "max_logit_change_tf32": float((tf32_logits - logits).abs().max()),
            "evaluation_recorded_ieee_fp32": ieee.ieee_fp32, "ok": ieee.ieee_fp32 is True}


def check_pgd_memory(sizes, device) -> dict:
    image = sizes["image"]
    channels = 3 if image == 32 else 1
    model = build_model("wideresnet", 10, (channels, image, image), **sizes["wrn"]).to(device).eval()
    model.requires_grad_(False)
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(sizes["pgd_batch"], channels, image, image, generator=generator).to(device)
    y = torch.randint(0, 10, (sizes["pgd_batch"],), generator=generator).to(device)
    attack = build_attack("pgd", THREAT, steps=sizes["pgd_steps"])
    lines = []
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    result = evaluate(model, x, y, {"pgd": attack}, batch_size=sizes["pgd_batch"], log=lines.append)
    if device.type == "cuda":
        torch.cuda.synchronize()
    out = {"model": f"wideresnet-{sizes['wrn']['depth']}-{sizes['wrn']['width']}", "batch": sizes["pgd_batch"],
           "steps": sizes["pgd_steps"], "seconds": round(time.perf_counter() - started, 2),
           "out_of_memory_fallback": lines, "pgd_accuracy": float(result.correct["pgd"].mean()), "ok": True}
    if device.type == "cuda":
        out["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2 ** 30, 2)
        out["gpu_total_gib"] = round(torch.cuda.get_device_properties(device).total_memory / 2 ** 30, 1)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny sizes on the CPU: proves the script runs")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "gpu_check.json")
    parser.add_argument("--only", nargs="*", choices=["pin_memory", "resume", "tf32", "pgd_memory"],
                        help="run only these checks")
    args = parser.parse_args(argv)
    sizes = SMOKE if args.cpu_smoke else FULL
    if sizes["device"] == "cuda" and not torch.cuda.is_available():
        print("error: no CUDA device here; run with --cpu-smoke to check that the script runs", file=sys.stderr)
        return 2
    device = torch.device(sizes["device"])
    data = dataset(sizes)
    wanted = args.only or ["pin_memory", "resume", "tf32", "pgd_memory"]
    report = {"device": device_info(device), "torch": torch.__version__, "python": platform.python_version(),
              "cpu_smoke": args.cpu_smoke, "data": data.name, "sizes": {k: v for k, v in sizes.items()},
              "CUBLAS_WORKSPACE_CONFIG": os.environ.get("CUBLAS_WORKSPACE_CONFIG"), "checks": {}}
    started = time.perf_counter()
    for name in wanted:
        began = time.perf_counter()
        try:
            if name == "pin_memory":
                result = check_pin_memory(sizes, data, device)
            elif name == "resume":
                result = check_resume(sizes, data, device)
            elif name == "tf32":
                result = check_tf32(sizes, data, device, train(sizes, data, device))
            else:
                result = check_pgd_memory(sizes, device)
        except Exception as exc:  # one broken check does not hide the others
            result = {"ok": False, "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
        result["check_seconds"] = round(time.perf_counter() - began, 2)
        report["checks"][name] = result
        print(f"{name}: {json.dumps({k: v for k, v in result.items() if k != 'traceback'})}", flush=True)
    report["seconds"] = round(time.perf_counter() - started, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    failed = [name for name, result in report["checks"].items() if not result.get("ok")]
    print(f"{'FAILED: ' + ', '.join(failed) if failed else 'all checks hold'} ({report['seconds']} s); "
          f"written {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
