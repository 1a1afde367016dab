"""Project CLI: Kedro's own ``kedro run`` with the options scientists type.

Kedro 1.x only has ``--namespaces`` (comma-separated), and deprecates ``--pipeline`` in
favour of ``--pipelines``. Scientists type ``kedro run --pipeline ptychi_baseline
--namespace dose_1e4``; this wraps Kedro's command unchanged, adds ``--namespace`` and
hands ``--pipeline`` to Kedro as ``--pipelines``, so every option keeps Kedro's meaning
and none warns. Three things differ from Kedro's defaults:

- without ``--runner`` the project's ``PoolRunner`` runs independent jobs at once on
  every core (``--runner SequentialRunner`` for Kedro's one-node-at-a-time run);
- a runner whose optional dependency is missing stops at once with one line naming
  the ``pip install`` that brings it;
- a run whose jobs failed ends with one line per failure and exit code 1, after the
  console's summary, instead of a traceback; a run stopped by an error (a full disk)
  ends with one line naming it, its traceback in the run's log.
"""

from __future__ import annotations

from typing import Any

import click
from kedro.framework.cli.project import run as kedro_run

from fly64_recon.hooks import JobsFailedError, logged_stop
from fly64_recon.runner import MissingExtraError
from fly64_recon.runner.pool import WorkerTraceback

DEFAULT_RUNNER = "fly64_recon.runner.PoolRunner"
RUNNER_HELP = (
    "The runner: by default fly64_recon.runner.PoolRunner (independent jobs at once, "
    "one per core or per GPU; --runner-params max_workers=N caps them). "
    "SequentialRunner runs one node at a time in this process; "
    "fly64_recon.runner.DaskRunner on a Dask cluster (docs/cluster.md)."
)


def _run(ctx: click.Context, namespace: tuple[str, ...], **kwargs: Any):
    kwargs["namespaces"] = [*kwargs["namespaces"], *namespace]
    if kwargs["pipeline"]:
        kwargs["pipelines"] = [*kwargs["pipelines"], kwargs["pipeline"]]
        kwargs["pipeline"] = None
    kwargs["runner"] = kwargs["runner"] or DEFAULT_RUNNER
    try:
        return ctx.invoke(kedro_run.callback, **kwargs)
    except MissingExtraError as missing:
        raise click.ClickException(str(missing)) from None
    except JobsFailedError as failed:
        raise click.ClickException(f"JobsFailedError: {failed}") from None
    except Exception as error:
        if not logged_stop(error):
            raise
        raise click.ClickException(
            f"{one_line(root_cause(error))} (the traceback is in the run's log)"
        ) from None


def root_cause(error: BaseException) -> BaseException:
    """The first cause of a chain (a full disk under a dataset's save error), leaving
    out the traceback text a worker sent along (``WorkerTraceback``)."""
    while error.__cause__ is not None and not isinstance(
        error.__cause__, WorkerTraceback
    ):
        error = error.__cause__
    return error


def one_line(error: BaseException) -> str:
    """``AtomicWriteError: [Errno 28] could not write ...``: its last line."""
    lines = str(error).strip().splitlines() or [""]
    return f"{type(error).__name__}: {lines[-1]}"


def _with_runner_help(param: click.Parameter) -> click.Parameter:
    if param.name != "runner":
        return param
    return click.Option(["--runner", "-r"], type=str, default=None, help=RUNNER_HELP)


@click.group(name="fly64_recon")
def cli() -> None:
    """Project commands."""


run = click.Command(
    name="run",
    callback=click.pass_context(_run),
    params=[
        *map(_with_runner_help, kedro_run.params),
        click.Option(
            ["--namespace"],
            multiple=True,
            help="Run only the nodes of this namespace (an alias of --namespaces; "
            "may be repeated), e.g. --namespace dose_1e4.",
        ),
    ],
    help=kedro_run.help,
)
cli.add_command(run)
