"""Nodes grouped into tasks: the connected nodes of one namespace run as one task.

A job (``dose_1e4.dense.test``: validate -> reconstruct -> record, and its evaluation in
a full run) then runs in one worker process from its input file to its manifest entry,
and its validated arrays (the MemoryDataset ``checked_input``) never leave that
process. Nodes without a namespace run alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from graphlib import CycleError, TopologicalSorter

from kedro.pipeline import Pipeline
from kedro.pipeline.node import Node


@dataclass(frozen=True)
class NodeGroup:
    """Nodes that run one after the other in one task, in topological order."""

    nodes: tuple[Node, ...]

    @property
    def name(self) -> str:
        """The namespace the nodes share, else the single node's name."""
        return self.nodes[0].namespace or self.nodes[0].name

    def __repr__(self) -> str:
        return f"NodeGroup({self.name}: {len(self.nodes)} nodes)"


def node_groups(pipeline: Pipeline) -> list[NodeGroup]:
    """The pipeline's nodes in groups whose dependency graph has no cycle.

    Two nodes of one namespace connected by a dataset share a group. Where a group
    would depend on itself through another group (a -> x -> b with a, b in one
    namespace and x outside it), the groups on that cycle run node by node instead.
    """
    order = {node: index for index, node in enumerate(pipeline.nodes)}
    owner = _merge_namespaces(pipeline)
    while True:
        groups = _collect(owner, order)
        try:
            TopologicalSorter(group_dependencies(pipeline, groups)).prepare()
        except CycleError as cycle:
            for group in set(cycle.args[1]):
                for node in group.nodes:
                    owner[node] = node
            continue
        return groups


def group_dependencies(
    pipeline: Pipeline, groups: Sequence[NodeGroup]
) -> dict[NodeGroup, set[NodeGroup]]:
    """For each group, the other groups it needs to have finished first."""
    group_of = {node: group for group in groups for node in group.nodes}
    return {
        group: {
            group_of[parent]
            for node in group.nodes
            for parent in pipeline.node_dependencies[node]
            if group_of[parent] is not group
        }
        for group in groups
    }


def widest_level(dependencies: dict[NodeGroup, set[NodeGroup]]) -> int:
    """The most groups that can run at once: the widest level of the group graph."""
    sorter = TopologicalSorter(dependencies)
    sorter.prepare()
    widest = 0
    while sorter.is_active():
        ready = sorter.get_ready()
        widest = max(widest, len(ready))
        sorter.done(*ready)
    return widest


def _merge_namespaces(pipeline: Pipeline) -> dict[Node, Node]:
    """Union-find over the edges between nodes of the same namespace."""
    owner = {node: node for node in pipeline.nodes}

    def root(node: Node) -> Node:
        while owner[node] is not node:
            owner[node] = owner[owner[node]]
            node = owner[node]
        return node

    for node, parents in pipeline.node_dependencies.items():
        for parent in parents:
            if node.namespace and parent.namespace == node.namespace:
                owner[root(node)] = root(parent)
    return {node: root(node) for node in pipeline.nodes}


def _collect(owner: dict[Node, Node], order: dict[Node, int]) -> list[NodeGroup]:
    members: dict[Node, list[Node]] = {}
    for node in sorted(owner, key=order.__getitem__):
        members.setdefault(owner[node], []).append(node)
    return sorted(
        (NodeGroup(tuple(nodes)) for nodes in members.values()),
        key=lambda group: order[group.nodes[0]],
    )
