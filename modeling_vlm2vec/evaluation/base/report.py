"""What every benchmark's report shares: percentages, the aggregates table, and the writing of a run's report.

A summary (JSON) holds scores as fractions in [0, 1]; the Markdown shows percentages like the papers. A benchmark
builds its summary and renders its Markdown (``mmeb_v1.report``, ``mmeb_v2.report``); :func:`write_report` writes
both with the chart.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from ...common.files import write_bytes_atomic, write_json_atomic, write_text_atomic
from .chart import render_chart


def format_percent(value: float | None) -> str:
    """A fraction as a percentage with one decimal (``0.1234`` -> ``"12.3"``); ``"–"`` for None."""
    return "–" if value is None else f"{100.0 * float(value):.1f}"


def aggregate_table(
    aggregates: dict, *, header: str, score: str, paper: str, title: Callable[[str], str] = str
) -> list[str]:
    """Markdown lines (a blank line first) of the aggregates table: ``title(group)`` (marked partial when fewer
    than all of its datasets were evaluated), ``n/N``, ``agg[score]`` and ``agg[paper]`` in percent."""
    lines = ["", header, "|---|---:|---:|---:|"]
    for group, agg in aggregates.items():
        partial = "" if agg["n"] == agg["N"] else " (partial)"
        lines.append(
            f"| {title(group)}{partial} | {agg['n']}/{agg['N']} | {format_percent(agg[score])} | "
            f"{format_percent(agg[paper])} |"
        )
    return lines


def write_report(output_dir: str | os.PathLike, summary: dict, render: Callable[[dict], str]) -> str:
    """Write ``summary.json``, ``results.md`` (``render(summary)``: the benchmark's own Markdown) and
    ``results.png`` atomically; return the Markdown."""
    output_dir = Path(output_dir)
    write_json_atomic(output_dir / "summary.json", summary)
    markdown = render(summary)
    write_text_atomic(output_dir / "results.md", markdown)
    write_bytes_atomic(output_dir / "results.png", render_chart(summary))
    return markdown
