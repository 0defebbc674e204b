"""The device side of a run that is the same wherever it runs: what a run record says about the
device (GPU name, CUDA and cuDNN versions), evaluation in IEEE float32 (TF32 off), and the switches
that make CUDA deterministic. Imports torch and nothing of rkbench (docs/gpu.md).

- ``device_info``: the record's ``train_device`` / ``eval_device`` (``{"type": "cpu"}`` on the CPU).
- ``ieee_fp32``: a context with TF32 off for matmuls and cuDNN convolutions, the previous settings
  restored afterwards. torch's default lets cuDNN convolutions run in TF32 on Ampere and newer GPUs
  (a 10-bit mantissa): a robust accuracy would then differ between CPU and GPU, and between GPU
  generations. The evaluator runs every attack inside it.
- ``cuda_determinism_env``: ``CUBLAS_WORKSPACE_CONFIG=:4096:8``, which cuBLAS reads once, when it
  is first used: set at every entry point (the CLI, worker processes, Slurm jobs) before anything
  runs a matmul. ``deterministic_cuda``: cuDNN deterministic and benchmark off.
"""
from __future__ import annotations

import contextlib
import os

import torch

CUBLAS_WORKSPACE = ":4096:8"  # torch's reproducibility notes: cuBLAS deterministic with this workspace


def device_info(device: torch.device | str) -> dict:
    """What a run record says about ``device``: its type, and on CUDA the GPU's name and the CUDA
    and cuDNN versions torch runs with (absent on the CPU)."""
    device = torch.device(device)
    if device.type != "cuda":
        return {"type": device.type}
    index = device.index if device.index is not None else torch.cuda.current_device()
    cudnn = torch.backends.cudnn.version()
    return {"type": "cuda", "name": torch.cuda.get_device_name(index), "cuda": torch.version.cuda,
            "cudnn": None if cudnn is None else str(cudnn)}


@contextlib.contextmanager
def ieee_fp32():
    """TF32 off (matmuls and cuDNN convolutions) inside, the previous settings restored after."""
    precision = torch.get_float32_matmul_precision()
    cudnn_tf32 = torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(precision)
        torch.backends.cudnn.allow_tf32 = cudnn_tf32


def in_ieee_fp32() -> bool:
    """Whether float32 matmuls and convolutions run in IEEE float32 now (TF32 off for both)."""
    return not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32


def cuda_determinism_env() -> None:
    """``CUBLAS_WORKSPACE_CONFIG`` for deterministic cuBLAS, unless the user set it: cuBLAS reads it
    when a process first uses it, so every entry point calls this before any work."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)


def deterministic_cuda(wanted: bool) -> None:
    """cuDNN's deterministic kernels and no autotuning (whose pick may differ between processes)."""
    torch.backends.cudnn.deterministic = wanted
    if wanted:
        torch.backends.cudnn.benchmark = False


def on_cpu(value):
    """``value`` (a state dict, a checkpoint: tensors in dicts, lists and tuples) with every tensor
    on the CPU: saved weights load on a machine without a GPU with a bare ``torch.load``."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return type(value)((key, on_cpu(item)) for key, item in value.items())
    if isinstance(value, list):
        return [on_cpu(item) for item in value]
    if isinstance(value, tuple):
        return tuple(on_cpu(item) for item in value)
    return value


def same_device(a: torch.device | str, b: torch.device | str) -> bool:
    """Whether two devices are one: ``cuda`` is the current GPU, so it equals ``cuda:0`` in a
    process that sees one GPU (where ``torch.device("cuda:0") == torch.device("cuda")`` is False)."""
    a, b = torch.device(a), torch.device(b)
    return a.type == b.type and _index(a) == _index(b)


def _index(device: torch.device) -> int:
    if device.index is not None:
        return device.index
    if device.type == "cuda":
        try:
            return torch.cuda.current_device()
        except (RuntimeError, AssertionError):  # no driver: the default device, 0
            return 0
    return 0
