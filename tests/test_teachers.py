import pytest
import torch

from rkbench.errors import DataUnavailableError
from rkbench.models import build_model
from rkbench.teachers import TEACHER_SOURCES, TeacherContext
from rkbench.weights import load_state_dict
from rkbench.threat import ThreatModel


def build_checkpoint_teacher(path, digits, **extra):
    source = TEACHER_SOURCES.get("checkpoint")()
    params = source.Params(model="cnn_tiny", path=path, **extra)
    return source.build(params, TeacherContext(digits, ThreatModel(), torch.device("cpu")))


def test_checkpoint_teacher_loads_weights(tmp_path, digits):
    model = build_model("cnn_tiny", 10, (1, 8, 8))
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, tmp_path / "t.pt")
    teacher = build_checkpoint_teacher(tmp_path / "t.pt", digits).eval()
    x = digits.x_test[:4]
    assert torch.allclose(teacher(x), model.eval()(x))


def test_html_page_saved_as_pt_is_caught(tmp_path, digits):
    (tmp_path / "t.pt").write_text("<!DOCTYPE html><html><body>Quota exceeded</body></html>")
    with pytest.raises(DataUnavailableError, match="is an HTML/XML page, not a torch checkpoint"):
        build_checkpoint_teacher(tmp_path / "t.pt", digits)


def test_garbage_and_missing_files_are_one_line_errors(tmp_path):
    (tmp_path / "g.pt").write_bytes(b"\x00\x01garbage")
    with pytest.raises(DataUnavailableError, match="not a loadable torch checkpoint"):
        load_state_dict(tmp_path / "g.pt")
    with pytest.raises(DataUnavailableError, match="checkpoint not found"):
        load_state_dict(tmp_path / "none.pt")


def test_wrong_architecture_is_named(tmp_path, digits):
    torch.save(build_model("mlp", 10, (1, 8, 8)).state_dict(), tmp_path / "m.pt")
    with pytest.raises(DataUnavailableError, match="does not fit model 'cnn_tiny'"):
        build_checkpoint_teacher(tmp_path / "m.pt", digits)
