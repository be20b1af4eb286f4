"""A spec → its jobs, lazily: one prompt at a time, never a list of every job.

Order: for each prompt (in ``prompts:`` order, files line by line), for each matrix cell
(provider varies fastest, so providers interleave), for each seed, for each replicate.

Parameters merge in this order, later wins: ``providers.<name>.params`` < the prompt
item's ``params`` (and a JSONL line's keys but its metadata) < the matrix cell < the seed. Then
``params["prompt"]`` is the prompt, and ``model`` moves from the params to ``Job.model``.

A prompt's metadata (``Prompt.meta``) goes to ``Job.meta`` as it is: never into the
params, and not part of the id.

Duplicates: matrix cells are de-duplicated once (they are few), so include entries or
repeated values never double a job. Identical jobs that come from repeated prompts (the
same line twice in a file) are yielded each time: finding them would mean remembering
every prompt. They share one id, and the manifest keeps one (with the metadata of the
first: prompts that differ only in metadata are the same job). ``count_unique_jobs``
counts them once, as the run will, remembering one small key per prompt × cell.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pipeline.identity import canonical_json, job_id, slugify
from pipeline.models import Job, MatrixSpec, PlainPrompt, PromptSource, Spec, TemplatePrompt
from pipeline.prompts import Prompt, iter_prompts

__all__ = [
    "JobCount",
    "count_jobs",
    "count_unique_jobs",
    "expand_matrix",
    "iter_jobs",
    "iter_param_sets",
    "job_params",
    "job_seeds",
]

PROVIDER_KEY = "provider"
SEED_KEY = "seed"
MODEL_KEY = "model"

Cell = dict[str, Any]


def iter_jobs(spec: Spec) -> Iterator[Job]:
    """Every job of ``spec``, one at a time (prompt files are streamed)."""
    cells = _spec_cells(spec)
    seeds = job_seeds(spec)
    for source in spec.prompts:
        for prompt in iter_prompts(source):
            yield from _prompt_jobs(spec, prompt, cells, seeds)


def job_seeds(spec: Spec) -> Sequence[int | None]:
    """The seeds every prompt × cell is run with (``(None,)``: no seed parameter)."""
    return spec.seeds if spec.seeds is not None else (None,)


def count_jobs(spec: Spec) -> int:
    """How many jobs ``iter_jobs(spec)`` yields; streams prompt files, holds no jobs."""
    seed_count = len(spec.seeds) if spec.seeds is not None else 1
    jobs_per_prompt = len(_spec_cells(spec)) * seed_count * spec.repeats
    return jobs_per_prompt * sum(_count_prompts(source) for source in spec.prompts)


@dataclass(frozen=True, slots=True)
class JobCount:
    """The distinct jobs of a spec per provider, and how many listed twice were merged."""

    per_provider: dict[str, int]
    duplicates: int

    @property
    def total(self) -> int:
        return sum(self.per_provider.values())

    def merged_note(self) -> str:
        """`` (N duplicates merged)`` when the spec lists some jobs more than once."""
        if not self.duplicates:
            return ""
        return f" ({self.duplicates} duplicate{'s' if self.duplicates > 1 else ''} merged)"


def count_unique_jobs(spec: Spec) -> JobCount:
    """The jobs ``iter_jobs(spec)`` yields, each id once: what a run submits.

    A prompt × cell pair stands for its seeds × replicates, and two pairs give the same
    jobs exactly when provider, prompt and merged params (less the ``seed`` a seed list
    overrides) are equal: one hash of those is remembered per pair. The params' JSON is
    made once per cell for prompts that share their source's params (txt, csv,
    templates), so a million-line prompt file costs no job ids."""
    cells = _spec_cells(spec)
    per_pair = len(job_seeds(spec)) * spec.repeats
    ignored = {"prompt", SEED_KEY} if spec.seeds is not None else {"prompt"}
    counts = dict.fromkeys(spec.providers, 0)
    seen: set[int] = set()
    duplicates = 0
    params_of: Mapping[str, Any] | None = None
    pairs: list[tuple[str, str]] = []
    for source in spec.prompts:
        for prompt in iter_prompts(source):
            if prompt.params is not params_of:
                params_of = prompt.params
                pairs = [
                    (
                        provider,
                        canonical_json({k: v for k, v in merged.items() if k not in ignored}),
                    )
                    for provider, merged in _prompt_cells(spec, prompt, cells)
                ]
            for provider, params in pairs:
                key = hash((provider, params, prompt.text))
                if key in seen:
                    duplicates += per_pair
                else:
                    seen.add(key)
                    counts[provider] += per_pair
    return JobCount(counts, duplicates)


def _count_prompts(source: PromptSource) -> int:
    if isinstance(source, PlainPrompt):
        return 1
    if isinstance(source, TemplatePrompt):
        return math.prod(len(values) for values in source.vars.values())
    return sum(1 for _ in iter_prompts(source))


def _spec_cells(spec: Spec) -> list[Cell]:
    cells = expand_matrix(spec.matrix)
    if spec.seeds is not None:  # the seed list wins over a matrix `seed`
        cells = _unique([{k: v for k, v in cell.items() if k != SEED_KEY} for cell in cells])
    return cells


def iter_param_sets(spec: Spec) -> Iterator[tuple[str, Prompt, dict[str, Any]]]:
    """``(provider, prompt, merged params)`` for every prompt × matrix cell: what the
    jobs are made of, before seeds, replicates and ids (``job_params`` finishes one).
    Checking a spec needs only these, a seed list times fewer than the jobs."""
    cells = _spec_cells(spec)
    for source in spec.prompts:
        for prompt in iter_prompts(source):
            for provider, merged in _prompt_cells(spec, prompt, cells):
                yield provider, prompt, merged


def job_params(
    merged: Mapping[str, Any], seed: int | None, text: str
) -> tuple[dict[str, Any], str | None]:
    """A job's ``(params, model)`` from merged params, its seed and its prompt."""
    params = {**merged} if seed is None else {**merged, SEED_KEY: seed}
    params["prompt"] = text
    model = params.pop(MODEL_KEY, None)
    return params, None if model is None else str(model)


def _prompt_cells(
    spec: Spec, prompt: Prompt, cells: list[Cell]
) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(provider, merged params)`` of each cell for ``prompt``: see the module docstring."""
    for cell in cells:
        provider = str(cell[PROVIDER_KEY])
        cell_params = {k: v for k, v in cell.items() if k != PROVIDER_KEY}
        yield provider, {**spec.providers[provider].params, **prompt.params, **cell_params}


def _prompt_jobs(
    spec: Spec, prompt: Prompt, cells: list[Cell], seeds: Sequence[int | None]
) -> Iterator[Job]:
    slug = slugify(prompt.text)
    meta = dict(prompt.meta)  # shared by the prompt's jobs, which never change it
    for provider, merged in _prompt_cells(spec, prompt, cells):
        for seed in seeds:
            params, model_name = job_params(merged, seed, prompt.text)
            for replicate in range(spec.repeats):
                yield Job(
                    id=job_id(provider, model_name, params, replicate),
                    provider=provider,
                    model=model_name,
                    params=params,
                    replicate=replicate,
                    prompt_slug=slug,
                    meta=meta,
                )


# --- the matrix -----------------------------------------------------------------------


def expand_matrix(matrix: MatrixSpec) -> list[Cell]:
    """The cells of ``matrix`` with GitHub Actions semantics, each holding ``provider``.

    The product of the dimensions, minus every combination that matches all keys of an
    ``exclude`` entry. Then each ``include`` entry extends every remaining combination
    whose original values it does not contradict (values added by earlier entries may be
    overwritten); an entry that extends none is added as a new cell, once per provider
    of the ``provider`` dimension unless it names one. Identical cells are kept once.
    """
    keys = [key for key, _values in matrix.dimensions]
    originals = [
        dict(zip(keys, combination, strict=True))
        for combination in itertools.product(*(values for _key, values in matrix.dimensions))
    ]
    kept = [cell for cell in originals if not any(_matches(cell, e) for e in matrix.exclude)]
    extended = [dict(cell) for cell in kept]
    added: list[Cell] = []
    for entry in matrix.include:
        if not _extend_matching(entry, kept, extended, set(keys)):
            added.extend(_new_cells(entry, _provider_values(matrix)))
    return _unique(extended + added)


def _extend_matching(
    entry: Mapping[str, Any], originals: list[Cell], extended: list[Cell], keys: set[str]
) -> bool:
    matched = False
    for original, cell in zip(originals, extended, strict=True):
        if all(_same(original[key], value) for key, value in entry.items() if key in keys):
            cell.update(entry)
            matched = True
    return matched


def _new_cells(entry: Mapping[str, Any], providers: Sequence[Any]) -> list[Cell]:
    if PROVIDER_KEY in entry or not providers:
        return [dict(entry)]
    return [{**entry, PROVIDER_KEY: provider} for provider in providers]


def _provider_values(matrix: MatrixSpec) -> Sequence[Any]:
    for key, values in matrix.dimensions:
        if key == PROVIDER_KEY:
            return values
    return ()


def _matches(cell: Mapping[str, Any], entry: Mapping[str, Any]) -> bool:
    return all(key in cell and _same(cell[key], value) for key, value in entry.items())


def _same(left: Any, right: Any) -> bool:
    """Equal as parameters: ``1`` is ``1.0``, but ``true`` is not ``1``."""
    return canonical_json(left) == canonical_json(right)


def _unique(cells: list[Cell]) -> list[Cell]:
    seen: set[str] = set()
    unique: list[Cell] = []
    for cell in cells:
        key = canonical_json(cell)
        if key not in seen:
            seen.add(key)
            unique.append(cell)
    return unique
