"""Every import in a source tree, read from the AST, and the rules they must keep.

An import is a site: which module imports what, on which line, and whether it runs when the
importing module is imported (`eager`) or only when a function runs (lazy). Besides `import`
statements, `importlib.import_module("name")` and `__import__("name")` with a literal name count
as imports, so a rule cannot be dodged by spelling an import as a call. Relative imports are
resolved against the importing module's package. Code under `if TYPE_CHECKING:` never runs and
is left out.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class ImportSite:
    importer: str  # dotted name of the importing module
    path: Path  # relative to the tree's root
    line: int
    target: str  # dotted name of what is imported: the module, or the package a name comes from
    eager: bool  # runs when the importing module is imported

    def __str__(self) -> str:
        when = "at import time" if self.eager else "inside a function"
        return f"{self.path}:{self.line}: {self.importer} imports {self.target} ({when})"


def matches(name: str, patterns: Iterable[str]) -> bool:
    """Whether `name` is one of `patterns` or inside one of them (`a.b` is inside `a`)."""
    return any(name == pattern or name.startswith(pattern + ".") for pattern in patterns)


@dataclass(frozen=True, slots=True)
class ImportRule:
    """Importers matching `importers` (minus `exempt`) may not import what matches `forbidden`;
    where `may_import` is given, they may import of what lies `within` only what matches it (an
    allow-list, so a package added later is forbidden until a rule allows it). With
    `eager_only`, only imports that run at import time break the rule."""

    name: str
    importers: tuple[str, ...]
    forbidden: tuple[str, ...] = ()
    may_import: tuple[str, ...] | None = None
    within: tuple[str, ...] = ("worker",)
    exempt: tuple[str, ...] = ()
    eager_only: bool = False

    def broken_by(self, site: ImportSite) -> bool:
        if not matches(site.importer, self.importers) or matches(site.importer, self.exempt):
            return False
        if self.eager_only and not site.eager:
            return False
        if matches(site.target, self.forbidden):
            return True
        return (
            self.may_import is not None
            and matches(site.target, self.within)
            and not matches(site.target, self.may_import)
        )


@dataclass(frozen=True, slots=True)
class SourceTree:
    """The Python modules under `root`, named as they are imported from `root`."""

    root: Path
    packages: tuple[str, ...]  # top-level packages to read, e.g. ("worker", "orchestrator")

    def modules(self) -> dict[str, Path]:
        found: dict[str, Path] = {}
        for package in self.packages:
            for path in sorted((self.root / package).rglob("*.py")):
                parts = path.relative_to(self.root).with_suffix("").parts
                if parts[-1] == "__init__":
                    parts = parts[:-1]
                found[".".join(parts)] = path
        return found

    def top_level_modules(self, package: str) -> tuple[str, ...]:
        """The plain modules directly inside `package` (its subpackages left out)."""
        return tuple(
            f"{package}.{path.stem}"
            for path in sorted((self.root / package).glob("*.py"))
            if path.stem != "__init__"
        )

    def import_sites(self) -> list[ImportSite]:
        modules = self.modules()
        sites: list[ImportSite] = []
        for name, path in modules.items():
            is_package = path.name == "__init__.py"
            tree = ast.parse(path.read_text(), filename=str(path))
            for node, eager in _import_nodes(tree):
                for target in _targets(node, name, is_package, modules):
                    where = path.relative_to(self.root)
                    sites.append(ImportSite(name, where, node.lineno, target, eager))
        return sites

    def violations(self, rules: Iterable[ImportRule]) -> list[str]:
        sites = self.import_sites()
        return [
            f"{rule.name}: {site}"
            for rule in rules
            for site in sites
            if rule.broken_by(site)
        ]


def _import_nodes(tree: ast.Module) -> Iterator[tuple[ast.stmt | ast.Call, bool]]:
    """Import statements and literal import calls, each with whether it runs at import time."""

    def visit(node: ast.AST, in_function: bool) -> Iterator[tuple[ast.stmt | ast.Call, bool]]:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            # The body never runs; an `else:` branch does.
            for child in node.orelse:
                yield from visit(child, in_function)
            return
        if isinstance(node, ast.Import | ast.ImportFrom) or (
            isinstance(node, ast.Call) and _imported_name(node) is not None
        ):
            yield node, not in_function
        # A function's body runs when it is called; its decorators and defaults run at once.
        is_function = isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
        for field_name, value in ast.iter_fields(node):
            child_in_function = in_function or (is_function and field_name == "body")
            for child in value if isinstance(value, list) else [value]:
                if isinstance(child, ast.AST):
                    yield from visit(child, child_in_function)

    yield from visit(tree, False)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imported_name(call: ast.Call) -> str | None:
    """The literal module name of `importlib.import_module("x")` or `__import__("x")`."""
    function = call.func
    is_import_call = (
        isinstance(function, ast.Name) and function.id in ("__import__", "import_module")
    ) or (isinstance(function, ast.Attribute) and function.attr == "import_module")
    if not is_import_call or not call.args:
        return None
    first = call.args[0]
    if isinstance(first, ast.Constant) and isinstance(first.value, str):
        return first.value
    return None


def _targets(
    node: ast.stmt | ast.Call, importer: str, is_package: bool, modules: dict[str, Path]
) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.Call):
        name = _imported_name(node)
        return [] if name is None else [name]
    assert isinstance(node, ast.ImportFrom)
    base = _resolve_from(node, importer, is_package)
    # `from a import b` imports module `a.b` where there is one, else the name `b` from `a`.
    return [
        f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
        for alias in node.names
    ]


def _resolve_from(node: ast.ImportFrom, importer: str, is_package: bool) -> str:
    if node.level == 0:
        return node.module or ""
    package = importer.split(".") if is_package else importer.split(".")[:-1]
    anchor = package[: len(package) - (node.level - 1)]
    return ".".join([*anchor, *([node.module] if node.module else [])])
