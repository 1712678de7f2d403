"""The package's structure: no import cycles, every config field documented as its help says."""

import ast
import dataclasses
import re
from pathlib import Path

from trl import GRPOConfig

import fair_trl
from fair_trl import FairGRPOConfig

PACKAGE = Path(fair_trl.__file__).parent


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, known: set[str]) -> set[str]:
    """Every fair_trl module `path` imports, at module level or inside a function (lazy imports count too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from pkg import mod` imports the submodule when there is one, else a name of pkg.
            names = [f"{node.module}.{alias.name}" for alias in node.names]
            names = [n if n in known else node.module for n in names]
        else:
            continue
        found.update(n for n in names if n in known)
    return found


def import_graph() -> dict[str, set[str]]:
    paths = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    known = set(paths)
    return {name: imported_modules(path, known) - {name} for name, path in paths.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_cycle_finder_finds_a_planted_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_module_imports_one_that_imports_it_back():
    graph = import_graph()
    assert "fair_trl.trainer" in graph and "fair_trl.advantages.fair_grpo" in graph
    assert cycles(graph) == []


def test_core_layers_never_import_the_trainer_or_the_demo():
    graph = import_graph()
    for module, imports in graph.items():
        if module.startswith(("fair_trl.advantages", "fair_trl.model_card", "fair_trl.rollout_fairness")):
            assert not {i for i in imports if i in ("fair_trl.trainer", "fair_trl.config")}, module
        if not module.startswith("fair_trl.demo") and module != "fair_trl.cli":
            assert not {i for i in imports if i.startswith("fair_trl.demo")}, module
    assert graph["fair_trl.rollout_fairness"] <= {"fair_trl.metrics", "fair_trl.rewards"}


def normalised(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def test_every_fairgrpo_field_is_documented_with_its_help_text():
    trl_fields = {g.name for g in dataclasses.fields(GRPOConfig)}
    ours = [f for f in dataclasses.fields(FairGRPOConfig) if f.name not in trl_fields]
    assert len(ours) >= 18
    doc = normalised(FairGRPOConfig.__doc__)
    for f in ours:
        help_text = f.metadata.get("help")
        assert help_text, f"{f.name} has no help"
        match = re.search(rf"\b{f.name} \(`[^)]*`\): (.*?)(?= \w+ \(`| > |$)", doc)
        assert match, f"{f.name} is not in FairGRPOConfig's docstring"
        assert match.group(1) == normalised(help_text), f.name
