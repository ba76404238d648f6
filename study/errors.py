"""Errors of a study that the user can fix; the CLI prints them without a traceback."""

__all__ = ["StudyError"]


class StudyError(ValueError):
    """A study cannot start or continue; the message names the problem and the fix."""
