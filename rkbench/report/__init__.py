"""Leaderboards from result files (pandas and matplotlib only; never imports torch).

``frame`` reads and merges results directories, ``query`` filters/sorts/pivots, ``text`` writes
Markdown/CSV/JSON, ``html`` a self-contained sortable page, ``plots`` the PNG figures, and
``leaderboard`` ties them together (``write_leaderboard`` is what the runner calls). ``stats``
holds the intervals and tests, ``examples`` reads per-example arrays, ``paired`` compares runs on
identical examples (``--baseline``, ``rkbench compare``), ``classes`` the per-class table.
"""
from .frame import SCHEMA_VERSION, Results, collect
from .leaderboard import (FORMATS, compare_report, console_tables, leaderboard_frame, render, report, teacher_frame,
                          write_leaderboard)
from .query import leaderboard
from .text import to_markdown

__all__ = ["FORMATS", "SCHEMA_VERSION", "Results", "collect", "compare_report", "console_tables", "leaderboard", "leaderboard_frame",
           "render", "report", "teacher_frame", "to_markdown", "write_leaderboard"]
