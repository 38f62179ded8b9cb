"""The package's import structure: no circle, the layers point one way (the model and the trainer
never import a training method), and the package never imports the top-level scripts."""
import ast
import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(REPO, "umema_jax")


def module_name(path: str) -> str:
    rel = os.path.relpath(path, REPO)[:-3].replace(os.sep, ".")
    return rel[: -len(".__init__")] if rel.endswith(".__init__") else rel


def imports_of(path: str, name: str, modules=frozenset()) -> set:
    """Every module `path` imports (top level or inside a function), as absolute names; `from pkg import
    sub` counts as importing the module `pkg.sub` (not `pkg`'s `__init__`) when `sub` is one of `modules`."""
    tree = ast.parse(open(path, encoding="utf-8").read())
    package = name if path.endswith("__init__.py") else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            subs = {f"{base}.{a.name}" for a in node.names}
            out.update(subs & modules)                                # `from pkg import module`
            if subs - modules:
                out.add(base)                                         # `from module import name`
    return out


def graph() -> dict:
    files = {}
    for folder, _, names in os.walk(PACKAGE):
        for n in names:
            if n.endswith(".py"):
                path = os.path.join(folder, n)
                files[module_name(path)] = path
    known = frozenset(files)
    return {m: {i for i in imports_of(p, m, known) if i in files and i != m} for m, p in files.items()}, files


def cycles(edges: dict) -> list:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
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

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_no_import_circle():
    edges, _ = graph()
    assert cycles(edges) == []


def test_the_model_and_the_trainer_import_no_training_method():
    edges, _ = graph()
    lower = [m for m in edges if m == "umema_jax.model" or m.startswith("umema_jax.train.")]
    assert lower
    bad = {m: sorted(i for i in edges[m] if i == "umema_jax.methods" or i.startswith("umema_jax.methods."))
           for m in lower}
    assert {m: v for m, v in bad.items() if v} == {}


def test_the_package_does_not_import_the_top_level_scripts():
    _, files = graph()
    bad = {m: sorted(i for i in imports_of(p, m) if i.split(".")[0] in ("configs", "launch", "benchmarks", "tests"))
           for m, p in files.items()}
    assert {m: v for m, v in bad.items() if v} == {}


def test_the_checks_can_fail():
    assert cycles({"a": {"b"}, "b": {"a"}, "c": set()}) == [["a", "b"]]
    assert "umema_jax.methods" in imports_of(os.path.join(PACKAGE, "run.py"), "umema_jax.run")


def test_generic_code_names_no_method():
    """Method-name special cases live in the method's own module (a hook), not in generic code: no
    comparison against a registered name outside `umema_jax/methods/` and the table rows."""
    import re
    from umema_jax import methods
    names = "|".join(re.escape(n) for n in methods.names())
    compare = re.compile(rf"""(==|!=|\bin\s*\(|\bin\s*\[)\s*["']({names})["']|["']({names})["']\s*(==|!=)""")
    _, files = graph()
    found = []
    for m, path in files.items():
        if m.startswith("umema_jax.methods") or m == "umema_jax.experiments.profiles":
            continue
        for lineno, line in enumerate(open(path, encoding="utf-8"), 1):
            if compare.search(line.split("#")[0]):
                found.append(f"{os.path.relpath(path, REPO)}:{lineno}: {line.strip()}")
    assert found == []
