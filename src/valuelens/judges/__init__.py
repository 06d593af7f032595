"""Judges: decide whether a text expresses a value (detector, LLM judge, agreement)."""

from .base import JUDGES, Judge, JudgeResult, get_judge, register_judge

__all__ = ["JUDGES", "Judge", "JudgeResult", "get_judge", "register_judge"]
