"""Errors shared across layers, and how an error is shortened to one line for a message."""

from __future__ import annotations


class ModelError(ValueError):
    """A model name or weights file the user gave cannot be used (models, networks, checkpoints)."""


class ExportError(RuntimeError):
    """The model cannot be exported or quantized; the message is one line naming the step."""


def one_line(err: BaseException) -> str:
    """`err` as one line of at most 300 characters."""
    text = " ".join(str(err).split())
    return text[:300] + ("…" if len(text) > 300 else "")
