"""One formatter for pydantic validation errors: ``path: message`` lines.

Used wherever a validation failure is shown to a user or told to a model
(run input, model output, tool arguments, handoffs, restored outputs).
"""

from __future__ import annotations

from pydantic import ValidationError

__all__ = ["error_lines"]


def error_lines(exc: ValidationError, *, prefix: tuple[str | int, ...] = ()) -> list[str]:
    """Each error as ``dotted.path: message`` (``(root)`` for the whole value).

    ``prefix`` goes before every path (the field a value was validated for).
    """
    return [
        f"{'.'.join(str(p) for p in (*prefix, *e['loc'])) or '(root)'}: {e['msg']}"
        for e in exc.errors(include_url=False)
    ]
