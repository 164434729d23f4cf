"""Package rules of src/cellgraph (issue 16), checked on the source tree with :mod:`ast`.

1. No module uses another cellgraph module's private (``_name``) functions or names: neither
   ``from .x import _y`` / ``from cellgraph.x import _y`` nor ``alias._y`` where ``alias`` is bound to a
   cellgraph module (``import cellgraph.graphs.networks as nw``, ``from . import networks as nw``).
2. No function is over :data:`MAX_LINES` lines (``def`` line to last line, docstring included), except
   numba kernels (:data:`NUMBA_KERNELS`, decorated with numba ``njit``/``jit``) and the functions of
   :data:`NOT_YET_SPLIT`, a list that can only shrink.
3. ``src/cellgraph`` never imports snakemake (the package runs without the workflow engine).
4. Imports run one way between the layer folders (:data:`LAYERS`, docs/design.md "Package layout"): a module
   imports only from its own folder or from a folder of a lower layer (``io`` -> ``graphs`` -> ``grn``,
   ``pp`` -> ``models`` -> ``training`` -> ``tl`` -> ``pl`` -> ``cli``), imports inside functions included.
5. Command-line code lives in ``cli`` only (:data:`CLI_FOLDER`): outside it no module imports argparse,
   defines a module-level ``configure_parser``, ``run`` or ``main``, or has an ``if __name__ == "__main__"``
   block; every stage of ``cellgraph.cli.STAGES`` is a ``cli`` module with ``configure_parser`` and ``run``.
6. Every public module-level function documents itself numpy-style: a ``Parameters`` section when it takes
   arguments, ``Returns`` (or ``Yields``) when it returns a value, ``Raises`` when its body raises
   (:func:`docstring_gaps`). The command modules' ``configure_parser``/``run`` are described once, in
   docs/design.md, and are exempt.

The checks read the tree next to this file (``../src/cellgraph``), so a copy of the repository with a
deliberately broken module makes them fail. The ``test_checker_*`` tests run the checkers on small
synthetic packages, so the checkers themselves cannot silently stop finding anything.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = "cellgraph"
SRC = Path(__file__).resolve().parents[1] / "src" / PACKAGE
MAX_LINES = 80

#: Numba kernels allowed over MAX_LINES lines ("module:qualified name" -> lines). Each must really be
#: decorated with numba ``njit``/``jit`` (checked), so this list cannot hide an ordinary function.
NUMBA_KERNELS = {
    "cellgraph.grn.aracne:_apmi_core": 84,
}

#: Functions over MAX_LINES lines not split yet ("module:qualified name" -> lines when listed). They lie
#: outside the modules split in issue 16 (aracne, multigraph, networks, scvi_baseline, tokenize). The list
#: can only shrink: a listed function that grows, disappears or gets to MAX_LINES lines or fewer fails the
#: test, so its entry must then be lowered or removed.
NOT_YET_SPLIT: dict[str, int] = {}  # every function is split now; a new entry needs a reason

#: Layer of each top-level name of the package (a folder or a module): a module may import from its own
#: top-level name or from one of a lower layer. ``grn`` and ``pp`` share a layer and do not import each other.
LAYERS = {
    "errors": 0, "runtime": 0, "io": 1, "graphs": 2, "grn": 3, "pp": 3, "models": 4, "training": 5, "tl": 6,
    "pl": 7, "cli": 8,
}

#: The folder of the command-line layer (parse, call, write); the only place for argparse and ``run(args)``.
CLI_FOLDER = "cli"
CLI_NAMES = ("configure_parser", "run", "main")


# --------------------------------------------------------------------------------------------------
# Reading the package
# --------------------------------------------------------------------------------------------------


def module_name(path: Path, root: Path, package: str = PACKAGE) -> str:
    """Dotted module name of ``path`` inside the package folder ``root`` (``__init__.py`` -> the package).

    Parameters
    ----------
    path : a ``.py`` file under ``root``.
    root : the package folder (``src/cellgraph``).
    package : the package's import name.

    Returns
    -------
    str, for example ``cellgraph.models.gremln`` or ``cellgraph`` for ``root/__init__.py``.
    """
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join([package, *parts])


def parse_package(root: Path = SRC, package: str = PACKAGE) -> dict[str, tuple[Path, ast.Module, bool]]:
    """Every module of the package folder ``root``, parsed.

    Returns
    -------
    dict module name -> (path, ast tree, is a package ``__init__``), in path order.

    Raises
    ------
    SyntaxError
        A module that does not parse.
    """
    out = {}
    for path in sorted(root.rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        out[module_name(path, root, package)] = (path, tree, path.name == "__init__.py")
    return out


def is_private(name: str) -> bool:
    """``_name`` but not ``__dunder__``."""
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def resolve_from(module: str, is_init: bool, node: ast.ImportFrom) -> str:
    """Absolute module named by ``from <node.module> import ...`` written in ``module``.

    ``level`` dots climb from the package of ``module`` (the module itself when it is an ``__init__``);
    an absolute import is returned as written.
    """
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_init else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def module_aliases(module: str, is_init: bool, tree: ast.Module, modules: set[str]) -> dict[str, str]:
    """Names bound to a package module anywhere in ``tree`` -> that module's dotted name.

    ``import cellgraph.graphs.networks as nw`` binds ``nw``; ``import cellgraph.graphs.networks`` binds ``cellgraph``;
    ``from . import networks as nw`` and ``from cellgraph import networks`` bind a module when the imported
    name is a module of the package.
    """
    aliases = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name in modules or a.name.split(".")[0] in modules:
                    if a.asname:
                        aliases[a.asname] = a.name
                    else:
                        aliases[a.name.split(".")[0]] = a.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom):
            src = resolve_from(module, is_init, node)
            for a in node.names:
                full = f"{src}.{a.name}"
                if full in modules:
                    aliases[a.asname or a.name] = full
    return aliases


def _dotted(node: ast.AST) -> list[str] | None:
    """``a.b.c`` -> ["a", "b", "c"]; None for anything but names and attributes."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    return [node.id, *reversed(parts)]


def private_uses(parsed: dict[str, tuple[Path, ast.Module, bool]]) -> list[str]:
    """Uses of another package module's private names, as ``path:line: module uses other._name``.

    Found: ``from <package module> import _name`` (relative or absolute) and ``alias._name`` (also
    ``cellgraph.x._name``) where ``alias`` is bound to a package module by an import.
    """
    modules = set(parsed)
    found = []
    for module, (path, tree, is_init) in parsed.items():
        aliases = module_aliases(module, is_init, tree, modules)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                src = resolve_from(module, is_init, node)
                if src in modules and src != module:
                    for a in node.names:
                        if is_private(a.name):
                            found.append(f"{path}:{node.lineno}: {module} imports {src}.{a.name}")
            elif isinstance(node, ast.Attribute) and is_private(node.attr):
                chain = _dotted(node.value)
                if not chain or chain[0] not in aliases:
                    continue
                target = aliases[chain[0]]
                for part in chain[1:]:
                    target = f"{target}.{part}"
                if target in modules and target != module:
                    found.append(f"{path}:{node.lineno}: {module} uses {target}.{node.attr}")
    return found


def numba_decorated(fn: ast.FunctionDef, tree: ast.Module) -> bool:
    """Whether ``fn`` is decorated with numba's ``njit`` or ``jit`` (bare or called, imported from numba
    under any name, or as an attribute of an ``import numba [as x]`` alias)."""
    direct, modules = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "numba":
            direct.update(a.asname or a.name for a in node.names if a.name in ("njit", "jit"))
        elif isinstance(node, ast.Import):
            modules.update(a.asname or a.name for a in node.names if a.name == "numba")
    for dec in fn.decorator_list:
        target = dec.func if isinstance(dec, ast.Call) else dec
        chain = _dotted(target) or []
        if len(chain) == 1 and chain[0] in direct:
            return True
        if len(chain) == 2 and chain[0] in modules and chain[1] in ("njit", "jit"):
            return True
    return False


def function_lengths(parsed: dict[str, tuple[Path, ast.Module, bool]]) -> dict[str, tuple[int, bool]]:
    """Every function and method, nested ones included.

    Returns
    -------
    dict ``"module:Outer.inner"`` -> (lines from the ``def`` line to the last line, numba-decorated).
    """
    out = {}

    def visit(node, prefix, module, tree):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                name = f"{prefix}{child.name}"
                out[f"{module}:{name}"] = (child.end_lineno - child.lineno + 1, numba_decorated(child, tree))
                visit(child, f"{name}.", module, tree)
            elif isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.", module, tree)
            else:
                visit(child, prefix, module, tree)

    for module, (_, tree, _) in parsed.items():
        visit(tree, "", module, tree)
    return out


def length_violations(lengths: dict[str, tuple[int, bool]], kernels: dict[str, int],
                      not_yet_split: dict[str, int], max_lines: int = MAX_LINES) -> list[str]:
    """Breaches of the length rule, one message each (empty: the rule holds).

    A function over ``max_lines`` must be in ``kernels`` (and numba-decorated) or in ``not_yet_split``;
    every entry of both lists must exist, still be over ``max_lines`` and not have grown.
    """
    bad = []
    for name, (n, _) in sorted(lengths.items()):
        if n > max_lines and name not in kernels and name not in not_yet_split:
            bad.append(f"{name}: {n} lines > {max_lines}; split it into helpers")
    for listed, what in ((kernels, "NUMBA_KERNELS"), (not_yet_split, "NOT_YET_SPLIT")):
        for name, was in sorted(listed.items()):
            if name not in lengths:
                bad.append(f"{name} ({what}): no such function any more; remove it from {what}")
                continue
            n, numba = lengths[name]
            if listed is kernels and not numba:
                bad.append(f"{name} ({what}): not decorated with numba njit/jit; it is no kernel")
            if n <= max_lines:
                bad.append(f"{name} ({what}): now {n} lines <= {max_lines}; remove it from {what}")
            elif n > was:
                bad.append(f"{name} ({what}): grew from {was} to {n} lines; the list can only shrink")
    return bad


def snakemake_imports(parsed: dict[str, tuple[Path, ast.Module, bool]]) -> list[str]:
    """Imports of snakemake: ``import snakemake[.x]``, ``from snakemake[.x] import ...`` and
    ``importlib.import_module("snakemake...")`` / ``__import__("snakemake...")`` with a literal name."""
    found = []
    for module, (path, tree, _) in parsed.items():
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
            elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
                chain = _dotted(node.func) or []
                if chain[-1:] in (["import_module"], ["__import__"]) and isinstance(node.args[0].value, str):
                    names = [node.args[0].value]
            for name in names:
                if name.split(".")[0] == "snakemake":
                    found.append(f"{path}:{node.lineno}: {module} imports {name}")
    return found


def imported_modules(module: str, is_init: bool, tree: ast.Module, modules: set[str]) -> list[tuple[int, str]]:
    """(line, package module) of every import in ``tree`` of a module of the package, inside functions too.

    ``from a import b`` names ``a.b`` when that is a module of the package, else ``a``.
    """
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.extend((node.lineno, a.name) for a in node.names if a.name.split(".")[0] in {m.split(".")[0] for m in modules})
        elif isinstance(node, ast.ImportFrom):
            src = resolve_from(module, is_init, node)
            for a in node.names:
                full = f"{src}.{a.name}"
                out.append((node.lineno, full if full in modules else src))
    return [(line, m) for line, m in out if m in modules]


def layer_violations(parsed: dict[str, tuple[Path, ast.Module, bool]], layers: dict[str, int]) -> list[str]:
    """Imports that go up or sideways between layers, as ``path:line: module (layer) imports other (layer)``.

    The layer of ``pkg.x.y`` is ``layers["x"]``; the package's own ``__init__`` may import anything. A
    top-level name missing from ``layers`` is reported, so a new folder must be given a layer.
    """
    modules = set(parsed)
    found = []
    for module, (path, tree, is_init) in parsed.items():
        parts = module.split(".")
        if len(parts) == 1:
            continue
        if parts[1] not in layers:
            found.append(f"{path}: {module} is in no layer (add {parts[1]!r} to LAYERS)")
            continue
        for line, other in imported_modules(module, is_init, tree, modules):
            o = other.split(".")
            if len(o) == 1 or o[1] == parts[1]:
                continue
            if o[1] not in layers or layers[o[1]] >= layers[parts[1]]:
                found.append(f"{path}:{line}: {module} ({parts[1]}, layer {layers[parts[1]]}) imports {other} "
                             f"({o[1]}, layer {layers.get(o[1])})")
    return found


def command_line_code(parsed: dict[str, tuple[Path, ast.Module, bool]], cli_folder: str = CLI_FOLDER) -> list[str]:
    """Command-line code outside ``cli_folder``, as ``path:line: module what``: an import of argparse, a
    module-level function named in :data:`CLI_NAMES`, or an ``if __name__ == "__main__"`` block."""
    found = []
    for module, (path, tree, _) in parsed.items():
        parts = module.split(".")
        if len(parts) > 1 and parts[1] == cli_folder:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Import) and any(a.name.split(".")[0] == "argparse" for a in node.names):
                found.append(f"{path}:{node.lineno}: {module} imports argparse")
            elif isinstance(node, ast.ImportFrom) and not node.level and (node.module or "").split(".")[0] == "argparse":
                found.append(f"{path}:{node.lineno}: {module} imports from argparse")
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name in CLI_NAMES:
                found.append(f"{path}:{node.lineno}: {module} defines {node.name}()")
            elif (isinstance(node, ast.If) and isinstance(node.test, ast.Compare)
                  and isinstance(node.test.left, ast.Name) and node.test.left.id == "__name__"):
                found.append(f"{path}:{node.lineno}: {module} has an if __name__ block")
    return found


def stage_modules_without_commands(parsed: dict[str, tuple[Path, ast.Module, bool]],
                                   stages: dict[str, str], cli_folder: str = CLI_FOLDER) -> list[str]:
    """Stages (name -> module) whose module is not a ``cli_folder`` module of the package defining
    ``configure_parser`` and ``run`` at module level (a re-export of another module's functions does not count)."""
    bad = []
    for stage, module in stages.items():
        if module.split(".")[1:2] != [cli_folder] or module not in parsed:
            bad.append(f"{stage}: {module} is not a module of the {cli_folder} folder")
            continue
        defined = {n.name for n in parsed[module][1].body if isinstance(n, ast.FunctionDef)}
        missing = {"configure_parser", "run"} - defined
        if missing:
            bad.append(f"{stage}: {module} lacks {sorted(missing)}")
    return bad


def _own_nodes(fn: ast.FunctionDef):
    """The nodes of ``fn``'s body, without those of nested functions, classes and lambdas."""
    stack = list(fn.body)
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
            continue
        yield node
        stack.extend(ast.iter_child_nodes(node))


def numpy_sections(doc: str) -> dict[str, str]:
    """Sections of a numpy-style docstring: header (a line followed by a line of dashes) -> its text."""
    lines = doc.splitlines()
    out, current = {}, None
    for i, line in enumerate(lines):
        if i + 1 < len(lines) and re.fullmatch(r"\s*-{3,}\s*", lines[i + 1]) and line.strip():
            current = line.strip()
            out[current] = ""
        elif current is not None and not re.fullmatch(r"\s*-{3,}\s*", line):
            out[current] += line + "\n"
    return out


def docstring_gaps(parsed: dict[str, tuple[Path, ast.Module, bool]], cli_folder: str = CLI_FOLDER) -> list[str]:
    """``module:function: missing sections`` of every public module-level function whose docstring lacks the
    numpy section (a header underlined with dashes) ``Parameters`` (it has arguments; each argument named in it),
    ``Returns``/``Yields`` (it returns a value or yields) or ``Raises`` (a ``raise`` in its own body).
    ``configure_parser`` and ``run`` of the ``cli_folder`` modules are exempt."""
    gaps = []
    for module, (_, tree, _) in sorted(parsed.items()):
        in_cli = module.split(".")[1:2] == [cli_folder]
        for fn in tree.body:
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)) or fn.name.startswith("_"):
                continue
            if in_cli and fn.name in ("configure_parser", "run"):
                continue
            doc = ast.get_docstring(fn) or ""
            a = fn.args
            args = [x.arg for x in a.posonlyargs + a.args + a.kwonlyargs if x.arg not in ("self", "cls")]
            nodes = list(_own_nodes(fn))
            returns = any(isinstance(n, ast.Return) and n.value is not None
                          and not (isinstance(n.value, ast.Constant) and n.value.value is None) for n in nodes)
            yields = any(isinstance(n, (ast.Yield, ast.YieldFrom)) for n in nodes)
            sections = numpy_sections(doc)
            missing = []
            if (args or a.vararg or a.kwarg) and "Parameters" not in sections:
                missing.append("Parameters")
            elif "Parameters" in sections:
                names = set(re.findall(r"\w+", sections["Parameters"]))
                missing += [f"parameter {x}" for x in args if x not in names]
            if (returns or yields) and "Returns" not in sections and "Yields" not in sections:
                missing.append("Returns")
            if any(isinstance(n, ast.Raise) for n in nodes) and "Raises" not in sections:
                missing.append("Raises")
            if missing:
                gaps.append(f"{module}:{fn.name}: {', '.join(missing)}")
    return gaps


# --------------------------------------------------------------------------------------------------
# The rules on src/cellgraph
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def parsed():
    """The package next to this test file, parsed once."""
    assert (SRC / "__init__.py").is_file(), f"no package at {SRC}"
    return parse_package(SRC)


def test_no_module_uses_another_modules_private_names(parsed):
    found = private_uses(parsed)
    assert not found, "private names used across modules (make them public):\n" + "\n".join(found)


def test_no_function_over_80_lines(parsed):
    bad = length_violations(function_lengths(parsed), NUMBA_KERNELS, NOT_YET_SPLIT)
    assert not bad, "function length rule:\n" + "\n".join(bad)


def undocumented(parsed: dict[str, tuple[Path, ast.Module, bool]]) -> list[str]:
    """``module:name:line`` of every public function, method and class (name without a leading ``_``, at any
    depth; dunder methods are described by their class) that has no docstring."""
    out = []
    for module, (_, tree, _) in sorted(parsed.items()):
        for node in ast.walk(tree):
            if (isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
                    and not node.name.startswith("_")  # private, and dunder methods (documented by the class)
                    and ast.get_docstring(node) is None):
                out.append(f"{module}:{node.name}:{node.lineno}")
    return out


def test_every_public_function_has_a_docstring(parsed, tmp_path):
    assert undocumented(parsed) == []
    fake = _write_package(tmp_path, {"m.py": 'def f():\n    return 1\n\n\ndef _g():\n    return 2\n\n\n'
                                             'class C:\n    """A class."""\n\n    def forward(self):\n'
                                             '        return 3\n'})
    assert undocumented(fake) == ["pkg.m:f:1", "pkg.m:forward:12"]


def test_imports_run_one_way_between_layers(parsed):
    found = layer_violations(parsed, LAYERS)
    assert not found, "imports against the layer order (docs/design.md, Package layout):\n" + "\n".join(found)


def test_package_never_imports_snakemake(parsed):
    found = snakemake_imports(parsed)
    assert not found, "src/cellgraph must not import snakemake:\n" + "\n".join(found)


def test_command_line_code_lives_in_cli(parsed):
    found = command_line_code(parsed)
    assert not found, "command-line code outside cellgraph.cli (move it to cli/<stage>.py):\n" + "\n".join(found)


def test_every_stage_is_a_cli_module_with_parser_and_run(parsed):
    from cellgraph.cli import STAGES

    bad = stage_modules_without_commands(parsed, {name: module for name, (module, _) in STAGES.items()})
    assert not bad, "\n".join(bad)


def test_public_functions_document_parameters_returns_and_raises(parsed):
    gaps = docstring_gaps(parsed)
    assert not gaps, "docstrings without their numpy-style sections:\n" + "\n".join(gaps)


# --------------------------------------------------------------------------------------------------
# The checkers on synthetic packages (they must find what they are for)
# --------------------------------------------------------------------------------------------------


def _write_package(root: Path, files: dict[str, str]) -> dict[str, tuple[Path, ast.Module, bool]]:
    """A package ``pkg`` with ``files`` (relative path -> source) under ``root``, parsed."""
    pkg = root / "pkg"
    for rel, text in {"__init__.py": "", **files}.items():
        (pkg / rel).parent.mkdir(parents=True, exist_ok=True)
        (pkg / rel).write_text(text)
    return parse_package(pkg, "pkg")


def test_checker_finds_private_imports_and_attributes(tmp_path):
    parsed = _write_package(tmp_path, {
        "a.py": "def _x():\n    pass\n\n\ndef y():\n    pass\n",
        "sub/__init__.py": "",
        "sub/b.py": "from ..a import _x\nfrom pkg.a import y, _x as z\n",
        "c.py": "from . import a as m\nimport pkg.a as n\nimport pkg.a\nfrom .sub import b\n\n\n"
                "def f():\n    return m._x(), n._x(), pkg.a._x(), m.y(), m.__name__, b.q\n",
        "d.py": "def _own():\n    pass\n\n\ndef g():\n    return _own()\n",
    })
    found = private_uses(parsed)
    assert len(found) == 5, found
    assert any("pkg.sub.b imports pkg.a._x" in f for f in found)
    assert sum("pkg.c uses pkg.a._x" in f for f in found) == 3


def test_checker_finds_long_functions(tmp_path):
    body = "".join(f"    x{i} = {i}\n" for i in range(80))
    parsed = _write_package(tmp_path, {
        "k.py": f"import numba as nb\nfrom numba import njit as fast\n\n\n@fast(cache=True)\ndef kern():\n{body}\n\n"
                f"@nb.jit\ndef kern2():\n{body}\n\n"
                f"def plain():\n{body}\n\n"
                f"class C:\n    def method(self):\n        def inner():\n{body.replace('    ', '            ')}\n",
        "s.py": "def short():\n    pass\n",
    })
    lengths = function_lengths(parsed)
    assert lengths["pkg.k:kern"] == (81, True) and lengths["pkg.k:kern2"] == (81, True)
    assert lengths["pkg.k:plain"] == (81, False)
    assert lengths["pkg.k:C.method.inner"][0] == 81 and lengths["pkg.k:C.method"][0] == 82
    kernels = {"pkg.k:kern": 81, "pkg.k:kern2": 81}
    listed = {"pkg.k:plain": 81, "pkg.k:C.method": 82, "pkg.k:C.method.inner": 81}
    assert length_violations(lengths, kernels, listed) == []
    assert len(length_violations(lengths, {}, listed)) == 2  # kernels need listing too
    assert any("pkg.k:plain: 81 lines" in m for m in length_violations(lengths, kernels, {}))
    assert any("not decorated with numba" in m for m in length_violations(lengths, {**kernels, "pkg.k:plain": 81}, {}))
    assert any("remove it" in m for m in length_violations(lengths, kernels, {**listed, "pkg.s:short": 90}))
    assert any("grew" in m for m in length_violations(lengths, kernels, {**listed, "pkg.k:plain": 80}))
    assert any("no such function" in m for m in length_violations(lengths, kernels, {**listed, "pkg.s:gone": 90}))


def test_checker_finds_snakemake_imports(tmp_path):
    parsed = _write_package(tmp_path, {
        "a.py": "import snakemake\n",
        "b.py": "def f():\n    from snakemake.api import SnakemakeApi\n",
        "c.py": "import importlib\nimportlib.import_module('snakemake.io')\n",
        "d.py": "# snakemake in a comment\nX = 'snakemake'\nimport os\n",
    })
    found = snakemake_imports(parsed)
    assert [f.split(": ")[1] for f in found] == ["pkg.a imports snakemake", "pkg.b imports snakemake.api",
                                                 "pkg.c imports snakemake.io"]


def test_checker_finds_imports_against_the_layers(tmp_path):
    parsed = _write_package(tmp_path, {
        "errors.py": "",
        "io/__init__.py": "from ..errors import X\n",
        "graphs/__init__.py": "", "graphs/net.py": "from ..io import read\nfrom . import spec\n", "graphs/spec.py": "",
        "grn/__init__.py": "", "grn/ara.py": "from ..graphs import net\n\n\ndef f():\n    from ..pp import tok\n",
        "pp/__init__.py": "", "pp/tok.py": "import pkg.tl.ev\n",
        "tl/__init__.py": "", "tl/ev.py": "from pkg.graphs.net import read\nfrom pkg import pl\n",
        "pl/__init__.py": "", "extra/__init__.py": "",
    })
    layers = {"errors": 0, "io": 1, "graphs": 2, "grn": 3, "pp": 3, "tl": 6, "pl": 7}
    found = layer_violations(parsed, layers)
    assert len(found) == 4, found
    assert any("pkg.grn.ara (grn, layer 3) imports pkg.pp.tok" in f for f in found)  # sideways, inside a function
    assert any("pkg.pp.tok (pp, layer 3) imports pkg.tl.ev" in f for f in found)  # up, plain import
    assert any("pkg.tl.ev (tl, layer 6) imports pkg.pl" in f for f in found)  # up, a package
    assert any("pkg.extra is in no layer" in f for f in found)


def test_checker_finds_command_line_code_outside_cli(tmp_path):
    parsed = _write_package(tmp_path, {
        "tl/__init__.py": "", "tl/a.py": "import argparse\n\n\ndef run(args):\n    pass\n",
        "tl/b.py": "def f():\n    from argparse import Namespace\n\n\nif __name__ == '__main__':\n    f()\n",
        "tl/c.py": "def fit():\n    def run():\n        pass\n",
        "cli/__init__.py": "", "cli/a.py": "import argparse\n\n\ndef configure_parser(p):\n    pass\n\n\n"
                                          "def run(args):\n    pass\n",
        "cli/b.py": "from ..tl.a import run\n",
    })
    found = command_line_code(parsed)
    assert [f.split(": ", 1)[1] for f in found] == ["pkg.tl.a imports argparse", "pkg.tl.a defines run()",
                                                    "pkg.tl.b imports from argparse", "pkg.tl.b has an if __name__ block"]
    bad = stage_modules_without_commands(parsed, {"a": "pkg.cli.a", "b": "pkg.cli.b", "c": "pkg.tl.c"})
    assert bad == ["b: pkg.cli.b lacks ['configure_parser', 'run']", "c: pkg.tl.c is not a module of the cli folder"]


def test_checker_finds_docstring_gaps(tmp_path):
    full = '"""Sum.\n\n    Parameters\n    ----------\n    x : int\n\n    Returns\n    -------\n    int\n\n' \
           '    Raises\n    ------\n    ValueError\n    """'
    parsed = _write_package(tmp_path, {
        "m.py": f"def ok(x):\n    {full}\n    if x:\n        raise ValueError\n    return x\n\n\n"
                "def bare(x):\n    \"\"\"One line.\"\"\"\n    if x:\n        raise ValueError\n    return x\n\n\n"
                "def gen():\n    \"\"\"Yield.\"\"\"\n    yield 1\n\n\n"
                "def inner_only():\n    \"\"\"No own raise.\"\"\"\n    def f():\n        raise ValueError\n\n\n"
                "def _private(x):\n    return x\n",
        "cli/__init__.py": "", "cli/s.py": "def run(args):\n    \"\"\"Run.\"\"\"\n    return 1\n\n\n"
                                         "def helper(args):\n    \"\"\"Help.\"\"\"\n",
    })
    assert docstring_gaps(parsed) == ["pkg.cli.s:helper: Parameters", "pkg.m:bare: Parameters, Returns, Raises",
                                      "pkg.m:gen: Returns"]
    prose = _write_package(tmp_path / "prose", {
        "m.py": 'def f(x, y):\n    """Sum.\n\n    Parameters\n    ----------\n    x : int\n\n    Returns the sum; '
                'Raises ValueError on None.\n    """\n    if x is None:\n        raise ValueError\n    return x + y\n'})
    assert docstring_gaps(prose) == ["pkg.m:f: parameter y, Returns, Raises"]
