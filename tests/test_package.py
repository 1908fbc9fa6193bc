"""The package's layout: one home per name, no import cycle, one package constant."""

import ast
import importlib
import pathlib
import pkgutil

import pytest

import keras_featreg

ROOT = pathlib.Path(keras_featreg.__file__).parent


def _modules():
    names = {}
    for path in ROOT.rglob("*.py"):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(parts)] = path
    return names


MODULES = _modules()


def _resolve(name):
    """The module a dotted import name lands in (a module, else its package)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name


def _imports(module, path):
    """Modules of the package that `module` imports, anywhere in its source."""
    tree = ast.parse(path.read_text())
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1]
                                + ([base] if base else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base
                       for alias in node.names]
        else:
            continue
        out.update(_resolve(t) for t in targets if t.startswith("keras_featreg"))
    out.discard(module)
    return out


def _graph():
    return {module: _imports(module, path) for module, path in MODULES.items()}


def test_no_import_cycle():
    graph = _graph()
    # A package's __init__ importing its own private modules, which import siblings
    # directly, is the one allowed shape; a module importing its package back is a cycle.
    state, stack, cycles = {}, [], []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize("gone", ["keras_featreg.losses_ranking", "keras_featreg.losses_vicreg",
                                  "keras_featreg.mining", "keras_featreg.ops.distances"])
def test_no_compatibility_module(gone):
    with pytest.raises(ImportError):
        importlib.import_module(gone)


def test_no_lazy_re_export():
    for info in pkgutil.walk_packages(keras_featreg.__path__, "keras_featreg."):
        module = importlib.import_module(info.name)
        assert "__getattr__" not in vars(module), info.name


def test_one_package_constant_and_no_private_keras_api():
    for module, path in MODULES.items():
        source = path.read_text()
        if module != "keras_featreg._utils":
            assert 'PACKAGE = "keras_featreg"' not in source, module
        if module != "keras_featreg.backend":  # the one module allowed Keras internals
            assert "_flatten_layers" not in source, module


def test_one_table_of_distance_names():
    from keras_featreg import distances
    from keras_featreg.evaluation import recall_at_k

    assert set(distances.NAMES) == {"euclidean", "squared_euclidean", "cosine",
                                    "cosine_similarity", "dot_product"}
    import numpy as np

    x = np.random.default_rng(0).normal(size=(12, 3))
    y = np.arange(12) % 3
    for name in distances.NAMES:  # every name of the table ranks in the evaluation
        recall_at_k(x, y, ks=(1,), metric=name)
    with pytest.raises(ValueError, match="metric='inner_product'"):
        recall_at_k(x, y, ks=(1,), metric="inner_product")
