"""What a finished job prints: one table row per video, the progress video's games and files,
the throughput line, and each failed checkpoint on stderr. Used by ``gpurender render``,
``gpurender progress`` and ``gpurender demo``."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from gpurender.pipeline import RenderReport

SKIPPED = "skipped (exists; --force re-renders)"


def summary_table(report: RenderReport) -> list[str]:
    """The table's lines: milestone, frames, returns of the games finished in the clip, file."""
    rows = [("milestone", "frames", "episode returns", "file")]
    for v in report.videos:
        if v.busy_pid is not None:
            returns = f"skipped (process {v.busy_pid or '?'} is rendering it)"
        elif v.skipped:
            returns = SKIPPED
        else:
            returns = ", ".join(f"{x:g}" for x in v.episode_returns) or "no game finished"
        rows.append((v.milestone.display, "-" if v.skipped else str(v.frames), returns, str(v.path)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return lines


def throughput_line(report: RenderReport) -> str | None:
    """``N frames in S s: F frames/s (encoder, renderer, torch on device)``; None if nothing was drawn."""
    if not report.frames:
        return None
    return (f"{report.frames} frames in {report.wall_seconds:.1f} s: {report.fps:.1f} frames/s "
            f"({report.encoder}, {report.renderer}, torch on {report.device})")


def failure_lines(report: RenderReport) -> list[str]:
    """One ``gpurender: failed: <path>: <reason>`` line per checkpoint that could not be rendered."""
    return [f"gpurender: failed: {msg if str(path) in msg else f'{path}: {msg}'}" for path, msg in report.failures]


def progress_lines(report: RenderReport) -> list[str]:
    """The progress video's lines: its milestones' games (when it was rendered) and its files."""
    from gpurender.progress import describe, progress_table

    p = report.progress
    if p is None:
        return []
    return ([*progress_table(p), ""] if p.milestones and not p.skipped else []) + describe(p)


def print_summary(report: RenderReport, out: TextIO | None = None, err: TextIO | None = None) -> None:
    """The table and throughput line on ``out`` (stdout), the failures on ``err`` (stderr)."""
    out = out or sys.stdout
    err = err or sys.stderr
    if report.videos or report.progress is None:
        for line in summary_table(report):
            print(line, file=out)
    for line in progress_lines(report):
        print(line, file=out)
    if (line := throughput_line(report)) is not None:
        print(line, file=out)
    for line in failure_lines(report):
        print(line, file=err)


__all__ = ["failure_lines", "print_summary", "progress_lines", "summary_table", "throughput_line"]
