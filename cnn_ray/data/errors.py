"""User-facing errors of the data layer (no Ray, no Pillow: the command line imports this).

Each is a ``ValueError`` whose message names the file, column or row and what was expected.
The entry scripts (:func:`cnn_ray.cli.main`, so ``jobs/*.py`` too) print them like a
:class:`~cnn_ray.config.ConfigError`: one line, no traceback, exit status 2. Raised inside a
Ray task they reach the driver wrapped in a ``RayTaskError``; :func:`user_error` unwraps them.
"""

from __future__ import annotations

from typing import Optional

__all__ = ["DataError", "InputNotVisibleError", "SourceError", "TooManyBadInputsError", "user_error"]


class DataError(ValueError):
    """Base of the data layer's user-facing errors (the message is meant for the user)."""


class SourceError(DataError):
    """The input cannot be used at all (unknown layout, wrong schema). Names the file/folder."""


class TooManyBadInputsError(DataError):
    """More than ``data.max_bad_fraction`` of a split's inputs are bad; the message summarises
    them (counts by kind, the first few paths, where the full list is)."""


class InputNotVisibleError(DataError):
    """A file the driver listed cannot be found on the node that decodes it: the raw data is not
    on storage every node sees (or it vanished since listing). Names the file and the node."""

    def __init__(self, path: str, node: str):
        self.path, self.node = path, node
        super().__init__(
            f"{path}: listed on the driver but not found on node {node}, where it was decoded "
            "(the raw data must be on storage every node sees, e.g. a shared file system "
            "mounted at the same path; see cluster/README.md, 'Where the data lives'), or the "
            "file was removed after listing")

    def __reduce__(self):  # keep (path, node) across pickling (Ray task errors)
        return (type(self), (self.path, self.node))


def user_error(exc: BaseException) -> Optional[BaseException]:
    """The user-facing error behind ``exc`` (itself, or the cause of a Ray task error), or None.

    User-facing: :class:`DataError` (which includes ``BadInputError``) and
    :class:`~cnn_ray.config.ConfigError`.
    """
    from cnn_ray.config import ConfigError

    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, (DataError, ConfigError)) and type(exc).__module__.startswith("cnn_ray"):
            return exc
        cause = getattr(exc, "cause", None)  # ray.exceptions.RayTaskError
        exc = cause if isinstance(cause, BaseException) else exc.__cause__
        seen += 1
    return None
