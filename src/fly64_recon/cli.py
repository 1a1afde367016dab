"""Project CLI: Kedro's own ``kedro run`` with a ``--namespace`` alias.

Kedro 1.x only has ``--namespaces`` (comma-separated). Scientists type
``kedro run --namespace dose_1e4``; this wraps Kedro's command unchanged and adds the
alias, so every other option keeps Kedro's meaning.
"""

from __future__ import annotations

import os
from typing import Any

import click
from kedro.framework.cli.project import run as kedro_run


def _merge_namespaces(ctx: click.Context, namespace: tuple[str, ...], **kwargs: Any):
    kwargs["namespaces"] = [*kwargs["namespaces"], *namespace]
    if kwargs.get("env"):
        # The pipelines are built per job from the environment's study design.
        os.environ["KEDRO_ENV"] = kwargs["env"]
    return ctx.invoke(kedro_run.callback, **kwargs)


@click.group(name="fly64_recon")
def cli() -> None:
    """Project commands."""


run = click.Command(
    name="run",
    callback=click.pass_context(_merge_namespaces),
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
