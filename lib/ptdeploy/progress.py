"""Progress of long operations: the library reports, the notebook or the CLI draws.

A wait takes ``progress``: ``False`` (silent), ``True`` (a :class:`StatusBar` it opens
itself), or any callable, called with each new state — as databricks-sdk's waiters take
``callback``. A notebook or a CLI passes the bar it wants::

    with progress.StatusBar("waiting for my-endpoint", endpoints.describe_state) as bar:
        endpoints.wait_until_ready(w, "my-endpoint", progress=bar)

Bars are ``tqdm.auto``'s: tqdm's notebook widget bar in Jupyter (JupyterLab, Databricks),
a text bar on a terminal or in a job log.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")

# What a caller gives a long operation: a flag, or its own callback.
Progress = bool | Callable[[Any], None]


class StatusBar(Generic[T]):
    """An open-ended bar that counts updates and shows the latest state; a callback."""

    def __init__(
        self, desc: str, describe: Callable[[T], str] = str, *, unit: str = "poll"
    ) -> None:
        from tqdm.auto import tqdm

        self.describe = describe
        self.bar = tqdm(
            desc=desc, total=None, unit=unit, bar_format="{desc}{postfix} [{elapsed}]", leave=True
        )

    def __call__(self, state: T) -> None:
        self.bar.update(1)
        self.bar.set_postfix_str(self.describe(state))  # refreshes: every state is shown

    def close(self) -> None:
        self.bar.close()

    def __enter__(self) -> StatusBar[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def reporter(
    progress: Progress, desc: str, describe: Callable[[T], str] = str
) -> contextlib.AbstractContextManager[Callable[[T], None]]:
    """The callback a long operation reports to, as a context manager: the caller's own
    callback, a :class:`StatusBar` for ``True``, or nothing for ``False``."""
    if callable(progress):
        return contextlib.nullcontext(progress)
    if progress:
        return StatusBar(desc, describe)
    return contextlib.nullcontext(lambda _state: None)
