"""experiments/regenerate.py: every experiment file names runs that `python -m sim.run` accepts."""
import pytest

from experiments import regenerate, runs
from sim.run import validate


@pytest.mark.parametrize("name", regenerate.ORDER)
def test_every_run_of_every_experiment_is_a_valid_configuration(name):
    spec = runs.load(name)
    assert spec["title"] and spec["runs"]
    for label, extra in spec["runs"].items():
        exp = validate(list(spec.get("common", [])) + list(extra))[0]  # raises ConfigError with one line if not
        assert exp.static.policy in ("lowrank", "tabular"), label
        assert exp.static.width <= 16, f"{label}: the report keeps to widths <= 16 (see README: the YNNPACK fault)"


def test_the_experiment_files_are_the_ones_regenerated():
    import yaml

    specs = {p.stem for p in regenerate.HERE.glob("*.yaml")  # experiment files: a mapping with runs (not, e.g.,
             if isinstance(s := yaml.safe_load(p.read_text()), dict) and "runs" in s}  # text_rewards_candidates)
    assert specs == set(regenerate.ORDER) | set(regenerate.STORED_ONLY)


def test_only_changes_outside_experiments_make_the_report_dirty():
    # porcelain lines are 'XY path'; a leading space is part of the status (the bug this guards:
    # stripping the output shifted the first path by one character and always read as dirty)
    assert not regenerate.dirty_outside_experiments(" M experiments/REPORT.md\n M experiments/blog.png\n")
    assert not regenerate.dirty_outside_experiments("")
    assert regenerate.dirty_outside_experiments(" M experiments/REPORT.md\n M sim/rl/train.py\n")
    assert regenerate.dirty_outside_experiments("?? notes.txt\n")


def test_the_experiments_modules_import_each_other_one_way():
    """Every import between experiments/*.py, function-local ones included, forms no circle."""
    import ast

    modules = {p.stem: p for p in regenerate.HERE.glob("*.py") if p.stem != "__init__"}
    graph = {}
    for name, path in modules.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == "experiments":
                found |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("experiments."):
                found.add(node.module.split(".")[1])
            elif isinstance(node, ast.Import):
                found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("experiments.")}
        graph[name] = found & set(modules)
    assert graph["report"] and graph["regenerate"]  # the walk sees imports at all

    def visit(name, path):
        assert name not in path, f"import circle: {' -> '.join(path + [name])}"
        for dep in graph[name]:
            visit(dep, path + [name])

    for name in graph:
        visit(name, [])
