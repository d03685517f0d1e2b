"""Only ml/stages/ talks to MLflow and reads dataset snapshots; every ML task of the DAGs calls one stage module.

The scan parses (ast) every .py under ml/, dags/ and serving/ outside ml/stages/, at any nesting
level (lazy imports inside functions count), and reports:
- an `import mlflow` / `from mlflow... import` (the stage layer's `tracking` is the one MLflow helper);
- a snapshot read: an object key built with `layout.dataset_array` (only the writer, ml/data/snapshot.py,
  may), a name of the old readers (`load_split`, `load_manifest`, `read_split`, `snapshot_outliers`), a
  reader of `ml.data.snapshot` other than the writer's own names, a second reader defined under a
  moved name (`TrainingImages`, `latest_version`, ...), or a hand-written `datasets/...` key.
"""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

from tests.conftest import REPO

SCANNED = ("ml", "dags", "serving")
EXEMPT = ("ml/stages/",)
WRITER = "ml/data/snapshot.py"  # the one module that writes snapshot arrays (it builds their keys)
OLD_READERS = frozenset({"load_split", "load_manifest", "read_split", "snapshot_outliers"})
# What ml.stages.snapshots defines: nothing outside the stage layer may define a second one.
MOVED_DEFINITIONS = frozenset({"TrainingImages", "latest_version", "split_arrays", "read_image", *OLD_READERS})
WRITER_NAMES = frozenset({"write_snapshot", "exists", "read_index", "append_index", "utc_now", "ARRAYS"})
# Issue #16: one stage module per DAG task (dataset_build's four tasks share `data`).
STAGE_MODULES = frozenset({"data", "train", "evaluate", "fit_ood", "build_bundle", "reference", "gate", "drift"})
DAGS = ("training_pipeline", "dataset_build", "drift_monitoring")


def _docstrings(tree: ast.AST) -> set[int]:
    """ids of the docstring constants (they may name keys in prose)."""
    found = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) \
                and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
            found.add(id(body[0].value))
    return found


def _file_violations(rel: str, tree: ast.AST) -> list[str]:
    """Every boundary violation in one parsed file, as `path:line: what`."""
    out: list[str] = []
    snapshot_aliases = {a.asname or a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
                        and n.module == "ml.data" for a in n.names if a.name == "snapshot"}
    docstrings = _docstrings(tree)
    for node in ast.walk(tree):
        line = f"{rel}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Import):
            out += [f"{line}: import {a.name}" for a in node.names if a.name.split(".")[0] == "mlflow"]
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module.split(".")[0] == "mlflow":
                out.append(f"{line}: from {node.module} import ...")
            if node.module == "ml.data.snapshot":
                out += [f"{line}: reads snapshots through ml.data.snapshot.{a.name}" for a in node.names
                        if a.name not in WRITER_NAMES]
            out += [f"{line}: imports the old reader {a.name}" for a in node.names if a.name in OLD_READERS]
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) \
                and node.name in MOVED_DEFINITIONS:
            out.append(f"{line}: defines a second snapshot reader {node.name}")
        elif isinstance(node, ast.Attribute):
            if node.attr == "dataset_array" and rel != WRITER:
                out.append(f"{line}: builds a snapshot array key (dataset_array)")
            elif node.attr in OLD_READERS:
                out.append(f"{line}: calls the old reader {node.attr}")
            elif isinstance(node.value, ast.Name) and node.value.id in snapshot_aliases \
                    and node.attr not in WRITER_NAMES:
                out.append(f"{line}: reads snapshots through ml.data.snapshot.{node.attr}")
        elif isinstance(node, ast.Name) and (node.id in OLD_READERS or node.id == "dataset_array" and rel != WRITER):
            out.append(f"{line}: uses {node.id}")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings \
                and node.value.startswith("datasets/") and rel != "ml/layout.py":
            out.append(f"{line}: hand-written snapshot key {node.value!r}")
    return out


def violations(root: Path) -> list[str]:
    """Boundary violations of the tree at root, sorted."""
    found: list[str] = []
    for top in SCANNED:
        for path in sorted((root / top).rglob("*.py")):
            rel = path.relative_to(root).as_posix()
            if not rel.startswith(EXEMPT):
                found += _file_violations(rel, ast.parse(path.read_text(), filename=rel))
    return sorted(set(found))


def test_no_mlflow_and_no_snapshot_reads_outside_the_stage_layer():
    found = violations(REPO)
    assert not found, "move these into ml/stages/ (tracking, snapshots):\n" + "\n".join(found)


def test_a_planted_violation_is_found(tmp_path):
    """The scan is not vacuous: a copy of the tree with violations planted at every level reports each one."""
    for top in SCANNED:
        shutil.copytree(REPO / top, tmp_path / top, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "static"))
    before = violations(tmp_path)
    (tmp_path / "ml" / "planted.py").write_text(
        "import mlflow.keras\n"
        "from ml import layout\n"
        "def f(store, v):\n"
        "    from mlflow import MlflowClient\n"
        "    return store.get_array(layout.dataset_array(v, 'train', 'x'))\n")
    (tmp_path / "serving" / "planted.py").write_text(
        "def g(store, v):\n"
        "    from ml.data import snapshot as snap\n"
        "    snap.write_snapshot\n"
        "    return snap.load_split(store, v, 'val'), store.get_json('datasets/index.json')\n"
        "class TrainingImages:\n"
        "    pass\n")
    (tmp_path / "ml" / "stages" / "planted.py").write_text("import mlflow\nfrom ml import layout\nlayout.dataset_array\n")
    new = sorted(set(violations(tmp_path)) - set(before))
    assert new == ["ml/planted.py:1: import mlflow.keras",
                   "ml/planted.py:4: from mlflow import ...",
                   "ml/planted.py:5: builds a snapshot array key (dataset_array)",
                   "serving/planted.py:4: calls the old reader load_split",
                   "serving/planted.py:4: hand-written snapshot key 'datasets/index.json'",
                   "serving/planted.py:5: defines a second snapshot reader TrainingImages"]


FRESH_PROCESS = "ml.stages.fresh_process"


def _task_stage_imports(dag: str) -> dict[str, set[str]]:
    """{task function: the ml.* modules its body imports} for every @task of a DAG file."""
    tree = ast.parse((REPO / "dags" / f"{dag}.py").read_text())
    tasks = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and any("task" in ast.unparse(d) for d in node.decorator_list):
            modules = {n.module for n in ast.walk(node) if isinstance(n, ast.ImportFrom)
                       and n.module and n.module.split(".")[0] == "ml"} - {"ml.config"}
            if modules == {FRESH_PROCESS}:  # run_stage("ml.stages.X", ...): the task calls stage X
                modules = {n.args[0].value for n in ast.walk(node) if isinstance(n, ast.Call)
                           and ast.unparse(n.func) == "run_stage" and isinstance(n.args[0], ast.Constant)}
            tasks[node.name] = modules
    return tasks


def test_every_ml_task_of_the_dags_calls_one_stage_module():
    stages = {p.stem for p in (REPO / "ml" / "stages").glob("*.py")}
    assert STAGE_MODULES <= stages, f"missing stage modules: {sorted(STAGE_MODULES - stages)}"
    used = set()
    for dag in DAGS:
        for name, modules in _task_stage_imports(dag).items():
            assert len(modules) <= 1, f"{dag}.{name} imports {sorted(modules)}: one stage module per task"
            for module in modules:
                assert module.startswith("ml.stages."), f"{dag}.{name} calls {module}, not the stage layer"
                assert module.split(".")[2] in stages, f"{dag}.{name}: no module {module}"
                used.add(module.split(".")[2])
    assert STAGE_MODULES <= used, f"stage modules no DAG task calls: {sorted(STAGE_MODULES - used)}"
