"""Models that need models: the order a sweep runs them in, and the tree it shows.

A trial's ``parents`` (``jobs.run_folder.TrialEntry``) are the models it needs trained first: a
fine-tuned model's starting point, a soup's ingredients. ``Schedule`` hands out the trials to
run (a sweep's ``todo``) as soon as all their parents are done, in plan order, and never one
whose parent failed: those are blocked, with the reason, as are their own descendants. It holds
no resources and knows no Ray: ``orchestrator.tune_driver`` asks it for the next trial from a
Tune searcher, so that a child starts as its parent finishes, independent trials run side by
side, and no trial waits inside a placement group.

``lineage_tree`` renders the parents as a tree for ``mpo sweep --dry-run`` and ``mpo status``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from rich.tree import Tree


@dataclass
class Schedule:
    """The trials ``todo`` (model ids, plan order), ``parents`` of every trial of the plan, and
    the trials already done (on disk)."""

    todo: list[str]
    parents: Mapping[str, list[str]]
    labels: Mapping[str, str]
    done: set[str] = field(default_factory=set)
    running: set[str] = field(default_factory=set)
    failed: set[str] = field(default_factory=set)
    #: trial -> why it will not run this time
    blocked: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.pending = list(self.todo)
        scheduled = set(self.todo)
        for mid in self.todo:  # a parent neither done nor to run: its children cannot start
            for p in self.parents.get(mid, []):
                if p not in self.done and p not in scheduled:
                    self._block(mid, f"its parent {self._name(p)} is neither trained nor "
                                     "scheduled in this sweep")

    def _name(self, mid: str) -> str:
        return f"'{self.labels.get(mid, mid)}' ({mid})"

    def _block(self, mid: str, reason: str) -> list[str]:
        """Block ``mid`` and every pending descendant; returns those newly blocked."""
        out = []
        if mid in self.pending and mid not in self.blocked:
            self.blocked[mid] = reason
            self.pending.remove(mid)
            out.append(mid)
            for child in [c for c in self.pending if mid in self.parents.get(c, [])]:
                out += self._block(child, f"its parent {self._name(mid)} did not run: {reason}")
        return out

    def next_ready(self) -> str | None:
        """The first pending trial whose parents are all done (now running), or None."""
        for mid in self.pending:
            if all(p in self.done for p in self.parents.get(mid, [])):
                self.pending.remove(mid)
                self.running.add(mid)
                return mid
        return None

    def finished(self) -> bool:
        """Nothing left to hand out: none pending, or none can ever become ready."""
        return not self.pending or (not self.running and not any(
            all(p in self.done for p in self.parents.get(m, [])) for m in self.pending))

    def complete(self, mid: str, *, error: str | None = None) -> list[str]:
        """Record a trial's end; a failure blocks its pending descendants (returned)."""
        self.running.discard(mid)
        if error is None:
            self.done.add(mid)
            return []
        self.failed.add(mid)
        out: list[str] = []
        for child in [c for c in self.pending if mid in self.parents.get(c, [])]:
            out += self._block(child, f"its parent {self._name(mid)} failed: {error}")
        return out


def lineage_tree(trials: Mapping[str, tuple[str, list[str]]], *, title: str,
                 notes: Mapping[str, str] | None = None) -> Tree | None:
    """A tree of the trials ``{model id: (label, parents)}`` that have parents or children (None
    when no trial has a parent): each model under its first parent, with the other parents
    (a soup's other ingredients) named beside it, and its ``notes`` (a state)."""
    children: dict[str, list[str]] = {}
    for mid, (_, parents) in trials.items():
        if parents:
            children.setdefault(parents[0], []).append(mid)
    if not children:
        return None
    tree = Tree(title)

    def label(mid: str) -> str:
        name, parents = trials.get(mid, (mid, []))
        others = [trials[p][0] if p in trials else p for p in parents[1:]]
        note = (notes or {}).get(mid)
        return (f"{name} [dim]{mid}[/]" + (f" (with {', '.join(others)})" if others else "")
                + (f": {note}" if note else ""))

    def add(node: Tree, mid: str, seen: frozenset[str]) -> None:
        branch = node.add(label(mid))
        for child in children.get(mid, []):
            if child not in seen:
                add(branch, child, seen | {child})

    roots: Iterable[str] = [m for m in children if not trials.get(m, ("", []))[1]]
    for root in roots:
        add(tree, root, frozenset({root}))
    return tree
