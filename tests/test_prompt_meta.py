"""Prompt metadata (issue 12, item 1): carried by prompt files and inline prompts into
``Job.meta``, never into the parameters sent to a provider, and not part of a job's id."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.errors import SpecError
from pipeline.matrix import count_unique_jobs, iter_jobs
from pipeline.models import PromptFile, TemplatePrompt
from pipeline.spec.schema import FileItem, TemplateItem

from .test_spec import REPO, load, load_error


def files(tmp_path: Path, **contents: str) -> None:
    for name, text in contents.items():
        (tmp_path / name.replace("_", ".")).write_text(text, encoding="utf-8")


def jobs_by_prompt(spec_text: str, tmp_path: Path) -> dict[str, list]:
    spec = load(tmp_path, spec_text)
    found: dict[str, list] = {}
    for job in iter_jobs(spec):
        found.setdefault(job.prompt, []).append(job)
    return found


def test_a_jsonl_meta_object_is_metadata_not_a_parameter(tmp_path: Path) -> None:
    files(
        tmp_path,
        p_jsonl='{"prompt": "a cat", "style": "anime", "meta": {"id": 7, "tag": "pet", '
        '"ok": true, "w": 0.5, "none": null}}\n{"prompt": "a dog"}\n',
    )
    jobs = jobs_by_prompt("providers: {pixai: {}}\nprompts: [{file: p.jsonl}]\n", tmp_path)
    (cat,), (dog,) = jobs["a cat"], jobs["a dog"]
    assert cat.meta == {"id": 7, "tag": "pet", "ok": True, "w": 0.5, "none": None}
    assert cat.params == {"prompt": "a cat", "style": "anime"}
    assert dog.meta == {}


def test_declared_jsonl_keys_are_metadata(tmp_path: Path) -> None:
    files(
        tmp_path,
        p_jsonl='{"prompt": "a cat", "id": 1, "category": "animals", "meta": {"x": 2}}\n'
        '{"prompt": "a car", "id": 2}\n',
    )
    spec_text = "providers: {pixai: {}}\nprompts:\n  - file: p.jsonl\n    meta: [id, category]\n"
    jobs = jobs_by_prompt(spec_text, tmp_path)
    assert jobs["a cat"][0].meta == {"id": 1, "category": "animals", "x": 2}
    assert jobs["a cat"][0].params == {"prompt": "a cat"}
    assert jobs["a car"][0].meta == {"id": 2}  # a key a line lacks is simply absent


def test_declared_csv_columns_are_metadata_with_a_template_or_a_column(tmp_path: Path) -> None:
    files(tmp_path, p_csv="subject,mood,id\na fisherman,golden hour,7\nan astronaut,neon,8\n")
    spec_text = """
        providers: {pixai: {}}
        prompts:
          - file: p.csv
            text: "portrait of {subject}, {mood} lighting"
            meta: [id, mood]
          - file: p.csv
            column: subject
            meta: [id]
    """
    jobs = jobs_by_prompt(spec_text, tmp_path)
    templated = jobs["portrait of a fisherman, golden hour lighting"][0]
    assert templated.meta == {"id": "7", "mood": "golden hour"}  # CSV cells are text
    assert templated.params == {"prompt": templated.prompt}
    assert jobs["an astronaut"][0].meta == {"id": "8"}


def test_inline_meta_on_a_prompt_and_on_every_prompt_of_a_template(tmp_path: Path) -> None:
    spec_text = """
        providers: {pixai: {}}
        prompts:
          - text: a cat
            meta: {category: animals, id: 1}
          - text: "a {animal} astronaut"
            vars: {animal: [corgi, fox]}
            meta: {category: space}
          - a plain prompt
    """
    jobs = jobs_by_prompt(spec_text, tmp_path)
    assert jobs["a cat"][0].meta == {"category": "animals", "id": 1}
    assert jobs["a corgi astronaut"][0].meta == {"animal": "corgi", "category": "space"}
    assert jobs["a fox astronaut"][0].meta == {"animal": "fox", "category": "space"}
    assert jobs["a plain prompt"][0].meta == {}
    assert all("category" not in job.params for js in jobs.values() for job in js)


def test_meta_is_not_part_of_the_job_id_and_plan_counts_the_second_as_a_duplicate(
    tmp_path: Path,
) -> None:
    spec_text = """
        providers: {pixai: {}}
        prompts:
          - text: a cat
            meta: {id: 1}
          - text: a cat
            meta: {id: 2}
    """
    spec = load(tmp_path, spec_text)
    first, second = iter_jobs(spec)
    assert first.id == second.id and first.meta != second.meta
    assert count_unique_jobs(spec).duplicates == 1


@pytest.mark.parametrize(
    ("line", "bad"),
    [
        ('{"prompt": "a", "meta": {"tags": ["x"]}}', "tags"),
        ('{"prompt": "a", "meta": {"deep": {"x": 1}}}', "deep"),
        ('{"prompt": "a", "id": [1], "meta": {}}', "id"),
        ('{"prompt": "a", "meta": ["x"]}', "meta"),
    ],
)
def test_a_non_scalar_jsonl_value_is_a_spec_error_at_its_line(
    tmp_path: Path, line: str, bad: str
) -> None:
    files(tmp_path, p_jsonl='{"prompt": "fine", "meta": {"id": 1}}\n\n' + line + "\n")
    spec = load(tmp_path, "providers: {pixai: {}}\nprompts:\n  - file: p.jsonl\n    meta: [id]\n")
    with pytest.raises(SpecError) as caught:
        list(iter_jobs(spec))
    error = caught.value
    assert error.file is not None and error.file.endswith("p.jsonl")
    assert error.line == 3
    assert bad in error.message


def test_a_non_scalar_inline_value_is_a_spec_error_at_its_line(tmp_path: Path) -> None:
    error = load_error(
        tmp_path,
        """
        providers: {pixai: {}}
        prompts:
          - text: a cat
            meta:
              id: 1
              tags: [a, b]
        """,
    )
    assert error.line == 6
    assert error.path == "prompts[0].meta.tags"
    assert "tags" in error.message and "str" in error.message


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("{file: p.csv, text: '{subject}', meta: [nope]}", "no column 'nope'"),
        ("{file: p.txt, meta: [id]}", "csv and jsonl"),
        ("{file: p.jsonl, meta: [prompt]}", "prompt"),
        ("{file: p.jsonl, meta: [id, id]}", "twice"),
    ],
)
def test_bad_meta_declarations_are_spec_errors_at_the_spec_line(
    tmp_path: Path, item: str, message: str
) -> None:
    files(tmp_path, p_csv="subject\nx\n", p_txt="a cat\n", p_jsonl='{"prompt": "a"}\n')
    error = load_error(tmp_path, f"providers: {{pixai: {{}}}}\nprompts:\n  - {item}\n")
    assert message in error.message
    assert error.line == 3


def test_meta_key_descriptions_are_the_dataclasses() -> None:
    """One definition per field: the schema's `meta` keys take their text from the models."""
    for model, cls in ((TemplateItem, TemplatePrompt), (FileItem, PromptFile)):
        info = model.model_fields["meta"]
        spec_field = next(f for f in cls.__dataclass_fields__.values() if f.name == "meta")
        assert info.description == spec_field.metadata["description"]
    schema = json.loads((REPO / "pipeline" / "schema.json").read_text(encoding="utf-8"))
    assert "meta" in schema["$defs"]["TemplateItem"]["properties"]
    assert "meta" in schema["$defs"]["FileItem"]["properties"]


def test_plan_shows_the_metadata_apart_from_the_request(tmp_path: Path) -> None:
    from pipeline.commands import plan_text

    spec = load(tmp_path, "providers: {pixai: {}}\nprompts:\n  - {text: a cat, meta: {id: 71}}\n")
    lines = "\n".join(plan_text(spec)).splitlines()
    job_lines = [line.strip() for line in lines if line.startswith("      ")]
    assert job_lines[1] == 'meta:    {"id": 71} (recorded, not sent)'
    assert job_lines[2].startswith("request:") and "71" not in job_lines[2]


def test_a_template_records_its_vars_as_metadata_and_its_own_meta_wins(tmp_path: Path) -> None:
    spec_text = """
        providers: {pixai: {}}
        output: {path: "{provider}/{meta.animal}/{job_id}-{index}.{ext}"}
        prompts:
          - text: "a {animal} on {planet}"
            vars: {animal: [corgi, fox], planet: [Mars]}
            meta: {planet: the red one}
    """
    jobs = jobs_by_prompt(spec_text, tmp_path)
    assert jobs["a corgi on Mars"][0].meta == {"animal": "corgi", "planet": "the red one"}
    assert jobs["a fox on Mars"][0].meta == {"animal": "fox", "planet": "the red one"}
    assert all("animal" not in job.params for js in jobs.values() for job in js)
