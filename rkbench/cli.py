"""The ``rkbench`` command: one small function per command, each calling the Python API."""
from __future__ import annotations

import functools
import sys
from pathlib import Path

import click

from .errors import RkbenchError

SET_HELP = "Override a suite field, e.g. --set training.epochs=2 --set methods.kd.t=4 (repeatable)."


def one_line_errors(func):
    """Turn rkbench's own errors into one readable line and exit code 2 (never a traceback)."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except RkbenchError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="rkbench")
def main():
    """rkbench: benchmark robust knowledge distillation and print a leaderboard."""


@main.command()
@click.argument("suite_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--results-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Where run directories go (default: results/<suite name>/).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help=SET_HELP)
@click.option("--dry-run", is_flag=True, help="Print the run matrix and what is already done; train nothing.")
@click.option("--retry-failed", is_flag=True, help="Run again the runs recorded as failed.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
@one_line_errors
def run(suite_file, results_dir, overrides, dry_run, retry_failed, quiet):
    """Train, attack and rank every run of SUITE_FILE."""
    from .cli_display import RichReporter, console, print_leaderboard, print_plan
    from .runner import SuiteRunner
    from .suite import load_suite

    suite = load_suite(suite_file, overrides)
    runner = SuiteRunner(suite, results_dir, retry_failed=retry_failed)
    if dry_run:
        print_plan(suite, runner.teacher_plans, runner.runs, runner.results_dir)
        return
    console.print(f"[bold]{suite.name}[/bold]: {len(runner.runs)} runs on {runner.device}, "
                  f"results in {runner.results_dir}")
    with RichReporter(enabled=not quiet) as reporter:
        runner.reporter = reporter
        outcome = runner.run()
    print_leaderboard(runner.results_dir)
    if outcome.failed:
        click.echo(f"{len(outcome.failed)} run(s) failed; see the status column and "
                   f"{runner.results_dir}/runs/<run_id>/log.txt; rerun with --retry-failed", err=True)
        sys.exit(1)


@main.command()
@click.argument("suite_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help=SET_HELP)
@one_line_errors
def validate(suite_file, overrides):
    """Check SUITE_FILE and print its run matrix; runs nothing."""
    from .cli_display import print_plan
    from .suite import expand, load_suite

    suite = load_suite(suite_file, overrides)
    teachers, runs = expand(suite)
    print_plan(suite, teachers, runs, None)


@main.command()
@click.argument("results_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["md", "csv", "json"]), default="md", show_default=True)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Write to this file, not stdout.")
@one_line_errors
def report(results_dir, fmt, out):
    """Rebuild the leaderboard of RESULTS_DIR from its result files alone."""
    from .report import leaderboard_frame, render

    text = render(leaderboard_frame(results_dir), fmt)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        click.echo(f"wrote {out}")
    else:
        click.echo(text, nl=False)


@main.command(name="eval")
@click.option("--model", "model_spec", required=True, metavar="SPEC",
              help="A run/teacher directory, or SOURCE[:key=value,...], e.g. pyautoattack or "
                   "checkpoint:model=resnet18,path=w.pt.")
@click.option("--dataset", "dataset_spec", default="digits", show_default=True, metavar="SPEC",
              help="NAME[:key=value,...], e.g. npz:path=../shared/data/cifar10-slice.npz.")
@click.option("--attacks", default="pgd20", show_default=True,
              help="Comma-separated attack names or presets (rkbench list attacks).")
@click.option("--norm", type=click.Choice(["linf", "l2"]), default="linf", show_default=True)
@click.option("--eps", default="8/255", show_default=True, help="Radius of the threat model (0.031 or 8/255).")
@click.option("--n-examples", type=int, help="First N test examples (default: all).")
@click.option("--batch-size", type=int, default=500, show_default=True)
@click.option("--no-cascade", is_flag=True, help="Run every attack on every example (every column exact).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("~/.cache/rkbench/eval"),
              show_default=True, help="Per-example results cache.")
@click.option("--no-cache", is_flag=True, help="Neither read nor write the cache.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@one_line_errors
def eval_(model_spec, dataset_spec, attacks, norm, eps, n_examples, batch_size, no_cascade, device, cache_dir,
          no_cache, as_json):
    """Evaluate one model with the same protocol as a suite and print a table."""
    import json

    from .api import evaluate
    from .cli_display import print_evaluation

    evaluation = evaluate(model_spec, dataset_spec, [a.strip() for a in attacks.split(",") if a.strip()],
                          threat={"norm": norm, "eps": eps}, n_examples=n_examples, cascade=not no_cascade,
                          batch_size=batch_size, device=device, cache_dir=None if no_cache else cache_dir)
    if as_json:
        click.echo(json.dumps(evaluation.summary(), indent=2))
    else:
        print_evaluation(model_spec, evaluation)


@main.command(name="list")
@click.argument("kind", type=click.Choice(["methods", "models", "datasets", "attacks", "teachers"]))
def list_(kind):
    """What the registries hold, with one-line descriptions."""
    from .cli_display import print_registry

    print_registry(kind)


if __name__ == "__main__":  # pragma: no cover
    main()
