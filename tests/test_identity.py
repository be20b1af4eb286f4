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
        ("Ünïcödé café", "unicode-cafe"),
        ("東京の夜景", "dong-jingno-ye-jing"),
        ("日本の猫", "ri-benno-mao"),
        ("Tokyo東京 at night", "tokyo-dong-jing-at-night"),
        ("Привет, мир", "privet-mir"),
        ("Straße", "strasse"),
        ("🦊", "fox"),
        ("🦊🌙", "fox-crescent-moon"),
        ("CAFÉ", "cafe"),
        ("\u200b", "prompt"),
        ("", "prompt"),
        ("---", "prompt"),
    ],
)
def test_slugify_examples(text: str, slug: str) -> None:
    assert slugify(text) == slug


def test_slugify_caps_length_without_trailing_dash() -> None:
    assert slugify("ab " * 50, max_len=9) == "ab-ab-ab"


def _slug_before_transliteration(text: str, max_len: int = 60) -> str:
    """The slug of every earlier version: accents dropped by NFKD, other letters lost."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_text.lower()).strip("-")
    return slug[:max_len].rstrip("-") or "prompt"


@given(st.text(alphabet=st.characters(max_codepoint=127)), st.integers(1, 80))
def test_ascii_prompts_keep_the_slugs_they_always_had(text: str, max_len: int) -> None:
    assert slugify(text, max_len=max_len) == _slug_before_transliteration(text, max_len)


def test_slugify_is_stable_for_an_emoji_prompt() -> None:
    assert slugify("🦊🦊") == slugify("🦊🦊") == "fox-fox"


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
        "{provider}/{prompt_slug}/seed{seed}-{job_id}-{index}.{ext}",
        "{job_id}/{index}.{ext}",
        "{job_id}/{style}-{index}.{ext}",
        "{meta.id}_{job_id}_{index}.{ext}",
        "{provider}/{aspect_ratio}/{style}/{job_id}-{index}.{ext}",
        "{index}-{job_id}",
    ],
)
def test_good_templates_pass(template: str) -> None:
    check_path_template(template)


def test_check_names_the_parameter_and_metadata_fields_used() -> None:
    used = check_path_template("{provider}/{aspect_ratio}/{meta.category}/{job_id}-{index}.{ext}")
    assert used == {"aspect_ratio", "meta.category"}


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
        ("{meta.}/{job_id}-{index}", "plain names"),
        ("{meta.a.b}/{job_id}-{index}", "plain names"),
        ("{a[0]}/{job_id}-{index}", "plain names"),
        # uniqueness: the job id and output index must be readable back from every path
        ("{style}/{prompt_slug}.{ext}", "must contain {job_id}"),
        ("{job_id}-{index}-{style}.{ext}", "after every other field"),
        ("{style}{job_id}{index}.{ext}", "after every other field"),
        ("{job_id}{index}.{ext}", "after every other field"),
        ("{job_id}-{index}{ext}", "after every other field"),
        ("{job_id}x/{style}-{index}.{ext}", "after every other field"),
        ("{job_id}-{index}-" + "x" * 41 + ".{ext}", "at most 40 characters"),
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


# --- parameters and metadata in templates -----------------------------------------------

PARAM_TEMPLATE = "{provider}/{aspect_ratio}/{style}/{meta.category}/{job_id}-{index}.{ext}"


def test_render_parameters_and_metadata() -> None:
    job = make_job(
        params={"prompt": "a cat", "aspect_ratio": "16:9", "style": "anime"},
        meta={"category": "Birds/Owls"},
    )
    path = render_output_path(PARAM_TEMPLATE, job, index=2, ext="png", spec_name="s")
    assert path == PurePosixPath("pixai/16x9/anime/Birds_Owls/0123456789abcdef-2.png")


def test_render_missing_parameters_and_metadata_as_none() -> None:
    path = render_output_path(PARAM_TEMPLATE, make_job(), index=0, ext="png", spec_name="s")
    assert path == PurePosixPath("pixai/none/none/none/0123456789abcdef-0.png")


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ("4:3", "4x3"),
        ("2.39:1", "2.39x1"),
        ("a:b", "a_b"),
        (True, "true"),
        (False, "false"),
        (None, "none"),
        (1.0, "1"),
        (0.25, "0.25"),
        (7, "7"),
        (["a", 1], "a+1"),
        ({"k": "v"}, "{_k___v_}"),
        ("", "_"),
        ("..", "_"),
        ("CON", "_CON"),
    ],
)
def test_parameter_values_render_readably_and_safely(value: object, text: str) -> None:
    job = make_job(params={"prompt": "x", "v": value})
    path = render_output_path("{v}/{job_id}-{index}", job, index=0, ext="", spec_name="")
    assert path.parts[0] == text


def test_capping_a_long_file_name_keeps_its_job_id_and_index() -> None:
    job = make_job(meta={"title": "t" * 200}, params={"prompt": "x", "style": "é" * 200})
    template = "{meta.title}{style}-{job_id}-{index}.{ext}"
    path = render_output_path(template, job, index=12, ext="png", spec_name="")
    assert len(path.name) <= 120 and len(path.name.encode()) <= 240
    assert path.name.endswith("-0123456789abcdef-12.png")


HEX = "0123456789abcdef"
job_ids = st.text(alphabet=HEX, min_size=16, max_size=16)
ACCEPTED = [
    DEFAULT_TEMPLATE,
    PARAM_TEMPLATE,
    "{style}-{job_id}-{index}.{ext}",
    "{meta.category}{style}_{job_id}_{index}.{ext}",
    "{style}/{job_id}/{meta.category}-{index}.{ext}",
    "{index}-{job_id}",
    "{style} {job_id}.{index}.{ext} ",
]


@st.composite
def hostile_jobs(draw: st.DrawFn, own_id: str, other_id: str) -> Job:
    """A job whose values are hostile, some spelling out another job's id and index."""
    forged = st.sampled_from(
        [
            *(f"-{other_id}-0", other_id, f"x_{other_id}_1", f"{other_id}-0.png", ""),
            *(f"{other_id}.0", other_id[:1], other_id[1:], other_id[:-1], f"{other_id}1", "1"),
        ]
    )
    value = hostile_text | forged | json_scalars
    params = {"prompt": draw(hostile_text), "style": draw(value)}
    if draw(st.booleans()):
        params["aspect_ratio"] = draw(value)
    meta = {"category": draw(value)} if draw(st.booleans()) else {}
    slug = draw(st.just("") | hostile_text | forged)
    return make_job(id=own_id, params=params, meta=meta, prompt_slug=slug)


exts = hostile_text | st.sampled_from(["png", "1png", "11", "0", "mp4", "1.png"])


@settings(max_examples=500, deadline=None)
@given(data=st.data(), template=st.sampled_from(ACCEPTED))
def test_distinct_outputs_never_share_a_path(data: st.DataObject, template: str) -> None:
    check_path_template(template)
    id_a, id_b = data.draw(job_ids), data.draw(job_ids)
    first = data.draw(hostile_jobs(id_a, id_b))
    same_job = data.draw(st.booleans())  # then two outputs of one job (one id, one set of values)
    second = first if same_job else data.draw(hostile_jobs(id_b, id_a))
    index_a, index_b = data.draw(st.integers(0, 12)), data.draw(st.integers(0, 12))
    a = render_output_path(template, first, index=index_a, ext=data.draw(exts), spec_name="s")
    b = render_output_path(template, second, index=index_b, ext=data.draw(exts), spec_name="s")
    if (first.id, index_a) != (second.id, index_b):
        assert a != b, (template, first, second)


@settings(max_examples=300, deadline=None)
@given(
    values=st.dictionaries(st.sampled_from(["style", "aspect_ratio", "quality"]), json_values),
    meta=st.dictionaries(st.just("category"), json_scalars | hostile_text),
    template=st.sampled_from(ACCEPTED),
)
def test_any_parameter_value_renders_inside_the_root(
    values: dict[str, Any], meta: dict[str, Any], template: str
) -> None:
    job = make_job(params={"prompt": "x", **values}, meta=meta)
    rel = render_output_path(template, job, index=0, ext="png", spec_name="s")
    for part in rel.parts:
        assert part not in ("", ".", "..")
        assert len(part) <= 120 and len(part.encode()) <= 240
        assert not any(ch in part for ch in "\\/:*?<>|")
        assert not any(unicodedata.category(ch) in {"Cc", "Cf", "Cs", "Zl", "Zp"} for ch in part)
    root = Path("/srv/out")
    assert resolve_inside(root, rel).is_relative_to(root)


@pytest.mark.parametrize(
    ("template", "first", "second"),
    [  # (job id, index, ext, slug) of two outputs that the template would put in one file
        ("{job_id}-{index}{ext}", (HEX, 1, "1png", "a"), (HEX, 11, "png", "a")),
        (
            "{prompt_slug}{job_id}{index}.{ext}",
            (HEX, 11, "png", "a"),
            (HEX[1:] + "1", 1, "png", "a" + HEX[0]),
        ),
    ],
)
def test_a_refused_template_really_loses_outputs(
    template: str, first: tuple[str, int, str, str], second: tuple[str, int, str, str]
) -> None:
    paths = [
        render_output_path(
            template, make_job(id=job, prompt_slug=slug), index=index, ext=ext, spec_name=""
        )
        for job, index, ext, slug in (first, second)
    ]
    assert paths[0] == paths[1]  # two outputs, one file: why check_path_template refuses it
    with pytest.raises(ValueError, match="after every other field"):
        check_path_template(template)
