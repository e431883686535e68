"""The one exception type users see: an expected failure with a message that says what to do."""

from __future__ import annotations


class GpurenderError(Exception):
    """An expected, user-facing failure (bad input, missing dependency, no display...).

    The CLI prints ``str(error)`` on one line and exits non-zero, without a traceback.
    """


class DependencyMissing(GpurenderError):
    """An optional dependency is not installed; the message names the ``pip install`` that fixes it."""

    def __init__(self, package: str, extra: str | None = None, why: str = "") -> None:
        fix = f"pip install 'gpurender[{extra}]'" if extra else f"pip install {package}"
        super().__init__(f"{package} is not installed{': ' + why if why else ''} ({fix})")
