"""The house's plan, checked: the layers import only downwards, format/ needs neither llama_cpp nor torch,
llama-cpp-python's internals are touched in one module, a skip set is parsed in one place, and no
function runs long without saying why. (Read from the source with ast: nothing is imported or run.)"""

import ast
import glob
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# bottom up; a module may import its own layer and those below it (apps and integrations are both front ends)
LAYERS = {"errors": 0, "format": 1, "runtime": 2, "measure": 3, "converter": 4, "apps": 5, "integrations": 5}
FORBIDDEN_IN_FORMAT = ("llama_cpp", "torch", "transformers", "accelerate")
# private members of llama_cpp.Llama and its modules that pop-local reads (pop_local/runtime/upstream.py)
UPSTREAM_INTERNALS = {"_ctx", "_model", "_batch", "_stack", "_logits_all", "_lib", "_requires_eval", "_llama_proxy",
                      "llama_model_default_params"}
MAX_FUNCTION_LINES = 80


def _package_files():
    """(dotted module name, path) of every module of the installed package (converter/ is pop_local.converter)."""
    out = []
    for path in sorted(glob.glob(os.path.join(ROOT, "pop_local", "**", "*.py"), recursive=True)):
        rel = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
        out.append((rel.removesuffix(".__init__"), path))
    for path in sorted(glob.glob(os.path.join(ROOT, "converter", "*.py"))):
        name = "pop_local.converter." + os.path.basename(path)[:-3]
        out.append((name.removesuffix(".__init__"), path))
    return out


def _tree(path):
    with open(path, encoding="utf-8") as f:
        return ast.parse(f.read(), path)


def _imports(module, path):
    """Every module `module` imports, anywhere in it (lazy imports too), as absolute names."""
    is_package = path.endswith("__init__.py")
    package = module if is_package else module.rpartition(".")[0]
    found = []
    for node in ast.walk(_tree(path)):
        if isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module
            found.append((name, node.lineno))
            found += [(f"{name}.{a.name}", node.lineno) for a in node.names]  # `from pkg import module`
    return found


def _layer(module):
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else None


MODULES = _package_files()


@pytest.mark.parametrize("module, path", MODULES, ids=[m for m, _ in MODULES])
def test_layers_import_only_downwards(module, path):
    own = _layer(module)
    if own is None:  # pop_local/__init__.py (lazy public names) and __main__.py sit above everything
        return
    for name, line in _imports(module, path):
        if name.startswith("pop_local.") and _layer(name) is not None:
            assert LAYERS[_layer(name)] <= LAYERS[own], f"{path}:{line}: {own} imports {name} (a higher layer)"
        if own == "format":
            assert name.split(".")[0] not in FORBIDDEN_IN_FORMAT, f"{path}:{line}: format imports {name}"


def test_llama_cpp_internals_are_touched_in_one_module():
    touched = {}
    for _module, path in MODULES:
        for node in ast.walk(_tree(path)):
            if isinstance(node, ast.Attribute) and node.attr in UPSTREAM_INTERNALS:
                touched.setdefault(os.path.relpath(path, ROOT), []).append(f"{node.attr}@{node.lineno}")
    assert set(touched) == {os.path.join("pop_local", "runtime", "upstream.py")}, touched


def test_ggml_functions_are_declared_in_one_module():
    declared = set()
    for _module, path in MODULES:
        for node in ast.walk(_tree(path)):
            if (isinstance(node, ast.Constant) and isinstance(node.value, str)
                    and node.value.startswith("ggml_backend_")):
                declared.add(os.path.relpath(path, ROOT))
    assert declared <= {os.path.join("pop_local", "runtime", "upstream.py")}, declared


def test_a_skip_set_is_parsed_in_one_place():
    """format/layers.py has the parser; everything else calls it (no second regex or split of "20-29")."""
    parsers = set()
    for _module, path in MODULES:
        for node in ast.walk(_tree(path)):
            if isinstance(node, ast.FunctionDef) and ("parse" in node.name and "layer" in node.name or
                                                      node.name in ("_check_layers", "as_layers")):
                parsers.add(f"{os.path.relpath(path, ROOT)}:{node.name}")
    assert parsers == {os.path.join("pop_local", "format", "layers.py") + ":parse_layers"}, parsers


def test_no_function_runs_long_without_saying_why():
    files = [p for _, p in MODULES] + sorted(glob.glob(os.path.join(ROOT, "benchmarks", "*.py")))
    long = []
    for path in files:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
        for node in ast.walk(_tree(path)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                size = node.end_lineno - node.lineno + 1
                head = lines[node.lineno - 1: node.body[0].end_lineno + 3]
                if size > MAX_FUNCTION_LINES and not any(line.strip().startswith("# Long:") for line in head):
                    long.append(f"{os.path.relpath(path, ROOT)}:{node.lineno} {node.name} ({size} lines)")
    assert not long, long


def test_no_test_module_imports_another_or_the_benchmarks():
    for path in sorted(glob.glob(os.path.join(ROOT, "tests", "**", "*.py"), recursive=True)):
        tree = _tree(path)
        for node in ast.walk(tree):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                assert not name.split(".")[0].startswith("test_"), f"{path}:{node.lineno}: imports {name}"
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr in ("insert", "append") and ast.unparse(node.func.value) == "sys.path"):
                strings = [c.value for c in ast.walk(node) if isinstance(c, ast.Constant) and isinstance(c.value, str)]
                assert "benchmarks" not in strings, f"{path}:{node.lineno}: puts benchmarks/ on the import path"
