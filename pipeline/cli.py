"""Command line: argument parsing, exit codes and human output. Nothing imports it.

Exit codes: 0 success · 1 some jobs did not finish (failed, unknown…) or a runtime
error · 2 bad spec or bad usage · 130 interrupted (Ctrl-C / SIGTERM / SIGHUP) · 141 stdout closed
by its reader (``pipeline status | head``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from pipeline import __version__
from pipeline.errors import PipelineError, only_pipeline_errors
from pipeline.models import JobState
from pipeline.shell import Parser

__all__ = ["main"]

EXIT_OK, EXIT_INCOMPLETE, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: stdout's reader went away


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    with warnings.catch_warnings():  # restores showwarning after the command
        warnings.showwarning = _warning_shower(warnings.showwarning)
        return _command(args)


def _warning_shower(default: Any) -> Any:
    """Ours as one ``warning: …`` line (a plugin that cannot be loaded); others as is."""
    from pipeline.errors import PluginWarning
    from pipeline.redact import scrub

    def show(message: Any, category: type[Warning], *args: Any, **kwargs: Any) -> None:
        if issubclass(category, PluginWarning):
            print(f"warning: {scrub(str(message))}", file=sys.stderr)
        else:
            default(message, category, *args, **kwargs)

    return show


def _command(args: argparse.Namespace) -> int:
    try:
        code: int = args.handler(args)
        sys.stdout.flush()  # a reader gone away shows here, not as a traceback at exit
    except BrokenPipeError:
        return _stdout_gone()
    except PipelineError as exc:
        return _report(exc)
    except BaseExceptionGroup as group:  # raised inside a task group of the run
        error = only_pipeline_errors(group)
        if error is None:
            raise  # a bug among them: keep the traceback
        return _report(error)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    return code


def _report(exc: PipelineError) -> int:
    from pipeline.redact import scrub

    print(f"error: {scrub(str(exc))}", file=sys.stderr)
    return exc.exit_code


def _stdout_gone() -> int:
    """stdout's reader left (``pipeline status | head``): end quietly with 128 + SIGPIPE,
    as a process killed by it would. stdout now points at /dev/null, so the flush at
    exit has nothing to complain about."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return EXIT_BROKEN_PIPE


def build_parser() -> Parser:
    parser = Parser(
        prog="pipeline",
        description="Run large batches of generative-media jobs from a YAML spec: "
        "prompts x providers x parameters -> verified files, resumable.",
    )
    parser.add_argument("--version", action="version", version=f"pipeline {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="run a spec (resumes where the last run stopped)")
    run.add_argument("spec", type=Path, help="the YAML spec")
    run.add_argument("--out", type=Path, help="output root (overrides output.root)")
    run.add_argument(
        "--manifest",
        metavar="URL",
        help="a PostgreSQL URL for the run's manifest (overrides manifest:): every "
        "`pipeline run` given the same URL and spec works on the same run",
    )
    run.add_argument("--quiet", "-q", action="store_true", help="no progress bars or status lines")
    run.add_argument(
        "--retry-failed",
        action="store_true",
        help="take up failed, cancelled and timed-out jobs again: a recorded task is asked "
        "about first (downloaded if it succeeded, followed if it runs) and a job is submitted "
        "anew only when its task failed or is gone",
    )
    run.add_argument(
        "--resubmit-unknown",
        action="store_true",
        help="submit again jobs whose earlier submit had an unknown outcome "
        "(may pay twice if the first one did reach the provider)",
    )
    run.add_argument(
        "--adopt",
        action="store_true",
        help="take over an output folder another spec file wrote (its jobs this spec "
        "does not list are left as they are)",
    )
    add_run_logging(run)
    run.set_defaults(handler=cmd_run)

    add_prune(commands)

    plan = commands.add_parser(
        "plan", help="dry run: jobs per provider and the requests, nothing sent"
    )
    plan.add_argument("spec", type=Path)
    plan.add_argument("--out", type=Path, help="output root (overrides output.root)")
    plan.add_argument(
        "--show",
        type=int,
        default=3,
        metavar="N",
        help="jobs to show in full per provider (default 3)",
    )
    plan.set_defaults(handler=cmd_plan)

    validate = commands.add_parser("validate", help="check a spec and exit (2 if invalid)")
    validate.add_argument("spec", type=Path)
    validate.set_defaults(handler=cmd_validate)

    status = commands.add_parser("status", help="counts per provider and state, and failures")
    status.add_argument("target", type=Path, help="a spec file or an output directory")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.add_argument("--out", type=Path, help="output root of a spec (overrides output.root)")
    status.set_defaults(handler=cmd_status)

    add_cancel(commands)

    add_init(commands)

    add_completion(commands)

    add_export(commands)

    add_report(commands)

    add_log(commands)

    add_manifest(commands)

    recover = commands.add_parser(
        "recover",
        help="rebuild a damaged manifest from manifest.jsonl (the damaged file is kept aside)",
        description="Move a damaged manifest.sqlite aside (never deleted) and rebuild it "
        "from manifest.jsonl, the snapshot written at the end of each run: states, remote "
        "ids and outputs are kept, so nothing is paid twice; jobs caught submitting "
        "become unknown.",
    )
    recover.add_argument("outdir", type=Path, help="the output directory")
    recover.add_argument(
        "--force", action="store_true", help="rebuild even if the manifest looks healthy"
    )
    recover.set_defaults(handler=cmd_recover)

    emulate = commands.add_parser(
        "emulate", help="serve the built-in API emulators until stopped, printing their base URLs"
    )
    emulate.add_argument("--host", default="127.0.0.1")
    emulate.add_argument(
        "--port",
        type=int,
        default=0,
        help="first port (each emulator takes the next); 0 = any free",
    )
    emulate.add_argument(
        "--provider",
        action="append",
        dest="providers",
        metavar="NAME",
        help="emulate only this API (repeatable; default: all)",
    )
    emulate.add_argument(
        "--knob",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="emulator knob for every emulator, e.g. task_seconds=5, failure_rate=0.1 (repeatable)",
    )
    emulate.add_argument(
        "--state",
        type=Path,
        metavar="DIR",
        help="keep each emulator's tasks, media and charge ledger in DIR/<name>/ across "
        "restarts (default: in memory, forgotten when stopped)",
    )
    emulate.set_defaults(handler=cmd_emulate)

    providers = commands.add_parser(
        "providers", help="list providers, parameters, completion modes"
    )
    providers.set_defaults(handler=cmd_providers)
    return parser


def add_init(commands: Any) -> None:
    """``pipeline init`` and ``pipeline schema``."""
    init = commands.add_parser(
        "init", help="write a starter spec (runs as it is on the built-in emulator)"
    )
    init.add_argument(
        "path", type=Path, nargs="?", help="where (default ./spec.yaml; never overwritten)"
    )
    init.set_defaults(handler=cmd_init)
    schema = commands.add_parser("schema", help="print the spec's JSON Schema")
    schema.set_defaults(handler=cmd_schema)


def add_completion(commands: Any) -> None:
    """``pipeline completion``'s arguments."""
    from pipeline.shell import SHELLS

    completion = commands.add_parser(
        "completion",
        help="print a shell completion script for the commands and flags",
        description='Print a completion script: add eval "$(pipeline completion bash)" to '
        "~/.bashrc (zsh: the same with zsh, in ~/.zshrc).",
    )
    completion.add_argument("shell", choices=SHELLS)
    completion.set_defaults(handler=cmd_completion)


def add_cancel(commands: Any) -> None:
    """``pipeline cancel``'s arguments."""
    cancel = commands.add_parser(
        "cancel",
        help="stop remote tasks where the API can and mark unsubmitted jobs cancelled",
        description="Stop a spec's in-flight remote tasks where the API can cancel (PixAI) "
        "and mark the jobs not yet submitted cancelled, so runs leave them; "
        "`run --retry-failed` takes them up again. A task the provider did not stop stays "
        "followed (it may still be paid). Refused while a run uses the output folder: "
        "stop the run first.",
    )
    cancel.add_argument("target", type=Path, help="a spec file or an output directory")
    cancel.add_argument("--out", type=Path, help="output root (overrides output.root)")
    cancel.add_argument(
        "--provider",
        action="append",
        dest="providers",
        default=[],
        metavar="NAME",
        help="only this provider entry (repeatable; default: all)",
    )
    cancel.set_defaults(handler=cmd_cancel)


def add_prune(commands: Any) -> None:
    """``pipeline prune``'s arguments."""
    prune = commands.add_parser(
        "prune", help="remove from the manifest the jobs the spec no longer lists"
    )
    prune.add_argument("spec", type=Path, help="the YAML spec")
    prune.add_argument("--out", type=Path, help="output root (overrides output.root)")
    prune.add_argument(
        "--delete-files",
        action="store_true",
        help="delete their output files and sidecars too (those under this output root "
        "only: another runner's files are left where they are)",
    )
    prune.add_argument(
        "--include-paid",
        action="store_true",
        help="also remove jobs whose paid remote task may still deliver (their remote ids "
        "are printed and kept in the event log)",
    )
    prune.add_argument("--adopt", action="store_true", help="as for run")
    prune.set_defaults(handler=cmd_prune)


def add_export(commands: Any) -> None:
    """``pipeline export``'s arguments."""
    export = commands.add_parser(
        "export",
        help="the outputs as a dataset (hf, csv, parquet) or the manifest as JSON lines",
        description="jsonl (default): the manifest, one job a line. hf: a folder in the "
        "Hugging Face imagefolder/videofolder layout (files hard-linked, metadata.jsonl, "
        "no sidecars) that datasets.load_dataset(DEST) loads. csv, parquet: one row per "
        "output file, file_name relative to the output folder (parquet needs "
        "pip install 'genmedia-pipeline[parquet]').",
    )
    export.add_argument("target", type=Path, help="an output directory or a spec file")
    export.add_argument("--format", choices=["jsonl", "hf", "csv", "parquet"], default="jsonl")
    export.add_argument(
        "--output",
        "-o",
        type=Path,
        help="where to write: a file, or the folder for hf (needed for hf and parquet; "
        "jsonl and csv go to stdout without it)",
    )
    export.add_argument(
        "--state",
        metavar="STATES",
        help="hf/csv/parquet: the job states to export, comma-separated, or all "
        "(default done; other states have no files, but a csv of failed jobs has their "
        "errors)",
    )
    export.add_argument(
        "--columns",
        metavar="NAMES",
        help="hf/csv/parquet: the columns, comma-separated, in this order (default: every "
        "column set in some row; hf always keeps file_name)",
    )
    export.add_argument(
        "--force",
        action="store_true",
        help="hf: replace DEST even if it is a non-empty folder that is not an earlier export",
    )
    export.set_defaults(handler=cmd_export)


def add_report(commands: Any) -> None:
    """``pipeline report``'s arguments."""
    report = commands.add_parser(
        "report",
        help="write a contact sheet: one static HTML page of the outputs on a grid",
        description="Write one static HTML page (it opens from disk, offline) with a tile "
        "per job on a grid of two dimensions: thumbnails, inline videos, the parameters "
        "on hover, failures with their reasons, and filters by state and provider.",
    )
    report.add_argument("target", type=Path, help="an output directory or a spec file")
    report.add_argument(
        "--output", "-o", type=Path, metavar="FILE", help="where (default OUTDIR/report.html)"
    )
    dimension = (
        "prompt, provider, model, seed, replicate, state, any parameter (aspect_ratio…) or meta.KEY"
    )
    report.add_argument(
        "--rows", default="prompt", metavar="DIM", help=f"{dimension} (default prompt)"
    )
    report.add_argument(
        "--cols", default="provider", metavar="DIM", help="as --rows (default provider)"
    )
    report.add_argument(
        "--state",
        action="append",
        dest="states",
        choices=[state.value for state in JobState],
        metavar="STATE",
        help="show only jobs in this state (repeatable; default: all)",
    )
    report.set_defaults(handler=cmd_report)


def add_manifest(commands: Any) -> None:
    """``pipeline manifest copy``'s arguments."""
    manifest = commands.add_parser(
        "manifest",
        help="copy a run's manifest between SQLite and PostgreSQL",
        description="Work on a run's manifest as a whole: `pipeline manifest copy SRC DST` "
        "moves a run between an output folder and a PostgreSQL database.",
    )
    actions = manifest.add_subparsers(dest="action", required=True, metavar="ACTION")
    copy = actions.add_parser(
        "copy",
        help="copy a run from an output folder or a database to another",
        description="Copy a run's manifest (every job with its state and remote id, the "
        "outputs, the event log, the run's settings) from SRC to DST, each an output folder "
        "(its manifest.sqlite) or a PostgreSQL URL (postgresql://user@host/db). Files are "
        "neither copied nor moved: each output keeps the output folder it lies under "
        "(another runner's, or SRC's), so DST's readers find it there. Refused "
        "while a run writes SRC, and into a DST that already holds a run; an interrupted "
        "copy leaves nothing a run would open. Jobs caught submitting become unknown.",
    )
    copy.add_argument("source", metavar="SRC", help="an output folder or a PostgreSQL URL")
    copy.add_argument("dest", metavar="DST", help="an output folder or a PostgreSQL URL")
    copy.add_argument(
        "--run",
        metavar="NAME",
        help="the run in the database (its spec's name; default: the spec name SRC's "
        "folder records)",
    )
    copy.add_argument(
        "--to-run",
        metavar="NAME",
        help="the run in DST's database, when both are URLs (default --run)",
    )
    copy.add_argument(
        "--page",
        type=_positive_int,
        default=5000,
        metavar="N",
        help="rows per transaction (default 5000)",
    )
    copy.set_defaults(handler=cmd_manifest_copy)


def add_run_logging(run: argparse.ArgumentParser) -> None:
    """``pipeline run``'s status lines and run log."""
    run.add_argument(
        "--status-every",
        type=_positive_seconds,
        default=30.0,
        metavar="SECONDS",
        help="when stderr is not a terminal: a status line per provider this often (default 30)",
    )
    run.add_argument(
        "--verbose", "-v", action="store_true", help="a log line per state change on stderr"
    )
    run.add_argument(
        "--log-file",
        type=Path,
        metavar="FILE",
        help="append a logfmt line per state change (job, provider, from, to, reason) to FILE",
    )


def _positive_int(text: str) -> int:
    try:
        number = int(text)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return number


def _positive_seconds(text: str) -> float:
    seconds = float(text)
    if not seconds > 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return seconds


def add_log(commands: Any) -> None:
    """``pipeline log``'s arguments."""
    log = commands.add_parser(
        "log", help="a job's event history from the manifest, or the run's last events"
    )
    log.add_argument("target", type=Path, help="a spec file or an output directory")
    log.add_argument("job", nargs="?", help="a job id or an unambiguous prefix of one")
    log.add_argument(
        "--last", type=int, default=20, metavar="N", help="without JOB: events to show (20)"
    )
    log.set_defaults(handler=cmd_log)


# -- commands ------------------------------------------------------------------------


def cmd_validate(args: argparse.Namespace) -> int:
    from pipeline.commands import load_checked_spec
    from pipeline.matrix import count_unique_jobs

    spec = load_checked_spec(args.spec, require_env=False)
    count = count_unique_jobs(spec)
    print(
        f"{args.spec}: ok — {count.total} jobs{count.merged_note()} across "
        f"{len(spec.providers)} provider(s), outputs under {spec.output.root}"
    )
    _print_needed_env(spec)
    return EXIT_OK


def _print_needed_env(spec: Any) -> None:
    from pipeline.commands import needed_env

    needed = needed_env(spec)
    if needed:
        print(needed)


def cmd_plan(args: argparse.Namespace) -> int:
    from pipeline.commands import load_checked_spec, plan_text

    spec = load_checked_spec(args.spec, out=args.out, require_env=False)
    for line in plan_text(spec, show=args.show):
        print(line)
    _print_needed_env(spec)
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    from pipeline.commands import load_checked_spec, run_spec, summary_text
    from pipeline.runner import ProgressOptions

    spec = load_checked_spec(args.spec, out=args.out, manifest=args.manifest, check_jobs=False)
    summary = run_spec(
        spec,
        quiet=args.quiet,
        retry_failed=args.retry_failed,
        resubmit_unknown=args.resubmit_unknown,
        params_checked=False,  # checked in the run, unless the manifest has this expansion
        adopt=args.adopt,
        progress=ProgressOptions(
            quiet=args.quiet,
            status_every=args.status_every,
            verbose=args.verbose,
            log_file=args.log_file,
        ),
    )
    for line in summary_text(spec, summary):
        print(line)
    if summary.interrupted:
        return EXIT_INTERRUPTED
    return EXIT_OK if summary.complete else EXIT_INCOMPLETE


def cmd_prune(args: argparse.Namespace) -> int:
    from pipeline.commands import load_checked_spec, prune_spec

    spec = load_checked_spec(args.spec, out=args.out)
    pruned = prune_spec(
        spec, include_paid=args.include_paid, delete_files=args.delete_files, adopt=args.adopt
    )
    files = f"; {len(pruned.output_paths)} output file(s) " + (
        "deleted" if args.delete_files else "left on disk"
    )
    print(f"removed {pruned.removed} job(s) not in the spec{files if pruned.removed else ''}")
    if pruned.elsewhere:
        shown = ", ".join(pruned.elsewhere[:3]) + (", …" if len(pruned.elsewhere) > 3 else "")
        print(
            f"{len(pruned.elsewhere)} of their output file(s) lie under other output roots "
            f"and were left there: {shown}"
        )
    if pruned.remote_ids:
        print("remote tasks of the removed jobs: " + ", ".join(pruned.remote_ids))
    if pruned.kept_paid:
        print(
            f"kept {pruned.kept_paid} job(s) with a paid remote task that may still deliver; "
            "rerun a spec listing them to collect it, or prune with --include-paid"
        )
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    from pipeline.commands import status_of

    report, spending = status_of(args.target, out=args.out)
    if args.json:
        print(json.dumps(report, indent=2, sort_keys=True))
        return EXIT_OK
    target = str(args.target) if args.target.is_file() else "SPEC"  # run takes a spec
    _print_status(report, sys.stdout, target=target)
    for line in spending:
        print(line)
    return EXIT_OK


def _print_status(report: dict[str, Any], out: TextIO, *, target: str = "SPEC") -> None:
    from pipeline.commands import failure_lines

    print(f"{report['jobs']} jobs in {report['manifest']}", file=out)
    runners = report.get("runners") or []
    if runners:  # a shared run: who is at work on it now
        shown = "; ".join(f"pid {r['pid']} on {r['host']}" for r in runners[:5])
        more = f" and {len(runners) - 5} more" if len(runners) > 5 else ""
        print(f"  {len(runners)} runner(s) at work: {shown}{more}", file=out)
    for name, states in sorted(report["providers"].items()):
        cells = ", ".join(f"{state} {n}" for state, n in sorted(states.items()))
        print(f"  {name}: {cells}", file=out)
    outside = report["not_in_spec"]
    if outside:
        total = sum(sum(states.values()) for states in outside.values())
        print(f"{total} not in the spec (left as they were; `pipeline prune SPEC`):", file=out)
        for name, states in sorted(outside.items()):
            cells = ", ".join(f"{state} {n}" for state, n in sorted(states.items()))
            print(f"  {name}: {cells}", file=out)
    for line in failure_lines(report["failures"], target):
        print(line, file=out)


def cmd_init(args: argparse.Namespace) -> int:
    from pipeline.commands import init_spec

    path = init_spec(args.path)
    print(f"wrote {path}; next: pipeline plan {path}, then pipeline run {path}")
    return EXIT_OK


def cmd_schema(args: argparse.Namespace) -> int:
    from pipeline.commands import schema_text

    sys.stdout.write(schema_text())
    return EXIT_OK


def cmd_completion(args: argparse.Namespace) -> int:
    from pipeline.shell import completion_script

    sys.stdout.write(completion_script(build_parser(), args.shell))
    return EXIT_OK


def cmd_cancel(args: argparse.Namespace) -> int:
    from pipeline.commands import cancel_target, cancel_text

    for line in cancel_text(cancel_target(args.target, providers=args.providers, out=args.out)):
        print(line)
    return EXIT_OK


def cmd_export(args: argparse.Namespace) -> int:
    from pipeline.commands import export_text, export_to

    done = export_to(
        args.target,
        format=args.format,
        dest=sys.stdout if args.output is None else args.output,
        states=_comma_list(args.state),
        columns=_comma_list(args.columns),
        force=args.force,
    )
    if done.format != "jsonl":  # the manifest's own lines stay as they always were
        to = sys.stdout if done.dest is not None else sys.stderr  # stdout may be the data
        for line in export_text(done):
            print(line, file=to)
    return EXIT_OK


def cmd_report(args: argparse.Namespace) -> int:
    from pipeline.commands import report_sheet

    states = None if args.states is None else [JobState(s) for s in args.states]
    dest = report_sheet(args.target, args.output, rows=args.rows, cols=args.cols, states=states)
    print(dest)
    return EXIT_OK


def _comma_list(text: str | None) -> list[str] | None:
    return None if text is None else [part.strip() for part in text.split(",") if part.strip()]


def cmd_log(args: argparse.Namespace) -> int:
    from pipeline.commands import log_text

    for line in log_text(args.target, args.job, last=args.last):
        print(line)
    return EXIT_OK


def cmd_manifest_copy(args: argparse.Namespace) -> int:
    from pipeline.commands import manifest_copy_text

    lines = manifest_copy_text(
        args.source, args.dest, run=args.run, to_run=args.to_run, page=args.page
    )
    for line in lines:
        print(line)
    return EXIT_OK


def cmd_recover(args: argparse.Namespace) -> int:
    from pipeline.commands import recover_text

    for line in recover_text(args.outdir, force=args.force):
        print(line)
    return EXIT_OK


def cmd_emulate(args: argparse.Namespace) -> int:
    from pipeline.commands import parse_knobs
    from pipeline.runner import emulators

    available, run_forever = emulators().emulator_names(), emulators().run_forever

    names = args.providers or sorted(available)
    unknown = [name for name in names if name not in available]
    if unknown:
        print(
            f"error: no emulator for {', '.join(unknown)}; "
            f"available: {', '.join(sorted(available))}",
            file=sys.stderr,
        )
        return EXIT_USAGE
    if not args.providers:  # all: a plugin's that cannot be loaded is left out
        names = [name for name in names if _emulator_loads(name)]
    knobs = parse_knobs(args.knob)

    def announce(name: str, url: str) -> None:
        print(f"{name} {url}", flush=True)

    run_forever(
        names,
        host=args.host,
        port=args.port,
        knobs={name: knobs for name in names},
        announce=announce,
        state=args.state,
    )
    return EXIT_OK


def _emulator_loads(name: str) -> bool:
    """Whether emulator ``name`` loads; if not, a warning says why (one line)."""
    from pipeline.errors import PluginError, PluginWarning
    from pipeline.runner import emulators

    try:
        emulators().emulator_factory(name)
    except PluginError as exc:
        warnings.warn(exc.warning, PluginWarning, stacklevel=2)
        return False
    return True


def cmd_providers(args: argparse.Namespace) -> int:
    from pipeline.providers.registry import available, warn_unloadable

    for name, provider in sorted(available().items()):
        modes = ", ".join(provider.completion_modes)
        print(
            f"{name} — {provider.title} ({provider.media}; completion: {modes}; "
            f"default base URL {provider.default_base_url})"
        )
        for param, info in provider.parameters.items():
            choices = f" (one of: {', '.join(map(str, info.choices))})" if info.choices else ""
            print(f"    {param:<16} → {info.field}: {info.description}{choices}")
        for option, about in provider.options.items():
            print(f"    options.{option}: {about.description} ({about.kind})")
    warn_unloadable()
    return EXIT_OK
