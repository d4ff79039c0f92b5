"""The one error type of the genome layer.

Every invalid genome, string or class definition raises `GenomeError`, naming where it is wrong.
"""
from __future__ import annotations


class GenomeError(ValueError):
    """An invalid genome, genome text, or LIV class definition.

    Attributes:
      segment: index of the offending LIV segment (0-based), or None.
      position: name of the offending position within the segment, or None.
      value: the offending value, or None.
      valid: a description of the valid values, or None.
    """

    def __init__(self, message: str, *, segment: int | None = None, position: str | None = None,
                 value: object = None, valid: object = None):
        parts = []
        if segment is not None:
            parts.append(f"segment {segment}")
        if position is not None:
            parts.append(f"position '{position}'")
        where = (", ".join(parts) + ": ") if parts else ""
        extra = ""
        if value is not None:
            extra += f" (got {value!r}"
            extra += f"; valid: {valid})" if valid is not None else ")"
        elif valid is not None:
            extra += f" (valid: {valid})"
        super().__init__(f"{where}{message}{extra}")
        self.segment = segment
        self.position = position
        self.value = value
        self.valid = valid
