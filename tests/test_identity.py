"""Job identity (contract 1), slugs, and output paths that cannot escape the root."""

from __future__ import annotations

import hashlib
import re
import string
import unicodedata
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.identity import (
    OUTPUT_FIELDS,
    canonical_json,
    check_path_template,
    job_id,
    render_output_path,
    resolve_inside,
    slugify,
)
from pipeline.models import Job

DEFAULT_TEMPLATE = "{provider}/{prompt_slug}/{job_id}-{index}.{ext}"

json_scalars = st.none() | st.booleans() | st.integers() | st.text(max_size=20)
json_values = st.recursive(
    json_scalars | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=10,
)
params_strategy = st.dictionaries(st.text(max_size=12), json_values, max_size=6)


def make_job(**overrides: Any) -> Job:
    fields: dict[str, Any] = {
        "id": "0123456789abcdef",
        "provider": "pixai",
        "model": None,
        "params": {"prompt": "a cat", "seed": 7},
        "replicate": 0,
        "prompt_slug": "a-cat",
    }
    fields.update(overrides)
    return Job(**fields)


# --- canonical JSON -------------------------------------------------------------------


def test_canonical_json_sorts_keys_compactly_and_keeps_unicode() -> None:
    assert canonical_json({"b": 1, "a": [1, 2], "é": "ü"}) == '{"a":[1,2],"b":1,"é":"ü"}'


def test_canonical_json_writes_integral_floats_as_ints_everywhere() -> None:
    assert canonical_json({"x": 2.0, "y": [3.0, 0.5], "z": -0.0}) == '{"x":2,"y":[3,0.5],"z":0}'


def test_canonical_json_keeps_booleans_apart_from_numbers() -> None:
    assert canonical_json([True, 1, False, 0]) == "[true,1,false,0]"


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), {"x": [float("-inf")]}])
def test_canonical_json_rejects_non_finite_numbers(bad: object) -> None:
    with pytest.raises(ValueError, match="JSON"):
        canonical_json(bad)


@pytest.mark.parametrize("bad", [{1: "x"}, {1, 2}, b"bytes", object()])
def test_canonical_json_rejects_what_json_cannot_hold(bad: object) -> None:
    with pytest.raises(TypeError):
        canonical_json(bad)


def test_canonical_json_treats_tuples_as_lists() -> None:
    assert canonical_json({"a": (1, 2)}) == canonical_json({"a": [1, 2]})


# --- job ids --------------------------------------------------------------------------


def test_job_id_is_pinned() -> None:
    """The contract: changing the id scheme would orphan every manifest. Do not edit."""
    params = {"prompt": "a cat", "seed": 1, "aspect_ratio": "16:9"}
    hashed = (
        '{"model":"flux","params":{"aspect_ratio":"16:9","prompt":"a cat","seed":1},'
        '"provider":"pixai","replicate":0,"v":1}'
    )
    assert job_id("pixai", "flux", params, 0) == hashlib.sha256(hashed.encode()).hexdigest()[:16]
    assert job_id("pixai", "flux", params, 0) == "9eb66792a859de91"
    assert re.fullmatch(r"[0-9a-f]{16}", job_id("pixai", None, {}, 0))


@given(params=params_strategy, data=st.data())
def test_job_id_ignores_key_order(params: dict[str, Any], data: st.DataObject) -> None:
    shuffled_keys = data.draw(st.permutations(list(params)))
    reordered = {key: params[key] for key in shuffled_keys}
    assert job_id("p", "m", reordered, 0) == job_id("p", "m", params, 0)


def test_job_id_ignores_number_spelling() -> None:
    assert job_id("p", None, {"steps": 30.0}, 0) == job_id("p", None, {"steps": 30}, 0)


@pytest.mark.parametrize(
    "changed",
    [
        {"provider": "other"},
        {"model": "flux"},
        {"replicate": 1},
        {"params": {"prompt": "a cat", "seed": 2}},
        {"params": {"prompt": "a cat!", "seed": 1}},
        {"params": {"prompt": "a cat", "seed": 1, "style": "anime"}},
        {"params": {"prompt": "a cat", "seed": "1"}},
    ],
)
def test_job_id_changes_with_anything_sent(changed: dict[str, Any]) -> None:
    base: dict[str, Any] = {
        "provider": "pixai",
        "model": None,
        "params": {"prompt": "a cat", "seed": 1},
        "replicate": 0,
    }
    assert job_id(**(base | changed)) != job_id(**base)


# --- slugs ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "slug"),
    [
        ("A Fox, at Dawn!", "a-fox-at-dawn"),
        ("Crème brûlée  -- café", "creme-brulee-cafe"),
        ("日本の猫", "prompt"),
        ("", "prompt"),
        ("---", "prompt"),
    ],
)
def test_slugify_examples(text: str, slug: str) -> None:
    assert slugify(text) == slug


def test_slugify_caps_length_without_trailing_dash() -> None:
    assert slugify("ab " * 50, max_len=9) == "ab-ab-ab"


@given(st.text(), st.integers(min_value=1, max_value=80))
def test_slugify_is_always_a_safe_non_empty_slug(text: str, max_len: int) -> None:
    slug = slugify(text, max_len=max_len)
    assert slug == "prompt" or (
        re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", slug) and len(slug) <= max_len
    )


# --- path templates -------------------------------------------------------------------


@pytest.mark.parametrize(
    "template",
    [
        DEFAULT_TEMPLATE,
        "{name}/{model}/{seed}/{replicate}/{job_id}_{index}.{ext}",
        "flat/{job_id}-{index}.{ext}",
    ],
)
def test_good_templates_pass(template: str) -> None:
    check_path_template(template)


@pytest.mark.parametrize(
    ("template", "complaint"),
    [
        ("{provider}/{prompt}/{job_id}-{index}.{ext}", "unknown field {prompt}"),
        ("{provider}/{prompt_slug}.{ext}", "must contain {job_id}"),
        ("{provider}/{job_id}.{ext}", "must contain {index}"),
        ("/abs/{job_id}-{index}", "relative"),
        ("C:/x/{job_id}-{index}", "relative"),
        ("{job_id-{index}", "syntax"),
        ("../{job_id}-{index}", "'..'"),
        ("a//{job_id}-{index}", "empty"),
        ("{job_id!r}-{index}", "conversions"),
        ("{job_id.real}-{index}", "plain names"),
        ("{provider:05d}/{job_id}-{index}", "format specs"),
        ("{job_id}-{index:03d}", "write {index}. Allowed fields: ext, index, job_id"),
        ("{job_id:>2000000000}-{index}", "no format specs, conversions or widths"),
    ],
)
def test_bad_templates_say_what_is_wrong(template: str, complaint: str) -> None:
    with pytest.raises(ValueError, match=re.escape(complaint)):
        check_path_template(template)


def test_every_output_field_is_usable() -> None:
    check_path_template("/".join(f"{{{name}}}" for name in sorted(OUTPUT_FIELDS)))


# --- rendering ------------------------------------------------------------------------


def test_render_default_template() -> None:
    path = render_output_path(DEFAULT_TEMPLATE, make_job(), index=0, ext="png", spec_name="s")
    assert path == PurePosixPath("pixai/a-cat/0123456789abcdef-0.png")


def test_render_fills_every_field() -> None:
    template = "{name}/{model}/{seed}/{replicate}/{job_id}-{index}.{ext}"
    job = make_job(model="org/flux:dev", replicate=2)
    path = render_output_path(template, job, index=3, ext=".JPEG", spec_name="run")
    assert path == PurePosixPath("run/org_flux_dev/7/2/0123456789abcdef-3.jpeg")


def test_render_absent_model_and_seed_as_none() -> None:
    job = make_job(params={"prompt": "x"})
    path = render_output_path("{model}/{seed}/{job_id}-{index}", job, index=0, ext="", spec_name="")
    assert path == PurePosixPath("none/none/0123456789abcdef-0")


def test_render_caps_long_components_but_keeps_them_distinct() -> None:
    template = "{name}{name}{name}-{job_id}-{index}.{ext}"
    first = render_output_path(template, make_job(), index=0, ext="png", spec_name="n" * 60)
    second = render_output_path(
        template, make_job(id="fedcba9876543210"), index=0, ext="png", spec_name="n" * 60
    )
    assert len(first.name) <= 120 and first.suffix == ".png"
    assert first != second


def test_render_neutralises_reserved_names_and_dots() -> None:
    job = make_job(provider="..", model="CON")
    path = render_output_path(
        "{provider}/{model}/{job_id}-{index}", job, index=0, ext="x", spec_name=""
    )
    assert path.parts == ("_", "_CON", "0123456789abcdef-0")


hostile_text = st.text(max_size=200) | st.sampled_from(
    [
        "..",
        "../../etc/passwd",
        "/",
        "\\..\\",
        "\x00",
        "CON",
        "a/../../b",
        ".",
        " .. ",
        "\ud800\u202e",
    ]
)


@settings(max_examples=300, deadline=None)
@given(
    prompt=hostile_text,
    provider=hostile_text,
    model=st.none() | hostile_text,
    seed=st.none() | st.integers() | hostile_text,
    ext=hostile_text,
    name=hostile_text,
    template=st.sampled_from(
        [
            DEFAULT_TEMPLATE,
            "{name}/{model}/{seed}/{provider}/{job_id}-{index}.{ext}",
            "{provider}{model}{seed}{name}{prompt_slug}{job_id}{index}{ext}",
        ]
    ),
)
def test_no_output_path_leaves_the_root(
    prompt: str,
    provider: str,
    model: str | None,
    seed: object,
    ext: str,
    name: str,
    template: str,
) -> None:
    job = make_job(
        provider=provider, model=model, params={"prompt": prompt, "seed": seed}, prompt_slug=""
    )
    rel = render_output_path(template, job, index=1, ext=ext, spec_name=name)
    assert not rel.is_absolute()
    for part in rel.parts:
        assert part not in ("", ".", "..")
        assert len(part) <= 120 and len(part.encode()) <= 240
        assert not any(ch in part for ch in "\\/:*?<>|")
        assert not any(unicodedata.category(ch) in {"Cc", "Cf", "Cs", "Zl", "Zp"} for ch in part)
    root = Path("/srv/out")
    resolved = resolve_inside(root, rel)
    assert resolved.is_relative_to(root) and resolved != root


@pytest.mark.parametrize("rel", ["../x", "a/../../x", "/etc/passwd", ".", "a/.."])
def test_resolve_inside_refuses_paths_outside_root(rel: str) -> None:
    with pytest.raises(ValueError, match="not inside"):
        resolve_inside(Path("/srv/out"), PurePosixPath(rel))


def test_resolve_inside_accepts_a_normal_path(tmp_path: Path) -> None:
    assert resolve_inside(tmp_path, PurePosixPath("a/b.png")) == tmp_path / "a" / "b.png"


def test_template_field_names_are_the_documented_set() -> None:
    assert {
        "provider",
        "model",
        "prompt_slug",
        "job_id",
        "index",
        "replicate",
        "seed",
        "ext",
        "name",
    } == OUTPUT_FIELDS
    assert all(set(name) <= set(string.ascii_lowercase + "_") for name in OUTPUT_FIELDS)
