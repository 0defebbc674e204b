"""How the training loop runs fast, without changing what it computes (except ``amp``).

The suite's training section names the options (``amp``, ``channels_last``, ``compile``,
``data_on_device``, ``pin_memory``, ``deterministic``, ``malloc_tuning``); ``Performance`` turns
them into the few operations the trainer needs: where the training tensors live, how a batch
reaches the device, the autocast context around a step, the memory format of models and batches,
the module a method calls, and the process-wide CPU settings. The GPU-minded options
(``channels_last``, ``amp``, ``compile``, host batches) are off by default; the data stays on the
device, and CPU training runs deterministic with the allocator tuned; none of the defaults changes
what is computed.

- ``channels_last``: NHWC tensors for 4-d inputs and conv weights. Same arithmetic, another memory
  order; oneDNN and cuDNN run convolutions (depthwise ones above all) much faster in it.
- ``amp: bf16``: the step (attack, teacher forward, loss) under ``torch.autocast`` in bfloat16; the
  backward, the optimizer and the parameters stay float32. It changes the numbers, so it is part of
  a run's identity. Evaluation never runs under it: a robust accuracy is always measured in float32.
- ``compile``: the student (and the teacher) through ``torch.compile``; the method calls the
  compiled module, checkpoints and ``student.pt`` hold the plain module's weights. Only the
  model's ``forward`` is compiled: a method that calls ``features`` (RRM) runs those eagerly. A
  method that differentiates through a gradient of the student (KDIGA: double backward, which
  AOTAutograd lacks) gets its student eagerly. Each compiled model gets a ``forward`` code object of
  its own (``own_forward``): one recompile budget per model, not one for all.
- ``data_on_device`` / ``pin_memory``: the whole training set as one tensor on the device (the
  default), or on the host with each batch gathered there and copied (pinned, non-blocking on CUDA).
- ``malloc_tuning`` (on by default, CPU training under glibc): large tensors come from the heap
  and freed memory stays in the process (``mallopt``: mmap and trim thresholds 1 GiB). By default
  glibc maps every large tensor fresh from the kernel and unmaps it when freed, so each new
  activation page-faults; on the 2-core CPU that made a MobileNetV2 forward + backward 1.4x slower
  and TRADES' two-graph backward 2x slower (bench/README.md). Arithmetic and results are unchanged;
  the process keeps its peak memory instead of returning it.
- ``deterministic``: ``torch.use_deterministic_algorithms`` (a resumed run ends bit-equal). Torch's
  ``fill_uninitialized_memory`` is switched off with it: it NaN-fills every new tensor, a debugging
  aid for kernels that read memory they never wrote, paid as one more write of every new tensor.
  Without it the digits suite's leaderboard is the same to the last digit; on the 2-core CPU its
  cost varied from nothing to 29 % of a pass pair between runs (``bench/process_settings.py``).
  ``deterministic: null`` turns the mode on for CPU and leaves CUDA as torch has it; ``true`` and
  ``false`` set it either way. On CUDA, ``true`` is strict (cuDNN deterministic without autotuning,
  no ``warn_only``, ``CUBLAS_WORKSPACE_CONFIG``): bit-equal resume on CUDA holds only with it
  (docs/gpu.md); a CUDA run without it says so in its log.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import types
from dataclasses import dataclass

import torch
from torch import nn

from .device import cuda_determinism_env, deterministic_cuda, same_device
from .errors import RkbenchError


_MALLOC_TUNED = False


def tune_malloc() -> bool:
    """glibc only, once per process: serve large allocations from the heap and keep freed memory
    (see the module docstring). Returns whether the tuning is in effect."""
    global _MALLOC_TUNED
    if _MALLOC_TUNED:
        return True
    try:
        import ctypes
        import ctypes.util

        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (macOS, musl without mallopt): leave the allocator alone
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
    _MALLOC_TUNED = bool(mallopt(m_mmap_threshold, 1 << 30)) and bool(mallopt(m_trim_threshold, 1 << 30))
    return _MALLOC_TUNED


def own_forward(model: nn.Module) -> nn.Module:
    """``model`` with a ``forward`` of its own code object. Every rkbench model inherits one
    ``Classifier.forward``, and Dynamo keeps its compiled graphs, and its recompile limit (8), per
    code object: students and teachers compiled in one process (a lock-step group: other classes,
    train and eval mode, attack and clean batches) would share that budget and, past it, silently
    run eagerly. A copy of the code per instance gives each model a budget of its own."""
    function = type(model).forward
    code = function.__code__.replace(co_name=function.__code__.co_name)  # equal, but another object
    copied = types.FunctionType(code, function.__globals__, function.__name__, function.__defaults__,
                                function.__closure__)
    copied.__kwdefaults__, copied.__qualname__ = function.__kwdefaults__, function.__qualname__
    copied.rkbench_own_forward = True
    model.forward = types.MethodType(copied, model)
    return model


def cpu_compiler() -> str | None:
    """The C++ compiler torch.compile's CPU backend would use, if any."""
    return shutil.which(os.environ.get("CXX", "")) or shutil.which("g++") or shutil.which("clang++")


@dataclass
class Performance:
    device: torch.device
    amp: str = "off"
    channels_last: bool = False
    compile: bool = False
    data_on_device: bool = True
    pin_memory: bool = False
    deterministic: bool | None = None  # None: on for CPU, off for CUDA
    malloc_tuning: bool = True  # CPU only

    @classmethod
    def from_config(cls, config, device: torch.device) -> "Performance":
        return cls(device, amp=config.amp, channels_last=config.channels_last, compile=config.compile,
                   data_on_device=config.data_on_device, pin_memory=config.pin_memory,
                   deterministic=config.deterministic, malloc_tuning=config.malloc_tuning)

    def describe(self) -> str:
        """The options that are on, for a run's log ("" when all are at their defaults)."""
        on = [name for name in ("channels_last", "compile") if getattr(self, name)]
        on += [f"amp {self.amp}"] if self.amp != "off" else []
        on += ["host batches" + (" (pinned)" if self.pin_memory else "")] if not self.data_on_device else []
        on += [f"deterministic {self.deterministic}"] if self.deterministic is not None else []
        on += ["malloc_tuning off"] if not self.malloc_tuning and self.device.type == "cpu" else []
        return ", ".join(on)

    # -- process-wide switches --------------------------------------------------------------------
    def apply_process_settings(self) -> None:
        self.apply_determinism()
        if self.malloc_tuning and self.device.type == "cpu":
            tune_malloc()

    def apply_determinism(self) -> None:
        """CPU: deterministic unless ``deterministic: false``. CUDA: as torch (or the user's code) has
        it unless set; ``true`` makes it strict (docs/gpu.md): cuDNN deterministic without
        autotuning, ``use_deterministic_algorithms`` raising (not warning) on an op without a
        deterministic kernel, and cuBLAS deterministic (``CUBLAS_WORKSPACE_CONFIG``, set at every
        entry point; set here too in case cuBLAS has not started yet)."""
        if self.deterministic is None and self.device.type != "cpu":
            return  # CUDA by default: as torch (or the user's own code) has it
        wanted = self.device.type == "cpu" if self.deterministic is None else self.deterministic
        strict = wanted and self.device.type == "cuda"
        if strict:
            cuda_determinism_env()
        if self.device.type == "cuda":
            deterministic_cuda(wanted)
        torch.use_deterministic_algorithms(wanted, warn_only=not strict)
        if wanted:
            torch.utils.deterministic.fill_uninitialized_memory = False

    def notes(self) -> list[str]:
        """What a run's log says about the device settings (e.g. what bit-equal resume needs)."""
        if self.device.type == "cuda" and self.deterministic is not True:
            return ["note: CUDA without training.deterministic: true: cuDNN and cuBLAS may pick "
                    "nondeterministic kernels, so a resumed or requeued run need not end bit-equal to "
                    "an uninterrupted one (docs/gpu.md)"]
        return []

    # -- models --------------------------------------------------------------------------------------
    def place_model(self, model: nn.Module) -> nn.Module:
        model.to(self.device)
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        return model

    @staticmethod
    def release_model(model: nn.Module) -> nn.Module:
        """Back to the default memory format once training is over (evaluation, saving), and back
        to the class's own ``forward`` (see ``own_forward``)."""
        if getattr(model.__dict__.get("forward"), "rkbench_own_forward", False):
            del model.__dict__["forward"]
        return model.to(memory_format=torch.contiguous_format)

    def runnable(self, model: nn.Module, eager: bool = False) -> nn.Module:
        """The module the step calls: the model, or its compiled wrapper (same parameters). ``eager``:
        the model itself even under ``compile`` (a method that differentiates through a gradient of
        it: AOTAutograd does not support double backward)."""
        if not self.compile or eager:
            return model
        if self.device.type == "cpu" and not cpu_compiler():
            # inductor fails only at the first step, deep in a traceback: say it here, in one line
            raise RkbenchError("training.compile on the CPU needs a C++ compiler (g++ or clang++) on PATH, "
                               "or set training.compile: false")
        return torch.compile(own_forward(model))

    # -- data ------------------------------------------------------------------------------------------
    def place_dataset(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.data_on_device:
            return x.to(self.device), y.to(self.device)
        return x, y  # on the host; each gathered batch is pinned in transfer()

    def transfer(self, t: torch.Tensor) -> torch.Tensor:
        """A gathered batch (inputs or labels) onto the device. Gathering makes a new, unpinned
        tensor, so the batch itself is pinned: only a copy from pinned memory is non-blocking."""
        if same_device(t.device, self.device):  # already there (cuda:0 is cuda): pinning it would fail
            return t
        if self.pin_memory and self.device.type == "cuda":
            return t.pin_memory().to(self.device, non_blocking=True)
        return t.to(self.device)

    def formatted(self, x: torch.Tensor) -> torch.Tensor:
        """A batch in the models' memory format."""
        if self.channels_last and x.dim() == 4:
            return x.contiguous(memory_format=torch.channels_last)
        return x

    # -- the step --------------------------------------------------------------------------------------
    def autocast(self):
        if self.amp == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()
