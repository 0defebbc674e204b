"""`rkbench status DIR` from the files alone: finished, failed, running (a held lock), interrupted
(a checkpoint) and pending (submitted to Slurm, no directory yet), each with its Slurm job."""
import json

from click.testing import CliRunner

from rkbench import store
from rkbench.cli import main
from rkbench.record import RunRecord, write_record


def test_status_reads_each_state_from_the_files(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", "")  # no squeue here: states come from the files alone
    runs = tmp_path / store.RUNS
    for run_id, metrics in {"a1": {"status": "finished"}, "b2": {"status": "failed", "error": "ValueError: bad"}}.items():
        write_record(runs / run_id, RunRecord(run_id=run_id, **metrics))
        store.write_json(runs / run_id / store.CONFIG, {"student": "mlp", "method": "kd", "teacher": "t"})
    (runs / "c3").mkdir()
    (runs / "c3" / store.CHECKPOINT).write_bytes(b"x")
    lock = store.DirectoryLock(runs / "d4")
    assert lock.acquire()
    store.write_json(tmp_path / "slurm" / "jobs.json", {"a1": {"kind": "run", "job": "7_0"},
                                                         "e5": {"kind": "run", "job": "7_1"}})
    try:
        result = CliRunner().invoke(main, ["status", str(tmp_path), "--json"])
        table = CliRunner().invoke(main, ["status", str(tmp_path)]).output
    finally:
        lock.release()
    assert result.exit_code == 0, result.output
    rows = {row["id"]: row for row in json.loads(result.output)}
    assert {key: row["state"] for key, row in rows.items()} == {
        "a1": "finished", "b2": "failed", "c3": "interrupted", "d4": "running", "e5": "pending"}
    assert rows["a1"]["job"] == "7_0" and rows["a1"]["name"] == "mlp <- kd (t)"
    assert rows["b2"]["detail"] == "ValueError: bad"
    assert "1 pending, 1 running, 1 interrupted, 1 finished, 1 failed" in table
