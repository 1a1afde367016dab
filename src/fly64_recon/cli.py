"""Project CLI: Kedro's own ``kedro run`` with the options scientists type.

Kedro 1.x only has ``--namespaces`` (comma-separated), and deprecates ``--pipeline`` in
favour of ``--pipelines``. Scientists type ``kedro run --pipeline ptychi_baseline
--namespace dose_1e4``; this wraps Kedro's command unchanged, adds ``--namespace`` and
hands ``--pipeline`` to Kedro as ``--pipelines``, so every option keeps Kedro's meaning
and none warns.
"""

from __future__ import annotations

from typing import Any

import click
from kedro.framework.cli.project import run as kedro_run


def _run(ctx: click.Context, namespace: tuple[str, ...], **kwargs: Any):
    kwargs["namespaces"] = [*kwargs["namespaces"], *namespace]
    if kwargs["pipeline"]:
        kwargs["pipelines"] = [*kwargs["pipelines"], kwargs["pipeline"]]
        kwargs["pipeline"] = None
    return ctx.invoke(kedro_run.callback, **kwargs)


@click.group(name="fly64_recon")
def cli() -> None:
    """Project commands."""


run = click.Command(
    name="run",
    callback=click.pass_context(_run),
    params=[
        *kedro_run.params,
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
