"""The architecture rules of docs/architecture.md, checked on the source text with ``ast``
(nothing of tomsparse is imported): no import cycles, the layer order, no private names
across modules, argparse only in ``tomsparse.cli``, plain top-of-file imports in the library.

Every failure lists the offending ``file:line`` and what is wrong there.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src"
PACKAGE = "tomsparse"

# Low to high: a module may import its own layer (without cycles) and the layers below it.
LAYERS = [
    {"errors", "safe_read", "files", "manifest", "stats"},
    {"lm", "masks", "perturb"},
    {"data"},
    {"scores", "evaluate", "plant"},
    {"config"},
    {"sweep"},
    {"judge"},
    {"report"},
    {"analysis"},
    {"pipeline"},
    {"cli"},
]
RANK = {part: rank for rank, layer in enumerate(LAYERS) for part in layer}
# tomsparse.testing (test doubles) builds on the model layer only.
TESTING_MAY_IMPORT = {"lm", "testing"}


@dataclass(frozen=True)
class Import:
    path: Path          # the importing file
    line: int
    module: str         # the tomsparse module imported (a package means its __init__)
    names: tuple        # names taken from it by ``from ... import``; () for ``import x``
    top_level: bool     # at module level (not inside a def or class)

    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@lru_cache(maxsize=None)
def src_files() -> tuple[Path, ...]:
    return tuple(sorted((SRC / PACKAGE).rglob("*.py")))


@lru_cache(maxsize=None)
def modules() -> dict[str, Path]:
    return {module_name(p): p for p in src_files()}


@lru_cache(maxsize=None)
def parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def part_of(module: str) -> str:
    """The top-level unit a module belongs to: ``tomsparse.lm.registry`` -> ``lm``;
    the package's own ``__init__`` -> ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _absolute(node: ast.ImportFrom, path: Path) -> str:
    if not node.level:
        return node.module or ""
    package = module_name(path).split(".")
    if path.name != "__init__.py":
        package.pop()
    base = package[: len(package) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def _top_level_nodes(tree: ast.Module) -> set[int]:
    """ids of the import nodes that are not inside a function or class."""
    nested = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
            for inner in ast.walk(node):
                if isinstance(inner, (ast.Import, ast.ImportFrom)):
                    nested.add(id(inner))
    return {id(n) for n in ast.walk(tree)
            if isinstance(n, (ast.Import, ast.ImportFrom)) and id(n) not in nested}


def imports(path: Path) -> list[Import]:
    """Every import of a tomsparse module in ``path``, wherever it stands in the file."""
    tree = parse(path)
    top = _top_level_nodes(tree)
    known = modules()
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == PACKAGE or alias.name.startswith(PACKAGE + "."):
                    found.append(Import(path, node.lineno, alias.name, (), id(node) in top))
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node, path)
            if not (base == PACKAGE or base.startswith(PACKAGE + ".")):
                continue
            # ``from tomsparse.lm import registry`` imports the module tomsparse.lm.registry
            plain = []
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                if sub in known:
                    found.append(Import(path, node.lineno, sub, (), id(node) in top))
                else:
                    plain.append(alias.name)
            if plain:
                found.append(Import(path, node.lineno, base, tuple(plain), id(node) in top))
    return sorted(found, key=lambda i: i.line)


def report(problems: list[str], rule: str) -> None:
    assert not problems, f"{rule}: {len(problems)} place(s)\n  " + "\n  ".join(problems)


# ------------------------------------------------------------------ (a) no import cycles
def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one member (or a self-loop), Tarjan."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in graph.get(v, ()):
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles():
    graph: dict[str, set[str]] = {}
    edges: dict[tuple[str, str], list[Import]] = {}
    for path in src_files():
        me = module_name(path)
        for imp in imports(path):
            if imp.module in modules() and imp.module != me:
                graph.setdefault(me, set()).add(imp.module)
                edges.setdefault((me, imp.module), []).append(imp)
    problems = []
    for comp in _cycles(graph):
        members = set(comp)
        lines = [f"{imp.where()}: {a} imports {b}"
                 for (a, b), imps in sorted(edges.items()) if a in members and b in members
                 for imp in imps[:1]]
        problems.append("cycle " + " <-> ".join(comp) + "\n    " + "\n    ".join(lines))
    report(problems, "import cycles between modules of src/tomsparse")


# ------------------------------------------------------------------ (b) layers
def test_every_module_has_a_layer():
    parts = {part_of(m) for m in modules()} - {"__init__", "testing"}
    missing = sorted(parts - set(RANK))
    report([f"src/tomsparse/{p}: not in the layer table of {Path(__file__).name} "
            "(and docs/architecture.md)" for p in missing], "modules without a layer")


def test_lower_layers_never_import_higher_ones():
    problems = []
    for path in src_files():
        me = part_of(module_name(path))
        for imp in imports(path):
            other = part_of(imp.module)
            if other == me:
                continue
            if me == "__init__":
                problems.append(f"{imp.where()}: the package __init__ imports {imp.module}; "
                                "it should import nothing of its own")
            elif me == "testing":
                if other not in TESTING_MAY_IMPORT:
                    problems.append(f"{imp.where()}: tomsparse.testing imports {imp.module}; "
                                    "it may import tomsparse.lm only")
            elif other == "testing":
                problems.append(f"{imp.where()}: library module imports the test doubles "
                                f"({imp.module})")
            elif me in RANK and other in RANK and RANK[other] > RANK[me]:
                problems.append(f"{imp.where()}: {me} (layer {RANK[me]}) imports {imp.module} "
                                f"(layer {RANK[other]}, higher)")
    report(problems, "upward imports")


def test_no_cycles_between_parts_of_one_layer():
    """e.g. lm -> masks and masks -> lm would be a cycle of the layer's parts even when no
    two modules import each other."""
    graph: dict[str, set[str]] = {}
    first: dict[tuple[str, str], Import] = {}
    for path in src_files():
        me = part_of(module_name(path))
        for imp in imports(path):
            other = part_of(imp.module)
            if other != me and me in RANK and RANK.get(other) == RANK[me]:
                graph.setdefault(me, set()).add(other)
                first.setdefault((me, other), imp)
    problems = []
    for comp in _cycles(graph):
        members = set(comp)
        lines = [f"{imp.where()}: {a} imports {imp.module}"
                 for (a, b), imp in sorted(first.items()) if a in members and b in members]
        problems.append("cycle " + " <-> ".join(comp) + "\n    " + "\n    ".join(lines))
    report(problems, "cycles within a layer")


# ------------------------------------------------------------------ (c) private names
def _checked_files() -> list[Path]:
    files = list(src_files())
    for folder in ("tests", "benchmarks"):
        files += sorted(p for p in (ROOT / folder).rglob("*.py") if "fixtures" not in p.parts)
    return files


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _module_aliases(path: Path) -> dict[str, str]:
    """Local names bound to tomsparse modules: ``import tomsparse.x as y``,
    ``from tomsparse.lm import registry as models``, ``import tomsparse``."""
    known = modules()
    aliases = {}
    for node in ast.walk(parse(path)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in known:
                    if alias.asname:
                        aliases[alias.asname] = alias.name
                    else:
                        aliases[alias.name.split(".")[0]] = alias.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node, path)
            for alias in node.names:
                if f"{base}.{alias.name}" in known:
                    aliases[alias.asname or alias.name] = f"{base}.{alias.name}"
    return aliases


def _dotted(node: ast.AST) -> list[str] | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    return [node.id] + parts[::-1]


def test_no_private_names_across_modules():
    problems = []
    known = modules()
    for path in _checked_files():
        me = module_name(path) if path.is_relative_to(SRC) else None
        where = path.relative_to(ROOT)
        for imp in imports(path):
            if imp.module == me:
                continue
            if any(_private(p) for p in imp.module.split(".")):
                problems.append(f"{imp.where()}: imports the private module {imp.module}")
            for name in imp.names:
                if _private(name):
                    problems.append(f"{imp.where()}: imports {name} from {imp.module}")
        aliases = _module_aliases(path)
        for node in ast.walk(parse(path)):
            # module._name, also as a dotted chain (tomsparse.lm.registry._x)
            if isinstance(node, ast.Attribute) and _private(node.attr):
                chain = _dotted(node)
                if chain and chain[0] in aliases:
                    owner = ".".join([aliases[chain[0]]] + chain[1:-1])
                    if owner in known and owner != me:
                        problems.append(f"{where}:{node.lineno}: uses {owner}.{node.attr}")
            # setattr(module, "_name", ...) / monkeypatch.setattr(module, "_name", ...)
            if (isinstance(node, ast.Call) and len(node.args) >= 2
                    and isinstance(node.args[1], ast.Constant)
                    and isinstance(node.args[1].value, str) and _private(node.args[1].value)):
                chain = _dotted(node.args[0])
                if chain and chain[0] in aliases:
                    owner = ".".join([aliases[chain[0]]] + chain[1:])
                    if owner in known and owner != me:
                        problems.append(f"{where}:{node.lineno}: reaches into "
                                        f"{owner}.{node.args[1].value}")
    report(sorted(set(problems)), "private names used outside their module")


# ------------------------------------------------------------------ (d) argparse in cli/ only
def test_only_the_cli_knows_argparse():
    problems = []
    for path in src_files():
        if part_of(module_name(path)) == "cli":
            continue
        where = path.relative_to(ROOT)
        for node in ast.walk(parse(path)):
            if isinstance(node, ast.Import) and any(a.name == "argparse" for a in node.names):
                problems.append(f"{where}:{node.lineno}: imports argparse")
            elif isinstance(node, ast.ImportFrom) and node.module == "argparse":
                problems.append(f"{where}:{node.lineno}: imports from argparse")
            elif (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                  and node.value.id == "args"):
                problems.append(f"{where}:{node.lineno}: reads args.{node.attr}")
            elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                  and node.func.id in ("getattr", "hasattr", "vars") and node.args
                  and isinstance(node.args[0], ast.Name) and node.args[0].id == "args"):
                problems.append(f"{where}:{node.lineno}: {node.func.id}(args, ...)")
    report(sorted(set(problems), key=_by_place), "argparse options read outside src/tomsparse/cli")


def _by_place(problem: str):
    where = problem.split(": ", 1)[0]
    path, _, line = where.rpartition(":")
    return path, int(line) if line.isdigit() else 0


# ------------------------------------------------------------------ (e) top-of-file imports
def test_library_imports_are_at_the_top_of_the_file():
    problems = [f"{imp.where()}: imports {imp.module} inside a function or class"
                for path in src_files() for imp in imports(path) if not imp.top_level]
    report(problems, "function-level tomsparse imports in src")


# ------------------------------------------------------------------ (f) folder owners
# Each kind of output folder has one module that spells its file names; every other module
# asks it for the path. A name two owners share (every folder has a manifest.json) may be
# spelled by those owners only.
OWNERS = {
    SRC / PACKAGE / "sweep" / "folder.py": "sweep and run folders (SweepFolder, RunFolder)",
    SRC / PACKAGE / "analysis" / "folder.py": "analysis folders (AnalysisFolder)",
    SRC / PACKAGE / "report" / "compare.py": "compare folders (report.compare.COMPARE_FILES)",
    SRC / PACKAGE / "scores" / "store.py": "score stores (scores.store)",
    SRC / PACKAGE / "evaluate" / "results.py": "evaluation results and the reference's tom/ "
                                               "layout (evaluate.results)",
    SRC / PACKAGE / "plant" / "folder.py": "planted model folders (plant.folder.PlantedFolder)",
}
FOLDER_OWNER = SRC / PACKAGE / "sweep" / "folder.py"
OUTPUT_SUFFIXES = (".csv", ".json", ".jsonl", ".html", ".png", ".safetensors")


def _string_parts(tree: ast.Module):
    """(line, text) of every string literal that is not a docstring (f-string parts too)."""
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef,
                                       ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr)
                  and isinstance(node.body[0].value, ast.Constant)}
    for node in ast.walk(tree):
        if (isinstance(node, ast.Constant) and isinstance(node.value, str)
                and id(node) not in docstrings):
            yield node.lineno, node.value


def owned_file_names(owner: Path = FOLDER_OWNER) -> set[str]:
    """The file names (and name endings such as ``_prompts.csv``) an owner spells."""
    names = set()
    for _line, text in _string_parts(parse(owner)):
        if text.endswith(OUTPUT_SUFFIXES) and not text.startswith((".", "*")) and " " not in text:
            names.add(text)
    return names


def _spells(text: str, name: str) -> bool:
    # a name ending (``_prompts.csv``) is the tail of an f-string: matched whole, so another
    # folder's ``tom_prompts.csv`` is not taken for it; a whole name is matched as a whole
    # word (``manifest.json`` is not spelled by ``analysis_manifest.json``)
    if name.startswith("_"):
        return text == name
    return re.search(r"(?<![\w-])" + re.escape(name) + r"(?![\w])", text) is not None


def test_folder_file_names_live_in_the_folder_owner_only():
    names = owned_file_names()
    # the owner spells the layout: the point files, the tables, the report sections
    assert {"_prompts.csv", "summary.csv", "specificity_verdicts.csv", "matched.json",
            "sweep_manifest.json", "report_sections.json"} <= names
    owners = {owner: owned_file_names(owner) for owner in OWNERS}
    assert all(owners.values()), "an owner that spells no file name owns nothing"
    problems = []
    for path in src_files():
        for line, text in _string_parts(parse(path)):
            for owner, owned in owners.items():
                hits = sorted(name for name in owned if _spells(text, name)
                              and path not in [o for o, n in owners.items() if name in n])
                if hits:
                    problems.append(f"{path.relative_to(ROOT)}:{line}: spells {', '.join(hits)} "
                                    f"of {OWNERS[owner]} (ask {owner.relative_to(SRC)})")
    report(sorted(set(problems)), "output folder file names outside their owner")
