"""Rich output for the CLI: progress bars, the run matrix, the leaderboard, registry listings."""
from __future__ import annotations

import sys
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from .runner import Reporter

# piped output (CI logs, `| tee`) gets a wide table rather than rich's 80-column default
console = Console(width=None if sys.stdout.isatty() else 200)


class RichReporter(Reporter):
    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[info]}"), TimeElapsedColumn(), console=console,
                                 transient=True, disable=not enabled)

    def __enter__(self):
        self.progress.start()
        return self

    def __exit__(self, *exc):
        self.progress.stop()

    def message(self, text: str) -> None:
        console.print(text)

    def epoch_callback(self, title):
        task = self.progress.add_task(f"train {title}", total=None, info="")

        def on_epoch(epoch, epochs, loss):
            self.progress.update(task, completed=epoch, total=epochs, info=f"loss {loss:.3f}")
            if epoch >= epochs:
                self.progress.remove_task(task)

        return on_epoch

    def attack_callback(self, title):
        def on_attack(label, total):
            task = self.progress.add_task(f"attack {label} {title}", total=total, info="")

            def on_batch(n):
                self.progress.advance(task, n)
                if self.progress.tasks[[t.id for t in self.progress.tasks].index(task)].finished:
                    self.progress.remove_task(task)

            return on_batch

        return on_attack


def print_plan(suite, teachers, runs, results_dir: Path | None) -> None:
    from .report.frame import attack_mode_label
    from .store import METRICS, run_dir

    console.print(f"[bold]{suite.name}[/bold]: dataset {suite.dataset.name}, threat {suite.threat.norm} "
                  f"eps={suite.threat.eps:.4g}, {len(runs)} runs, attacks: "
                  f"{', '.join(a.label for a in suite.evaluation.attacks)}, "
                  f"protocol attack_mode={suite.protocol.attack_mode}")
    for plan in teachers:
        trained = f", attack mode {attack_mode_label(plan.attack_mode)}" if plan.training else ""
        console.print(f"  teacher {plan.spec.name}: source {plan.spec.source} ({plan.teacher_id}{trained})")
    table = Table("run_id", "teacher", "student", "method", "seed", "attack mode", *(["done"] if results_dir else []))
    for run in runs:
        row = run.describe()
        cells = [row["run_id"], row["teacher"], row["student"], row["method"], str(row["seed"]),
                 attack_mode_label(row["attack_mode"])]
        if results_dir:
            cells.append("yes" if (run_dir(results_dir, run.run_id) / METRICS).is_file() else "")
        table.add_row(*cells)
    console.print(table)


def print_planning(suite) -> None:
    """What the suite's number of test examples can resolve (intervals, detectable paired differences)."""
    from .errors import RkbenchError
    from .report.stats import planning_lines

    n = suite.evaluation.n_examples
    if n is None:  # all of the test split: its size is known once the dataset is loaded
        try:
            from .data import load_dataset

            n = int(load_dataset(suite.dataset.name, suite.dataset.options).x_test.shape[0])
        except (RkbenchError, OSError) as exc:
            console.print(f"sample size: evaluation.n_examples is not set and the test split could not be loaded "
                          f"({exc}); set it to see what it can resolve")
            return
    for line in planning_lines(n, len(suite.training.seeds)):
        console.print(line, highlight=False)


def print_leaderboard(results_dir: Path) -> None:
    from .report import console_tables

    frame, teachers = console_tables(results_dir)
    console.print(_table(frame, "Leaderboard (accuracy in %, mean ± std over seeds)"))
    if frame.attrs.get("note"):
        console.print(frame.attrs["note"])
    if not teachers.empty:
        console.print(_table(teachers, "Teachers (accuracy in %)"))
    console.print(f"written: {results_dir / 'leaderboard.md'}, {results_dir / 'leaderboard.csv'}")


def print_evaluation(model_spec: str, evaluation) -> None:
    summary = evaluation.summary()
    table = Table("attack", "accuracy %", "attacked", "seconds", title=f"{model_spec} ({summary['n_examples']} examples)")
    result = evaluation.result
    table.add_row("clean", f"{100 * summary['clean_accuracy']:.2f}", "all", f"{result.seconds.get('clean', 0):.1f}")
    for label, accuracy in summary["robust_accuracy"].items():
        cell = "cascade" if accuracy is None else f"{100 * accuracy:.2f}"
        attacked = f"{100 * result.evaluated[label].mean():.0f}%"
        seconds = "cached" if label in evaluation.cached else f"{result.seconds.get(label, 0):.1f}"
        table.add_row(label, cell, attacked, seconds)
    table.add_row("worst case", f"{100 * summary['worst_case_accuracy']:.2f}", "", "")
    console.print(table)
    for flag in summary["flags"]:
        console.print(f"[yellow]flag {flag['code']}[/yellow]: {flag['detail']}")


def _table(frame, title: str) -> Table:
    table = Table(title=title)
    for column in frame.columns:
        table.add_column(str(column), justify="right" if frame[column].dtype.kind in "fi" else "left")
    for _, row in frame.iterrows():
        table.add_row(*("-" if v is None or v != v else (f"{v:.2f}" if isinstance(v, float) else str(v))
                        for v in row))
    return table


def print_registry(kind: str) -> None:
    registry = _registry(kind)
    table = Table("name", "description", "source", title=kind)
    for name, description, source in registry.describe():
        table.add_row(name, description, source)
    console.print(table)
    if kind == "teachers":
        print_robustbench_catalogue()


def print_robustbench_catalogue() -> None:
    """RobustBench's CIFAR-10/100 Linf/L2 zoo: use any row as {source: robustbench, name: <model>}."""
    from .errors import RkbenchError
    from .teachers.robustbench import catalogue, published_info

    try:
        rows = catalogue()
    except RkbenchError as exc:
        console.print(f"RobustBench zoo not listed: {exc}")
        return
    table = Table("model", "dataset", "threat", "architecture", "clean %", "AutoAttack %",
                  title="RobustBench models (source: robustbench)")
    for row in rows:
        table.add_row(row["model"], row["dataset"], row["threat"], row["architecture"], row["clean"] or "-",
                      row["autoattack"] or "-")
    console.print(table)
    console.print(f"published accuracies: {published_info()[0] or 'not available'}")


def _registry(kind: str):
    if kind == "methods":
        from .methods import METHODS as registry
    elif kind == "models":
        from .models import MODELS as registry
    elif kind == "datasets":
        from .data import DATASETS as registry
    elif kind == "attacks":
        from .attacks import ATTACKS as registry
    else:
        from .teachers import TEACHER_SOURCES as registry
    return registry
