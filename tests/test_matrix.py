"""Expanding a spec into jobs: order, merging, include/exclude, laziness, stable ids."""

from __future__ import annotations

import itertools
import json
import random
import time
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.matrix import count_jobs, count_unique_jobs, expand_matrix, iter_jobs
from pipeline.models import MatrixSpec, Spec
from pipeline.spec.load import load_spec

KNOWN = ("pixai", "pixellabs", "apixo")


def load(tmp_path: Path, text: str, name: str = "spec.yaml") -> Spec:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return load_spec(path, known_providers=KNOWN, env={})


def load_data(tmp_path: Path, data: dict[str, Any]) -> Spec:
    return load(tmp_path, yaml.safe_dump(data, sort_keys=False))


def ids(spec: Spec) -> list[str]:
    return [job.id for job in iter_jobs(spec)]


# --- the GitHub Actions matrix --------------------------------------------------------


def test_include_follows_the_github_actions_documentation() -> None:
    """The example from GitHub's docs ("Expanding or adding matrix configurations")."""
    matrix = MatrixSpec(
        dimensions=(("fruit", ("apple", "pear")), ("animal", ("cat", "dog"))),
        include=(
            {"color": "green"},
            {"color": "pink", "animal": "cat"},
            {"fruit": "apple", "shape": "circle"},
            {"fruit": "banana"},
            {"fruit": "banana", "animal": "cat"},
        ),
    )
    assert expand_matrix(matrix) == [
        {"fruit": "apple", "animal": "cat", "color": "pink", "shape": "circle"},
        {"fruit": "apple", "animal": "dog", "color": "green", "shape": "circle"},
        {"fruit": "pear", "animal": "cat", "color": "pink"},
        {"fruit": "pear", "animal": "dog", "color": "green"},
        {"fruit": "banana"},
        {"fruit": "banana", "animal": "cat"},
    ]


def test_exclude_removes_combinations_matching_every_key() -> None:
    matrix = MatrixSpec(
        dimensions=(("os", ("mac", "win", "linux")), ("v", (1, 2))),
        exclude=({"os": "win", "v": 1}, {"os": "mac"}),
    )
    assert expand_matrix(matrix) == [
        {"os": "win", "v": 2},
        {"os": "linux", "v": 1},
        {"os": "linux", "v": 2},
    ]


def test_include_cannot_override_original_values_and_added_cells_get_every_provider() -> None:
    matrix = MatrixSpec(
        dimensions=(("style", ("anime",)), ("provider", ("pixai", "apixo"))),
        include=({"style": "photo", "quality": "high"}, {"provider": "pixai", "steps": 30}),
    )
    assert expand_matrix(matrix) == [
        {"style": "anime", "provider": "pixai", "steps": 30},
        {"style": "anime", "provider": "apixo"},
        {"style": "photo", "quality": "high", "provider": "pixai"},
        {"style": "photo", "quality": "high", "provider": "apixo"},
    ]


def test_identical_cells_are_kept_once() -> None:
    matrix = MatrixSpec(
        dimensions=(("s", ("a", "a", "b")),), include=({"s": "c"}, {"s": "c"}, {"s": "b"})
    )
    assert expand_matrix(matrix) == [{"s": "a"}, {"s": "b"}, {"s": "c"}]


def test_include_and_exclude_counts_on_a_spec(tmp_path: Path) -> None:
    spec = load(
        tmp_path,
        """
providers: {pixai: {}, pixellabs: {}}
prompts: [a, b]
matrix:
  aspect_ratio: ["1:1", "16:9"]
  style: [anime, digital_art]
  include: [{provider: pixellabs, quality: high}, {style: sketch}]
  exclude: [{provider: pixai, style: anime}]
seeds: [1, 2, 3]
repeats: 2
""",
    )
    # 2 ratios x 2 styles x 2 providers = 8, minus 2 excluded = 6, plus sketch x 2 providers
    cells = 6 + 2
    assert count_jobs(spec) == 2 * cells * 3 * 2
    assert len(set(ids(spec))) == count_jobs(spec) == len(list(iter_jobs(spec)))
    extended = [
        job
        for job in iter_jobs(spec)
        if job.provider == "pixellabs" and job.params["style"] != "sketch"
    ]
    assert len(extended) == 2 * 4 * 3 * 2
    assert all(job.params.get("quality") == "high" for job in extended)


# --- jobs -----------------------------------------------------------------------------


def test_order_is_prompt_then_cell_then_seed_then_replicate(tmp_path: Path) -> None:
    spec = load(
        tmp_path,
        """
providers: {pixai: {}, apixo: {}}
prompts: [first, second]
matrix: {size: [s, m]}
seeds: [7, 8]
repeats: 2
""",
    )
    order = [
        (job.prompt, job.params["size"], job.provider, job.params["seed"], job.replicate)
        for job in iter_jobs(spec)
    ]
    expected = list(
        itertools.product(["first", "second"], ["s", "m"], ["pixai", "apixo"], [7, 8], [0, 1])
    )
    assert order == expected


def test_params_merge_provider_then_prompt_then_cell_then_seed(tmp_path: Path) -> None:
    (tmp_path / "p.jsonl").write_text('{"prompt": "from file", "b": "line", "e": "line"}\n')
    spec = load(
        tmp_path,
        """
providers:
  pixai: {params: {a: provider, b: provider, c: provider, d: provider, seed: 0}}
prompts:
  - {text: "templated", params: {b: item, c: item, d: item}}
  - {file: p.jsonl, params: {b: item, e: item}}
matrix: {c: [cell], d: [cell], seed: [99]}
seeds: [5]
""",
    )
    templated, from_file = list(iter_jobs(spec))
    assert dict(templated.params) == {
        "a": "provider",
        "b": "item",
        "c": "cell",
        "d": "cell",
        "seed": 5,
        "prompt": "templated",
    }
    assert from_file.params["b"] == "line" and from_file.params["e"] == "line"
    assert from_file.prompt == "from file"


def test_model_moves_from_params_to_the_job(tmp_path: Path) -> None:
    spec = load(
        tmp_path,
        """
providers: {apixo: {params: {model: base}}, pixai: {}}
prompts: [cat]
matrix: {include: [{provider: pixai, model: flux}]}
""",
    )
    assert [(job.provider, job.model) for job in iter_jobs(spec)] == [
        ("apixo", "base"),
        ("pixai", "flux"),
    ]
    assert all("model" not in job.params for job in iter_jobs(spec))


def test_jobs_carry_slug_and_no_seed_when_spec_has_none(tmp_path: Path) -> None:
    spec = load(tmp_path, "providers: {pixai: {}}\nprompts: ['A Fox, at Dawn!']\n")
    (job,) = iter_jobs(spec)
    assert job.prompt_slug == "a-fox-at-dawn"
    assert dict(job.params) == {"prompt": "A Fox, at Dawn!"}
    assert job.model is None and job.replicate == 0


def test_seed_range(tmp_path: Path) -> None:
    spec = load(tmp_path, "providers: {pixai: {}}\nprompts: [x]\nseeds: {start: 10, count: 3}\n")
    assert [job.params["seed"] for job in iter_jobs(spec)] == [10, 11, 12]


def test_count_matches_iteration_for_every_prompt_source(tmp_path: Path) -> None:
    (tmp_path / "p.txt").write_text("# comment\none\n\n  two  \n")
    (tmp_path / "p.csv").write_text("prompt,mood\nthree,calm\n,\nfour,wild\n")
    (tmp_path / "p.jsonl").write_text('{"prompt": "five", "steps": 4}\n\n{"prompt": "six"}\n')
    spec = load(
        tmp_path,
        """
providers: {pixai: {}, apixo: {}}
prompts:
  - plain
  - {text: "a {x} {y}", vars: {x: [1, 2, 3], y: [a, b]}}
  - {file: p.txt}
  - {file: p.csv}
  - {file: p.csv, text: "{prompt} and {mood}"}
  - {file: p.jsonl}
matrix: {q: [lo, hi], exclude: [{q: lo, provider: apixo}]}
seeds: [1, 2]
repeats: 2
""",
    )
    prompts = 1 + 6 + 2 + 2 + 2 + 2
    assert count_jobs(spec) == len(list(iter_jobs(spec))) == prompts * 3 * 2 * 2


def test_repeated_prompts_give_repeated_ids_not_new_jobs(tmp_path: Path) -> None:
    """Documented: duplicates from repeated prompt lines share one id (manifest dedups)."""
    (tmp_path / "p.txt").write_text("same\nsame\n")
    spec = load(tmp_path, "providers: {pixai: {}}\nprompts: [{file: p.txt}]\n")
    first, second = ids(spec)
    assert first == second


def test_unique_count_is_the_number_of_distinct_ids(tmp_path: Path) -> None:
    """What a run stores (one row per id) is what plan and validate count."""
    (tmp_path / "p.txt").write_text("same\nsame\nother\n")
    (tmp_path / "p.jsonl").write_text(
        '{"prompt": "same", "seed": 5}\n{"prompt": "same", "q": "lo"}\n{"prompt": "same", "x": 1}\n'
    )
    spec = load(
        tmp_path,
        """
providers: {pixai: {}, apixo: {}}
prompts: [{file: p.txt}, {file: p.jsonl}, same]
matrix: {q: [lo, hi]}
seeds: [1, 2]
""",
    )
    listed = [job.id for job in iter_jobs(spec)]
    count = count_unique_jobs(spec)
    assert count.total == len(set(listed)) == 2 * 2 * 2 * 3  # same, other, same+x
    assert count.duplicates == len(listed) - len(set(listed))
    assert count.per_provider == {"pixai": 12, "apixo": 12}
    assert count.merged_note() == f" ({count.duplicates} duplicates merged)"


# --- laziness -------------------------------------------------------------------------


def test_a_million_prompt_file_is_streamed(tmp_path: Path) -> None:
    lines = 1_000_000
    with (tmp_path / "big.txt").open("w") as handle:
        handle.writelines(f"prompt {i}\n" for i in range(lines))
    spec = load(tmp_path, "providers: {pixai: {}, apixo: {}}\nprompts: [{file: big.txt}]\n")

    started = time.perf_counter()
    tracemalloc.start()
    try:
        first = list(itertools.islice(iter_jobs(spec), 2000))
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - started < 5
    assert len(first) == 2000 and first[-1].prompt == "prompt 999"
    assert peak < 8 * 1024 * 1024  # a few MB for 2000 jobs, never the whole file

    tracemalloc.start()
    try:
        assert count_jobs(spec) == 2 * lines
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2 * 1024 * 1024


# --- id stability (contract 1) --------------------------------------------------------

BASE_SPEC: dict[str, Any] = {
    "name": "stable",
    "providers": {
        "pixai": {"concurrency": 2, "params": {"steps": 20, "style": "anime"}},
        "apixo": {"rate": "5/s", "params": {"model": "flux", "cfg": 7.5}},
    },
    "prompts": [
        "a cat",
        {
            "text": "a {animal} at {time}",
            "vars": {"animal": ["fox", "owl"], "time": ["dawn"]},
            "params": {"hdr": True},
        },
    ],
    "matrix": {
        "aspect_ratio": ["1:1", "16:9"],
        "quality": ["draft", "final"],
        "include": [{"provider": "apixo", "sampler": "euler"}],
        "exclude": [{"provider": "pixai", "quality": "draft"}],
    },
    "seeds": [1, 2],
    "repeats": 2,
}


def shuffled(value: Any, rng: random.Random) -> Any:
    """``value`` with every mapping's key order shuffled (lists keep their order)."""
    if isinstance(value, dict):
        keys = list(value)
        rng.shuffle(keys)
        return {key: shuffled(value[key], rng) for key in keys}
    if isinstance(value, list):
        return [shuffled(item, rng) for item in value]
    return value


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(seed=st.integers(min_value=0, max_value=2**32 - 1))
def test_reordering_yaml_keys_changes_no_id(tmp_path: Path, seed: int) -> None:
    original = set(ids(load_data(tmp_path, BASE_SPEC)))
    reordered = set(ids(load_data(tmp_path, shuffled(BASE_SPEC, random.Random(seed)))))
    assert reordered == original


@pytest.mark.parametrize(
    ("where", "value"),
    [
        (("matrix", "aspect_ratio"), "4:3"),
        (("matrix", "quality"), "ultra"),
        (("seeds",), 3),
        (("prompts",), "a new prompt"),
    ],
)
def test_adding_a_value_only_adds_ids(tmp_path: Path, where: tuple[str, ...], value: Any) -> None:
    before = set(ids(load_data(tmp_path, BASE_SPEC)))
    grown = json.loads(json.dumps(BASE_SPEC))
    target = grown
    for key in where:
        target = target[key]
    target.append(value)
    after = set(ids(load_data(tmp_path, grown)))
    assert before < after


def test_adding_a_provider_only_adds_ids(tmp_path: Path) -> None:
    before = set(ids(load_data(tmp_path, BASE_SPEC)))
    grown = json.loads(json.dumps(BASE_SPEC))
    grown["providers"]["pixellabs"] = {}
    assert before < set(ids(load_data(tmp_path, grown)))


def test_moving_a_parameter_between_levels_keeps_ids(tmp_path: Path) -> None:
    provider_level = load(tmp_path, "providers: {pixai: {params: {steps: 30}}}\nprompts: [x]\n")
    matrix_level = load(tmp_path, "providers: {pixai: {}}\nprompts: [x]\nmatrix: {steps: [30.0]}\n")
    assert ids(provider_level) == ids(matrix_level)


def test_ids_differ_across_replicates_providers_and_params(tmp_path: Path) -> None:
    all_ids = ids(load_data(tmp_path, BASE_SPEC))
    assert len(all_ids) == len(set(all_ids))
