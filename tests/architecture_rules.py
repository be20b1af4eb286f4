"""The import graph of ``pipeline/`` and the architecture's import rules as pure checks.

``build_graph`` reads a source tree with ``ast``; each ``check_*`` takes a graph (module →
the module names it imports) and returns its violations as messages, so a test can plant
one edge in the real graph and see the rule name it.

Every import counts: at module top, inside functions (lazy), under ``if TYPE_CHECKING:``
(a type from a higher layer in a lower layer's signature is still an upward dependency),
and ``importlib.import_module("literal")``.
"""

from __future__ import annotations

import ast
import sys
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

Graph = dict[str, set[str]]


# --- building the graph ------------------------------------------------------------------


def module_name(root: Path, path: Path) -> str:
    """``pipeline/spec/load.py`` → ``pipeline.spec.load``; an ``__init__`` is its package."""
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def top_level(body: list[ast.stmt]) -> Iterator[ast.stmt]:
    """A module's statements, including those under a top-level ``if`` or ``try``."""
    for node in body:
        yield node
        if isinstance(node, ast.If):
            yield from top_level(node.body + node.orelse)
        elif isinstance(node, ast.Try):
            handlers = [stmt for handler in node.handlers for stmt in handler.body]
            yield from top_level(node.body + handlers + node.orelse + node.finalbody)


def bound_names(tree: ast.Module) -> set[str]:
    """Names a module binds at its top level (what ``from it import name`` can find before
    Python falls back to a submodule of that name)."""
    names: set[str] = set()
    for node in top_level(tree.body):
        if isinstance(node, ast.Import | ast.ImportFrom):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign | ast.AnnAssign | ast.AugAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(t.id for t in targets if isinstance(t, ast.Name))
    return names


def absolute(module: str | None, level: int, here: str, is_package: bool) -> str:
    """The absolute name a (possibly relative) ``from`` import refers to."""
    if level == 0:
        return module or ""
    base = here.split(".") if is_package else here.split(".")[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join([*base, module] if module else base)


def dynamic_import(node: ast.Call) -> str | None:
    """``importlib.import_module("x.y")`` with a literal name: an import like any other."""
    func = node.func
    named = (isinstance(func, ast.Attribute) and func.attr == "import_module") or (
        isinstance(func, ast.Name) and func.id == "import_module"
    )
    if named and node.args and isinstance(node.args[0], ast.Constant):
        value = node.args[0].value
        return value if isinstance(value, str) else None
    return None


class Resolver:
    """Resolves ``from package import name`` the way Python does: the package's own
    attribute if its ``__init__`` binds that name, else the submodule of that name.
    ``from package import __version__`` (metadata) is the edge ``package.__version__``."""

    def __init__(self, modules: set[str], bindings: Mapping[str, set[str]]) -> None:
        self.modules = modules
        self.bindings = bindings

    def from_import(self, base: str, names: list[str]) -> set[str]:
        found: set[str] = set()
        for name in names:
            full = f"{base}.{name}"
            metadata = name.startswith("__") and name.endswith("__")
            submodule = full in self.modules and name not in self.bindings.get(base, set())
            if metadata or submodule:
                found.add(full)
            else:
                found.add(base)
        return found

    def imports_in(self, tree: ast.Module, here: str, is_package: bool) -> set[str]:
        found: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = absolute(node.module, node.level, here, is_package)
                found |= self.from_import(base, [alias.name for alias in node.names])
            elif isinstance(node, ast.Call) and (name := dynamic_import(node)):
                found.add(name)
        found.discard(here)
        return found


def build_graph(root: Path) -> Graph:
    """Module → the module names it imports, for every module under ``root`` (a package
    directory such as ``pipeline/``)."""
    files = {module_name(root, path): path for path in sorted(root.rglob("*.py"))}
    trees = {name: ast.parse(path.read_text(encoding="utf-8")) for name, path in files.items()}
    packages = {name for name, path in files.items() if path.name == "__init__.py"}
    resolver = Resolver(set(files), {name: bound_names(trees[name]) for name in packages})
    return {name: resolver.imports_in(tree, name, name in packages) for name, tree in trees.items()}


# --- the architecture --------------------------------------------------------------------

CORE = ("errors", "redact", "models", "identity", "units", "prompts", "matrix", "cost", "spec")
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("core", (*CORE, "__version__")),
    ("support", ("fsio", "failpoints", "retry", "limits")),
    ("http", ("http",)),
    ("providers", ("providers",)),
    ("manifest|outputs|completion", ("manifest", "outputs", "completion")),
    ("dataset|review", ("dataset", "review")),
    ("runner", ("runner",)),
    ("commands", ("commands",)),
    ("library API", ("",)),
    ("cli", ("cli", "shell")),
    ("main", ("__main__",)),
)
"""Parts of ``pipeline`` by layer, lowest first (``""`` is the package itself, the library
API; ``__version__`` is its metadata, which any module may read). A module may import its
own layer or lower."""

APART = frozenset({"manifest|outputs|completion", "dataset|review"})
"""Layers whose parts may not import each other (manifest, outputs, completion; the
export and the contact sheet)."""

ONLY = {
    "manifest": ("core", "support"),
    "dataset": ("core", "support", "manifest|outputs|completion"),
    "review": ("core", "support", "manifest|outputs|completion"),
}
"""Parts held below their layer's ceiling: the manifest knows no HTTP and no provider;
the dataset export and the contact sheet (review) read the manifest and the files, and
know no HTTP, provider or run."""

LAYER_RANK = {layer: rank for rank, (layer, _) in enumerate(LAYERS)}
PART_LAYER = {part: layer for layer, parts in LAYERS for part in parts}

IO_LIBRARIES = frozenset(
    {"anyio", "httpx", "aiohttp", "httpx_aiohttp", "yarl", "sqlite3", "tqdm", "aiofiles"}
)
"""What the pure core may not reach, even through another core module."""

DOORS = {
    "spec": {"pipeline.spec"},
    "manifest": {"pipeline.manifest"},
    "completion": {"pipeline.completion"},
    "outputs": {"pipeline.outputs"},
    "http": {"pipeline.http"},
    "runner": {"pipeline.runner"},
    "dataset": {"pipeline.dataset"},
    "review": {"pipeline.review"},
    "providers": {"pipeline.providers", "pipeline.providers.base", "pipeline.providers.registry"},
}
"""What code outside a room may import of it: the room's package (its ``__init__``); for
providers also the plugin API (``base``, ``registry``), never an adapter."""

EMULATORS = "pipeline.emulators"
EMULATOR_WORLD_MAY_IMPORT = frozenset({"pipeline.errors"})
EMULATOR_DOORS = {
    "pipeline.runner.session": {"pipeline.emulators"},
    "pipeline.commands": {"pipeline.emulators.knobs"},
}
"""Who outside the emulators may import what of them: the session starts them; ``validate``
reads the knob table, which needs nothing outside the standard library, so a spec checks
without the ``emulators`` extra."""

STDLIB_ONLY = frozenset({"pipeline.emulators.knobs"})

LIBRARY_HOMES: dict[str, tuple[str, ...]] = {
    "pydantic": ("pipeline.spec",),
    "pydantic_core": ("pipeline.spec",),
    "yaml": ("pipeline.spec.source",),
    "anyascii": ("pipeline.identity",),  # transliterated prompt slugs
    "sqlite3": ("pipeline.manifest", "pipeline.emulators.persist"),
    "psycopg": ("pipeline.manifest",),  # the shared-run manifest's PostgreSQL driver
    "tqdm": ("pipeline.runner.progress",),
    "httpx_aiohttp": ("pipeline.http.transport",),
    "yarl": ("pipeline.http.transport",),
    "aiohttp": (
        "pipeline.http",
        "pipeline.completion.subscription",  # PixAI's WebSocket client
        "pipeline.completion.receiver",  # the webhook server
        "pipeline.emulators",
    ),
    "httpx": (
        "pipeline.http",
        "pipeline.providers",
        "pipeline.outputs.download",
        "pipeline.outputs.fetch",
        "pipeline.outputs.guard",
        "pipeline.runner.session",
    ),
    "anyio": (
        "pipeline.retry",
        "pipeline.limits",
        "pipeline.manifest.group_commit",
        "pipeline.completion",
        "pipeline.outputs",
        "pipeline.runner",
        "pipeline.commands",
    ),
    "graphql": ("pipeline.emulators",),
    "PIL": ("pipeline.emulators",),
    "av": ("pipeline.emulators",),
    "pyarrow": ("pipeline.dataset.parquet",),  # the optional `parquet` extra
}
"""Each third-party library (and sqlite3) and the modules or rooms it may be imported in;
a library not listed here has no room yet, so importing it anywhere is a violation."""

CONFINED_STDLIB = frozenset({"sqlite3"})


# --- helpers -----------------------------------------------------------------------------


def part_of(module: str) -> str | None:
    """``pipeline.spec.load`` → ``spec``; ``pipeline`` → ``""``; not ours → None."""
    head, _, rest = module.partition(".")
    if head != "pipeline":
        return None
    return rest.split(".", maxsplit=1)[0]


def layer_of(module: str) -> str | None:
    part = part_of(module)
    return None if part is None else PART_LAYER.get(part)


def in_emulators(module: str) -> bool:
    return within(module, EMULATORS)


def within(module: str, home: str) -> bool:
    """``module`` is ``home`` or inside it."""
    return module == home or module.startswith(home + ".")


def library_of(module: str) -> str:
    return module.split(".", maxsplit=1)[0]


def is_confined_library(module: str) -> bool:
    """Third-party (not standard library, not ours), or a standard module with a room."""
    top = library_of(module)
    if top == "pipeline":
        return False
    return top in CONFINED_STDLIB or top not in sys.stdlib_module_names


def file_of(module: str, graph: Graph) -> str:
    """The file a message names; a package by its ``__init__``."""
    path = module.replace(".", "/")
    if any(other.startswith(module + ".") for other in graph) or module == "pipeline":
        return f"{path}/__init__.py"
    return f"{path}.py"


def edges(graph: Graph) -> Iterator[tuple[str, str]]:
    """Every edge, sorted, for stable messages."""
    for module in sorted(graph):
        for target in sorted(graph[module]):
            yield module, target


def paths_from(graph: Graph, start: str, follow: Callable[[str], bool]) -> dict[str, list[str]]:
    """What ``start`` reaches, with the shortest path to each (breadth first), going on
    only through our modules that ``follow`` accepts; a library is named by its top
    package (``anyio.abc`` → ``anyio``)."""
    paths = {start: [start]}
    queue = deque([start])
    while queue:
        here = queue.popleft()
        for target in sorted(graph.get(here, ())):
            name = target if part_of(target) is not None else library_of(target)
            if name not in paths:
                paths[name] = [*paths[here], target]
                if name in graph and follow(name):
                    queue.append(name)
    return paths


def named(part: str) -> str:
    return part or "the package root (library API)"


# --- the rules ---------------------------------------------------------------------------


def check_placed(graph: Graph) -> list[str]:
    """Every module of ``pipeline`` has a layer, or is an emulator."""
    return [
        f"{file_of(module, graph)} is in no layer: add {named(part_of(module) or '')!r} "
        "to LAYERS in tests/architecture_rules.py"
        for module in sorted(graph)
        if part_of(module) is not None and not in_emulators(module) and layer_of(module) is None
    ]


def allowed_layers(part: str) -> list[str]:
    layer = PART_LAYER[part]
    if part in ONLY:
        return list(ONLY[part])
    return [name for name, _ in LAYERS if LAYER_RANK[name] <= LAYER_RANK[layer]]


def layer_violation(module: str, target: str) -> str | None:
    part, other = part_of(module), part_of(target)
    if part is None or other is None or part == other:
        return None
    layer, other_layer = PART_LAYER.get(part), PART_LAYER.get(other)
    if layer is None or other_layer is None:
        return None
    if other_layer not in allowed_layers(part):
        allowed = ", ".join(allowed_layers(part))
        if part in ONLY or part == layer:
            return f"{named(part)} may import only {allowed}"
        return f"{named(part)} is {layer}: {layer} may import only {allowed}"
    if layer == other_layer and layer in APART:
        return f"{named(part)} and {named(other)} are siblings: neither may import the other"
    return None


def check_layers(graph: Graph) -> list[str]:
    """A module imports only its own layer or lower; siblings in an apart layer not at all."""
    found = []
    for module, target in edges(graph):
        why = layer_violation(module, target)
        if why is not None:
            found.append(
                f"{file_of(module, graph)} imports {target} (layer {layer_of(target)}) but {why}"
            )
    return found


def is_core(module: str) -> bool:
    return layer_of(module) == "core"


def check_pure_core(graph: Graph) -> list[str]:
    """Whatever a core module reaches through other core modules is core, and none of it
    imports an I/O library (where the path leaves the core, that edge is reported)."""
    found = []
    for module in sorted(graph):
        if not is_core(module):
            continue
        for target, path in sorted(paths_from(graph, module, is_core).items()):
            chain = " → ".join(path)
            if part_of(target) is not None and layer_of(target) not in {"core", None}:
                found.append(
                    f"{file_of(module, graph)} is core but reaches {target} "
                    f"(layer {layer_of(target)}): {chain}"
                )
            elif part_of(target) is not None and in_emulators(target):
                found.append(f"{file_of(module, graph)} is core but reaches {target}: {chain}")
            elif library_of(target) in IO_LIBRARIES:
                found.append(
                    f"{file_of(module, graph)} is core but reaches the I/O library "
                    f"{target}: {chain}"
                )
    return found


def room_of(module: str) -> str | None:
    part = part_of(module)
    return part if part in DOORS else None


def check_doors(graph: Graph) -> list[str]:
    """Outside a room, code imports the room's package, never its submodules (providers
    also offer ``base`` and ``registry``, the plugin API)."""
    found = []
    for module, target in edges(graph):
        room = room_of(target)
        if room is None or room_of(module) == room or target in DOORS[room]:
            continue
        doors = " or ".join(sorted(DOORS[room]))
        found.append(
            f"{file_of(module, graph)} imports {target}, inside the {room} room: "
            f"outside it import {doors}"
        )
    return found


def check_libraries(graph: Graph) -> list[str]:
    """Each third-party library (and sqlite3) is imported only in its rooms."""
    found = []
    for module, target in edges(graph):
        if not is_confined_library(target):
            continue
        library = library_of(target)
        homes = LIBRARY_HOMES.get(library)
        if homes is None:
            found.append(
                f"{file_of(module, graph)} imports {library}, which has no room: "
                "give it one in LIBRARY_HOMES (tests/architecture_rules.py)"
            )
        elif not any(within(module, home) for home in homes):
            found.append(
                f"{file_of(module, graph)} imports {library}, which lives only in "
                f"{', '.join(homes)}"
            )
    return found


def check_emulators(graph: Graph) -> list[str]:
    """The emulators are a separate world: they import of pipeline only ``pipeline.errors``
    and themselves, and only the session and ``validate`` import them."""
    found = []
    for module, target in edges(graph):
        if part_of(target) is None:
            continue
        if in_emulators(module) and not in_emulators(target):
            if target not in EMULATOR_WORLD_MAY_IMPORT:
                found.append(
                    f"{file_of(module, graph)} imports {target}, but the emulators are a "
                    f"separate world: of pipeline they import only "
                    f"{', '.join(sorted(EMULATOR_WORLD_MAY_IMPORT))}"
                )
        elif in_emulators(target) and not in_emulators(module):
            allowed = EMULATOR_DOORS.get(module, set())
            if target not in allowed:
                found.append(
                    f"{file_of(module, graph)} imports {target}; outside the emulators only "
                    + "; ".join(
                        f"{k} imports {', '.join(sorted(v))}" for k, v in EMULATOR_DOORS.items()
                    )
                )
    for module in sorted(STDLIB_ONLY):
        for target, path in sorted(paths_from(graph, module, lambda _: True).items()):
            if is_confined_library(target):
                found.append(
                    f"{file_of(module, graph)} must need only the standard library (it is "
                    f"read without the emulators extra) but reaches {target}: " + " → ".join(path)
                )
    return found


RULES = {
    "placed": check_placed,
    "layers": check_layers,
    "pure core": check_pure_core,
    "doors": check_doors,
    "libraries": check_libraries,
    "emulators": check_emulators,
}
