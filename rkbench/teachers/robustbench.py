"""A teacher from the RobustBench model zoo, loaded through ``robustbench.utils.load_model``.

```yaml
teachers:
  - {name: Carmon2019Unlabeled, source: robustbench, dataset: cifar10, threat: Linf}
  - name: carmon                   # a short label; then say which zoo model it is:
    source: robustbench
    model_name: Carmon2019Unlabeled   # default: the teacher's name (`rkbench list teachers` lists them)
    dataset: cifar10               # cifar10 | cifar100 | imagenet
    threat: Linf                   # Linf | L2 | corruptions (linf, l2 accepted)
    model_dir: ~/.cache/rkbench/robustbench   # default
```

Files live where RobustBench keeps them: ``<model_dir>/<dataset>/<threat>/<model_name>.pt``
(ensembles: ``<model_name>.pt_m0.pt``, ``_m1``, ...). rkbench checks the file before calling ``load_model`` and never
downloads unless ``download: true`` (then RobustBench fetches it from Google Drive when the suite
is planned, because the file's sha256 is part of every run id that uses the teacher). Zoo entries
that RobustBench serves through timm / the Hugging Face Hub (e.g. the XCiT models) are built with
``timm.create_model(..., pretrained=False)`` and loaded from the same path (a state dict).

The zoo's networks have no ``features()``; the penultimate features are the input of their last
linear layer (``PenultimateFeatures``), so feature-distillation methods work with them. Inputs
are pixels in [0, 1]; each zoo network normalizes inside, as RobustBench evaluates them.
"""
from __future__ import annotations

import difflib
import json
import pickle
import warnings
import zipfile
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, ConfigDict, Field, field_validator, model_validator

from ..compat import import_robustbench
from ..errors import ConfigError, DataUnavailableError
from ..weights import check_not_html, file_digest, fit_weights, load_state_dict
from .base import TEACHER_SOURCES, TeacherParams, TeacherSource
from .hooked import PenultimateFeatures

DEFAULT_MODEL_DIR = Path("~/.cache/rkbench/robustbench")
NUM_CLASSES = {"cifar10": 10, "cifar100": 100, "imagenet": 1000}
THREATS = {"linf": "Linf", "l2": "L2", "corruptions": "corruptions"}


class RobustBenchParams(TeacherParams):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())
    # ``name`` is accepted too (``rkbench eval --model robustbench:name=Carmon2019Unlabeled``)
    model_name: str = Field(validation_alias=AliasChoices("model_name", "name"),
                            description="the RobustBench zoo name, e.g. Carmon2019Unlabeled (default: the teacher's name)")
    dataset: Literal["cifar10", "cifar100", "imagenet"] = Field("cifar10", description="the zoo's dataset")
    threat: Literal["Linf", "L2", "corruptions"] = Field("Linf", description="the zoo's threat model")
    model_dir: Path = Field(DEFAULT_MODEL_DIR, description="reads <model_dir>/<dataset>/<threat>/<name>.pt")
    download: bool = Field(False, description="let RobustBench fetch a missing file (off: an offline machine "
                                              "gets one clear line, never a network attempt)")

    @field_validator("threat", mode="before")
    @classmethod
    def _threat_case(cls, value):
        return THREATS.get(str(value).lower(), value) if isinstance(value, str) else value

    @model_validator(mode="after")
    def _known_model(self):
        zoo = zoo_models(self.dataset, self.threat)
        if self.model_name not in zoo:
            close = difflib.get_close_matches(self.model_name, list(zoo), n=1, cutoff=0.5)
            hint = f"; did you mean {close[0]!r}?" if close else "; see `rkbench list teachers`"
            raise ValueError(f"model_name: RobustBench has no {self.dataset}/{self.threat} model {self.model_name!r}{hint}")
        return self

    def directory(self) -> Path:
        return self.model_dir.expanduser() / self.dataset / self.threat


def zoo_models(dataset: str, threat: str) -> dict:
    """RobustBench's own table (``model_dicts``) for one dataset and threat model: name -> entry."""
    import_robustbench()
    from robustbench.model_zoo import model_dicts
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    return model_dicts[BenchmarkDataset(dataset)].get(ThreatModel(threat), {})


def timm_name(params: RobustBenchParams) -> str | None:
    """The timm name RobustBench uses for zoo entries it serves from the Hugging Face Hub, if any."""
    import timm

    name = f"{params.model_name.lower().replace('-', '_')}_{params.dataset}_{params.threat.lower()}"
    return name if timm.is_model(name) else None


def expected_files(params: RobustBenchParams) -> list[Path]:
    """Where ``load_model`` looks for the weights (one file, or one per member of an ensemble)."""
    path = params.directory() / f"{params.model_name}.pt"
    gdrive = zoo_models(params.dataset, params.threat)[params.model_name].get("gdrive_id")
    if isinstance(gdrive, list):
        return [Path(f"{path}_m{i}.pt") for i in range(len(gdrive))]
    return [path]


def _torch_loads_pickles() -> bool:
    """torch < 2.6 defaults ``torch.load`` to ``weights_only=False`` (RobustBench passes nothing)."""
    import torch

    major, minor = (int(part) for part in torch.__version__.split(".")[:2])
    return (major, minor) < (2, 6)


def missing_file_error(params: RobustBenchParams, path: Path) -> DataUnavailableError:
    return DataUnavailableError(
        f"RobustBench checkpoint not found: {path} (rkbench does not download by default: fetch it on a "
        f"machine with network with robustbench.utils.load_model({params.model_name!r}, model_dir=..., "
        f"dataset={params.dataset!r}, threat_model={params.threat!r}) and copy the file there, "
        f"or set download: true, or point model_dir at your RobustBench models directory)")


@TEACHER_SOURCES.register("robustbench", description="a RobustBench zoo model (model_name, dataset, threat, model_dir; "
                          "offline from <model_dir>/<dataset>/<threat>/<model_name>.pt)", source="robustbench.load_model")
class RobustBench(TeacherSource):
    Params = RobustBenchParams
    name_option = "model_name"

    def identity(self, params: RobustBenchParams) -> dict:
        files = expected_files(params)
        if params.download and not all(f.is_file() for f in files):
            self.load(params)  # fetch now: the file's hash names every run that uses it
        digests = [file_digest(f) for f in files]
        return {"model": params.model_name, "dataset": params.dataset, "threat": params.threat,
                "sha256": digests[0] if len(digests) == 1 else digests}

    def build(self, params: RobustBenchParams, context) -> PenultimateFeatures:
        data = context.dataset
        expected = NUM_CLASSES[params.dataset]
        if data.num_classes != expected or data.input_shape[0] != 3:
            raise ConfigError(f"RobustBench model {params.model_name} is a {params.dataset} model ({expected} classes, "
                              f"RGB); the suite's dataset {data.name!r} has {data.num_classes} classes of shape "
                              f"{tuple(data.input_shape)}")
        return PenultimateFeatures(self.load(params).eval())

    def load(self, params: RobustBenchParams):
        import_robustbench()
        from robustbench.utils import load_model

        files = expected_files(params)
        if not params.download:
            for path in files:  # checked before load_model, which would otherwise try Google Drive
                if not path.is_file():
                    raise missing_file_error(params, path)
        for path in files:
            if path.is_file():
                check_not_html(path)
                if _torch_loads_pickles():  # load_model's torch.load would unpickle: check it safely first
                    load_state_dict(path, strip_prefix="")
        hub_name = timm_name(params)
        if hub_name is not None:  # load_model would ask the Hugging Face Hub (timm pretrained=True)
            return self._load_timm(params, hub_name, files[0])
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model = load_model(params.model_name, model_dir=str(params.model_dir.expanduser()),
                                   dataset=params.dataset, threat_model=params.threat)
        except (RuntimeError, pickle.UnpicklingError, zipfile.BadZipFile, EOFError, KeyError, ValueError,
                OSError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise DataUnavailableError(f"{files[0]} could not be loaded as RobustBench model {params.model_name}: "
                                       f"{first}") from exc
        for path in files:
            check_not_html(path)  # a download that saved a quota page
        return model

    def _load_timm(self, params: RobustBenchParams, hub_name: str, path: Path):
        import timm

        if not path.is_file():
            raise DataUnavailableError(f"RobustBench serves {params.model_name} through the Hugging Face Hub (timm "
                                       f"{hub_name!r}); rkbench loads it offline only from {path} (its state dict)")
        model = timm.create_model(hub_name, pretrained=False, num_classes=NUM_CLASSES[params.dataset])
        return fit_weights(model, load_state_dict(path), path, f"timm model {hub_name!r}").eval()


# ----------------------------------------------------------------------------------------------
# the catalogue shown by `rkbench list teachers`


@lru_cache(maxsize=1)
def published_info() -> tuple[str, dict]:
    """Published numbers for the zoo's CIFAR entries (``robustbench_models.json``: RobustBench's
    ``model_info`` files, which the PyPI package does not ship; see its ``_source``)."""
    try:
        text = resources.files(__package__).joinpath("robustbench_models.json").read_text()
        data = json.loads(text)
        return data.get("_source", ""), data.get("models", {})
    except (OSError, ValueError):
        return "", {}


def architecture_of(entry: dict) -> str:
    """A readable architecture from a zoo entry's constructor (a class, a function or a lambda)."""
    import inspect

    factory = entry.get("model")
    name = getattr(factory, "__name__", type(factory).__name__)
    if name != "<lambda>":
        bases = [b.__name__ for b in getattr(factory, "__mro__", ())[1:2] if b.__name__ not in ("Module", "object")]
        return f"{name} ({bases[0]})" if bases else name
    try:
        source = inspect.getsource(factory)
    except (OSError, TypeError):
        return "?"
    text = " ".join(source.split("lambda", 1)[1].split(":", 1)[1].split())
    depth, end = 0, len(text)
    for index, char in enumerate(text):  # cut at the end of the first balanced call
        depth += char in "([{"
        depth -= char in ")]}"
        if depth < 0 or (depth == 0 and char in ",)" and index > 0 and text[index - 1] == ")"):
            end = index
            break
        if depth == 0 and char == ")":
            end = index + 1
            break
    return text[:end].rstrip(",") or "?"


def catalogue(datasets=("cifar10", "cifar100"), threats=("Linf", "L2")) -> list[dict]:
    """RobustBench's zoo entries with architecture and published clean / AutoAttack accuracy (%)."""
    _, info = published_info()
    rows = []
    for dataset in datasets:
        for threat in threats:
            for name, entry in zoo_models(dataset, threat).items():
                published = info.get(f"{dataset}/{threat}/{name}", {})
                rows.append({"model": name, "dataset": dataset, "threat": threat,
                             "architecture": published.get("architecture") or architecture_of(entry),
                             "clean": published.get("clean_acc"), "autoattack": published.get("autoattack_acc")})
    return rows
