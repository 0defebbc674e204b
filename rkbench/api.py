"""Evaluate one model with the suite protocol, outside a suite: ``rkbench eval`` and ``rkbench.evaluate``.

A model is given as a module or a spec string:
- a run directory (``results/digits/runs/<id>``), a teacher directory or an exported folder
  (``rkbench export``): rebuilt from model.safetensors and its config (docs/sharing.md); a run of
  an older rkbench from its config.json and student.pt / teacher.pt (weights_only=True);
- ``SOURCE[:key=value,...]``, a teacher source with its options, e.g.
  ``checkpoint:model=resnet18,path=weights.pt``, ``pyautoattack``,
  ``robustbench:name=Carmon2019Unlabeled,dataset=cifar10,threat=Linf``.
Datasets use the same form: ``digits``, ``npz:path=../shared/data/cifar10-slice.npz``.

Results are cached per (weights hash, dataset, example subset, threat model, attack config):
a repeated call reads the per-example arrays and returns at once.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from torch import nn

from . import store
from .attacks import ATTACKS, build_attack
from .data import DATASETS, TensorDataset, load_dataset
from .errors import ConfigError, RkbenchError
from .evaluator import (CLEAN, EvalResult, evaluate as run_evaluation, load_per_example, reusable_previous,
                        save_per_example)
from .models import build_model
from .performance import tune_malloc
from .suite import AttackSpec, EvaluationConfig, Suite, validate_options
from .teachers import TEACHER_SOURCES, TeacherContext
from .threat import ThreatModel
from .train import resolve_device

DEFAULT_CACHE = Path("~/.cache/rkbench/eval")


def parse_spec(text: str) -> tuple[str, dict]:
    """``name:key=value,key=value`` -> (name, options); values parsed as YAML scalars."""
    name, _, rest = text.partition(":")
    options = {}
    for item in filter(None, rest.split(",")):
        if "=" not in item:
            raise ConfigError(f"{text!r}: expected name:key=value,key=value")
        key, value = item.split("=", 1)
        options[key.strip()] = yaml.safe_load(value) if value.strip() else ""
    return name.strip(), options


def dataset_from_spec(spec: str | dict | TensorDataset) -> tuple[TensorDataset, dict]:
    """A dataset from ``NAME[:key=value,...]``, ``{name, options}`` (a recorded protocol) or itself."""
    if isinstance(spec, TensorDataset):
        return spec, {"name": spec.name, "digest": tensor_digest([spec.x_test, spec.y_test])}
    if isinstance(spec, dict):
        name, options = spec.get("name", ""), dict(spec.get("options") or {})
    else:
        name, options = parse_spec(spec)
    try:
        DATASETS.check(name)
    except RkbenchError as exc:
        raise ConfigError(f"--dataset: {exc}") from None
    params = validate_options(DATASETS.get(name).Params, options, f"--dataset {name}")
    return load_dataset(name, params.model_dump()), {"name": name, "options": params.for_identity()}


def model_from_spec(spec: str, data: TensorDataset, threat: ThreatModel, device: torch.device) -> nn.Module:
    path = Path(spec).expanduser()
    if path.is_dir():
        return model_from_result_dir(path, data)
    name, options = parse_spec(spec)
    try:
        TEACHER_SOURCES.check(name)
    except RkbenchError as exc:
        raise ConfigError(f"--model: {exc} (or give a run directory)") from None
    source = TEACHER_SOURCES.get(name)()
    if source.trains:
        raise ConfigError(f"--model: source {name!r} trains a model; give its teacher directory instead")
    params = validate_options(source.Params, options, f"--model {name}")
    return source.build(params, TeacherContext(data, threat, device))


def model_from_result_dir(path: Path, data: TensorDataset) -> nn.Module:
    """A run or teacher directory, or an exported folder: rebuilt from model.safetensors and its
    config (never unpickled); a run of an older rkbench from student.pt / teacher.pt (weights_only)."""
    from .export import load_model

    if (path / store.MODEL).is_file():
        return load_model(path)
    config_path = path / store.CONFIG
    weights = next((path / f for f in (store.STUDENT, store.TEACHER) if (path / f).is_file()), None)
    if not config_path.is_file() or weights is None:
        raise ConfigError(f"--model: {path} is not a finished run or teacher directory, nor an exported "
                          f"model folder (needs model.safetensors, or config.json and student.pt or teacher.pt)")
    identity = store.read_json(config_path)["identity"]
    spec = identity.get("student") or {"model": identity.get("model"), "options": identity.get("model_options", {})}
    model = build_model(spec["model"], data.num_classes, data.input_shape, **spec.get("options", {}))
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return model


def tensor_digest(tensors) -> str:
    digest = hashlib.sha256()
    for tensor in tensors:
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def weights_digest(model: nn.Module) -> str:
    digest = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


@dataclass
class Evaluation:
    result: EvalResult
    attacks: dict  # label -> config
    cached: list[str]  # labels read from the cache

    def summary(self) -> dict:
        labels = list(self.attacks)
        return {"n_examples": self.result.n_examples, "clean_accuracy": self.result.clean_accuracy,
                "robust_accuracy": {label: self.result.accuracy(label) for label in labels},
                "worst_case_accuracy": float(self.result.worst_case([CLEAN, *labels]).mean()),
                "flags": self.result.flags, "attacks": self.attacks, "cached": self.cached}


def evaluate(model: nn.Module | str, dataset: str | TensorDataset = "digits", attacks=("pgd20",),
             threat: ThreatModel | dict | None = None, n_examples: int | None = None, cascade: bool = True,
             batch_size: int = 500, device: str = "auto", cache_dir: str | Path | None = DEFAULT_CACHE,
             seed: int | None = None) -> Evaluation:
    """Evaluate one model with rkbench's protocol; ``attacks`` as in a suite's evaluation list.
    ``seed``: torch's global seed before the attacks, as a suite evaluates a run of that seed (random
    starts then repeat the run's numbers); None leaves the random stream as it is."""
    threat = threat if isinstance(threat, ThreatModel) else validate_options(ThreatModel, threat or {}, "threat")
    evaluation = validate_options(EvaluationConfig, {"attacks": list(attacks), "n_examples": n_examples,
                                                     "batch_size": batch_size, "cascade": cascade}, "evaluation")
    configs = {}
    for spec in evaluation.attacks:
        _check_attack(spec)
        cls = ATTACKS.get(spec.name)
        if cls.needs_source_model:
            raise ConfigError(f"--attacks: {spec.label} crafts its examples on a source model (a teacher or "
                              f"another run): name it in a suite's evaluation.attacks, not in rkbench eval")
        spec.options = validate_options(cls.Params, {**cls.defaults, **spec.options},
                                        f"attack {spec.label}").model_dump(mode="json")
        configs[spec.label] = {"name": spec.name, **spec.options}
    torch_device = resolve_device(device)
    if torch_device.type == "cpu":
        tune_malloc()  # attacks on the CPU page-fault on every activation otherwise (rkbench/performance.py)
    data, data_identity = dataset_from_spec(dataset)
    if isinstance(model, str):
        model = model_from_spec(model, data, threat, torch_device)
    model = model.to(torch_device).eval()
    x, y = data.x_test, data.y_test
    if evaluation.n_examples is not None:
        x, y = x[:evaluation.n_examples], y[:evaluation.n_examples]
    threat_dump = threat.model_dump(mode="json")
    cache = None
    if cache_dir is not None:
        key = {"weights": weights_digest(model), "data": data_identity, "n": x.shape[0], "threat": threat_dump}
        if seed is not None:  # seeded evaluations apart from unseeded ones (older cache keys unchanged)
            key["seed"] = seed
        key = json.dumps(key, sort_keys=True)
        cache = Path(cache_dir).expanduser() / hashlib.sha256(key.encode()).hexdigest()[:16]
    previous, recorded = None, None
    if cache is not None:
        recorded = store.read_json(cache / "attacks.json") if (cache / "attacks.json").is_file() else None
        previous = reusable_previous(cache / store.PER_EXAMPLE, recorded, threat_dump, configs)
    built = {spec.label: build_attack(spec.name, threat, **spec.options) for spec in evaluation.attacks}
    cached = [label for label in configs if previous is not None and label in previous.evaluated]
    if seed is not None:
        torch.manual_seed(seed)  # as SuiteEvaluation.run does before a run's attacks
    result = run_evaluation(model, x.to(torch_device), y.to(torch_device), built, evaluation.batch_size,
                            previous=previous, exact=[s.label for s in evaluation.attacks if s.exact],
                            cascade=evaluation.cascade)
    if cache is not None:  # keep other attacks' arrays too: a later call may ask for them again
        kept = load_per_example(cache / store.PER_EXAMPLE) if recorded else None
        kept_configs = {k: v for k, v in (recorded or {}).get("attacks", {}).items() if k not in configs}
        merged = kept.subset(list(kept_configs)) if kept is not None else EvalResult(result.n_examples, {}, {})
        merged.correct.update(result.correct)
        merged.evaluated.update(result.evaluated)
        merged.labels = result.labels
        save_per_example(cache / store.PER_EXAMPLE, merged)
        store.write_json(cache / "attacks.json", {"threat": threat_dump, "attacks": {**kept_configs, **configs}})
    return Evaluation(result, configs, cached)


def evaluate_as_recorded(model: str, dataset=None, attacks=None, norm: str | None = None, eps=None,
                         n_examples: int | None = None, batch_size: int | None = None, cascade: bool = True,
                         seed: int | None = None, device: str = "auto",
                         cache_dir: str | Path | None = DEFAULT_CACHE) -> Evaluation:
    """``rkbench eval``: an exported folder or a run directory with the protocol its suite evaluated
    it with (dataset, examples, threat, attacks, cascade, batch size, the run's seed; see
    ``export.recorded_protocol``); every argument given replaces the recorded value. Any other
    model spec gets the defaults of ``evaluate`` (digits, pgd20, linf 8/255)."""
    from .export import recorded_protocol

    protocol = recorded_protocol(model) or {}
    threat = dict(protocol.get("threat") or {"norm": "linf", "eps": "8/255"})
    if norm is not None or eps is not None:
        threat.pop("step_size", None)  # the default step of the new ball
    if norm is not None:
        threat["norm"] = norm
    if eps is not None:
        threat["eps"] = eps
    return evaluate(model, dataset or protocol.get("dataset", "digits"),
                    attacks if attacks is not None else protocol.get("attacks", ["pgd20"]), threat=threat,
                    n_examples=n_examples if n_examples is not None else protocol.get("n_examples"),
                    cascade=cascade and protocol.get("cascade", True),
                    batch_size=batch_size or protocol.get("batch_size", 500), device=device, cache_dir=cache_dir,
                    seed=seed if seed is not None else protocol.get("seed"))


def _check_attack(spec: AttackSpec) -> None:
    try:
        ATTACKS.check(spec.name)
    except RkbenchError as exc:
        raise ConfigError(f"--attacks: {exc}") from None


def check_executor(suite: Suite, source: str = "suite", warn=None, submit: bool = False):
    """The executor the suite names (``executor.name``), or one did-you-mean line. With ``submit``,
    one line when this machine cannot start its work (no sbatch), before any warning. A Slurm suite
    whose jobs request no GPU (``gpus_per_job: 0``) is refused with ``training.device: cuda`` (the
    jobs would see none) and gets one warning line through ``warn`` with ``device: auto`` (its jobs
    train on the CPU)."""
    from .executors import build_executor

    try:
        executor = build_executor(suite.executor)
    except RkbenchError as exc:
        raise ConfigError(f"{source}: executor.name: {exc}") from None
    if submit:
        executor.check_submit()
    problem = gpu_request_problem(suite)
    if problem and suite.training.device == "cuda":
        raise ConfigError(f"{source}: {problem}")
    if problem and warn is not None:
        warn(f"warning: {problem}")
    return executor


def requests_gpus(config) -> bool:
    """Whether a Slurm executor section asks for GPUs: ``gpus_per_job``, or a GPU option of its own
    in ``slurm_additional`` (``gres: gpu:1``, ``gpus``, ...)."""
    extra = {str(key).replace("-", "_"): str(value) for key, value in config.slurm_additional.items()}
    return config.gpus_per_job > 0 or any(key.startswith("gpu") or key.endswith("gpus") for key in extra) \
        or "gpu" in extra.get("gres", "")


def gpu_request_problem(suite: Suite) -> str | None:
    """What is wrong when Slurm jobs of a suite that may train on a GPU request none, else None."""
    config = suite.executor
    if config.name != "slurm" or suite.training.device == "cpu" or requests_gpus(config):
        return None
    return (f"executor.gpus_per_job is 0: the Slurm jobs request no GPU, so training.device "
            f"'{suite.training.device}' " + ("finds none in them" if suite.training.device == "cuda"
                                             else "trains on their CPU") +
            " (set executor.gpus_per_job: 1, or training.device: cpu)")


def where_runs(runner) -> str:
    """Where a planned suite's runs train, as the plan's line says it: the device of this process
    for the local executor, what the jobs request for Slurm (resolved in each job, never here)."""
    config, device = runner.suite.executor, runner.suite.training.device
    if config.name == "slurm":
        gpus = (f"{config.gpus_per_job} GPU(s) per job" if config.gpus_per_job
                else "GPUs as slurm_additional asks" if requests_gpus(config) else "no GPU requested")
        return f"Slurm jobs ({gpus}; training.device {device}, resolved in each job)"
    resolved = runner.device
    if config.name == "local" and resolved.type == "cuda":
        from .executors import visible_gpus

        count = len(visible_gpus())
        return f"{resolved} ({count} GPU(s) visible)" if count > 1 else str(resolved)
    return str(resolved)


def run_planned(runner):
    """Teachers first, then every run of a planned ``SuiteRunner``, on the suite's executor (local by
    default; see executors.py). The runner never imports the executors: this is where they meet."""
    from .device import cuda_determinism_env

    cuda_determinism_env()  # this process may train (the local executor): before its first matmul
    executor = check_executor(runner.suite)
    if runner.suite.logging.tensorboard:
        from .tensorboard_log import check_available

        check_available()
    if runner.suite.training.threads:
        torch.set_num_threads(runner.suite.training.threads)
    store.check_writable(runner.results_dir)  # one line before any training, not an error mid-run
    store.write_references(runner.results_dir, runner.suite.name, runner.suite.references)  # for reports
    if runner.suite.tuning is not None:  # trials first (on the same executor), then the chosen configurations
        final = tuned_runner(runner, executor)
        if final is None:  # a round of trials submitted, not waited for
            from .runner import RunOutcome, SuiteOutcome

            return SuiteOutcome(runner.results_dir, [RunOutcome(run, "submitted") for run in runner.runs])
        runner = final
    return executor.run(runner)


def tuned_runner(runner, executor):
    """The runner of a tuned suite's final runs, once every method's trials are done (rkbench/tuning.py)."""
    from .runner import SuiteRunner
    from .tuning import Tuner

    def execute(suite, results_dir):
        return executor.run(SuiteRunner(suite, results_dir, reporter=runner.reporter,
                                        retry_failed=runner.retry_failed))

    final = Tuner(runner.suite, runner.results_dir, execute, say=runner.reporter.message).run()
    if final is None:
        return None
    return SuiteRunner(final, runner.results_dir, reporter=runner.reporter, retry_failed=runner.retry_failed)


def run_suite(suite, results_dir: str | Path | None = None, overrides=(), plugins=(), reporter=None,
              retry_failed: bool = False):
    """Run a suite (a ``Suite``, a suite file or a dict) and return its ``SuiteOutcome`` (``reporter``:
    a ``rkbench.runner.Reporter``; ``retry_failed``: rerun failed runs). Plugin files are imported first."""
    from .plugins import load_plugins
    from .runner import SuiteRunner
    from .suite import Suite, apply_overrides, load_suite, suite_from_dict

    load_plugins(plugins)
    if isinstance(suite, dict):
        suite = suite_from_dict(apply_overrides(suite, list(overrides)))
    elif not isinstance(suite, Suite):
        suite = load_suite(suite, list(overrides))
    elif overrides:
        raise ConfigError("run_suite: overrides apply to a suite file or dict, not to a loaded Suite")
    return run_planned(SuiteRunner(suite, results_dir, reporter, retry_failed))
