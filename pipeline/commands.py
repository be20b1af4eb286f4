"""What the CLI's commands do, kept apart from argument parsing so tests can call them."""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import json
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO, TypeVar

import anyio

from pipeline import __version__
from pipeline.completion import wants_callbacks
from pipeline.cost import Costs, plan_lines, spending_lines, spent_on
from pipeline.errors import ManifestError, PipelineError, SpecError, UsageError
from pipeline.manifest import (
    Manifest,
    Pruned,
    adopt_unrecorded,
    has_manifest,
    hold_run_lock,
    is_database_url,
    open_folder,
    open_run,
)
from pipeline.matrix import count_unique_jobs, iter_jobs, iter_param_sets, job_params, job_seeds
from pipeline.models import (
    TERMINAL_STATES,
    JobState,
    PromptFile,
    PromptSource,
    Rate,
    Spec,
    TemplatePrompt,
)
from pipeline.providers import registry
from pipeline.providers.base import COMMON_OPTIONS, OptionInfo, Provider
from pipeline.redact import register_secrets, scrub
from pipeline.runner import (
    BUDGET_STOPPED,
    Cancelled,
    ProgressOptions,
    RunOptions,
    RunSummary,
    Scheduler,
    cancel_jobs,
    completion_mode,
    emulators,
)
from pipeline.units import parse_duration

if TYPE_CHECKING:
    from pipeline.dataset import Exported

__all__ = [
    "cancel_target",
    "cancel_text",
    "check_params",
    "failure_lines",
    "init_spec",
    "load_checked_spec",
    "manifest_copy_text",
    "needed_env",
    "open_manifest_for",
    "parse_knobs",
    "plan_text",
    "prune_spec",
    "recover_text",
    "report_sheet",
    "require_env",
    "run_blocking",
    "run_spec",
    "run_spec_async",
    "schema_text",
    "status_of",
    "status_report",
    "summary_text",
]

T = TypeVar("T")


def load_checked_spec(
    path: Path,
    *,
    out: Path | None = None,
    manifest: str | None = None,
    env: Mapping[str, str] | None = None,
    check_jobs: bool = True,
    content: str | Mapping[str, Any] | None = None,
    require_env: bool = True,
) -> Spec:
    """Load and validate a spec, including (unless ``check_jobs`` is False) every job's
    parameters against its API; the provider options are always checked. ``content``:
    the spec's YAML text or data, when it is not read from ``path``. ``require_env=False``
    (plan, validate): unset ``${VAR}``s outside the jobs stay as written, ``needed_env``
    names them, and a run refuses the spec. ``manifest``: a PostgreSQL URL replacing the
    spec's ``manifest`` (``run --manifest``)."""
    from pipeline.spec import load_spec

    spec = load_spec(
        path,
        known_providers=registry.known(),
        env=env,
        content=content,
        require_env=require_env,
    )
    register_secrets(s.api_key for s in spec.providers.values() if not _unexpanded(s.api_key))
    if out is not None:
        spec = replace(spec, output=replace(spec.output, root=out.expanduser().absolute()))
    if manifest is not None:
        if not is_database_url(manifest):
            raise UsageError(
                f"--manifest must be a PostgreSQL URL (postgresql://user@host/db), got "
                f"{manifest!r}; leave it out to keep the manifest in the output root"
            )
        spec = replace(spec, manifest=manifest)
    if check_jobs:
        check_params(spec)
    else:
        check_options(spec)
    registry.warn_unloadable()  # its own plugins loaded: the others do not matter
    return spec


def _unexpanded(value: str | None) -> bool:
    return value is not None and "${" in value


def needed_env(spec: Spec) -> str | None:
    """``run needs: A, B (not set)`` for a spec loaded without its ``${VAR}``s."""
    if not spec.unset_env:
        return None
    return f"run needs: {', '.join(sorted(spec.unset_env))} (not set)"


def require_env(spec: Spec) -> None:
    """A run needs every ``${VAR}`` of its spec: the first unset one is a SpecError."""
    for name, path in spec.unset_env.items():
        raise spec_error(
            spec, f"environment variable {name} is not set", path, f"export {name}=... first"
        )


def check_params(spec: Spec) -> None:
    """Check every job against its API's documented parameters: each prompt on its own,
    and each distinct combination of the other parameters (model included) once.

    Walks prompt × matrix cell (``iter_param_sets``), not the jobs: the seeds of a new
    combination are checked then, and no job id is computed."""
    check_options(spec)
    seeds = job_seeds(spec)
    seen: set[tuple[str, str]] = set()
    found: dict[tuple[str, str], SpecError] = {}
    for provider, prompt, merged in iter_param_sets(spec):
        settings = spec.providers[provider]
        adapter = registry.get(settings.type)
        _add_problems(found, spec, provider, adapter.validate_prompt(prompt.text))
        signature = (provider, json.dumps(merged, sort_keys=True, default=str))
        if signature in seen:
            continue
        seen.add(signature)
        for seed in seeds:
            params, model = job_params(merged, seed, prompt.text)
            del params["prompt"]
            if model is not None:
                params["model"] = model
            undeclared = adapter.undeclared_params(params, settings.pass_through)
            _add_problems(found, spec, provider, undeclared, _undeclared_hint(spec, provider))
            _add_problems(found, spec, provider, adapter.validate_params(params))
    if found:
        from pipeline.spec import combined

        raise combined(list(found.values()))


def _undeclared_hint(spec: Spec, provider: str) -> str:
    api = spec.providers[provider].type
    return (
        f"`pipeline providers` lists what {api} takes; a value that is not for the API "
        "belongs in a prompt's `meta:`; one the API does take (e.g. a model's own input) "
        f"can be listed under providers.{provider}.pass_through"
    )


def _add_problems(
    found: dict[tuple[str, str], SpecError],
    spec: Spec,
    provider: str,
    problems: Sequence[tuple[str, str]],
    hint: str | None = None,
) -> None:
    """Each problem once (by where and what), so a spec's mistakes are all shown."""
    settings = spec.providers[provider]
    for key, message in problems:
        error = spec_error(
            spec,
            f"{message} (provider {provider!r}, type {settings.type})",
            _param_origin(spec, provider, key),
            hint=hint or f"see `pipeline providers` for what {settings.type} accepts",
        )
        found.setdefault((error.path or "", error.message), error)


def check_options(spec: Spec) -> None:
    """Each provider's ``options``: known names, values of the right kind, a completion
    mode the API offers, and whatever the adapter itself checks when it is built. Every
    provider is checked; their problems are shown together."""
    problems: list[SpecError] = []
    for name in spec.providers:
        try:
            _check_provider_options(spec, name)
        except SpecError as exc:
            problems.extend((exc, *exc.more))
    if problems:
        from pipeline.spec import combined

        raise combined(problems)


def _check_provider_options(spec: Spec, name: str) -> None:
    settings = spec.providers[name]
    adapter = registry.get(settings.type)
    known = {**COMMON_OPTIONS, **adapter.options}
    for key, value in settings.options.items():
        at = ("providers", name, "options", key)
        if key not in known:
            allowed = ", ".join(sorted(known))
            close = difflib.get_close_matches(key, list(known), n=1)
            guess = f"; did you mean {close[0]!r}?" if close else ""
            raise spec_error(
                spec, f"unknown option {key!r}{guess}; {settings.type} knows: {allowed}", at
            )
        problem = _option_problem(known[key], value)
        if problem:
            raise spec_error(spec, problem, at)
    mode = completion_mode(settings, adapter)
    if mode not in adapter.completion_modes:
        raise spec_error(
            spec,
            f"{settings.type} cannot complete by {mode!r}; it offers "
            + ", ".join(adapter.completion_modes),
            ("providers", name, "options", "completion"),
        )
    try:
        adapter(settings)
    except SpecError as exc:
        raise spec_error(spec, exc.message, ("providers", name, "options"), exc.hint) from None
    _check_emulator(spec, name)
    _check_callback_scheme(spec, name, adapter, mode)


def _check_emulator(spec: Spec, name: str) -> None:
    """``emulate:``: the type has an emulator (built in, or a plugin's ``pipeline.emulators``
    entry point), and each knob is one emulators take, with a value they accept. The
    emulators are imported only when a spec asks for one; without their extra that is a
    spec error here, not an ImportError."""
    settings = spec.providers[name]
    if settings.emulate is None:
        return
    at: tuple[str | int, ...] = ("providers", name, "emulate")
    try:
        available: list[str] = emulators().emulator_names()
    except PipelineError as exc:
        raise spec_error(spec, str(exc), at) from None
    if settings.type not in available:
        raise spec_error(
            spec,
            f"no emulator for {settings.type}; emulators exist for: {', '.join(available)}",
            at,
            hint="drop emulate: to use the real API; a plugin ships an emulator under the "
            "pipeline.emulators entry point group (docs/providers.md)",
        )
    emulators().emulator_factory(settings.type)  # a plugin's that cannot load: PluginError
    _check_knobs(spec, at, settings.emulate)


def _check_knobs(spec: Spec, at: tuple[str | int, ...], knobs: Mapping[str, Any]) -> None:
    """Each knob checked as the emulator will: every emulator takes the shared ``Knobs``."""
    import dataclasses
    import difflib

    from pipeline.emulators.knobs import Knobs

    known = [field.name for field in dataclasses.fields(Knobs)]
    for key, value in knobs.items():
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            guess = f"; did you mean {close[0]!r}?" if close else ""
            raise spec_error(
                spec,
                f"unknown emulator knob {key!r}{guess}",
                (*at, key),
                "knobs: " + ", ".join(known),
            )
        try:
            Knobs.from_mapping({key: value})
        except ValueError as exc:
            raise spec_error(spec, str(exc), (*at, key)) from None


def _check_callback_scheme(spec: Spec, name: str, adapter: type[Provider], mode: str) -> None:
    """An API that takes only HTTPS callback URLs (APIXO's docs) must be given one when
    the real API is used; emulators, and an API reached over plain http, accept http."""
    settings = spec.providers[name]
    base_url = settings.base_url or adapter.default_base_url
    if (
        not adapter.https_callbacks_only
        or settings.emulate is not None
        or not base_url.startswith("https://")
        or not wants_callbacks(mode, adapter)
    ):
        return
    public_url = spec.webhooks.public_url
    if public_url is not None and public_url.startswith("https://"):
        return
    raise spec_error(
        spec,
        f"{adapter.title} accepts only an HTTPS callback_url, and the callbacks would go to "
        + (public_url or "the receiver's own http:// address"),
        ("webhooks", "public_url") if public_url else ("providers", name, "options"),
        hint="set webhooks.public_url to an https:// address that reaches the receiver "
        "(a tunnel or reverse proxy), or use completion: poll",
    )


def _option_problem(info: OptionInfo, value: Any) -> str | None:
    if info.kind == "duration":
        try:
            seconds = parse_duration(value)
        except (TypeError, ValueError) as exc:
            return f"expected a duration such as 90s or 5m: {exc}"
        return None if seconds > 0 else "must be more than 0 seconds"
    if info.kind == "count" and (
        isinstance(value, bool) or not isinstance(value, int) or value < 1
    ):
        return f"expected a whole number of at least 1, got {value!r}"
    return None


def spec_error(
    spec: Spec, message: str, path: tuple[str | int, ...], hint: str | None = None
) -> SpecError:
    """A SpecError for a problem found after loading, pointing at the spec's line."""
    from pipeline.spec import format_path

    return SpecError(
        message, file=str(spec.source), line=spec.line_of(path), path=format_path(path), hint=hint
    )


def _param_origin(spec: Spec, provider: str, key: str) -> tuple[str | int, ...]:
    """Where in the spec ``key`` is most likely set: the provider's params, the matrix, a
    prompt item's params, a JSONL prompt file (its lines set parameters too)."""
    if key in spec.providers[provider].params:
        return ("providers", provider, "params", key)
    if key == "prompt":
        return ("prompts",)
    dimensions = {name for name, _values in spec.matrix.dimensions}
    if key in dimensions or any(key in entry for entry in spec.matrix.include):
        return ("matrix", key)
    for index, source in enumerate(spec.prompts):
        if isinstance(source, TemplatePrompt | PromptFile) and key in source.params:
            return ("prompts", index, "params", key)
    for index, source in enumerate(spec.prompts):
        if isinstance(source, PromptFile) and source.format == "jsonl":
            return ("prompts", index, "file")
    return ("providers", provider)


# -- plan ------------------------------------------------------------------------------


def plan_text(spec: Spec, *, show: int = 3) -> Iterator[str]:
    """Jobs per provider, and the first ``show`` jobs of each in full with the request
    each would send. Nothing is sent."""
    job_count = count_unique_jobs(spec)
    counts = job_count.per_provider
    shown: dict[str, list[str]] = {name: [] for name in spec.providers}
    adapters = {name: registry.get(s.type)(s) for name, s in spec.providers.items()}
    wanted = sum(min(show, n) for n in counts.values())
    seen: set[str] = set()
    for job in iter_jobs(spec) if wanted else ():
        if len(shown[job.provider]) < show and job.id not in seen:
            seen.add(job.id)
            request = adapters[job.provider].build_submit(job)
            meta = json.dumps(dict(job.meta), ensure_ascii=False)
            shown[job.provider].append(
                f"    job {job.id} (replicate {job.replicate})\n"
                f"      params:  {json.dumps(dict(job.params), ensure_ascii=False)}\n"
                + (f"      meta:    {meta} (recorded, not sent)\n" if job.meta else "")
                + f"      request: {request.describe()}"
            )
            if len(seen) == wanted:
                break
    yield f"{spec.name}: {job_count.total} jobs{job_count.merged_note()} → {spec.output.root}"
    for name, count in counts.items():
        settings = spec.providers[name]
        rate = f", rate {_rate_text(settings.rate)}" if settings.rate else ""
        where = (
            "built-in emulator"
            if settings.emulate is not None
            else (settings.base_url or adapters[name].default_base_url)
        )
        yield (
            f"  {name} ({settings.type}): {count} jobs, concurrency "
            f"{settings.concurrency}{rate}, via {where}"
        )
        yield from shown[name]
    yield from _plan_costs(spec)


def _plan_costs(spec: Spec) -> Iterator[str]:
    """The cost of the plan, when the spec gives prices, and what was already spent."""
    costs = Costs.of_spec(spec)
    if costs.priced:
        yield from plan_lines(costs, iter_jobs(spec), _spent_so_far(spec, costs))


def _spent_so_far(spec: Spec, costs: Costs) -> dict[str, Decimal] | None:
    """What the manifest of ``spec``'s output root says was spent; None without one."""
    try:
        with open_spec_manifest(spec, readonly=True) as manifest:
            manifest.limit_to_spec()
            return dict(spent_on(costs, manifest.iter_records()))
    except ManifestError:
        return None


def _rate_text(rate: Rate) -> str:
    units = {1.0: "s", 60.0: "min", 3600.0: "hour"}
    unit = units.get(rate.per_seconds, f"{rate.per_seconds:g}s")
    return f"{rate.count}/{unit}"


# -- run -------------------------------------------------------------------------------


def run_spec(
    spec: Spec,
    *,
    quiet: bool = False,
    retry_failed: bool = False,
    resubmit_unknown: bool = False,
    handle_signals: bool = True,
    params_checked: bool = True,
    adopt: bool = False,
    progress: ProgressOptions | None = None,
) -> RunSummary:
    """Run (or resume) ``spec``: exactly its jobs are submitted; jobs of the manifest it
    no longer lists are left as they are. With ``params_checked=False`` the jobs'
    parameters are checked here first — unless the manifest already holds this exact
    expansion. ``adopt``: take over an output folder another spec file wrote. ``progress``:
    status lines and the run log (default: bars or status lines unless ``quiet``)."""
    return anyio.run(
        partial(
            run_spec_async,
            spec,
            quiet=quiet,
            retry_failed=retry_failed,
            resubmit_unknown=resubmit_unknown,
            handle_signals=handle_signals,
            params_checked=params_checked,
            adopt=adopt,
            progress=progress,
        )
    )


def run_blocking(function: Callable[..., Awaitable[T]], *args: Any) -> T:
    """``anyio.run(function, *args)``, refused with a pointer to the async form inside an
    event loop that is already running (as in Jupyter), where it could not block."""
    try:
        anyio.get_current_task()
    except RuntimeError:
        pass  # no event loop running here: good
    else:
        raise RuntimeError(
            "pipeline.run() blocks, so it cannot run inside a running event loop (as in "
            "Jupyter); use `await pipeline.run_async(spec)` there"
        )
    return anyio.run(function, *args)


async def run_spec_async(
    spec: Spec,
    *,
    quiet: bool = False,
    retry_failed: bool = False,
    resubmit_unknown: bool = False,
    handle_signals: bool = True,
    params_checked: bool = True,
    adopt: bool = False,
    progress: ProgressOptions | None = None,
) -> RunSummary:
    """``run_spec`` in an event loop that is already running (a notebook's, an app's)."""
    options = RunOptions(
        retry_failed=retry_failed, resubmit_unknown=resubmit_unknown, handle_signals=handle_signals
    )
    display = progress or ProgressOptions(quiet=quiet)
    return await _run(spec, options, display, params_checked, adopt)


EXPANSION_KEY = "expansion"
"""Manifest meta key: ``<generation>:<fingerprint>`` of the spec expansion whose jobs are
all in the table, tagged with that generation."""
SPEC_PATH_KEY, SPEC_NAME_KEY = "spec_path", "spec_name"


def expansion_fingerprint(spec: Spec) -> str:
    """A hash of everything the job list depends on (never credentials or URLs): when a
    resumed run finds the same value in the manifest, expanding, checking and inserting
    a million jobs again is skipped. Prompt files count by size and modification time."""
    parts = {
        "pipeline": __version__,
        "name": spec.name,
        "providers": {
            name: {"type": s.type, "params": s.params} for name, s in spec.providers.items()
        },
        "prompts": [_prompt_identity(source) for source in spec.prompts],
        "matrix": {
            "dimensions": spec.matrix.dimensions,
            "include": spec.matrix.include,
            "exclude": spec.matrix.exclude,
        },
        "seeds": _seeds_identity(spec.seeds),
        "repeats": spec.repeats,
    }
    text = json.dumps(parts, sort_keys=True, default=repr, ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


def _prompt_identity(source: PromptSource) -> Any:
    if isinstance(source, PromptFile):
        stat = source.path.stat()
        return [repr(source), stat.st_size, stat.st_mtime_ns]
    return repr(source)


def _seeds_identity(seeds: Sequence[int] | None) -> Any:
    if isinstance(seeds, range):
        return ["range", seeds.start, seeds.stop, seeds.step]
    return None if seeds is None else list(seeds)


def _is_expanded(manifest: Manifest, fingerprint: str) -> bool:
    return manifest.meta().get(EXPANSION_KEY) == f"{manifest.generation}:{fingerprint}"


def _stored_expansion(spec: Spec, fingerprint: str) -> bool:
    try:
        with open_spec_manifest(spec, readonly=True) as manifest:
            return _is_expanded(manifest, fingerprint)
    except ManifestError:
        return False


def open_spec_manifest(spec: Spec, *, readonly: bool = False) -> Manifest:
    """``spec``'s manifest: in the database its ``manifest`` URL names (a shared run), or
    in its output root."""
    return open_run(spec.output.root, url=spec.manifest, run=spec.name, readonly=readonly)


@contextmanager
def _open_for_spec(
    spec: Spec, *, adopt: bool, fingerprint: str, what: str = "pipeline run"
) -> Iterator[Manifest]:
    """The manifest of ``spec``'s output root, refused if another spec file owns it, with
    exactly the spec's jobs in its current generation and bulk reads limited to them.

    A fingerprint match skips listing the jobs again (a million-job resume stays fast).
    A shared run (PostgreSQL) takes no output-root lock: any number of runners work on
    it, and its jobs are listed by one of them at a time (``Manifest.exclusive``)."""
    shared = spec.manifest is not None
    with contextlib.ExitStack() as stack:
        if not shared:  # one run per output root, before any write
            stack.enter_context(hold_run_lock(spec.output.root, what=what))
        manifest = stack.enter_context(open_spec_manifest(spec))
        with manifest.exclusive():
            _check_owner(spec, manifest.meta(), adopt=adopt or shared)
            manifest.set_meta(SPEC_NAME_KEY, spec.name)
            manifest.set_meta(SPEC_PATH_KEY, _spec_identity(spec))
            if not _is_expanded(manifest, fingerprint):
                generation = manifest.begin_generation()  # an expansion cut short never matches
                manifest.add_jobs(iter_jobs(spec))
                manifest.set_meta(EXPANSION_KEY, f"{generation}:{fingerprint}")
        manifest.limit_to_spec()
        yield manifest


def _spec_identity(spec: Spec) -> str:
    return str(spec.source.resolve())


def _check_owner(spec: Spec, meta: Mapping[str, str], *, adopt: bool) -> None:
    """Refuse to mix the jobs of two spec files in one manifest; editing one is fine."""
    owner, owner_name = meta.get(SPEC_PATH_KEY), meta.get(SPEC_NAME_KEY)
    if adopt or owner == _spec_identity(spec):
        return
    if owner is None and owner_name in (None, spec.name):
        return  # a new folder, or one written before spec files were recorded
    holder = owner if owner is not None else f"a spec named {owner_name!r}"
    raise SpecError(
        f"output folder {spec.output.root} holds the jobs of {holder}; running this spec "
        "there would mix two specs' jobs in one manifest",
        file=str(spec.source),
        hint="give this spec its own folder (--out DIR, or output.root), or rerun with "
        "--adopt if it replaces that spec (jobs it does not list are then kept apart)",
    )


async def _run(
    spec: Spec, options: RunOptions, display: ProgressOptions, params_checked: bool, adopt: bool
) -> RunSummary:
    from pipeline.runner import HintRelay, make_progress, open_session

    require_env(spec)
    fingerprint = expansion_fingerprint(spec)
    if not params_checked and not _stored_expansion(spec, fingerprint):
        check_params(spec)  # before anything is written
    with _open_for_spec(spec, adopt=adopt, fingerprint=fingerprint) as manifest:
        summary: RunSummary | None = None
        try:
            adopt_unrecorded(manifest)  # paid tasks a failed write left unrecorded
            hints = manifest if isinstance(manifest, HintRelay) else None  # a shared run
            async with open_session(spec, hints=hints) as session:
                scheduler = Scheduler(
                    spec,
                    manifest,
                    session,
                    options=options,
                    progress=make_progress(options=display),
                )
                summary = await scheduler.run()
        except Exception:
            if manifest.write_failure is None:
                raise
        if manifest.write_failure is not None:  # whatever else it caused on the way out
            raise _write_stopped(manifest)
        assert summary is not None
        summary.outside_spec = manifest.outside_spec_counts()
        return summary


def prune_spec(spec: Spec, *, include_paid: bool, delete_files: bool, adopt: bool) -> Pruned:
    """Remove from ``spec``'s manifest the jobs the spec no longer lists (and their files,
    only with ``delete_files``); jobs with a paid, still open remote task stay unless
    ``include_paid``. Nothing is sent to any provider."""
    fingerprint = expansion_fingerprint(spec)
    with _open_for_spec(
        spec, adopt=adopt, fingerprint=fingerprint, what="pipeline prune"
    ) as manifest:
        pruned = manifest.prune(include_paid=include_paid)
        if delete_files:
            _delete_outputs(spec.output.root, pruned.output_paths)
        manifest.write_snapshot()
    return pruned


def cancel_target(
    target: Path, *, providers: Sequence[str] = (), out: Path | None = None
) -> Cancelled:
    """``pipeline cancel``: a spec file, or an output directory whose recorded spec is
    read. Refused while a run holds the output root (its lock): cancel after stopping it."""
    spec = _spec_of_target(target, out=out)
    unknown = [name for name in providers if name not in spec.providers]
    if unknown:
        raise SpecError(
            f"no provider entry {', '.join(unknown)} in the spec",
            file=str(spec.source),
            hint=f"entries: {', '.join(spec.providers)}",
        )
    root = spec.output.root
    if spec.manifest is None and not has_manifest(root):
        raise ManifestError(f"no manifest in {root}: nothing was run there")
    with contextlib.ExitStack() as stack:
        if spec.manifest is None:  # a shared run's runners go on beside a cancel
            stack.enter_context(hold_run_lock(root, what="pipeline cancel"))
        manifest = stack.enter_context(open_spec_manifest(spec))
        _check_owner(spec, manifest.meta(), adopt=spec.manifest is not None)
        manifest.limit_to_spec()
        done = run_blocking(partial(cancel_jobs, spec, manifest, providers=providers))
        manifest.write_snapshot()
    return done


def _spec_of_target(target: Path, *, out: Path | None) -> Spec:
    """The spec of ``target``: the file itself, or the spec recorded in an output folder."""
    if target.is_dir():
        if not has_manifest(target):
            raise ManifestError(f"no manifest in {target}: nothing was run there")
        with open_folder(target) as manifest:
            recorded = manifest.meta().get(SPEC_PATH_KEY)
        if recorded is None or not Path(recorded).is_file():
            raise SpecError(
                f"{target} does not tell which spec file wrote it (or it is gone): "
                f"{recorded or 'not recorded'}",
                hint="give the spec file instead: pipeline cancel SPEC --out DIR",
            )
        target, out = Path(recorded), out or target
    return load_checked_spec(target, out=out, check_jobs=False)


def cancel_text(done: Cancelled) -> Iterator[str]:
    """What ``pipeline cancel`` did, scrubbed of keys (it quotes provider errors)."""
    lines = [f"cancelled {done.pending} job(s) not yet submitted"]
    if done.stopped:
        lines.append(f"stopped {len(done.stopped)} remote task(s) (remote ids kept):")
        lines += [f"  {job} {remote}" for job, remote in sorted(done.stopped.items())]
    if done.kept:
        lines.append(
            f"{len(done.kept)} remote task(s) still running, may still be paid and are "
            "followed by the next run:"
        )
        lines += [f"  {job}: {why}" for job, why in sorted(done.kept.items())]
    if done.left:
        cells = ", ".join(f"{state} {n}" for state, n in sorted(done.left.items()))
        lines.append(f"left as they were: {cells}")
    if done.pending or done.stopped:
        lines.append("`pipeline run SPEC --retry-failed` takes the cancelled jobs up again")
    return map(scrub, lines)


def _delete_outputs(root: Path, paths: Sequence[str]) -> None:
    from pathlib import PurePosixPath

    from pipeline.identity import resolve_inside

    for rel in paths:
        try:
            target = resolve_inside(root, PurePosixPath(rel))
        except ValueError:
            continue  # never delete outside the output root
        for path in (target, target.with_name(target.name + ".json")):
            path.unlink(missing_ok=True)


def _write_stopped(manifest: Manifest) -> ManifestError:
    """The run ended because the manifest could not be written: why, and what to do."""
    failures = manifest.write_failures
    at = datetime.fromtimestamp(failures.first_at or 0, UTC).isoformat()
    lost = ""
    if failures.lost:
        where = failures.fallback or "no file (see the lines above)"
        lost = (
            f" {len(failures.lost)} paid task(s) could not be recorded: their remote ids "
            f"are listed above and in {where}."
        )
    return ManifestError(
        f"a write to {manifest.location} failed ({failures.first}; first failed write at "
        f"{at}): submits stopped in every lane and the run ended.{lost} Free disk space "
        "(or raise the file-size limit), then run again: recorded jobs continue from "
        "their remote ids."
    )


def summary_text(spec: Spec, summary: RunSummary) -> Iterator[str]:
    """The closing report of a run, scrubbed of keys (it quotes provider errors)."""
    return map(scrub, _summary_lines(spec, summary))


def _summary_lines(spec: Spec, summary: RunSummary) -> Iterator[str]:
    total = sum(sum(states.values()) for states in summary.states.values())
    done = summary.count(JobState.DONE)
    if summary.submitted == 0 and not summary.finished and summary.already_done == total:
        yield (
            f"nothing to do: all {total} jobs were already done — nothing submitted. "
            f"Outputs in {spec.output.root}"
        )
        yield from _outside_note(spec, summary)
        return
    head = "interrupted" if summary.interrupted else "finished"
    yield f"{spec.name}: {head} in {summary.elapsed:.1f}s"
    not_done = {state: summary.count(state) for state in JobState if state is not JobState.DONE}
    rest = ", ".join(f"{state.value} {n}" for state, n in not_done.items() if n)
    yield (
        f"  done {done}/{total} ({summary.already_done} already done before this run)"
        f"{'; ' + rest if rest else ''}"
    )
    yield f"  submitted this run: {summary.submitted}"
    if summary.runners:  # a shared run: the lines above are every runner's
        mine = summary.finished["done"]
        others = sum(summary.finished.values()) - mine
        yield (
            f"  this runner: {mine} done{f', {others} not done' if others else ''}; "
            f"run: {done}/{total} done, {summary.runners} "
            f"{'runner' if summary.runners == 1 else 'runners at most at once'}"
        )
    if len(summary.states) > 1:
        width = max(map(len, summary.states))
        for name, states in sorted(summary.states.items()):
            cells = ", ".join(
                f"{state} {n}" for state, n in sorted(states.items(), key=_done_first)
            )
            yield f"    {name:<{width}}  {cells}"
    for name, reason in summary.stopped.items():
        if reason != BUDGET_STOPPED:  # said once, below
            yield f"  {name}: submits stopped: {reason}"
    yield from _spending(spec, summary)
    for note in summary.notes:
        yield f"  {note}"
    if summary.errors:
        yield f"  {len(summary.errors)} job(s) could not go on and will continue next run;"
        yield f"    first: {summary.errors[0]}"
    unknown = summary.count(JobState.UNKNOWN)
    if unknown:
        yield (
            f"  {unknown} job(s) have an unknown submit outcome; check the provider, then "
            f"rerun with --resubmit-unknown to submit them again"
        )
    yield from _outside_note(spec, summary)
    if any(summary.count(s) for s in TERMINAL_STATES if s is not JobState.DONE):
        yield "  failures: pipeline status " + str(spec.output.root)
    yield f"  outputs: {spec.output.root}  (manifest: {spec.output.root / 'manifest.jsonl'})"


def _spending(spec: Spec, summary: RunSummary) -> Iterator[str]:
    costs = Costs.of_spec(spec)
    for text in summary.budget_stops.values():
        yield f"  {text}"
    if costs.priced:
        yield from ("  " + line for line in spending_lines(costs, summary.spent))


def _outside_note(spec: Spec, summary: RunSummary) -> Iterator[str]:
    outside = sum(sum(states.values()) for states in summary.outside_spec.values())
    if outside:
        yield (
            f"  {outside} job(s) not in this spec left as they were (see `pipeline status`; "
            f"`pipeline prune {spec.source}` removes them)"
        )


def _done_first(item: tuple[str, int]) -> tuple[bool, str]:
    return item[0] != JobState.DONE.value, item[0]


# -- status and export -------------------------------------------------------------------


@contextmanager
def open_manifest_for(target: Path, *, out: Path | None = None) -> Iterator[Manifest]:
    """Open read-only the manifest of an output directory, or of a spec's output root
    (``out``, if given, as for ``run --out``)."""
    spec = _lenient_spec(target, out=out)
    with _open_target(target, spec) as manifest:
        yield manifest


def _open_target(target: Path, spec: Spec | None) -> Manifest:
    """Read-only: the manifest of output folder ``target``, or of ``spec`` if given."""
    return open_folder(target) if spec is None else open_spec_manifest(spec, readonly=True)


def _lenient_spec(target: Path, *, out: Path | None = None) -> Spec | None:
    """The spec ``target`` names, its variables left as written when unset and its output
    root ``out`` when given (as for ``run --out``); None for a directory."""
    if not target.is_file():
        if out is not None:
            raise UsageError(f"--out goes with a spec file; {target} is not one")
        return None
    from pipeline.spec import load_spec

    spec = load_spec(target, known_providers=registry.known(), require_env=False, jobs_needed=False)
    registry.warn_unloadable()
    register_secrets(s.api_key for s in spec.providers.values() if "${" not in (s.api_key or ""))
    return spec if out is None else replace(spec, output=replace(spec.output, root=out))


def status_of(target: Path, *, out: Path | None = None) -> tuple[dict[str, Any], list[str]]:
    """``pipeline status``: ``status_report`` with its ``spending``, and the spending as
    lines; the spec is read once and the manifest opened once."""
    spec = _lenient_spec(target, out=out)
    with _open_target(target, spec) as manifest:
        report = status_report(manifest)
        report["spending"], lines = _status_spending(manifest, spec)
    return report, lines


def _status_spending(
    manifest: Manifest, spec: Spec | None
) -> tuple[dict[str, Any] | None, list[str]]:
    """What each priced provider and the run spent of the jobs the manifest is limited
    to, against its budget (prices live in the spec, so a folder says nothing)."""
    costs = None if spec is None else Costs.of_spec(spec)
    if costs is None or not costs.priced:
        return None, []
    spent = dict(spent_on(costs, manifest.iter_records()))
    budgets = {name: str(cap) for name, cap in costs.budgets.items()}
    report = {
        "currency": costs.currency,
        "spent": {name: str(spent.get(name, Decimal(0))) for name in costs.prices},
        "budgets": budgets,
        "run_budget": None if costs.run_budget is None else str(costs.run_budget),
    }
    return report, spending_lines(costs, spent)


def status_report(manifest: Manifest, *, failures: int = 50) -> dict[str, Any]:
    """Counts and failures of the jobs of the spec's last expansion; the jobs it no
    longer lists are counted apart, under ``not_in_spec``."""
    manifest.limit_to_spec()
    providers = manifest.counts()
    states: dict[str, int] = {}
    for by_state in providers.values():
        for state, n in by_state.items():
            states[state] = states.get(state, 0) + n
    return {
        "manifest": manifest.location,
        "jobs": sum(states.values()),
        "states": states,
        "providers": providers,
        "failures": [
            {
                "id": r.job.id,
                "provider": r.job.provider,
                "state": r.state.value,
                "failure": r.failure,
                "error": None if r.error is None else scrub(r.error),
                "remote_id": r.remote_id,
                "prompt": r.job.prompt,
                "params": {k: v for k, v in r.job.params.items() if k != "prompt"},
            }
            for r in manifest.failures(limit=failures)
        ],
        "not_in_spec": manifest.outside_spec_counts(),
        "runners": manifest.runners_at_work(),
    }


def log_text(target: Path, job: str | None = None, *, last: int = 20) -> Iterator[str]:
    """``pipeline log``: one job's event history (its id or an unambiguous prefix), or
    the last ``last`` events of the manifest; one line per event, oldest first."""
    with open_manifest_for(target) as manifest:
        if job is None:
            events = manifest.last_events(last)
        else:
            events = manifest.events(_job_by_prefix(manifest, job))
    for event in events:
        moved = f"{_state_name(event.from_state)} → {_state_name(event.to_state)}"
        what = event.kind if event.to_state is None else moved
        who = "" if job is not None else f"{event.job_id} [{event.provider or '?'}] "
        stamp = datetime.fromtimestamp(event.at, UTC).strftime("%Y-%m-%d %H:%M:%S")
        reason = f"  {scrub(event.detail)}" if event.detail else ""
        yield f"{stamp} {who}{what}{reason}"


def _job_by_prefix(manifest: Manifest, prefix: str) -> str:
    from pipeline.errors import UsageError

    found = manifest.job_ids_starting(prefix)
    if len(found) == 1:
        return found[0]
    if not found:
        what, hint = "no job", "`pipeline log` without JOB lists recent ids"
    else:
        what, hint = "more than one job", "give more of the id"
    raise UsageError(f"{what} with an id starting {prefix!r} in {manifest.location} ({hint})")


def _state_name(state: JobState | None) -> str:
    return "?" if state is None else state.value


_RETRYABLE = ("failed", "timed_out", "cancelled")


def failure_lines(failures: Sequence[Mapping[str, Any]], target: str) -> Iterator[str]:
    """``status``'s jobs that are not done: each with its reason, prompt and parameters,
    then what a rerun can do about them (``--retry-failed``, ``--resubmit-unknown``)."""
    if not failures:
        return
    yield f"{len(failures)} not done:"
    for failure in failures:
        kind = f" ({failure['failure']})" if failure.get("failure") else ""
        yield (
            f"  {failure['id']} [{failure['provider']}] {failure['state']}{kind}: "
            f"{failure['error']}"
        )
        params = json.dumps(failure.get("params") or {}, ensure_ascii=False, default=str)
        yield f"      prompt: {json.dumps(failure.get('prompt', ''), ensure_ascii=False)}"
        yield f"      params: {params}"
    states = {failure["state"] for failure in failures}
    if states & set(_RETRYABLE):
        yield f"failed: try them again with `pipeline run {target} --retry-failed`"
        yield (
            "  (a job with a recorded task is asked about first; only a task the provider "
            "says failed or is gone is submitted, and paid for, again)"
        )
    if "unknown" in states:
        yield (
            "unknown: the submit was sent but its outcome is unknown, so the task may exist "
            "on the provider and may be paid for."
        )
        yield (
            "  A rerun leaves these jobs alone. Check the provider's dashboard first: "
            f"`pipeline run {target} --resubmit-unknown` submits them again (paying twice "
            "for any task that does exist)"
        )


def report_sheet(
    target: Path,
    dest: Path | None = None,
    *,
    rows: str = "prompt",
    cols: str = "provider",
    states: Sequence[JobState] | None = None,
) -> Path:
    """``pipeline report``: the contact sheet of the jobs of the spec's last expansion,
    as one static HTML page (default ``<output root>/report.html``); returns its path."""
    from pipeline.review import write_sheet

    with open_manifest_for(target) as manifest:
        manifest.limit_to_spec()
        return write_sheet(manifest, dest, rows=rows, cols=cols, states=states)


def export_to(
    target: Path,
    *,
    format: str,
    dest: Path | TextIO,
    states: Iterable[str] | None = None,
    columns: Sequence[str] | None = None,
    force: bool = False,
) -> Exported:
    """``pipeline export``: the output folder of ``target`` (a folder or a spec file)."""
    from pipeline.dataset import export_dataset

    with open_manifest_for(target) as manifest:
        return export_dataset(
            manifest, format=format, dest=dest, states=states, columns=columns, force=force
        )


def export_text(done: Exported) -> Iterator[str]:
    """What ``pipeline export`` says about an export it wrote to a file or folder."""
    where = "" if done.dest is None else f" to {done.dest}"
    folders = {"image": "images", "video": "videos", "file": "other files"}
    kinds = ", ".join(f"{folders.get(kind, kind)} {n}" for kind, n in sorted(done.kinds.items()))
    yield f"wrote {done.rows} rows{where}" + (f" ({kinds})" if kinds else "")
    if done.format == "hf":
        how = [f"{n} {what}" for n, what in ((done.linked, "hard-linked"), (done.copied, "copied"))]
        yield f"  files: {', '.join(h for h in how if not h.startswith('0 '))}; no sidecars"
        loads = {"all": "every row as a table", "images": "the images", "videos": "the videos"}
        yield f'  datasets.load_dataset("{done.dest}") gives {loads.get(done.default or "", "")}'
        for kind, folder in (("image", "images"), ("video", "videos")):
            if done.kinds.get(kind) and done.default != folder:
                yield f'  datasets.load_dataset("{done.dest}/{folder}") gives the {folder}'
    if done.missing_count:
        shown = ", ".join(done.missing)
        more = "" if done.missing_count == len(done.missing) else ", …"
        yield (f"  {done.missing_count} output(s) not on disk as recorded, left out: {shown}{more}")
    if done.not_in_spec:
        yield (
            f"  {done.not_in_spec} job(s) the spec no longer lists left out (see `pipeline status`)"
        )


def recover_text(root: Path, *, force: bool = False) -> Iterator[str]:
    """Rebuild ``root``'s damaged manifest from its snapshot (``pipeline recover``)."""
    from datetime import datetime

    from pipeline.manifest import POINTER_NAME, find_manifest, recover

    if find_manifest(root) is None and (root / POINTER_NAME).is_file():
        raise ManifestError(
            f"{root}'s manifest is in PostgreSQL ({root / POINTER_NAME}), which keeps its "
            "own durability: `pipeline recover` rebuilds SQLite manifests only. Restore the "
            "database from its backups, or copy the run out (`pipeline manifest copy`)."
        )
    with hold_run_lock(root, what="pipeline recover"):
        done = recover(root, force=force)
    if done.moved_to is not None:
        yield f"moved the damaged manifest to {done.moved_to} (kept, not deleted)"
    when = datetime.fromtimestamp(done.snapshot_at).isoformat(sep=" ", timespec="seconds")
    states = ", ".join(f"{state} {n}" for state, n in sorted(done.states.items()))
    yield f"rebuilt {root / 'manifest.sqlite'}: {done.jobs} jobs ({states})"
    yield (
        f"from the snapshot of {when}: anything submitted after it is not in it, and "
        "such a job is pending again; check the provider before the next run"
    )


def manifest_copy_text(
    source: str, dest: str, *, run: str | None = None, to_run: str | None = None, page: int
) -> Iterator[str]:
    """``pipeline manifest copy``: a run's manifest from one store to another."""
    from pipeline.manifest import copy_manifest

    done = copy_manifest(source, dest, run=run, to_run=to_run, page=page)
    yield (
        f"copied {done.jobs} jobs, {done.outputs} outputs and {done.events} events "
        f"from {done.source} to {done.dest}"
    )
    if done.unknown:
        yield (
            f"{done.unknown} job(s) caught submitting are unknown in the copy: the submit "
            "may have reached the provider (`--resubmit-unknown` submits them again)"
        )


STARTER_NAME = "spec.yaml"
SCHEMA_LINE = "# yaml-language-server: $schema="


def schema_text() -> str:
    """The spec's JSON Schema, as shipped in the package."""
    from importlib.resources import files

    return (files("pipeline") / "schema.json").read_text(encoding="utf-8")


def init_spec(path: Path | None = None) -> Path:
    """Write the starter spec at ``path`` (a folder: ``spec.yaml`` in it), never over an
    existing file; its first line points editors at the installed JSON Schema."""
    from importlib.resources import files

    target = Path(STARTER_NAME) if path is None else path
    if target.is_dir():
        target = target / STARTER_NAME
    text = (files("pipeline") / "starter.yaml").read_text(encoding="utf-8")
    schema = Path(str(files("pipeline") / "schema.json"))
    if schema.is_file():  # an installed package on disk (not inside a zip)
        rest = text.partition("\n")[2]
        text = f"{SCHEMA_LINE}{schema.absolute().as_uri()}\n{rest}"
    text = text.replace("THIS_FILE", str(target))
    try:
        with target.open("x", encoding="utf-8") as out:
            out.write(text)
    except FileExistsError:
        raise UsageError(
            f"{target} exists; pipeline init never overwrites a file: give another path"
        ) from None
    except OSError as exc:
        raise PipelineError(f"cannot write {target}: {exc.strerror}") from exc
    return target


def parse_knobs(pairs: Sequence[str]) -> dict[str, Any]:
    """``key=value`` pairs; values parsed as JSON when they are JSON (numbers, bools)."""
    knobs: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SpecError(f"knob {pair!r} is not KEY=VALUE", hint="e.g. --knob task_seconds=5")
        try:
            knobs[key] = json.loads(value)
        except ValueError:
            knobs[key] = value
    return knobs
