"""The design card's one-way arrows and code rules, checked on the source itself."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SOURCES = sorted([*ROOT.glob("banditrec/**/*.py"), *ROOT.glob("simulator/**/*.py")])
# the wiring layer: the only modules of banditrec allowed to drive the simulator
WIRING = {"banditrec/demo.py", "banditrec/shopdemo.py", "banditrec/cli.py", "banditrec/regret.py"}
STUDIES = {"simulator", "banditrec.demo", "banditrec.shopdemo", "banditrec.regret", "banditrec.cli"}


def imports(path: Path) -> set[str]:
    """Absolute names of every module ``path`` imports (relative imports resolved)."""
    rel = path.relative_to(ROOT).with_suffix("")
    package = list(rel.parts[:-1])
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, node.module] if node.module else base)
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def offenders(paths, banned) -> list[str]:
    return [f"{rel(p)} imports {name}" for p in paths for name in sorted(imports(p))
            if any(name == b or name.startswith(b + ".") for b in banned)]


def under(prefix: str) -> list[Path]:
    return [p for p in SOURCES if rel(p).startswith(prefix)]


def test_sources_were_found():
    assert len(SOURCES) > 20 and "banditrec/engine.py" in {rel(p) for p in SOURCES}


def test_only_the_wiring_layer_of_banditrec_imports_the_simulator():
    core = [p for p in under("banditrec/") if rel(p) not in WIRING]
    assert offenders(core, {"simulator"}) == []


@pytest.mark.parametrize("prefix", ["banditrec/service/", "banditrec/shop/", "banditrec/engine.py",
                                    "banditrec/learner.py", "banditrec/candidates/", "banditrec/policies/",
                                    "banditrec/store/", "banditrec/evaluate.py"])
def test_serving_learning_and_evaluation_never_import_the_simulator_or_a_study(prefix):
    """A shop serves, learns and evaluates from its shop directory alone (docs/data-formats.md)."""
    paths = under(prefix)
    assert paths, prefix
    assert offenders(paths, STUDIES) == []


def test_simulator_never_imports_the_service():
    assert offenders(under("simulator/"), {"banditrec.service", "flask"}) == []


def test_estimators_never_read_the_database():
    assert offenders(under("banditrec/ope/"), {"banditrec.store", "sqlite3", "sqlite_utils"}) == []


def test_policies_touch_neither_sqlite_nor_flask():
    banned = {"sqlite3", "sqlite_utils", "flask", "banditrec.store", "banditrec.service"}
    assert offenders(under("banditrec/policies/"), banned) == []


def test_shared_records_import_nothing_heavy():
    allowed = {"__future__", "dataclasses", "numpy", "banditrec.validation", "banditrec.errors"}
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
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute)
                    and node.value.attr == "random" and isinstance(node.value.value, ast.Name)
                    and node.value.value.id == "np" and node.attr not in allowed):
                bad.append(f"{rel(p)}:{node.lineno} np.random.{node.attr}")
    bad += offenders(SOURCES, {"random"})
    assert bad == []


def test_logged_rows_reach_a_policy_through_learn_from_log_only():
    """Every learner (the engine, the learner process, batch training, the regret study) updates
    a policy through ``banditrec.offline.learn_from_log``: no other module of banditrec calls
    ``<...policy>.update(...)`` itself."""
    bad = []
    for p in under("banditrec/"):
        if rel(p) == "banditrec/offline.py":
            continue
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "update":
                owner = node.func.value
                name = owner.attr if isinstance(owner, ast.Attribute) else getattr(owner, "id", "")
                if name.endswith("policy"):
                    bad.append(f"{rel(p)}:{node.lineno}")
    assert bad == []


@pytest.mark.parametrize("path", ["banditrec/engine.py", "banditrec/regret.py", "banditrec/offline.py",
                                  "banditrec/learner.py"])
def test_protocols_are_called_not_sniffed(path):
    """The engine and its learners call the candidate-source, slate-distribution and update
    protocols as declared (CandidateSource, SlateDistribution, Policy.update): no hasattr and
    no signature inspection decides what an object is given."""
    tree = ast.parse((ROOT / path).read_text())
    calls = [n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)]
    assert "hasattr" not in calls
    assert not {"inspect", "inspect.signature"} & imports(ROOT / path)
