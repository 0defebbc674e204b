"""Leaderboards from result files (pandas only; never imports torch)."""
from .leaderboard import leaderboard_frame, render, teacher_frame, to_markdown, write_leaderboard

__all__ = ["leaderboard_frame", "render", "teacher_frame", "to_markdown", "write_leaderboard"]
