"""The design card's one-way arrows and code rules, checked on the source itself."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.helpers import ROOT_DIR

ROOT = ROOT_DIR
PACKAGES = ("banditrec", "simulator", "studies")
SOURCES = sorted(p for pkg in PACKAGES for p in ROOT.glob(f"{pkg}/**/*.py"))
# what the simulator may use of the library: its records, errors and argument checks
SIMULATOR_MAY_USE = {"banditrec.errors", "banditrec.validation", "banditrec.types"}


def imports(path: Path, *, top_level_only: bool = False) -> set[str]:
    """Absolute names of every module ``path`` imports (relative imports resolved); with
    ``top_level_only``, only the imports that run when the module is imported."""
    rel = path.relative_to(ROOT).with_suffix("")
    package = list(rel.parts[:-1])
    tree = ast.parse(path.read_text())
    nodes = _module_level(tree) if top_level_only else ast.walk(tree)
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, node.module] if node.module else base)
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def _module_level(tree: ast.Module):
    """Statements run at import: the module body and the bodies of its if/try blocks."""
    todo = list(tree.body)
    while todo:
        node = todo.pop()
        yield node
        if isinstance(node, (ast.If, ast.Try)):
            todo.extend([*node.body, *node.orelse, *getattr(node, "handlers", []), *getattr(node, "finalbody", [])])
        elif isinstance(node, ast.ExceptHandler):
            todo.extend(node.body)


def rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def offenders(paths, banned) -> list[str]:
    return [
        f"{rel(p)} imports {name}"
        for p in paths
        for name in sorted(imports(p))
        if any(name == b or name.startswith(b + ".") for b in banned)
    ]


def under(prefix: str) -> list[Path]:
    return [p for p in SOURCES if rel(p).startswith(prefix)]


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_sources_were_found():
    names = {rel(p) for p in SOURCES}
    assert len(SOURCES) > 20 and {"banditrec/engine.py", "simulator/shop.py", "studies/regret.py"} <= names


def test_the_library_imports_neither_the_simulator_nor_the_studies():
    """banditrec serves, learns and evaluates a shop from its files alone (docs/data-formats.md)."""
    assert offenders(under("banditrec/"), {"simulator", "studies"}) == []


def test_the_simulator_uses_only_the_libraries_records_and_never_a_study():
    names = {name for p in under("simulator/") for name in imports(p)}
    used = {n for n in names if n == "banditrec" or n.startswith("banditrec.")}
    assert {n for n in used if not any(n == a or n.startswith(a + ".") for a in SIMULATOR_MAY_USE)} == set()
    assert offenders(under("simulator/"), {"studies"}) == []


def test_every_study_command_is_registered_for_the_banditrec_command():
    """The library finds the studies' commands through entry points, never by importing them."""
    import configparser

    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    registered = {
        line.split("=")[1].split(":")[1].strip()
        for line in cfg["options.entry_points"]["banditrec.commands"].splitlines()
        if line.strip()
    }
    tree = ast.parse((ROOT / "studies/cli.py").read_text())
    commands = {
        node.name
        for node in tree.body
        if isinstance(node, ast.FunctionDef) and any("command" in ast.unparse(d) for d in node.decorator_list)
    }
    assert commands and registered == commands


def test_the_import_graph_has_no_cycle():
    """Module-level imports between the three packages form a DAG (an import inside a function
    runs later and cannot deadlock an import)."""
    modules = {module_name(p): p for p in SOURCES}
    graph = {}
    for name, path in modules.items():
        targets = set()
        for imported in imports(path, top_level_only=True):
            while imported and imported not in modules:
                imported = imported.rpartition(".")[0]
            # a package's __init__ importing its own submodules is Python's normal layout; the
            # reverse (a submodule importing names from its package's __init__) can cycle
            if imported and imported != name and not imported.startswith(name + "."):
                targets.add(imported)
        graph[name] = targets
    state: dict[str, int] = {}
    cycles = []

    def visit(node, stack):
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join([*stack[stack.index(nxt) :], nxt]))
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert cycles == []


@pytest.mark.parametrize(
    "inner",
    ["banditrec/types.py", "banditrec/candidates/", "banditrec/policies/", "banditrec/store/", "banditrec/ope/"],
)
def test_arrows_point_inward(inner):
    """The flow candidates -> policies -> engine -> store -> evaluation -> service: the inner
    layers never import the serving engine, the service or the command line."""
    assert offenders(under(inner), {"banditrec.engine", "banditrec.service", "banditrec.cli"}) == []


def test_simulator_never_imports_the_service():
    assert offenders(under("simulator/"), {"banditrec.service", "flask"}) == []


def test_estimators_never_read_the_database():
    assert offenders(under("banditrec/ope/"), {"banditrec.store", "sqlite3", "sqlite_utils"}) == []


def test_policies_touch_neither_sqlite_nor_flask():
    banned = {"sqlite3", "sqlite_utils", "flask", "banditrec.store", "banditrec.service"}
    assert offenders(under("banditrec/policies/"), banned) == []


def test_shared_records_import_nothing_heavy():
    allowed = {
        "__future__",
        "dataclasses",
        "typing",
        "collections.abc",
        "numpy",
        "banditrec.validation",
        "banditrec.errors",
    }
    names = imports(ROOT / "banditrec/types.py")
    assert {n for n in names if not any(n == a or n.startswith(a + ".") for a in allowed)} == set()


@pytest.mark.parametrize("banned", ["pickle", "cloudpickle", "joblib"])
def test_no_pickle(banned):
    assert offenders(SOURCES, {banned}) == []


def test_no_global_random_state():
    """Randomness comes from explicit Generators: no np.random.<function> of the legacy global
    state, no stdlib random."""
    allowed = {"default_rng", "Generator", "SeedSequence"}
    bad = []
    for p in SOURCES:
        for node in ast.walk(ast.parse(p.read_text())):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Attribute)
                and node.value.attr == "random"
                and isinstance(node.value.value, ast.Name)
                and node.value.value.id == "np"
                and node.attr not in allowed
            ):
                bad.append(f"{rel(p)}:{node.lineno} np.random.{node.attr}")
    bad += offenders(SOURCES, {"random"})
    assert bad == []


def test_logged_rows_reach_a_policy_through_learn_from_log_only():
    """Every learner (the engine, the learner process, batch training, the regret study) updates
    a policy through ``banditrec.offline.learn_from_log``: no other module of banditrec calls
    ``<...policy>.update(...)`` itself, and neither does a study."""
    bad = []
    for p in [*under("banditrec/"), *under("studies/")]:
        if rel(p) == "banditrec/offline.py":
            continue
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "update":
                owner = node.func.value
                name = owner.attr if isinstance(owner, ast.Attribute) else getattr(owner, "id", "")
                if name.endswith("policy"):
                    bad.append(f"{rel(p)}:{node.lineno}")
    assert bad == []


@pytest.mark.parametrize(
    "path", ["banditrec/engine.py", "studies/regret.py", "banditrec/offline.py", "banditrec/learner.py"]
)
def test_protocols_are_called_not_sniffed(path):
    """The engine and its learners call the candidate-source, slate-distribution and update
    protocols as declared (CandidateSource, SlateDistribution, Policy.update): no hasattr and
    no signature inspection decides what an object is given."""
    tree = ast.parse((ROOT / path).read_text())
    calls = [n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)]
    assert "hasattr" not in calls
    assert not {"inspect", "inspect.signature"} & imports(ROOT / path)
