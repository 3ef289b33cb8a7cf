"""One entry point for every benchmark of issue #5; writes results.md and PNG plots.

    python -m benchmarks.run            # full run (minutes): benchmarks/results.md + plots
    python -m benchmarks.run --quick    # small sizes, same code paths (CI): benchmarks/quick/
    python -m benchmarks.run --only scoring --only dags   # replaces only these sections of results.md
"""
import dataclasses
import importlib
import re
import shutil
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

import click

from benchmarks._common import PROJECT_ROOT, BenchContext, Section, machine
from categories_classification.prediction import jvm

# Module names in benchmarks/, in the order of the targets.
BENCHMARKS = ("model_size", "model_quality", "scoring", "many_clients", "fleet", "fleet_status", "dags",
              "airflow_fleet", "airflow_fleet_celery", "parallel_dags", "demo")


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--quick", is_flag=True, help="Small sizes (a minute or two): checks the harness, not the targets.")
@click.option("--only", "only", multiple=True, type=click.Choice(BENCHMARKS),
              help="Run only these benchmarks (repeatable); default: all.")
@click.option("--output-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where results.md and the plots go (default: benchmarks/, or benchmarks/quick/ with --quick).")
def main(quick: bool, only: tuple[str, ...], output_dir: Optional[Path]) -> None:
    """Run the benchmarks side by side and write the results table."""
    outdir = output_dir or (PROJECT_ROOT / "benchmarks" / ("quick" if quick else ""))
    outdir.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="categories_bench_"))
    results = outdir / "results.md"
    where, started_at = machine(), datetime.now(timezone.utc)  # once: the run's machine and start
    # The Spark JVM's class-data archive, as a machine has it after its first command: built now,
    # not in the background of whatever the first section times.
    jvm.ensure_archive()
    # With --only, the other sections (and the hand-written summary) of an earlier run stay.
    previous = results.read_text(encoding="utf-8") if only and results.exists() else None
    sections: list[Section] = []
    crashed: list[str] = []
    try:
        for name in only or BENCHMARKS:
            context = BenchContext(quick=quick, workdir=workdir / name, outdir=outdir)
            context.workdir.mkdir(parents=True)
            click.echo(f"== {name} ...", err=True)
            started = time.perf_counter()
            try:
                section = importlib.import_module(f"benchmarks.bench_{name}").run(context)
            except Exception as exc:  # pylint: disable=broad-except  # recorded; the others still run
                section = Section(name, "(the benchmark failed)", notes=[f"FAILED: {_first_line(exc)}"])
                crashed.append(name)
                click.echo(f"== {name} FAILED: {exc}", err=True)
            if quick:  # small sizes say nothing about the targets: the rows stay, the verdicts go
                section.rows = [dataclasses.replace(row, met=None) for row in section.rows]
            section.seconds = time.perf_counter() - started
            click.echo(f"== {name}: {_verdict(section)} in {section.seconds:.0f} s", err=True)
            sections.append(section)
            # Written after every section: a later crash or interruption keeps what was measured.
            text = _render(sections, quick, where, started_at)
            if previous is not None:
                text = _merge(previous, text, started_at, only, where)
            results.write_text(text, encoding="utf-8")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    click.echo(f"results: {results}", err=True)
    if crashed:  # a broken harness fails the run (CI's bench-quick), after writing what worked
        raise click.ClickException(f"benchmark(s) failed: {', '.join(crashed)} (see {results})")
    if quick:
        return
    failed = [section.title for section in sections if section.met is False]
    if failed:
        click.echo(f"targets missed: {'; '.join(failed)} (see {results})", err=True)


_VERDICTS = {True: "target met", False: "target MISSED", None: "measured"}


def _verdict(section: Section) -> str:
    return _VERDICTS[section.met]


def _render(sections: list[Section], quick: bool, where: str, started: datetime) -> str:
    lines = [
        "# Benchmark results" + (" (quick run: small sizes, not the targets' sizes)" if quick else ""),
        "",
        f"Run {started:%Y-%m-%d %H:%M} UTC with `python -m benchmarks.run"
        f"{' --quick' if quick else ''}` on {where}.",
        "Every ratio compares two figures measured side by side in this one run.",
        "",
    ]
    for section in sections:
        lines += [f"## {section.title}: {_verdict(section)}", "", f"Target: {section.target}", "",
                  "| figure | value | reference | ratio | target | met |", "|---|---|---|---|---|---|"]
        for row in section.rows:
            met = {True: "yes", False: "**no**", None: ""}[row.met]
            lines.append(f"| {row.figure} | {row.value} | {row.reference} | {row.ratio} | {row.target} | {met} |")
        lines.append("")
        lines += [f"- {note}" for note in section.notes]
        if section.notes:
            lines.append("")
        lines += [f"![{plot}]({plot})" for plot in section.plots]
        if section.plots:
            lines.append("")
        lines += [f"_{section.seconds:.0f} s for this section._", ""]
    return "\n".join(lines)


def _merge(previous: str, fresh: str, started: datetime, only: tuple[str, ...], where: str) -> str:
    """``previous`` with each of ``fresh``'s sections put in place of the one of the same title (or appended)."""
    head, kept = _split(previous)
    _, new = _split(fresh)
    note = (f"_Re-run alone on {started:%Y-%m-%d %H:%M} UTC with `python -m benchmarks.run "
            f"{' '.join(f'--only {name}' for name in only)}` on {where}; the other sections are from the run above._")
    for title, block in new.items():
        kept[title] = f"{block.rstrip()}\n\n{note}"
    return head + "".join(f"{block.rstrip()}\n\n" for block in kept.values()).rstrip() + "\n"


def _split(text: str) -> tuple[str, dict[str, str]]:
    """The text before the first ``## `` heading, and each section by title (heading less its verdict)."""
    head, *blocks = re.split(r"(?m)^(?=## )", text)
    sections: dict[str, str] = {}
    for block in blocks:
        heading = block.splitlines()[0][3:]
        title = heading.rsplit(": ", 1)[0] if heading.endswith(tuple(_VERDICTS.values())) else heading
        sections[title] = block
    return head, sections


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"


if __name__ == "__main__":
    main()  # pylint: disable=no-value-for-parameter
