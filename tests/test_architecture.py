"""The import rules of the architecture, checked on the real tree, and each rule shown
catching a planted import (a rule that cannot fail protects nothing).

Layers, lowest first: core (errors, redact, models, identity, units, prompts, matrix,
spec) < support (fsio, failpoints, retry, limits) < http < providers < manifest | outputs |
completion < dataset | review < runner < commands < the library API (``pipeline/__init__``) < cli <
__main__. The rules themselves live in ``tests/architecture_rules.py``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from .architecture_rules import (
    EMULATOR_DOORS,
    LIBRARY_HOMES,
    RULES,
    Graph,
    build_graph,
    check_doors,
    check_layers,
    within,
)

PACKAGE = Path(__file__).resolve().parents[1] / "pipeline"


@pytest.fixture(scope="module")
def real() -> Graph:
    return build_graph(PACKAGE)


def planted(graph: Graph, module: str, target: str) -> Graph:
    """A copy of ``graph`` with one more import (``module`` may be new)."""
    copy = {name: set(targets) for name, targets in graph.items()}
    copy.setdefault(module, set()).add(target)
    return copy


@pytest.mark.parametrize("rule", sorted(RULES))
def test_the_real_tree_keeps_the_rule(real: Graph, rule: str) -> None:
    violations = RULES[rule](real)
    assert not violations, "\n".join(violations)


PLANTS = [
    # rule, importer, imported, what the message must say
    (
        "layers",
        "pipeline.dataset.export",
        "pipeline.http",
        "pipeline/dataset/export.py imports pipeline.http (layer http) but dataset may "
        "import only core, support, manifest|outputs|completion",
    ),
    (
        "layers",
        "pipeline.matrix",
        "pipeline.runner.scheduler",
        "pipeline/matrix.py imports pipeline.runner.scheduler (layer runner) but matrix is "
        "core: core may import only core",
    ),
    (
        "layers",
        "pipeline.errors",
        "pipeline.fsio",
        "pipeline/errors.py imports pipeline.fsio (layer support) but errors is core",
    ),
    (
        "layers",
        "pipeline.retry",
        "pipeline.http",
        "pipeline/retry.py imports pipeline.http (layer http) but retry is support",
    ),
    (
        "layers",
        "pipeline.providers.pixai",
        "pipeline.runner.session",
        "pipeline/providers/pixai.py imports pipeline.runner.session (layer runner) but "
        "providers may import only core, support, http, providers",
    ),
    (
        "layers",
        "pipeline.providers.acedata",
        "pipeline.outputs",
        "pipeline/providers/acedata.py imports pipeline.outputs (layer "
        "manifest|outputs|completion) but providers may import only",
    ),
    (
        "layers",
        "pipeline.manifest.store",
        "pipeline.outputs",
        "pipeline/manifest/store.py imports pipeline.outputs (layer "
        "manifest|outputs|completion) but manifest may import only core, support",
    ),
    (
        "layers",
        "pipeline.manifest.rows",
        "pipeline.providers.base",
        "pipeline/manifest/rows.py imports pipeline.providers.base (layer providers) but "
        "manifest may import only core, support",
    ),
    (
        "layers",
        "pipeline.completion.poll",
        "pipeline.outputs",
        "pipeline/completion/poll.py imports pipeline.outputs (layer "
        "manifest|outputs|completion) but completion and outputs are siblings: neither may "
        "import the other",
    ),
    (
        "layers",
        "pipeline.outputs.fetch",
        "pipeline.manifest",
        "pipeline/outputs/fetch.py imports pipeline.manifest (layer "
        "manifest|outputs|completion) but outputs and manifest are siblings",
    ),
    (
        "layers",
        "pipeline.review.sheet",
        "pipeline.runner",
        "pipeline/review/sheet.py imports pipeline.runner (layer runner) but review may "
        "import only core, support, manifest|outputs|completion",
    ),
    (
        "layers",
        "pipeline.manifest.store",
        "pipeline.review",
        "pipeline/manifest/store.py imports pipeline.review (layer dataset|review) but manifest",
    ),
    (
        "layers",
        "pipeline.review.sheet",
        "pipeline.dataset",
        "imports pipeline.dataset (layer dataset|review) but review may import only core",
    ),
    (
        "doors",
        "pipeline.commands",
        "pipeline.review.page",
        "pipeline/commands.py imports pipeline.review.page, inside the review room: "
        "outside it import pipeline.review",
    ),
    (
        "layers",
        "pipeline.runner.scheduler",
        "pipeline.commands",
        "pipeline/runner/scheduler.py imports pipeline.commands (layer commands) but runner",
    ),
    (
        "layers",
        "pipeline.commands",
        "pipeline.cli",
        "pipeline/commands.py imports pipeline.cli (layer cli) but commands may import only",
    ),
    (
        "layers",
        "pipeline.outputs.fetch",
        "pipeline",
        "pipeline/outputs/fetch.py imports pipeline (layer library API) but outputs is "
        "manifest|outputs|completion: manifest|outputs|completion may import only core, "
        "support, http, providers, manifest|outputs|completion",
    ),
    (
        "pure core",
        "pipeline.prompts",
        "anyio",
        "pipeline/matrix.py is core but reaches the I/O library anyio: "
        "pipeline.matrix → pipeline.prompts → anyio",
    ),
    (
        "pure core",
        "pipeline.units",
        "httpx",
        "pipeline/spec/__init__.py is core but reaches the I/O library httpx: "
        "pipeline.spec → pipeline.spec.load → pipeline.units → httpx",
    ),
    (
        "pure core",
        "pipeline.redact",
        "pipeline.limits",
        "pipeline/errors.py is core but reaches pipeline.limits (layer support): "
        "pipeline.errors → pipeline.redact → pipeline.limits",
    ),
    (
        "pure core",
        "pipeline.spec.source",
        "sqlite3",
        "pipeline/spec/source.py is core but reaches the I/O library sqlite3",
    ),
    (
        "doors",
        "pipeline.commands",
        "pipeline.manifest.store",
        "pipeline/commands.py imports pipeline.manifest.store, inside the manifest room: "
        "outside it import pipeline.manifest",
    ),
    (
        "doors",
        "pipeline.runner.scheduler",
        "pipeline.outputs.download",
        "pipeline/runner/scheduler.py imports pipeline.outputs.download, inside the outputs room",
    ),
    (
        "doors",
        "pipeline.cli",
        "pipeline.spec.load",
        "pipeline/cli.py imports pipeline.spec.load, inside the spec room",
    ),
    (
        "doors",
        "pipeline.outputs.download",
        "pipeline.http.client",
        "pipeline/outputs/download.py imports pipeline.http.client, inside the http room",
    ),
    (
        "doors",
        "pipeline.runner.session",
        "pipeline.completion.poll",
        "pipeline/runner/session.py imports pipeline.completion.poll, inside the completion",
    ),
    (
        "doors",
        "pipeline.runner.session",
        "pipeline.providers.pixai",
        "pipeline/runner/session.py imports pipeline.providers.pixai, inside the providers "
        "room: outside it import pipeline.providers or pipeline.providers.base or "
        "pipeline.providers.registry",
    ),
    (
        "doors",
        "pipeline.commands",
        "pipeline.runner.progress",
        "pipeline/commands.py imports pipeline.runner.progress, inside the runner room",
    ),
    (
        "libraries",
        "pipeline.limits",
        "tqdm",
        "pipeline/limits.py imports tqdm, which lives only in pipeline.runner.progress",
    ),
    (
        "libraries",
        "pipeline.runner.scheduler",
        "tqdm.auto",
        "pipeline/runner/scheduler.py imports tqdm, which lives only in",
    ),
    (
        "libraries",
        "pipeline.spec.load",
        "yaml",
        "pipeline/spec/load.py imports yaml, which lives only in pipeline.spec.source",
    ),
    (
        "libraries",
        "pipeline.runner.session",
        "pydantic",
        "pipeline/runner/session.py imports pydantic, which lives only in pipeline.spec",
    ),
    (
        "libraries",
        "pipeline.outputs.fetch",
        "sqlite3",
        "pipeline/outputs/fetch.py imports sqlite3, which lives only in pipeline.manifest, "
        "pipeline.emulators.persist",
    ),
    (
        "libraries",
        "pipeline.manifest.postgres",
        "psycopg_binary",
        "pipeline/manifest/postgres.py imports psycopg_binary, which has no room",
    ),
    (
        "libraries",
        "pipeline.providers.pixai",
        "aiohttp",
        "pipeline/providers/pixai.py imports aiohttp, which lives only in pipeline.http,",
    ),
    (
        "libraries",
        "pipeline.completion.poll",
        "aiohttp.web",
        "pipeline/completion/poll.py imports aiohttp, which lives only in",
    ),
    (
        "libraries",
        "pipeline.outputs.download",
        "yarl",
        "pipeline/outputs/download.py imports yarl, which lives only in pipeline.http.transport",
    ),
    (
        "libraries",
        "pipeline.runner.scheduler",
        "httpx",
        "pipeline/runner/scheduler.py imports httpx, which lives only in",
    ),
    (
        "libraries",
        "pipeline.providers.base",
        "anyio",
        "pipeline/providers/base.py imports anyio, which lives only in",
    ),
    (
        "libraries",
        "pipeline.commands",
        "PIL.Image",
        "pipeline/commands.py imports PIL, which lives only in pipeline.emulators",
    ),
    (
        "libraries",
        "pipeline.outputs.durable",
        "aiofiles",
        "pipeline/outputs/durable.py imports aiofiles, which has no room",
    ),
    (
        "libraries",
        "pipeline.emulators.app",
        "requests",
        "pipeline/emulators/app.py imports requests, which has no room",
    ),
    (
        "emulators",
        "pipeline.emulators.pixai",
        "pipeline.models",
        "pipeline/emulators/pixai.py imports pipeline.models, but the emulators are a "
        "separate world: of pipeline they import only pipeline.errors",
    ),
    (
        "emulators",
        "pipeline.emulators.app",
        "pipeline.http",
        "pipeline/emulators/app.py imports pipeline.http, but the emulators are a separate",
    ),
    (
        "emulators",
        "pipeline.outputs.download",
        "pipeline.emulators",
        "pipeline/outputs/download.py imports pipeline.emulators; outside the emulators only",
    ),
    (
        "emulators",
        "pipeline.commands",
        "pipeline.emulators.server",
        "pipeline/commands.py imports pipeline.emulators.server; outside the emulators only",
    ),
    (
        "emulators",
        "pipeline.emulators.knobs",
        "pipeline.emulators.render",
        "pipeline/emulators/knobs.py must need only the standard library (it is read "
        "without the emulators extra) but reaches PIL: pipeline.emulators.knobs → "
        "pipeline.emulators.render → PIL",
    ),
    (
        "placed",
        "pipeline.cache",
        "pipeline.errors",
        "pipeline/cache.py is in no layer",
    ),
]


@pytest.mark.parametrize(
    ("rule", "module", "target", "message"),
    PLANTS,
    ids=[f"{rule}: {module} -> {target}" for rule, module, target, _ in PLANTS],
)
def test_the_rule_catches_a_planted_import(
    real: Graph, rule: str, module: str, target: str, message: str
) -> None:
    violations = RULES[rule](planted(real, module, target))
    assert any(message in violation for violation in violations), "\n".join(violations)


def test_every_rule_has_a_plant_it_catches() -> None:
    assert {rule for rule, *_ in PLANTS} == set(RULES)


def test_library_homes_are_as_narrow_as_the_code(real: Graph) -> None:
    """A home no module uses widens its rule silently: drop it."""
    stale = [
        f"{library} in {home}"
        for library, homes in LIBRARY_HOMES.items()
        for home in homes
        if not any(
            within(module, home) and any(t.split(".")[0] == library for t in targets)
            for module, targets in real.items()
        )
    ]
    assert not stale, f"unused library homes: {stale}"


def test_emulator_doors_are_as_narrow_as_the_code(real: Graph) -> None:
    stale = [
        f"{module} → {target}"
        for module, targets in EMULATOR_DOORS.items()
        for target in targets
        if target not in real.get(module, set())
    ]
    assert not stale, f"unused emulator doors: {stale}"


# --- the graph builder, on a copy of the real tree with one line added --------------------

SNIPPETS = [
    pytest.param(
        "\n\ndef planted() -> None:\n    from pipeline.runner import scheduler\n",
        "pipeline.runner.scheduler",
        id="lazy import inside a function",
    ),
    pytest.param("\nfrom pipeline import runner\n", "pipeline.runner", id="from pipeline import x"),
    pytest.param(
        "\nimport typing\n\nif typing.TYPE_CHECKING:\n    from pipeline.outputs import Downloads\n",
        "pipeline.outputs",
        id="under TYPE_CHECKING",
    ),
    pytest.param(
        "\n\ndef planted() -> object:\n    import importlib\n\n"
        "    return importlib.import_module('pipeline.completion')\n",
        "pipeline.completion",
        id="importlib.import_module",
    ),
    pytest.param(
        "\nimport pipeline.manifest.store as store\n", "pipeline.manifest.store", id="import a.b.c"
    ),
    pytest.param("\nfrom .runner import session\n", "pipeline.runner.session", id="relative"),
]


def copy_of_package(tmp_path: Path) -> Path:
    root = tmp_path / "pipeline"
    shutil.copytree(PACKAGE, root, ignore=shutil.ignore_patterns("__pycache__"))
    return root


def append(path: Path, text: str) -> None:
    path.write_text(path.read_text(encoding="utf-8") + text, encoding="utf-8")


@pytest.mark.parametrize(("snippet", "target"), SNIPPETS)
def test_the_graph_sees_every_form_of_import(tmp_path: Path, snippet: str, target: str) -> None:
    root = copy_of_package(tmp_path)
    append(root / "matrix.py", snippet)
    violations = check_layers(build_graph(root))
    assert any(v.startswith(f"pipeline/matrix.py imports {target} ") for v in violations), (
        violations
    )


def test_from_a_room_import_tells_a_name_from_a_submodule(tmp_path: Path) -> None:
    """``from pipeline.manifest import recover`` is the function the package re-exports
    (a door); ``from pipeline.providers import pixai`` is the adapter module (not one)."""
    root = copy_of_package(tmp_path)
    append(root / "cli.py", "\nfrom pipeline.manifest import recover\n")
    append(root / "commands.py", "\nfrom pipeline.providers import pixai\n")
    graph = build_graph(root)
    assert "pipeline.manifest" in graph["pipeline.cli"]
    assert "pipeline.manifest.recover" not in graph["pipeline.cli"]
    assert check_doors(graph) == [
        "pipeline/commands.py imports pipeline.providers.pixai, inside the providers room: "
        "outside it import pipeline.providers or pipeline.providers.base or "
        "pipeline.providers.registry"
    ]
