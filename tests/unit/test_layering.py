"""The package's import layering, read from the AST of every module: the lower layers import no
pipeline stage, and no module imports itself back through others (imports inside functions count
too: a cycle hidden in a function is still a cycle)."""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "gts_megatron"
# what every stage builds on; none of it may import a stage
LOWER = {"config", "runtime", "model", "engine", "data", "ops", "contracts", "errors", "artifacts", "figures"}
# the pipeline's stages, the tools around them and the CLI, which may import the lower layers
STAGES = {"base", "probe", "plan", "expand", "train", "eval", "experiment", "adapt", "demo", "bench", "launch", "hf",
          "recipe", "cli"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported(node: ast.AST, module: str, is_package: bool) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if not isinstance(node, ast.ImportFrom):
        return []
    if node.level:  # relative: from the module's package, up level - 1 packages
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[:len(base) - node.level + 1]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    return [target] + [f"{target}.{alias.name}" for alias in node.names]


def import_graph() -> dict[str, set[str]]:
    """module -> the package's modules it imports (the deepest module each import names)."""
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        edges = set()
        for node in ast.walk(ast.parse(path.read_text())):
            for name in _imported(node, module, path.name == "__init__.py"):
                while name.startswith("gts_megatron") and name not in files:
                    name = name.rpartition(".")[0]
                if name.startswith("gts_megatron") and name != module:
                    edges.add(name)
        graph[module] = edges
    return graph


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index, low, on_stack, stack, found, counter = {}, {}, set(), [], [], 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_every_top_level_module_has_a_layer():
    layers = {_layer(m) for m in import_graph()} - {"", "_C"}
    assert layers <= LOWER | STAGES, f"place {sorted(layers - LOWER - STAGES)} in LOWER or STAGES"


def test_lower_layers_import_no_stage():
    upward = [f"{module} -> {target}" for module, targets in import_graph().items() if _layer(module) in LOWER
              for target in sorted(targets) if _layer(target) in STAGES]
    assert not upward, "lower layers importing a stage:\n" + "\n".join(upward)


def test_no_import_cycles():
    assert _cycles(import_graph()) == []


def test_no_import_cycles_between_top_level_packages():
    """Module cycles aside, two packages that each import the other cannot be read one after
    the other (model imports contracts' Plan, so contracts may not count a model's parameters)."""
    packages: dict[str, set[str]] = {}
    for module, targets in import_graph().items():
        packages.setdefault(_layer(module), set()).update(_layer(t) for t in targets if _layer(t) != _layer(module))
    assert _cycles(packages) == []


def test_the_cycle_finder_finds_a_cycle():
    # the check above is only as good as this: a three-module loop and a self-contained pair
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert _cycles(graph) == [["a", "b", "c"]]


def test_no_function_is_over_60_lines():
    """Functions a reader can hold at once (issue 22): decorators and docstrings count."""
    long = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
                if node.end_lineno - first + 1 > 60:
                    long.append(f"{_module_name(path)}.{node.name}: {node.end_lineno - first + 1} lines")
    assert not long, long


# what may be imported inside a function instead of at the top: a module whose import pulls in one
# of these (seconds of start-up that `gts --help`, the preflight and the Ray driver must not pay)
HEAVY = {"torch", "megatron", "ray", "deepspeed", "transformers", "matplotlib"}
# `gts --help` runs these and imports nothing of the package beyond cli/ and errors, and no
# pydantic (tests/unit/test_cli_registry.py): they defer every other import
HELP_PATH = {"gts_megatron.cli.main", "gts_megatron.cli.registry", "gts_megatron.cli.flags"}


def _top_level_imports(path: Path, module: str) -> set[str]:
    """What the module imports when it is imported: its body's imports, under if/try included."""
    names, body = set(), list(ast.parse(path.read_text()).body)
    while body:
        node = body.pop()
        if isinstance(node, (ast.If, ast.Try)):
            body += node.body + node.orelse + getattr(node, "handlers", []) + getattr(node, "finalbody", [])
        elif isinstance(node, ast.ExceptHandler):
            body += node.body
        names.update(_imported(node, module, path.name == "__init__.py"))
    return names


def heavy_modules() -> set[str]:
    """The package's modules whose import (transitively, at the top level) reaches a HEAVY package."""
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    edges = {m: _top_level_imports(p, m) for m, p in files.items()}
    heavy = {m for m, names in edges.items() if any(n.split(".")[0] in HEAVY for n in names)}
    changed = True
    while changed:  # a module is heavy when it imports a heavy one, or its package is heavy
        changed = False
        for module, names in edges.items():
            parents = {module.rsplit(".", i)[0] for i in range(1, module.count("."))}
            if module not in heavy and (names | parents) & heavy:
                heavy.add(module)
                changed = True
    return heavy


def test_imports_inside_functions_are_only_of_heavy_modules():
    """Issue 22: an import is at the top of its module unless it would load torch, megatron, Ray,
    DeepSpeed, transformers or matplotlib, which the commands that do not need them must not pay for."""
    files, heavy = {_module_name(p): p for p in PACKAGE.rglob("*.py")}, heavy_modules()
    light = []
    for module, path in files.items():
        if module in HELP_PATH:
            continue
        for function in ast.walk(ast.parse(path.read_text())):
            if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(function):
                if not isinstance(node, (ast.Import, ast.ImportFrom)):
                    continue
                names = _imported(node, module, path.name == "__init__.py")
                internal = [n for n in names if n in files]
                if names[0].startswith("gts_megatron") and not any(n in heavy for n in internal):
                    light.append(f"{module}.{function.name} (line {node.lineno}): {names[0]}")
    assert not light, "imports of light modules inside functions (move them to the top):\n" + "\n".join(light)


def test_the_heavy_module_finder_follows_imports():
    heavy = heavy_modules()
    assert "gts_megatron.engine.trainer" in heavy  # imports megatron itself
    assert "gts_megatron.train" in heavy  # through the engine
    assert "gts_megatron.errors" not in heavy and "gts_megatron.cli.registry" not in heavy


# public functions that still take more than 5 parameters, each for a reason; the list only shrinks
MANY_PARAMETERS = {
    "gts_megatron.model.llama.SDPAttention.forward": "megatron's attention forward signature",
    "gts_megatron.hf.remote.configuration_gts": "Hugging Face config classes take their fields as keywords",
    "gts_megatron.model.gts.RoutingContext.step_metrics": "its process groups as arguments, as megatron's take them",
    "gts_megatron.model.dispatch.GroupTokenDispatcher.__init__": "megatron's token dispatcher signature",
    "gts_megatron.data.mixture.LanguageMixture.__init__": "a dataset built by data.dataset.build_dataset alone",
    "gts_megatron.data.tokenizer.train_sentencepiece": "sentencepiece's trainer options, one per argument",
    "gts_megatron.data.prepare.tokenize_language": "a helper of prepare's third pass: the pass's own objects",
    "gts_megatron.plan.plots.write_deviation_profile": "a figure writer: the arrays it draws",
    "gts_megatron.bench.plan.planted_probe_store": "a test-data generator: its knobs, all defaulted",
    "gts_megatron.bench.layout.cost": "a helper: one layout's degrees of parallelism",
    "gts_megatron.adapt.adaptation_report": "a helper: the four evaluations it compares",
    "gts_megatron.recipe.runner.submit_stages": "a helper of `gts run --slurm`, called once",
    "gts_megatron.launch.slurm.render": "a template renderer: its optional parts are keywords",
    "gts_megatron.eval.perplexity.score_windows": "the inner scoring loop: model, data and device",
    "gts_megatron.eval.perplexity.evaluate_cached": "a cache in front of evaluate_checkpoint: its keywords pass through",
}


def _functions(tree: ast.AST, prefix: str):
    """(qualified name, node) of every function, methods under their class's name."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield f"{prefix}.{node.name}", node
            yield from _functions(node, f"{prefix}.{node.name}")
        elif isinstance(node, ast.ClassDef):
            yield from _functions(node, f"{prefix}.{node.name}")


def test_no_public_function_takes_more_than_5_parameters():
    """Issue 22: entry points and the trainer pass a config or a record, not a dozen values."""
    many = []
    for path in PACKAGE.rglob("*.py"):
        module = _module_name(path)
        for name, node in _functions(ast.parse(path.read_text()), module):
            args = node.args
            params = [a.arg for a in args.posonlyargs + args.args + args.kwonlyargs if a.arg not in ("self", "cls")]
            short = name.rsplit(".", 1)[1]
            private = short.startswith("_") and short != "__init__"
            if len(params) > 5 and not private and not any(name.startswith(k) for k in MANY_PARAMETERS):
                many.append(f"{name}: {len(params)} parameters")
    assert not many, many
    # the exceptions still exist (a stale entry would hide a new function under its name)
    names = {n for p in PACKAGE.rglob("*.py") for n, _ in _functions(ast.parse(p.read_text()), _module_name(p))}
    assert [k for k in MANY_PARAMETERS if not any(n.startswith(k) for n in names)] == []
