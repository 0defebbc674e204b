"""Runs with several teachers (a teacher ``group``), and the single-teacher run ids they must not move."""
from pathlib import Path

from rkbench.suite import expand, load_suite

ROOT = Path(__file__).resolve().parents[1]

# suites/digits.yaml's ids computed on main (18c0153) before teacher groups existed: a change to
# the run identity of single-teacher runs would orphan every finished run directory
DIGITS_TEACHER_ID = "788c8a50797d"
DIGITS_RUN_IDS = {
    "cnn_tiny/natural": "526289a552c6", "mlp/natural": "bb45bcfa5670", "cnn_tiny/kd": "e1058592e502",
    "mlp/kd": "cb025b9c402a", "cnn_tiny/at": "6e9bd8b2c491", "mlp/at": "5f0576e9573c",
    "cnn_tiny/ard": "24bd56322802", "mlp/ard": "69e2102ff77b", "cnn_tiny/fast_ard": "90d566211f41",
    "mlp/fast_ard": "6b1a9ce755f0", "cnn_tiny/kdiga": "15ef8b5dfb6c", "mlp/kdiga": "ef87c3317dbd",
    "cnn_tiny/rrm": "6c25db630c93", "mlp/rrm": "6d57fc38229e", "cnn_tiny/trades": "e8b1b8eda88c",
    "mlp/trades": "542661f25aa8", "cnn_tiny/free_at": "a89e6ddb7590", "mlp/free_at": "179b6c4e7b17",
    "cnn_tiny/fgsm_rs": "307271f7a706", "mlp/fgsm_rs": "45bda66289bb", "cnn_tiny/rslad": "0dc3c0501ae4",
    "mlp/rslad": "70707a13583d", "cnn_tiny/iad": "3bf7c9ccd2d8", "mlp/iad": "21bec25e3006",
    "cnn_tiny/adaad": "bb1a6903c88b", "mlp/adaad": "2b0a17a42ef4",
}


def test_single_teacher_run_ids_of_the_digits_suite_are_unchanged():
    teachers, runs = expand(load_suite(ROOT / "suites" / "digits.yaml"))
    assert [plan.teacher_id for plan in teachers] == [DIGITS_TEACHER_ID]
    assert {f"{run.student.name}/{run.method.label}": run.run_id for run in runs} == DIGITS_RUN_IDS
