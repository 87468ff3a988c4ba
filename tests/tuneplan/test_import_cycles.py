"""No import cycles in the shipped packages: a cycle means two modules can only be understood
(and loaded) together, and it was how the models service ended up importing the presets."""

from __future__ import annotations


def _cycles(graph) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.find_modules_directly_imported_by(v):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for m in sorted(graph.modules):
        if m not in index:
            visit(m)
    return out


def test_no_import_cycle_in_tuneplan_or_planner():
    import sys

    import grimp  # import-linter's graph builder (a dev dependency)

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 10_000))
    try:
        graph = grimp.build_graph("tuneplan", "planner")  # imports inside functions count too
        assert _cycles(graph) == []
    finally:
        sys.setrecursionlimit(limit)


def test_commands_do_not_reach_into_the_ui_for_shared_code():
    """`attach` finds runs through `tuneplan.app`; the plan table formats numbers with the core
    `tuneplan.formatting`: neither imports a UI module for it."""
    import grimp

    graph = grimp.build_graph("tuneplan")
    assert "tuneplan.ui.adapters" not in graph.find_modules_directly_imported_by("tuneplan.commands.attach")
    assert not any(m.startswith("tuneplan.ui") for m in graph.find_modules_directly_imported_by(
        "tuneplan.commands._output"))
