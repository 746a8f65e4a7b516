"""Benchmarks as tasks and THE one answer-matching policy (``matching.py`` states it and its sources)."""

from .matching import (ABS_TOL, ANSWER_MARKER, TASKS, DigitStringTask, NumericTask, Task, answer_text, first_number,
                       get_task)

__all__ = ["ABS_TOL", "ANSWER_MARKER", "DigitStringTask", "NumericTask", "TASKS", "Task", "answer_text",
           "first_number", "get_task"]
