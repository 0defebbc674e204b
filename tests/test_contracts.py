"""Contract tests driven by the registries: every registered built-in method, attack, model, dataset
and teacher source gets them, with no list typed here (a new file with a registry decorator is
picked up at collection, as timm parametrizes its tests over ``list_models()``).

- a method: a short fit trains (finite loss, weights move), every input it feeds the student stays
  in the eps ball and in [0, 1], and a run killed after an epoch resumes to bit-equal weights;
- an attack: at eps 0 accuracy is the clean accuracy, its examples stay inside the ball, and an
  undefended model drops to about 0;
- a model: it builds, gives penultimate features and logits (logits = head(features)), and its
  parameter count is the same on every build (and equals the recorded count where one is recorded).
"""
from __future__ import annotations

import pytest
import torch

from rkbench.attacks import ATTACKS, Attack, AttackParams, build_attack, perturbation_norm
from rkbench.data import DATASETS, DatasetParams, DatasetSource, TensorDataset
from rkbench.errors import DataUnavailableError
from rkbench.evaluator import evaluate
from rkbench.methods import METHODS, Batch, Method, MethodParams, build_method
from rkbench.models import MODELS, build_model, count_parameters
from rkbench.suite import TrainingConfig
from rkbench.teachers import TEACHER_SOURCES, TeacherParams, TeacherSource
from rkbench.threat import ThreatModel
from rkbench.train import Trainer

from conftest import Interrupted, builtin_names, interrupt_after, scalar

THREAT = ThreatModel(eps=0.1, step_size=0.025, steps=3)
CPU = torch.device("cpu")

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one torch thread (conftest.py)


# ----------------------------------------------------------------------------------------------
# methods


@pytest.fixture(scope="module")
def few_digits(digits):
    return TensorDataset("digits", digits.x_train[:96], digits.y_train[:96], digits.x_test[:32], digits.y_test[:32], 10)


@pytest.fixture(scope="module")
def mlp_teacher():
    torch.manual_seed(1)
    return build_model("mlp", 10, (1, 8, 8), hidden=24).eval().requires_grad_(False)


def mlp_student(seed: int = 0):
    torch.manual_seed(seed)
    return build_model("mlp", 10, (1, 8, 8), hidden=16)


def training(name: str, epochs: int) -> TrainingConfig:
    replays = METHODS.get(name).replays if isinstance(METHODS.get(name).replays, int) else 1
    return TrainingConfig(epochs=epochs * max(1, replays), batch_size=48, optimizer={"lr": 0.05})


def teachers_of(name: str, teacher):
    """What the trainer hands method ``name``: the teacher, or for a multi-teacher method a group
    with that teacher in each of its roles."""
    roles = METHODS.get(name).teacher_roles
    return {role: teacher for role in roles} if roles else teacher


@pytest.mark.parametrize("name", builtin_names(METHODS))
def test_method_declares_its_contract(name):
    cls = METHODS.get(name)
    assert issubclass(cls, Method) and issubclass(cls.Params, MethodParams)
    description, source = METHODS.entry(name).description, METHODS.entry(name).source
    assert description and source, "register it with description= and source= (shown by `rkbench list`)"
    build_method(name, {}, THREAT)  # its defaults validate


@pytest.mark.parametrize("name", builtin_names(METHODS))
def test_method_a_short_fit_trains(name, few_digits, mlp_teacher):
    method = build_method(name, {}, THREAT, seed=1)
    student = mlp_student()
    before = [p.detach().clone() for p in student.parameters()]
    result = Trainer(training(name, 1), CPU).fit(student, method, few_digits, teacher=teachers_of(name, mlp_teacher),
                                                       seed=1)
    assert result.steps >= 1 and all(torch.isfinite(torch.tensor(result.losses)))
    assert any(not torch.equal(a, b) for a, b in zip(before, student.parameters()))


@pytest.mark.parametrize("name", builtin_names(METHODS))
def test_method_inputs_stay_in_the_eps_ball(name, mlp_teacher):
    """Every tensor the student sees (any of forward, features, forward_with_features) is x + delta
    with ||delta||_inf <= eps, pixels in [0, 1]."""
    torch.manual_seed(0)
    x, y = torch.rand(6, 1, 8, 8), torch.tensor([0, 1, 2, 3, 4, 5])
    student = mlp_student()
    method = build_method(name, {}, THREAT, seed=1)
    method.prepare(student, mlp_teacher)
    seen = []
    features = student.features
    student.features = lambda inputs: seen.append(inputs.detach()) or features(inputs)
    with torch.no_grad():
        logits, teacher_features = mlp_teacher.forward_with_features(x)
    roles = METHODS.get(name).teacher_roles
    batch = Batch(x, y, teacher_logits=logits, teacher_features=teacher_features, teacher=mlp_teacher, epoch=9,
                  epochs=10, teachers={role: mlp_teacher for role in roles} or None,
                  teachers_logits={role: logits for role in roles} or None)
    for _ in range(3):  # the free family's perturbation grows over replays
        student.zero_grad()
        scalar(method.loss(student, batch)).backward()
    assert seen
    for inputs in seen:
        assert inputs.shape[0] % x.shape[0] == 0, "the student saw a batch that is not made of this batch"
        for chunk in inputs.split(x.shape[0]):
            assert (chunk - x).abs().max() <= THREAT.eps + 1e-6 and chunk.min() >= 0 and chunk.max() <= 1


@pytest.mark.parametrize("name", builtin_names(METHODS))
def test_method_a_killed_run_resumes_bit_equal(name, few_digits, mlp_teacher, tmp_path):
    config = training(name, 2)
    teachers = teachers_of(name, mlp_teacher)
    whole = mlp_student()
    Trainer(config, CPU).fit(whole, build_method(name, {}, THREAT, seed=3), few_digits, teacher=teachers, seed=3)
    with pytest.raises(Interrupted):
        Trainer(config, CPU, tmp_path, on_epoch=interrupt_after(1)).fit(
            mlp_student(), build_method(name, {}, THREAT, seed=3), few_digits, teacher=teachers, seed=3)
    resumed = mlp_student()
    Trainer(config, CPU, tmp_path).fit(resumed, build_method(name, {}, THREAT, seed=3), few_digits,
                                       teacher=teachers, seed=3)
    for (key, a), b in zip(whole.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), key


# ----------------------------------------------------------------------------------------------
# attacks


@pytest.fixture(scope="module")
def attack_data(digits):
    return digits.x_test[:24], digits.y_test[:24]


def with_source(attack, source_model, x, y):
    """An attack that declares ``needs_source_model`` gets its examples crafted on ``source_model``."""
    if attack.needs_source_model:
        attack.use(attack.craft(source_model, x, y, batch_size=64))
    return attack


@pytest.mark.parametrize("name", builtin_names(ATTACKS))
def test_attack_declares_its_contract(name):
    cls = ATTACKS.get(name)
    assert issubclass(cls, Attack) and issubclass(cls.Params, AttackParams) and ATTACKS.entry(name).description
    attack = build_attack(name, THREAT)
    assert attack.cost > 0 and attack.warnings == [] and attack.warnings is not cls(THREAT).warnings


def test_attack_costs_come_from_their_parameters_and_keep_the_presets_order():
    cost = lambda name, **options: build_attack(name, THREAT, **options).cost  # noqa: E731
    assert cost("mifgsm", steps=40) == 2 * cost("mifgsm") and cost("deepfool", steps=10) < cost("deepfool")
    assert cost("pgd", steps=20, restarts=10) == 200 and cost("square", n_queries=1000) < cost("square")
    assert cost("autoattack", version="fast") < cost("autoattack") < cost("autoattack", version="plus")
    assert cost("autoattack", version="custom", attacks=["apgd-ce"]) == 100
    # the suites' protocols run in the same order as before attacks declared their costs
    presets = ["autoattack", "pgd1000", "pgd20-r10", "pgd20", "square", "deepfool", "mifgsm"]
    assert sorted(presets, key=cost) == ["pgd20", "mifgsm", "pgd20-r10", "deepfool", "pgd1000", "square",
                                         "autoattack"]


def test_attacks_declare_which_attacks_they_dominate():
    def attack(name, **options):
        return build_attack(name, THREAT, **options)

    assert attack("pgd1000").dominates(attack("pgd20")) and not attack("pgd20").dominates(attack("pgd1000"))
    assert not attack("pgd20").dominates(attack("pgd20")) and not attack("cw20").dominates(attack("pgd20", steps=10))
    assert attack("autoattack").dominates(attack("pgd20")) and not attack("autoattack").dominates(attack("pgd1000"))
    assert not attack("autoattack", version="custom", attacks=["square"]).dominates(attack("pgd20"))
    assert attack("square").black_box and not attack("pgd20").black_box
    first, second = attack("autoattack"), attack("autoattack")
    first.warnings.append("a randomized defence")
    assert second.warnings == []  # per instance


@pytest.mark.parametrize("name", builtin_names(ATTACKS))
def test_attack_at_eps_zero_gives_clean_accuracy(name, attack_data):
    """Nothing breaks, so every sub-attack runs on every example: a small net and 8 examples keep it cheap."""
    x, y = attack_data[0][:8], attack_data[1][:8]
    torch.manual_seed(0)
    model = build_model("mlp", 10, (1, 8, 8), hidden=8).eval()
    zero = ThreatModel.model_construct(**{**THREAT.model_dump(), "eps": 0.0})  # the validator wants eps > 0
    result = evaluate(model, x, y, {name: with_source(build_attack(name, zero), model, x, y)}, cascade=False)
    assert result.accuracy(name) == result.clean_accuracy and 0 < result.clean_accuracy


@pytest.mark.parametrize("name", builtin_names(ATTACKS))
def test_attack_stays_in_the_ball_and_breaks_an_undefended_model(name, trained_cnn, attack_data):
    x, y = attack_data
    threat = ThreatModel(eps=0.3)
    attack = with_source(build_attack(name, threat), trained_cnn, x, y)  # a transfer attack: from itself
    x_adv = attack(trained_cnn, x, y, example_ids=torch.arange(x.shape[0]))
    assert (perturbation_norm(x_adv - x, "linf") <= threat.eps + 1e-6).all()
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    with torch.no_grad():
        clean = (trained_cnn(x).argmax(1) == y).float().mean().item()
        robust = (trained_cnn(x_adv).argmax(1) == y).float().mean().item()
    assert clean > 0.8 and robust <= 0.1, (clean, robust)


# ----------------------------------------------------------------------------------------------
# models

# parameters at 10 classes, 3x32x32, default options: a change to a model's shape must be deliberate
RECORDED_PARAMETERS = {"cnn_small": 63_082, "cnn_tiny": 5_514, "mlp": 411_146, "mobilenetv2": 2_296_922,
                       "mobilenetv2_relu6": 2_237_770,
                       "preact_resnet18": 11_172_170, "resnet18": 11_173_962, "timm": 11_181_642,
                       "wideresnet": 36_479_194}


@pytest.mark.parametrize("name", builtin_names(MODELS))
def test_model_builds_gives_features_and_logits_and_a_stable_size(name):
    torch.manual_seed(0)
    model = build_model(name, 10, (3, 32, 32)).eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        logits, features = model.forward_with_features(x)
        assert logits.shape == (2, 10) and features.dim() == 2 and features.shape[0] == 2
        assert torch.allclose(model(x), logits) and torch.allclose(model.features(x), features)
        assert torch.allclose(model.head(features), logits, atol=1e-5)
    if name in RECORDED_PARAMETERS:
        assert count_parameters(model) == RECORDED_PARAMETERS[name]
    else:  # a new model: at least the same count on a second build
        torch.manual_seed(0)
        assert count_parameters(model) == count_parameters(build_model(name, 10, (3, 32, 32)))


# ----------------------------------------------------------------------------------------------
# datasets and teacher sources (what is cheap: declarations; data where it loads with no options)


@pytest.mark.parametrize("name", builtin_names(DATASETS))
def test_dataset_source_declares_its_contract_and_loads_tensors(name):
    cls = DATASETS.get(name)
    assert issubclass(cls, DatasetSource) and issubclass(cls.Params, DatasetParams)
    try:
        params = cls.Params()
    except Exception:
        pytest.skip(f"{name} needs options to load")
    try:
        data = cls().load(params)
    except DataUnavailableError as exc:
        pytest.skip(f"{name} is not available offline: {exc}")
    for x, y in ((data.x_train, data.y_train), (data.x_test, data.y_test)):
        assert x.dtype == torch.float32 and x.dim() == 4 and 0 <= x.min() and x.max() <= 1
        assert y.dtype == torch.int64 and y.shape[0] == x.shape[0] and 0 <= y.min() and y.max() < data.num_classes


@pytest.mark.parametrize("name", builtin_names(TEACHER_SOURCES))
def test_teacher_source_declares_its_contract(name):
    cls = TEACHER_SOURCES.get(name)
    assert issubclass(cls, TeacherSource) and issubclass(cls.Params, TeacherParams)
    assert TEACHER_SOURCES.entry(name).description
    cls()  # an ABC: instantiable only when build is written


def test_a_registry_accepts_only_its_base_class_and_bases_declare_their_hooks(registry_snapshot):
    class NotAMethod:
        def loss(self, student, batch):
            return 0

    with pytest.raises(TypeError, match="'NotAMethod' is not a subclass of rkbench.methods.base.Method"):
        METHODS.register("not_a_method")(NotAMethod)
    with pytest.raises(TypeError, match="is not callable"):
        MODELS.add("not_a_factory", 3)

    class NoLoss(Method):
        pass

    with pytest.raises(TypeError, match="abstract method.* loss"):
        NoLoss(MethodParams(), THREAT)
    for base in (Method, Attack, DatasetSource, TeacherSource):
        assert base.__abstractmethods__, base
