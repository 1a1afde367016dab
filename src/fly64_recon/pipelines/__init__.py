"""The project's pipelines; what they share."""

from collections.abc import Callable
from functools import partial, update_wrapper


def bind(func: Callable, **constants) -> Callable:
    """``func`` with per-job constants bound, keeping its name for logs and kedro viz."""
    return update_wrapper(partial(func, **constants), func)
