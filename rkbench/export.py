"""Models people can share: ``load_model`` rebuilds a network from ``model.safetensors`` and its
JSON config (a run or teacher directory, an exported folder, or the file alone), and
``export_run`` writes a self-contained folder for one finished run: the weights and config, a
``MODEL_CARD.md`` and a RobustBench-style ``model_info.json`` (docs/sharing.md).

Nothing here unpickles: weights are read by safetensors; a run of an older rkbench (``student.pt``)
is read with ``weights_only=True`` once, when it is exported.
"""
from __future__ import annotations

import json
import math
from fractions import Fraction
from pathlib import Path

from torch import nn

from . import store
from .errors import ConfigError
from .models import MODELS, build_model, rebuild_options
from .record import RunRecord, read_record
from .weights import (MODEL_FORMAT, file_sha256, fit_weights, load_state_dict, model_config, safetensors_config,
                      save_model)

EXPORT_CONFIG = "config.json"  # in an exported folder: the model config and the evaluation protocol
CARD = "MODEL_CARD.md"
MODEL_INFO = "model_info.json"  # the fields of RobustBench's model_info/<dataset>/<threat>/<name>.json


def read_model_config(path: str | Path) -> tuple[Path, dict]:
    """(the weights file, the model config) of an exported folder (``config.json``), a run or
    teacher directory (``model.json``), or a ``.safetensors`` file written by rkbench (its header)."""
    path = Path(path).expanduser()
    if path.is_file() and path.suffix == ".safetensors":
        weights, config = path, safetensors_config(path)
    elif path.is_dir():
        weights = path / store.MODEL
        if not weights.is_file():
            legacy = [name for name in (store.STUDENT, store.TEACHER) if (path / name).is_file()]
            hint = (f" (it holds {legacy[0]} from an older rkbench: `rkbench export {path} --out DIR` converts it)"
                    if legacy else "")
            raise ConfigError(f"{path} holds no {store.MODEL}{hint}")
        config = None
        for name in (EXPORT_CONFIG, store.MODEL_CONFIG):
            found = store.read_json_or_none(path / name)
            if isinstance(found, dict) and found.get("format") == MODEL_FORMAT:
                config = found
                break
        config = config or safetensors_config(weights)
    else:
        raise ConfigError(f"{path}: not a model folder, run directory or .safetensors file")
    if not isinstance(config, dict) or config.get("format") != MODEL_FORMAT:
        raise ConfigError(f"{path}: no rkbench model config (config.json / model.json with format {MODEL_FORMAT!r})")
    for key in ("architecture", "num_classes", "input_shape"):
        if not config.get(key):
            raise ConfigError(f"{path}: the model config has no {key!r}")
    return weights, config


def load_model(path: str | Path, device: str = "cpu") -> nn.Module:
    """The network saved at ``path`` (an exported folder, a run or teacher directory, or a
    ``model.safetensors``), rebuilt from its config and weights, in eval mode on ``device``. An
    architecture from a plugin needs that plugin loaded first (``rkbench.load_plugins``)."""
    weights, config = read_model_config(path)
    architecture = config["architecture"]
    if architecture not in MODELS:
        raise ConfigError(f"{path}: model {architecture!r} is not registered here; if a plugin defines it, "
                          f"load it first (rkbench.load_plugins / --plugin FILE.py)")
    model = build_model(architecture, config["num_classes"], config["input_shape"],
                        **rebuild_options(architecture, config.get("options", {})))
    fit_weights(model, load_state_dict(weights, strip_prefix=""), weights, f"model {architecture!r}")
    return model.to(device).eval()


# ----------------------------------------------------------------------------------------------
# the evaluation protocol a directory records (``rkbench eval DIR`` repeats it)


def recorded_protocol(path: str | Path) -> dict | None:
    """The suite's evaluation protocol of an exported folder or a run directory: dataset, threat,
    attacks (name, label, exact, options), n_examples, cascade, batch_size, seed; None when the
    directory records none (a teacher directory, a run of an older rkbench)."""
    path = Path(path).expanduser()
    config = store.read_json_or_none(path / EXPORT_CONFIG) if path.is_dir() else None
    if not isinstance(config, dict):
        return None
    if isinstance(config.get("evaluation_protocol"), dict):  # an exported folder
        return config["evaluation_protocol"]
    record, _ = read_record(path)
    if record is None or not record.finished or record.student is None or "dataset" not in config.get("identity", {}):
        return None  # a teacher directory, a failed run, or a run without a record
    return protocol_of(record, config)


def protocol_of(record: RunRecord, config: dict) -> dict:
    """The protocol a finished run was evaluated with, from its record and its config.json."""
    evaluation = config.get("evaluation") or {}  # the suite's evaluation section (runs since sharing.md)
    exact = {spec["label"]: spec.get("exact", False) for spec in evaluation.get("attacks", [])}
    attacks = []
    for label, attack in (record.attacks or {}).items():
        options = {key: value for key, value in attack.items() if key != "name"}
        is_exact = exact.get(label, (record.robust_accuracy or {}).get(label) is not None)
        attacks.append({"name": attack["name"], "label": label, "exact": bool(is_exact), **options})
    return {"dataset": config["identity"]["dataset"], "threat": record.threat, "attacks": attacks,
            "n_examples": record.n_examples, "cascade": record.cascade if record.cascade is not None else True,
            "batch_size": evaluation.get("batch_size", 500), "seed": record.seed or 0}


# ----------------------------------------------------------------------------------------------
# export


def export_run(run_dir: str | Path, out: str | Path) -> list[Path]:
    """Write ``out/``: model.safetensors, config.json (model config + evaluation protocol),
    MODEL_CARD.md and model_info.json, for the finished run in ``run_dir``. Returns the files."""
    import rkbench

    run_dir, out = Path(run_dir).expanduser(), Path(out).expanduser()
    record, problem = read_record(run_dir)
    config = store.read_json_or_none(run_dir / store.CONFIG)
    if problem or record is None or not isinstance(config, dict) or "identity" not in config:
        why = problem or "no metrics.json or config.json"
        raise ConfigError(f"{run_dir}: not a run directory of rkbench ({why}); give results/<suite>/runs/<run_id>")
    if record.student is None:
        raise ConfigError(f"{run_dir}: a teacher directory; export takes a student's run directory")
    if not record.finished:
        raise ConfigError(f"{run_dir}: the run failed ({record.error}); nothing to export")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"--out {out}: exists and is not an empty directory; choose a new one")
    model, model_cfg = _run_model(run_dir, config["identity"])
    protocol = protocol_of(record, config)
    out.mkdir(parents=True, exist_ok=True)
    save_model(model, out / store.MODEL, model_cfg)
    store.write_json(out / EXPORT_CONFIG, {**model_cfg, "evaluation_protocol": protocol,
                                           "run": {"run_id": record.run_id, "suite": config.get("suite")}})
    teacher = teacher_summary(run_dir, config["identity"].get("teacher"))
    reference = _reference(run_dir, record)
    store.write_text(out / CARD, model_card(record, config, model_cfg, protocol, teacher, rkbench.__version__,
                                            file_sha256(out / store.MODEL)))
    store.write_json(out / MODEL_INFO, model_info(record, config, model_cfg, reference))
    return [out / name for name in (store.MODEL, EXPORT_CONFIG, CARD, MODEL_INFO)]


def _run_model(run_dir: Path, identity: dict) -> tuple[nn.Module, dict]:
    """The run's network and model config: from model.safetensors, or an older run's student.pt
    (read with weights_only=True; its dataset is loaded for the number of classes and input size)."""
    if (run_dir / store.MODEL).is_file():
        _, model_cfg = read_model_config(run_dir)
        return load_model(run_dir), model_cfg
    weights = run_dir / store.STUDENT
    if not weights.is_file():
        raise ConfigError(f"{run_dir}: no {store.MODEL} (or {store.STUDENT}) to export")
    from .data import load_dataset

    dataset = load_dataset(identity["dataset"]["name"], identity["dataset"].get("options", {}))
    student = identity["student"]
    options = rebuild_options(student["model"], student.get("options", {}))
    model = build_model(student["model"], dataset.num_classes, dataset.input_shape, **options)
    fit_weights(model, load_state_dict(weights, strip_prefix=""), weights, f"student {student['model']}")
    return model.eval(), model_config(model, student["model"], student.get("options", {}), dataset.num_classes,
                                      dataset.input_shape)


def teacher_summary(run_dir: Path, identity: dict | None) -> list[dict]:
    """Each teacher the run distilled from: role, source, id (the hash of its identity), the
    sha256 of its weights where the results directory or the identity has one, its identity."""
    from .suite import config_hash

    if not identity:
        return []
    members = identity["group"].items() if "group" in identity else [(None, identity)]
    found = []
    for role, member in members:
        teacher_id = config_hash(member)
        directory = run_dir.parent.parent / store.TEACHERS / teacher_id
        weights = store.weights_file(directory, store.TEACHER)
        record, _ = read_record(directory)
        found.append({"role": role, "name": record.teacher if record else None, "source": member.get("source"),
                      "teacher_id": teacher_id, "identity": member,
                      "weights_sha256": file_sha256(weights) if weights else member.get("sha256"),
                      "clean": record.clean_accuracy if record else None,
                      "worst_case": record.worst_case_accuracy if record else None})
    return found


def _reference(run_dir: Path, record: RunRecord):
    """The suite's published number for this run's row (references.json), or None."""
    found, _ = store.read_references(run_dir.parent.parent)
    for references in found.values():
        for reference in references:
            if reference.row == (record.teacher or "-", record.student, record.method):
                return reference
    return None


def _percent(value: float | None) -> str | None:
    return None if value is None else f"{100 * value:.2f}"


def eps_text(eps: float) -> str:
    """8/255 as RobustBench writes it, else the number."""
    fraction = Fraction(eps * 255).limit_denominator(1)
    return f"{fraction.numerator}/255" if math.isclose(fraction, eps * 255, abs_tol=1e-6) else f"{eps:g}"


def dataset_label(dataset: dict) -> str:
    path = (dataset.get("options") or {}).get("path")
    return f"{dataset['name']}:{Path(path).stem}" if path else dataset["name"]


def architecture_label(model_cfg: dict) -> str:
    options = rebuild_options(model_cfg["architecture"], model_cfg.get("options", {})) \
        if model_cfg["architecture"] in MODELS else model_cfg.get("options", {})
    shown = ", ".join(f"{key}={value}" for key, value in sorted(options.items()))
    return model_cfg["architecture"] + (f" ({shown})" if shown else "")


def model_info(record: RunRecord, config: dict, model_cfg: dict, reference=None) -> dict:
    """RobustBench's model-info fields (``robustbench.utils.ModelInfo``; accuracies as percent strings).
    ``autoattack_acc`` is the worst case over the suite's attacks: AutoAttack's (and any other
    attack's) result when the suite ran AutoAttack, else the strongest attacks it ran (the footnote
    says which, and on how many examples)."""
    labels = list(record.attacks or {})
    with_aa = [label for label in labels if (record.attacks or {})[label].get("name") == "autoattack"]
    footnote = (f"rkbench: worst case over {', '.join(['clean', *labels])} on the first {record.n_examples} test "
                f"examples" + ("" if with_aa else "; the suite ran no AutoAttack, so this is not an AutoAttack "
                                                   "accuracy") + f"; run {record.run_id}.")
    reported = None
    if reference is not None:
        reported = reference.autoattack if reference.autoattack is not None else reference.pgd20
    teacher = f" from {record.teacher}" if record.teacher and record.teacher != "-" else ""
    return {"link": "", "name": f"{record.student} distilled{teacher} with {record.method} (rkbench, seed {record.seed})",
            "authors": "", "additional_data": False, "number_forward_passes": 1,
            "dataset": dataset_label(config["identity"]["dataset"]), "venue": "",
            "architecture": architecture_label(model_cfg), "eps": eps_text(float((record.threat or {})["eps"])),
            "clean_acc": _percent(record.clean_accuracy),
            "reported": None if reported is None else f"{reported:.2f}",
            "autoattack_acc": _percent(record.worst_case_accuracy), "footnote": footnote}


def _interval_row(name: str, accuracy: float | None, n: int, note: str = "") -> str:
    from .report.stats import wilson

    if accuracy is None:
        return f"| {name} | - | - | {note or 'run by the cascade on the examples still robust only: not an accuracy'} |"
    lo, hi = wilson(round(accuracy * n), n)
    return f"| {name} | {100 * accuracy:.2f} | {100 * lo:.2f} - {100 * hi:.2f} | {note} |"


def model_card(record: RunRecord, config: dict, model_cfg: dict, protocol: dict, teachers: list[dict],
               version: str, weights_sha256: str) -> str:
    """MODEL_CARD.md: the method, the teacher (source, hash), the protocol, the recipe, the accuracy
    with 95 % Wilson intervals for every attack, and what reproduces it."""
    identity = config["identity"]
    n = record.n_examples or 0
    threat = record.threat or {}
    lines = [f"# {record.student} <- {record.method}" + (f" ({record.teacher})" if record.teacher not in (None, "-")
                                                          else ""), "",
             f"A student network trained and evaluated by rkbench {version} (run `{record.run_id}` of suite "
             f"`{config.get('suite')}`, seed {record.seed}).", "",
             "## Model", "",
             f"- architecture: `{architecture_label(model_cfg)}`, {model_cfg['num_classes']} classes, input "
             f"{'x'.join(str(d) for d in model_cfg['input_shape'])} (channels x height x width), pixels in [0, 1]",
             f"- normalization: {model_cfg['normalization']['where']}"
             + (f" (mean {model_cfg['normalization']['mean']}, std {model_cfg['normalization']['std']})"
                if model_cfg["normalization"]["where"] != "none" else ""),
             f"- parameters: {record.parameters}" + (f", multiply-adds: {record.madds}" if record.madds else ""),
             f"- weights: `model.safetensors`, sha256 `{weights_sha256}`",
             "- load: `import rkbench; model = rkbench.load_model(\"THIS_FOLDER\")` (rebuilt from config.json)", "",
             "## Method", "",
             f"- method: `{record.method}` = `{identity['method']['name']}` with "
             f"`{json.dumps(identity['method']['params'], sort_keys=True)}`",
             f"- training-attack protocol: `{record.protocol}` (crafted in BatchNorm {record.attack_mode or 'n/a'} mode)",
             "", "## Teacher", ""]
    if not teachers:
        lines.append("- none (the method trains without a teacher)")
    for teacher in teachers:
        role = f"{teacher['role']}: " if teacher["role"] else ""
        accuracy = (f"; clean {100 * teacher['clean']:.2f} %, worst case {100 * teacher['worst_case']:.2f} %"
                    if teacher["clean"] is not None and teacher["worst_case"] is not None else "")
        lines.append(f"- {role}`{teacher['name'] or record.teacher}`, source `{teacher['source']}`, teacher id "
                     f"`{teacher['teacher_id']}`" + (f", weights sha256 `{teacher['weights_sha256']}`"
                                                     if teacher["weights_sha256"] else "") + accuracy)
        lines.append(f"  - identity: `{json.dumps(teacher['identity'], sort_keys=True)}`")
    lines += ["", "## Recipe", "",
              f"- dataset: `{json.dumps(identity['dataset'], sort_keys=True)}`",
              f"- threat model: {threat.get('norm')} eps {eps_text(float(threat.get('eps', 0)))} "
              f"(training attacks: {threat.get('steps')} steps of {threat.get('step_size'):.5g})"
              if threat else "- threat model: -",
              f"- training: `{json.dumps(identity['training'], sort_keys=True)}`",
              f"- student options: `{json.dumps(identity['student'].get('options', {}), sort_keys=True)}`",
              f"- training time: {record.train_seconds:.1f} s" if record.train_seconds is not None else "- training time: -",
              "", "## Evaluation protocol", "",
              f"- the first {n} test examples, attacks {', '.join(a['label'] for a in protocol['attacks'])} "
              f"({'cascade: each attack on the examples still robust' if protocol['cascade'] else 'every attack on every example'}), "
              f"seed {protocol['seed']}, batch size {protocol['batch_size']}",
              f"- attacks: `{json.dumps(record.attacks, sort_keys=True)}`", "",
              "## Accuracy (%), 95 % Wilson intervals", "",
              "| metric | accuracy | 95 % interval | note |", "| --- | ---: | :---: | --- |",
              _interval_row("clean", record.clean_accuracy, n)]
    for label in record.attacks or {}:
        lines.append(_interval_row(label, (record.robust_accuracy or {}).get(label), n))
    lines.append(_interval_row("worst case", record.worst_case_accuracy, n, "per example, over clean and every attack"))
    if record.flags:
        lines += ["", "Integrity flags: " + "; ".join(f"`{flag.code}` {flag.detail}" for flag in record.flags)]
    versions = ", ".join(f"{k} {v}" for k, v in sorted((record.versions or {}).items()))
    lines += ["", "## Reproduce", "",
              f"- evaluate this folder with the same protocol: `rkbench eval THIS_FOLDER` (rkbench {version}; the run "
              f"was trained with {versions or 'an unrecorded version'})",
              f"- train it again: `rkbench run SUITE.yaml` with the suite `{config.get('suite')}` that holds this row; "
              f"rkbench recomputes run id `{record.run_id}` from the suite (the same id, the same training)", ""]
    return "\n".join(lines)

