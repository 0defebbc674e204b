"""Teacher sources (one file each), registered with ``@TEACHER_SOURCES.register``."""
from . import checkpoint, pyautoattack, robustbench, timm, train  # noqa: F401  (registers the built-in sources)
from .base import TEACHER_SOURCES, TeacherContext, TeacherParams, TeacherSource

__all__ = ["TEACHER_SOURCES", "TeacherContext", "TeacherParams", "TeacherSource"]
