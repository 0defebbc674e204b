"""The ``rkbench`` command: one small function per command, each calling the Python API."""
from __future__ import annotations

import functools
import signal
import sys
from pathlib import Path

import click

from .errors import RkbenchError

SET_HELP = "Override a suite field, e.g. --set training.epochs=2 --set methods.kd.t=4 (repeatable)."


def fail(exc: BaseException) -> None:
    """One line ``error: ...`` on stderr (a message of several lines joined into one), exit code 2."""
    text = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    click.echo(f"error: {text}", err=True)
    sys.exit(2)


def one_line_errors(func):
    """Turn rkbench's own errors into one readable line and exit code 2 (never a traceback)."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except RkbenchError as exc:
            fail(exc)
        except OSError as exc:  # a file rkbench cannot read or write (permissions, a full disk, a directory)
            fail(os_error_line(exc))

    return wrapper


def os_error_line(exc: OSError) -> str:
    """``PATH: what went wrong`` for an OSError (the file it names, its strerror)."""
    path = exc.filename2 or exc.filename
    reason = exc.strerror or str(exc) or type(exc).__name__
    return f"{path}: {reason}" if path else f"{type(exc).__name__}: {reason}"


def _load_plugin_files(ctx, param, paths):
    """``--plugin FILE.py`` (repeatable): imported while the command line is parsed, before the
    suite is loaded, so the suite may name what the files register."""
    if paths:
        from .plugins import load_plugins

        try:
            load_plugins(paths)
        except RkbenchError as exc:
            fail(exc)


plugin_option = click.option(
    "--plugin", multiple=True, metavar="FILE.py", expose_value=False, callback=_load_plugin_files,
    help="A Python file registering methods, attacks, models or datasets (see examples/my_method.py); repeatable.")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="rkbench")
def main():
    """rkbench: benchmark robust knowledge distillation and print a leaderboard."""
    from .device import cuda_determinism_env

    cuda_determinism_env()  # before anything runs a matmul: cuBLAS reads it once (docs/gpu.md)


@main.command()
@click.argument("suite_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--results-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Where run directories go (default: results/<suite name>/).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help=SET_HELP)
@click.option("--dry-run", is_flag=True, help="Print the run matrix and what is already done; train nothing.")
@click.option("--retry-failed", is_flag=True, help="Run again the runs recorded as failed.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
@click.option("--executor", help="Where runs execute: local (default) or slurm (submitit); suite section executor:.")
@click.option("--workers", type=int, help="local: independent runs in N parallel processes.")
@click.option("--partition", help="slurm: the partition.")
@click.option("--gpus-per-job", type=int, help="slurm: GPUs per job.")
@click.option("--timeout-min", type=int, help="slurm: time limit per job, minutes.")
@click.option("--share-teacher", is_flag=True, help="Train runs with the same teacher, seed and training in "
              "lock-step: one teacher pass per batch for all (= training.share_teacher).")
@click.option("--tensorboard", is_flag=True, help="Per-epoch curves under each run directory's tensorboard/ "
              "(= logging.tensorboard; not part of run ids); view with tensorboard --logdir RESULTS_DIR.")
@plugin_option
@one_line_errors
def run(suite_file, results_dir, overrides, dry_run, retry_failed, quiet, executor, workers, partition, gpus_per_job,
        timeout_min, share_teacher, tensorboard):
    """Train, attack and rank every run of SUITE_FILE."""
    from . import store
    from .api import check_executor, run_planned, where_runs
    from .cli_display import RichReporter, console, print_leaderboard, print_plan
    from .runner import SuiteRunner
    from .suite import load_suite

    flags = {"name": executor, "workers": workers, "partition": partition, "gpus_per_job": gpus_per_job,
             "timeout_min": timeout_min}  # the executor section's fields, overridden from the command line
    overrides = [*overrides, *(f"executor.{key}={value}" for key, value in flags.items() if value is not None)]
    if share_teacher:
        overrides.append("training.share_teacher=true")
    if tensorboard:
        overrides.append("logging.tensorboard=true")
    suite = load_suite(suite_file, overrides)
    check_executor(suite, str(suite_file), warn=lambda line: click.echo(line, err=True), submit=not dry_run)
    runner = SuiteRunner(suite, results_dir, retry_failed=retry_failed)
    if dry_run:
        print_plan(suite, runner.teacher_plans, runner.runs, runner.results_dir)
        if suite.tuning is not None:  # the runs above are the defaults; tuning chooses their parameters first
            from .tuning import plan_lines

            for line in plan_lines(suite):
                click.echo(line)
        return
    store.check_writable(runner.results_dir)  # before anything is printed or trained
    console.print(f"[bold]{suite.name}[/bold]: {len(runner.runs)} runs on {where_runs(runner)}, "
                  f"results in {runner.results_dir}")
    previous = signal.signal(signal.SIGTERM, _raise_interrupted)  # `kill PID` stops like Ctrl-C
    try:
        with RichReporter(enabled=not quiet) as reporter:
            runner.reporter = reporter
            outcome = run_planned(runner)
    except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM: workers stopped, finished runs and checkpoints kept
        _stop_interrupted(runner, getattr(exc, "signum", signal.SIGINT))
    finally:
        signal.signal(signal.SIGTERM, previous)
    if outcome.outcomes and all(o.status == "submitted" for o in outcome.outcomes):
        return  # submitted and not waited for (executor.wait=false): no results to show yet
    print_leaderboard(runner.results_dir)
    if outcome.failed:
        click.echo(f"{len(outcome.failed)} run(s) failed; see the status column and "
                   f"{runner.results_dir}/runs/<run_id>/log.txt; rerun with --retry-failed", err=True)
        sys.exit(1)


def _raise_interrupted(signum, frame):
    from .errors import Interrupted

    raise Interrupted(signum)


def _stop_interrupted(runner, signum: int) -> None:
    """One line (how many runs are finished, that the same command resumes), exit 128 + signum.
    A second Ctrl-C or SIGTERM from here on stops at once."""
    from . import store
    from .record import read_record

    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    done = 0
    for run in runner.runs:
        record, _ = read_record(store.run_dir(runner.results_dir, run.run_id))
        done += record is not None and record.finished
    click.echo(f"interrupted: {done} of {len(runner.runs)} runs finished; the same command resumes", err=True)
    sys.exit(128 + int(signum))


@main.command()
@click.argument("suite_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help=SET_HELP)
@plugin_option
@one_line_errors
def validate(suite_file, overrides):
    """Check SUITE_FILE and print its run matrix and what its number of test examples can resolve;
    runs nothing."""
    from .api import check_executor
    from .cli_display import print_plan, print_planning
    from .suite import expand, load_suite

    suite = load_suite(suite_file, overrides)
    check_executor(suite, str(suite_file), warn=lambda line: click.echo(line, err=True))
    teachers, runs = expand(suite)
    print_plan(suite, teachers, runs, None)
    print_planning(suite)
    if suite.tuning is not None:
        from .tuning import plan_lines

        for line in plan_lines(suite):
            click.echo(line)


@main.command()
@click.argument("results_dirs", nargs=-1, required=True, metavar="DIR...", type=click.Path(path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["md", "csv", "json", "html", "png"]), default="md",
              show_default=True, help="png: the plots, written into the --out directory.")
@click.option("--out", type=click.Path(path_type=Path), help="Write to this file (png: this directory), not stdout.")
@click.option("--sort", help="Column(s) to sort by: worst_case, or student:asc,worst_case:desc "
                             "(default direction: numbers descend, text ascends).")
@click.option("--where", "where", multiple=True, metavar="COL=VALUE",
              help="Keep rows where COL equals VALUE (VALUE may list alternatives: method=ard,at; COL!=VALUE "
                   "drops them). Repeatable.")
@click.option("--pivot", "pivot_by", type=click.Choice(["method", "student", "teacher"]),
              help="One column per method (or student, teacher); cells: --value.")
@click.option("--value", default="worst_case", show_default=True, help="The cells of a --pivot table.")
@click.option("--per-seed", is_flag=True, help="One row per run, not mean ± std over seeds.")
@click.option("--against-paper", is_flag=True, help="The suites' published numbers (references:) beside the "
              "measured ones: paper, measured, difference, !off beyond --tolerance (md, csv, json).")
@click.option("--tolerance", type=float, default=2.0, show_default=True,
              help="--against-paper: flag differences larger than this many points.")
@click.option("--baseline", metavar="METHOD", help="Paired tests of every row against this method (at, or "
              "teacher/method) for the same student, teacher and seed: delta, its interval, p, Holm verdict; "
              "method level (seeds as replications) when both sides have 2 or more seeds.")
@click.option("--metric", default="worst_case", show_default=True,
              help="What --baseline compares per example: worst_case, clean or an exact attack's label.")
@click.option("--alpha", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.05, show_default=True,
              help="Level of the Holm-corrected verdicts.")
@click.option("--resamples", type=click.IntRange(100, 1_000_000), default=2000, show_default=True,
              help="Bootstrap draws of the method-level statistics (rows of 2 or more seeds a side).")
@click.option("--per-class", is_flag=True, help="The per-class worst-case accuracy of every row (robust fairness).")
@click.option("--per-corruption", is_flag=True, help="Each common corruption's accuracy (mean over severities) of "
              "every row evaluated on corruptions (evaluation.corruptions).")
@one_line_errors
def report(results_dirs, fmt, out, sort, where, pivot_by, value, per_seed, against_paper, tolerance, baseline, metric,
           alpha, resamples, per_class, per_corruption):
    """Leaderboard of one or several results directories, from their files alone (runs found in
    several directories count once)."""
    from .report import report as build_report

    text, written, results = build_report(results_dirs, fmt, per_seed=per_seed, where=where, sort=sort,
                                          pivot_by=pivot_by, value=value, out=out, against_paper=against_paper,
                                          tolerance=tolerance, baseline=baseline, metric=metric, alpha=alpha,
                                          per_class=per_class, resamples=resamples, per_corruption=per_corruption)
    _write_report(text, written, results, out)


def _write_report(text, written, results, out) -> None:
    if results is not None and results.duplicates:
        shown = ", ".join(results.duplicates[:5]) + (f" (+{len(results.duplicates) - 5} more)"
                                                      if len(results.duplicates) > 5 else "")
        click.echo(f"note: {len(results.duplicates)} run(s) found in more than one directory, counted once: "
                   f"{shown}", err=True)
    if text is None:
        click.echo("wrote " + ", ".join(str(path) for path in written))
    elif out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        click.echo(f"wrote {out}")
    else:
        click.echo(text, nl=False)


@main.command()
@click.argument("results_dir", type=click.Path(file_okay=False, exists=True, path_type=Path), metavar="DIR")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@one_line_errors
def status(results_dir, as_json):
    """Pending, running, finished and failed teachers and runs of DIR, with their Slurm job ids."""
    import dataclasses
    import json

    from .status import format_status, status_rows

    rows = status_rows(results_dir)
    if as_json:
        click.echo(json.dumps([dataclasses.asdict(row) for row in rows], indent=2))
    else:
        click.echo(format_status(rows), nl=False)


@main.command()
@click.argument("items", nargs=-1, required=True, metavar="A B [C...]")
@click.option("--results-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Where student/method (or student/teacher/method) labels are looked up.")
@click.option("--metric", "metrics", multiple=True, help="Compare only this metric (repeatable; default: every "
              "metric measured per example in all runs).")
@click.option("--format", "fmt", type=click.Choice(["md", "csv", "json"]), default="md", show_default=True)
@click.option("--alpha", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.05, show_default=True,
              help="Level of the Holm-corrected verdicts.")
@click.option("--resamples", type=click.IntRange(100, 1_000_000), default=2000, show_default=True,
              help="Bootstrap draws of the method-level statistics (rows of 2 or more seeds a side).")
@click.option("--out", type=click.Path(path_type=Path), help="Write to this file, not stdout.")
@one_line_errors
def compare(items, results_dir, metrics, fmt, alpha, resamples, out):
    """Paired tests of B, C... against A on their common examples, for every metric. Each of
    A, B... is a run directory or a student/method label inside --results-dir (all its seeds):
    one seed a side, the exact McNemar test; 2 or more, the method level (docs/seeds.md)."""
    from .report import compare_report

    text, _ = compare_report(items, results_dir, metrics, fmt, alpha, resamples)
    _write_report(text, [], None, out)


@main.command()
@click.argument("results_dirs", nargs=-1, required=True, metavar="DIR...", type=click.Path(path_type=Path))
@click.option("--metric", default="worst_case", show_default=True,
              help="The accuracy ranked (higher is better): worst_case, clean or an attack's label.")
@click.option("--per-seed", is_flag=True, help="Rank in every (setting, seed) block, not in every setting's mean "
              "over seeds: for suites of few settings and several seeds (the ranking then speaks for these "
              "settings only).")
@click.option("--alpha", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.05, show_default=True,
              help="Level of the Friedman test and of the Nemenyi critical difference.")
@click.option("--format", "fmt", type=click.Choice(["md", "csv", "json", "html", "png"]), default="md",
              show_default=True, help="png: the critical-difference diagram (needs --out FILE.png).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Write to this file, not stdout.")
@one_line_errors
def rank(results_dirs, metric, per_seed, alpha, fmt, out):
    """Rank the methods over every setting (student x teacher x dataset) of DIR...: average ranks, the
    Friedman test and the critical-difference diagram (Demšar, JMLR 2006; autorank)."""
    from .report.rank import rank_report

    text, _ = rank_report(results_dirs, fmt, metric, per_seed, alpha, out)
    if isinstance(text, bytes):
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(text)
        click.echo(f"wrote {out}")
    else:
        _write_report(text, [], None, out)


@main.command(name="eval")
@click.argument("model_arg", required=False, metavar="[MODEL]")
@click.option("--model", "model_spec", metavar="SPEC",
              help="A run/teacher directory, an exported folder (rkbench export), or SOURCE[:key=value,...], e.g. "
                   "pyautoattack or checkpoint:model=resnet18,path=w.pt (or give it as the argument MODEL).")
@click.option("--dataset", "dataset_spec", metavar="SPEC",
              help="NAME[:key=value,...], e.g. npz:path=../shared/data/cifar10-slice.npz. Default: the protocol "
                   "recorded in an exported folder or run directory, else digits.")
@click.option("--attacks", help="Comma-separated attack names or presets (rkbench list attacks). Default: the "
                                "recorded protocol's, else pgd20.")
@click.option("--norm", type=click.Choice(["linf", "l2"]), help="Default: the recorded protocol's, else linf.")
@click.option("--eps", help="Radius of the threat model (0.031 or 8/255). Default: the recorded protocol's, else 8/255.")
@click.option("--n-examples", type=int, help="First N test examples (default: the recorded protocol's, else all).")
@click.option("--batch-size", type=int, help="Default: the recorded protocol's, else 500.")
@click.option("--no-cascade", is_flag=True, help="Run every attack on every example (every column exact).")
@click.option("--seed", type=int, help="torch's seed before the attacks (default: the recorded run's seed, else none).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("~/.cache/rkbench/eval"),
              show_default=True, help="Per-example results cache.")
@click.option("--no-cache", is_flag=True, help="Neither read nor write the cache.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@plugin_option
@one_line_errors
def eval_(model_arg, model_spec, dataset_spec, attacks, norm, eps, n_examples, batch_size, no_cascade, seed, device,
          cache_dir, no_cache, as_json):
    """Evaluate one model with the same protocol as a suite and print a table. An exported folder or a
    run directory is evaluated with the protocol its suite used (same examples, attacks and seed)
    unless options say otherwise."""
    import json

    from .api import evaluate_as_recorded
    from .cli_display import print_evaluation
    from .errors import ConfigError

    if (model_arg is None) == (model_spec is None):
        raise ConfigError("give the model once: rkbench eval MODEL, or --model SPEC")
    model_spec = model_spec or model_arg
    evaluation = evaluate_as_recorded(
        model_spec, dataset=dataset_spec, attacks=[a.strip() for a in attacks.split(",") if a.strip()] if attacks else None,
        norm=norm, eps=eps, n_examples=n_examples, batch_size=batch_size, cascade=not no_cascade, seed=seed,
        device=device, cache_dir=None if no_cache else cache_dir)
    if as_json:
        click.echo(json.dumps(evaluation.summary(), indent=2))
    else:
        print_evaluation(model_spec, evaluation)


@main.command()
@click.argument("run_dir", type=click.Path(file_okay=False, exists=True, path_type=Path), metavar="RUN_DIR")
@click.option("--out", required=True, type=click.Path(path_type=Path),
              help="A new (or empty) folder: model.safetensors, config.json, MODEL_CARD.md, model_info.json.")
@one_line_errors
def export(run_dir, out):
    """Write a finished run's student as a self-contained model folder to share (docs/sharing.md)."""
    from .export import export_run

    for path in export_run(run_dir, out):
        click.echo(f"wrote {path}")


@main.command(name="list")
@click.argument("kind", type=click.Choice(["methods", "models", "datasets", "attacks", "teachers"]))
@plugin_option
def list_(kind):
    """What the registries hold, with one-line descriptions."""
    from .cli_display import print_registry

    print_registry(kind)


if __name__ == "__main__":  # pragma: no cover
    main()
