"""What one trace's spans come to: the tree, the critical path, a person's time, cost per branch.

Pure functions over the ``SpanRecord`` list of one trace (``store.trace_spans``): nothing
here reads the store or the clock. A span still open (``end_ns`` is None) is drawn to
``now_ns``, which the caller passes.

Definitions (docs/tracing.md, "Trace view", says the same for operators):

- **Tree.** A span hangs under its parent; children are sorted by start. A span whose
  parent is not among the trace's spans (not saved yet, pruned, or on a host whose
  spans have not arrived) is an *orphan*: it is shown under the root, marked. Spans
  whose parents form a cycle (bad data) are broken up the same way.
- **Finish.** A span's finish is the latest end in its subtree: a parent waits on its
  children (a send is not done until the turn it woke is).
- **Critical path.** From the root with the latest finish, repeatedly the child with
  the latest finish (on a tie, the one that started last: it was waited on), down to a
  leaf. It is the chain of spans that determines when the trace ends.
- **Person wait.** The union of the intervals of spans that wait on a person (questions,
  approvals): two questions open at once count once.
- **Cost.** A branch is one child of the root (with one root; with several, each root)
  and its whole subtree. A span's cost is its ``cost_usd``; a span that carries a cost
  itself already includes its ``model`` children (a turn's cost is its model requests'),
  so those are not added again.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hyperhive_tracing.store import SpanRecord

MODEL_KIND = "model"
FIGURES = ("cost_usd", "input_tokens", "output_tokens")  # summed over a subtree


@dataclass(eq=False)
class SpanNode:
    """A span in the tree, with what the view draws: depth, end (now for an open span), finish, cost."""

    span: SpanRecord
    depth: int = 0
    orphan: bool = False
    children: list[SpanNode] = field(default_factory=list)
    end_ns: int = 0
    finish_ns: int = 0
    cost_usd: float = 0.0
    input_tokens: int = 0
    output_tokens: int = 0

    @property
    def open(self) -> bool:
        return self.span.end_ns is None


@dataclass(frozen=True)
class Branch:
    """One child of the root and everything under it: what it cost and which agents it reached."""

    span_id: str
    name: str
    agents: tuple[str, ...]
    cost_usd: float
    input_tokens: int
    output_tokens: int


@dataclass(frozen=True)
class TraceAnalysis:
    """A whole trace, ready to draw."""

    roots: list[SpanNode]
    rows: list[SpanNode]  # depth first, children by start: the waterfall's rows
    start_ns: int
    finish_ns: int
    critical_path: list[SpanNode]
    person_intervals: list[tuple[int, int]]
    person_wait_ns: int
    branches: list[Branch]
    cost_by_agent: dict[str, float]
    total_cost_usd: float
    open: bool

    @property
    def duration_ns(self) -> int:
        return self.finish_ns - self.start_ns

    @property
    def critical_ids(self) -> frozenset[str]:
        return frozenset(node.span.span_id for node in self.critical_path)


def _start_key(node: SpanNode) -> tuple[int, str]:
    return node.span.start_ns, node.span.span_id


def build_tree(spans: Sequence[SpanRecord], now_ns: int) -> list[SpanNode]:
    """The trace's top-level nodes, each with its subtree; depth, end, finish and cost filled in."""
    nodes = {
        span.span_id: SpanNode(span, end_ns=max(span.start_ns, now_ns if span.end_ns is None else span.end_ns))
        for span in spans
    }
    children: dict[str | None, list[SpanNode]] = defaultdict(list)
    for node in nodes.values():
        children[node.span.parent_id].append(node)
    tops = sorted(children.pop(None, []), key=_start_key)
    orphans = sorted(
        (node for parent, kids in children.items() if parent not in nodes for node in kids), key=_start_key
    )
    seen: set[str] = set()

    def attach(node: SpanNode) -> None:
        # Iterative: a long chain of sends must not hit Python's recursion limit.
        stack = [node]
        while stack:
            current = stack.pop()
            seen.add(current.span.span_id)
            current.children = sorted(
                (kid for kid in children.get(current.span.span_id, ()) if kid.span.span_id not in seen),
                key=_start_key,
            )
            stack.extend(current.children)

    for node in tops:
        attach(node)
    home = tops[0] if tops else None
    # What no root reaches: orphans first, then what is left of a cycle, earliest first.
    loose = [*orphans, *sorted((node for node in nodes.values() if node.span.span_id not in seen), key=_start_key)]
    for node in loose:
        if node.span.span_id in seen:
            continue
        node.orphan = True
        attach(node)
        if home is None:
            tops.append(node)
        else:
            home.children.append(node)
    if home is not None:
        home.children.sort(key=_start_key)
    for top in tops:
        _fill(top)
    return tops


def _fill(top: SpanNode) -> None:
    """Depth top-down, then finish, cost and tokens bottom-up."""
    order = list(walk([top]))
    for node in order:
        for kid in node.children:
            kid.depth = node.depth + 1
    for node in reversed(order):
        node.finish_ns = max([node.end_ns, *(kid.finish_ns for kid in node.children)])
        for figure in FIGURES:
            own = getattr(node.span, figure)
            below = sum(getattr(kid, figure) for kid in node.children if _counted(own, kid.span))
            setattr(node, figure, (own or 0) + below)


def _counted(parent_figure: float | None, kid: SpanRecord) -> bool:
    """Whether a child's figure adds to its parent's: not a model request's, when the parent has its own."""
    return parent_figure is None or kid.kind != MODEL_KIND


def walk(tops: Iterable[SpanNode]) -> Iterable[SpanNode]:
    """Every node, depth first, children in order: the waterfall's rows."""
    stack = list(reversed(list(tops)))
    while stack:
        node = stack.pop()
        yield node
        stack.extend(reversed(node.children))


def critical_path(tops: Sequence[SpanNode]) -> list[SpanNode]:
    """The chain that determines the trace's end: from the root finishing last, the child finishing last."""
    if not tops:
        return []

    def latest(nodes: Sequence[SpanNode]) -> SpanNode:
        return max(nodes, key=lambda node: (node.finish_ns, node.span.start_ns, node.span.span_id))

    path = [latest(tops)]
    while path[-1].children:
        path.append(latest(path[-1].children))
    return path


def person_wait(spans: Iterable[SpanRecord], now_ns: int) -> tuple[list[tuple[int, int]], int]:
    """The intervals a person was being waited on, merged, and their total length in ns."""
    intervals = sorted(
        (span.start_ns, max(span.start_ns, now_ns if span.end_ns is None else span.end_ns))
        for span in spans
        if span.waits_on_person
    )
    merged: list[tuple[int, int]] = []
    for start, end in intervals:
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged, sum(end - start for start, end in merged)


def branches(tops: Sequence[SpanNode]) -> list[Branch]:
    """Cost and tokens per branch: each child of the root (with several roots, each root), by start."""
    heads = tops[0].children if len(tops) == 1 else list(tops)
    return [
        Branch(
            span_id=head.span.span_id,
            name=head.span.name,
            agents=tuple(sorted({node.span.agent for node in walk([head])})),
            cost_usd=head.cost_usd,
            input_tokens=head.input_tokens,
            output_tokens=head.output_tokens,
        )
        for head in heads
    ]


def cost_by_agent(tops: Sequence[SpanNode]) -> dict[str, float]:
    """What each agent's spans cost, model requests counted once (see the module's definitions).

    Only agents with a span that carries a cost are listed (at $0 on the rehearsal model).
    """
    costs: dict[str, float] = {}
    counted = [(None, top) for top in tops] + [(node, kid) for node in walk(tops) for kid in node.children]
    for parent, node in counted:
        cost = node.span.cost_usd
        if cost is not None and (parent is None or _counted(parent.span.cost_usd, node.span)):
            costs[node.span.agent] = costs.get(node.span.agent, 0.0) + cost
    return dict(sorted(costs.items()))


def analyse(spans: Sequence[SpanRecord], now_ns: int) -> TraceAnalysis:
    """Everything the trace page shows about ``spans`` (one trace's), open spans drawn to ``now_ns``."""
    tops = build_tree(spans, now_ns)
    rows = list(walk(tops))
    intervals, waited = person_wait(spans, now_ns)
    return TraceAnalysis(
        roots=tops,
        rows=rows,
        start_ns=min((node.span.start_ns for node in rows), default=now_ns),
        finish_ns=max((node.finish_ns for node in tops), default=now_ns),
        critical_path=critical_path(tops),
        person_intervals=intervals,
        person_wait_ns=waited,
        branches=branches(tops),
        cost_by_agent=cost_by_agent(tops),
        total_cost_usd=sum(top.cost_usd for top in tops),
        open=any(node.open for node in rows),
    )
