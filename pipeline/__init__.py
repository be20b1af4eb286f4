"""pipeline: run large batches of generative-media jobs declaratively and resumably.

The library API, for notebooks and scripts; each call does what its CLI command does
(same checks, run lock, manifest rules and redaction) and raises a ``PipelineError``
where the CLI would exit with an error::

    import pipeline

    spec = pipeline.load_spec("foxes.yaml")       # or parse_spec(yaml_text_or_dict)
    print(pipeline.plan(spec))                    # `pipeline plan`: nothing is sent
    summary = pipeline.run(spec)                  # `pipeline run`; in Jupyter:
                                                  #   await pipeline.run_async(spec)
    with pipeline.open_manifest(spec) as manifest:  # read-only, safe beside a run
        for record in manifest.iter_records(with_outputs=True):
            print(record.state, [output.path for output in record.outputs])
    pipeline.report(spec)                         # `pipeline report`: a contact sheet
    pipeline.export(spec, format="hf", dest="foxes-ds")  # `pipeline export`: a dataset

Names load on first use (PEP 562), so ``import pipeline`` stays cheap and every
submodule can import the package without pulling in the rest.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
    from contextlib import AbstractContextManager
    from pathlib import Path

    from pipeline.commands import summary_text
    from pipeline.dataset import Exported
    from pipeline.errors import (
        AccountBusy,
        AccountError,
        DownloadError,
        DownloadTooLarge,
        ExportError,
        FinalError,
        ManifestDamaged,
        ManifestError,
        PipelineError,
        PluginError,
        PluginWarning,
        ProviderError,
        RateLimited,
        ResponseTooLarge,
        RunLocked,
        SpecError,
        SubmitRefused,
        SubmitUnknown,
        TransientError,
        UsageError,
        VerificationError,
    )
    from pipeline.manifest import Manifest
    from pipeline.models import (
        Job,
        JobRecord,
        JobState,
        Output,
        OutputSettings,
        ProviderSettings,
        RunSettings,
        Spec,
    )
    from pipeline.runner import RunSummary

    PathLike = str | os.PathLike[str]

__version__ = "0.1.0"

__all__ = [
    "AccountBusy",
    "AccountError",
    "DownloadError",
    "DownloadTooLarge",
    "ExportError",
    "Exported",
    "FinalError",
    "Job",
    "JobRecord",
    "JobState",
    "Manifest",
    "ManifestDamaged",
    "ManifestError",
    "Output",
    "OutputSettings",
    "PipelineError",
    "Plan",
    "PluginError",
    "PluginWarning",
    "ProviderError",
    "ProviderSettings",
    "RateLimited",
    "ResponseTooLarge",
    "RunLocked",
    "RunSettings",
    "RunSummary",
    "Spec",
    "SpecError",
    "SubmitRefused",
    "SubmitUnknown",
    "TransientError",
    "UsageError",
    "VerificationError",
    "__version__",
    "export",
    "load_spec",
    "open_manifest",
    "parse_spec",
    "plan",
    "report",
    "run",
    "run_async",
    "status",
    "summary_text",
]

_EXPORTS: dict[str, tuple[str, ...]] = {
    "pipeline.errors": (
        "AccountBusy", "AccountError", "DownloadError", "DownloadTooLarge", "ExportError",
        "FinalError",
        "ManifestDamaged", "ManifestError", "PipelineError", "PluginError", "PluginWarning",
        "ProviderError",
        "RateLimited",
        "ResponseTooLarge", "RunLocked", "SpecError", "SubmitRefused",
        "SubmitUnknown", "TransientError", "UsageError", "VerificationError",
    ),
    "pipeline.models": (
        "Job", "JobRecord", "JobState", "Output", "OutputSettings", "ProviderSettings",
        "RunSettings", "Spec",
    ),
    "pipeline.manifest": ("Manifest",),
    "pipeline.dataset": ("Exported",),
    "pipeline.runner": ("RunSummary",),
    "pipeline.commands": ("summary_text",),
}  # fmt: skip
_LAZY = {name: module for module, names in _EXPORTS.items() for name in names}


if not TYPE_CHECKING:  # type checkers see the imports above, and flag any other name

    def __getattr__(name: str) -> Any:
        """The models, errors and helpers above, imported when first asked for."""
        module = _LAZY.get(name)
        if module is None:
            raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
        from importlib import import_module

        value = getattr(import_module(module), name)
        globals()[name] = value
        return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


# -- spec --------------------------------------------------------------------------------


def load_spec(
    path: PathLike, *, out: PathLike | None = None, env: Mapping[str, str] | None = None
) -> Spec:
    """Load and check the spec file at ``path``, every job's parameters included, as
    ``pipeline validate`` does. ``out`` overrides ``output.root``; ``${VAR}``s come from
    ``env`` (default: ``os.environ``). Its API keys are redacted from then on. An unset
    ``${VAR}`` is no error here unless it changes the jobs: ``Spec.unset_env`` names it,
    ``plan`` works without it, and ``run`` refuses the spec until it is set."""
    from pathlib import Path

    from pipeline.commands import load_checked_spec

    return load_checked_spec(Path(path), out=_path_or_none(out), env=env, require_env=False)


def parse_spec(
    content: str | Mapping[str, Any],
    *,
    path: PathLike = "spec.yaml",
    out: PathLike | None = None,
    env: Mapping[str, str] | None = None,
) -> Spec:
    """``load_spec`` for a spec given as YAML text or as its data (a dict). ``path`` is
    where it would live: relative prompt files are read beside it, errors name it, its
    stem is the default name, and the output folder records it as its owner — keep it
    the same across reruns of one spec."""
    from pathlib import Path

    from pipeline.commands import load_checked_spec

    return load_checked_spec(
        Path(path), out=_path_or_none(out), env=env, content=content, require_env=False
    )


def _path_or_none(path: PathLike | None) -> Path | None:
    from pathlib import Path

    return None if path is None else Path(path)


def _spec_of(spec: Spec | PathLike, *, check_jobs: bool = True, require_env: bool = True) -> Spec:
    if isinstance(spec, str | os.PathLike):
        from pathlib import Path

        from pipeline.commands import load_checked_spec

        return load_checked_spec(Path(spec), check_jobs=check_jobs, require_env=require_env)
    return spec


# -- plan --------------------------------------------------------------------------------


class Plan:
    """What a spec expands to; nothing is sent. ``str(plan)`` is ``pipeline plan``'s text."""

    __slots__ = ("duplicates", "per_provider", "spec")

    def __init__(self, spec: Spec, per_provider: dict[str, int], duplicates: int) -> None:
        self.spec = spec
        self.per_provider = per_provider  # distinct jobs per provider: what a run submits
        self.duplicates = duplicates  # jobs the spec lists more than once, merged

    @property
    def total(self) -> int:
        return sum(self.per_provider.values())

    def jobs(self) -> Iterator[Job]:
        """Each distinct job once, in run order, streamed (only the ids seen are kept)."""
        from pipeline.matrix import iter_jobs

        seen: set[str] = set()
        for job in iter_jobs(self.spec):
            if job.id not in seen:
                seen.add(job.id)
                yield job

    def lines(self, *, show: int = 3) -> Iterator[str]:
        """``pipeline plan --show N``: counts, and the first ``show`` requests per provider."""
        from pipeline.commands import plan_text

        return plan_text(self.spec, show=show)

    def __str__(self) -> str:
        return "\n".join(self.lines())

    def __repr__(self) -> str:
        return f"Plan({self.spec.name!r}, total={self.total}, per_provider={self.per_provider})"


def plan(spec: Spec | PathLike) -> Plan:
    """The jobs of ``spec`` (a Spec, or a spec file, loaded as ``pipeline plan`` does)."""
    from pipeline.matrix import count_unique_jobs

    spec = _spec_of(spec, require_env=False)
    count = count_unique_jobs(spec)
    return Plan(spec, count.per_provider, count.duplicates)


# -- run ---------------------------------------------------------------------------------


def run(
    spec: Spec | PathLike,
    *,
    quiet: bool = False,
    retry_failed: bool = False,
    resubmit_unknown: bool = False,
    adopt: bool = False,
    handle_signals: bool | None = None,
) -> RunSummary:
    """Run (or resume) ``spec`` as ``pipeline run`` does and return its summary
    (``summary_text(spec, summary)`` is the CLI's closing report). Blocks until done.

    Not inside a running event loop (Jupyter has one): there, ``await run_async(spec)``.
    ``handle_signals`` (default: on the main thread) makes Ctrl-C or SIGTERM end the run
    cleanly, with ``summary.interrupted`` set, instead of raising KeyboardInterrupt."""
    from functools import partial

    from pipeline.commands import run_blocking

    return run_blocking(
        partial(
            run_async,
            spec,
            quiet=quiet,
            retry_failed=retry_failed,
            resubmit_unknown=resubmit_unknown,
            adopt=adopt,
            handle_signals=handle_signals,
        )
    )


async def run_async(
    spec: Spec | PathLike,
    *,
    quiet: bool = False,
    retry_failed: bool = False,
    resubmit_unknown: bool = False,
    adopt: bool = False,
    handle_signals: bool | None = None,
) -> RunSummary:
    """``run`` for a running event loop (asyncio or trio): ``await pipeline.run_async(spec)``
    in a notebook cell or an async program. Same arguments; pass ``handle_signals=False``
    when your program handles SIGINT and SIGTERM itself."""
    from pipeline.commands import run_spec_async
    from pipeline.errors import only_pipeline_errors

    checked = _spec_of(spec, check_jobs=False)  # the run checks them, as `pipeline run`
    if handle_signals is None:
        import threading

        handle_signals = threading.current_thread() is threading.main_thread()
    try:
        return await run_spec_async(
            checked,
            quiet=quiet,
            retry_failed=retry_failed,
            resubmit_unknown=resubmit_unknown,
            adopt=adopt,
            params_checked=False,
            handle_signals=handle_signals,
        )
    except BaseExceptionGroup as group:  # raised in a task group of the run
        error = only_pipeline_errors(group)
        if error is None:
            raise
        raise error from group


# -- results -----------------------------------------------------------------------------


def open_manifest(target: Spec | PathLike) -> AbstractContextManager[Manifest]:
    """The manifest of an output folder, a spec file's or a Spec's, opened read-only
    (safe while a run writes); use it in a ``with`` block. ``iter_records``, ``get``,
    ``counts``, ``failures``, ``events`` and ``export_jsonl`` read it; after
    ``limit_to_spec()`` the bulk reads see only the jobs of the spec's last run."""
    from pathlib import Path

    from pipeline.commands import open_manifest_for

    if isinstance(target, str | os.PathLike):
        return open_manifest_for(Path(target))
    return open_manifest_for(target.output.root)


def status(target: Spec | PathLike, *, failures: int = 50) -> dict[str, Any]:
    """``pipeline status --json``: counts per provider and state of the spec's jobs, up
    to ``failures`` failed jobs with their (redacted) reasons, and the jobs it no
    longer lists apart, under ``not_in_spec``."""
    from pipeline.commands import status_report

    with open_manifest(target) as manifest:
        return status_report(manifest, failures=failures)


def report(
    target: Spec | PathLike,
    *,
    dest: PathLike | None = None,
    rows: str = "prompt",
    cols: str = "provider",
    states: Collection[JobState | str] | None = None,
) -> Path:
    """``pipeline report``: write the contact sheet of an output folder (a spec file's or
    a Spec's) as one static HTML page, by default ``<root>/report.html``, and return its
    path. ``rows`` and ``cols`` name the grid's dimensions: ``prompt``, ``provider``,
    ``model``, ``seed``, ``replicate``, ``state``, any parameter, or ``meta.KEY``;
    ``states`` keeps only jobs in those states. A dimension no job has raises
    ``UsageError``."""
    from pathlib import Path

    from pipeline.commands import report_sheet
    from pipeline.models import JobState

    root = Path(target) if isinstance(target, str | os.PathLike) else target.output.root
    chosen = None if states is None else [JobState(state) for state in states]
    return report_sheet(root, _path_or_none(dest), rows=rows, cols=cols, states=chosen)


def export(
    target: Spec | PathLike,
    *,
    format: str,
    dest: PathLike | TextIO,
    states: Iterable[str] | None = None,
    columns: Sequence[str] | None = None,
    force: bool = False,
) -> Exported:
    """``pipeline export``: the outputs of an output folder (a spec file's, a Spec's) as
    ``format`` ``hf`` (a folder `datasets.load_dataset` reads), ``csv``, ``parquet``
    (needs pyarrow) or ``jsonl`` (the manifest as it is), written to ``dest`` (a path;
    a text stream for csv and jsonl). One row per output file of the jobs in ``states``
    (default ``["done"]``; ``"all"``), with ``columns`` (default: every one that is
    ever set). An ``hf`` folder replaces only an earlier export, unless ``force``."""
    from pathlib import Path

    from pipeline.commands import export_to

    where = Path(target) if isinstance(target, str | os.PathLike) else target.output.root
    out = Path(dest) if isinstance(dest, str | os.PathLike) else dest
    return export_to(where, format=format, dest=out, states=states, columns=columns, force=force)
