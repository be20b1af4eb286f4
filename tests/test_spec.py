"""Loading specs: every prompt source, env expansion, defaults, and clear errors."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.errors import SpecError
from pipeline.matrix import iter_jobs
from pipeline.models import PlainPrompt, PromptFile, Rate, Spec, TemplatePrompt
from pipeline.prompts import iter_prompts
from pipeline.spec.load import load_spec, parse_duration, parse_rate, spec_json_schema

KNOWN = ("pixai", "pixellabs", "apixo")
REPO = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str, name: str = "spec.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def load(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> Spec:
    return load_spec(write(tmp_path, text), known_providers=KNOWN, env=env or {})


def load_error(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> SpecError:
    with pytest.raises(SpecError) as caught:
        load(tmp_path, text, env)
    return caught.value


def prompts_of(spec: Spec) -> list[str]:
    return [prompt.text for source in spec.prompts for prompt in iter_prompts(source)]


MINIMAL = """
providers:
  pixai: {}
prompts: [a cat]
"""


# --- a full spec and defaults -----------------------------------------------------------


def test_full_spec_loads_into_the_dataclasses(tmp_path: Path) -> None:
    spec = load(
        tmp_path,
        """
        version: 1
        name: quickstart
        output:
          root: results
          path: "{provider}/{job_id}-{index}.{ext}"
        providers:
          main:
            type: pixellabs
            api_key: ${PIXELLABS_API_KEY}
            base_url: https://api.example
            concurrency: 8
            rate: 60/min
            params: {style: anime}
            options: {completion: poll}
            emulate: {task_seconds: 2, failure_rate: 0.1}
          pixai:
            emulate: true
        prompts: [a cat]
        seeds: [1, 2, 3]
        repeats: 2
        run:
          deadline: 30m
          poll: {initial: 500ms, max: 1m, factor: 2}
          http_timeout: 90
          retries: 3
        """,
        env={"PIXELLABS_API_KEY": "sk-secret"},
    )
    main = spec.providers["main"]
    assert (main.type, main.api_key, main.base_url) == (
        "pixellabs",
        "sk-secret",
        "https://api.example",
    )
    assert (main.concurrency, main.rate) == (8, Rate(60, 60.0))
    assert main.params == {"style": "anime"} and main.options == {"completion": "poll"}
    assert main.emulate == {"task_seconds": 2, "failure_rate": 0.1}
    assert spec.providers["pixai"].emulate == {}
    assert spec.output.root == Path.cwd() / "results"
    assert spec.output.path == "{provider}/{job_id}-{index}.{ext}"
    assert (spec.run.deadline, spec.run.poll_initial, spec.run.poll_max) == (1800, 0.5, 60)
    assert (spec.run.poll_factor, spec.run.http_timeout, spec.run.retries) == (2, 90, 3)
    assert spec.seeds == (1, 2, 3) and spec.repeats == 2
    assert spec.base_dir == tmp_path and spec.source == tmp_path / "spec.yaml"
    assert "sk-secret" not in json.dumps(spec.raw)  # raw is the spec before ${VAR} expansion


def test_defaults(tmp_path: Path) -> None:
    spec = load(tmp_path, MINIMAL)
    provider = spec.providers["pixai"]
    assert spec.name == "spec"  # the file stem
    assert spec.output.root == Path.cwd() / "out" / "spec"
    assert spec.output.path == "{provider}/{prompt_slug}/{job_id}-{index}.{ext}"
    assert (provider.type, provider.concurrency, provider.rate, provider.emulate) == (
        "pixai",
        4,
        None,
        None,
    )
    assert (spec.run.deadline, spec.run.retries, spec.seeds, spec.repeats) == (1800, 6, None, 1)
    assert spec.matrix.dimensions == (("provider", ("pixai",)),)


def test_yaml_1_1_surprises_are_plain_strings(tmp_path: Path) -> None:
    spec = load(
        tmp_path,
        """
        providers:
          pixai: {params: {ratio: 16:9, flag: on, day: 2024-01-02, octal: 0755, yes_no: no}}
        prompts: [x]
        """,
    )
    assert spec.providers["pixai"].params == {
        "ratio": "16:9",
        "flag": "on",
        "day": "2024-01-02",
        "octal": "0755",
        "yes_no": "no",
    }


# --- prompt sources -------------------------------------------------------------------


def test_every_kind_of_prompt_source(tmp_path: Path) -> None:
    (tmp_path / "prompts").mkdir()
    write(tmp_path, "# heading\nfirst line\n\n  second line  \n", "prompts/list.txt")
    write(tmp_path, 'id,prompt,mood\n1,csv one,calm\n2,"csv, two",wild\n', "prompts/p.csv")
    write(tmp_path, '{"prompt": "json one", "steps": 20}\n\n{"prompt": "json two"}\n', "p.jsonl")
    spec = load(
        tmp_path,
        """
        providers: {pixai: {}}
        prompts:
          - plain {not a template}
          - {text: "a {animal} at {time}, {{literal}}", vars: {animal: [cat, fox], time: dawn}}
          - {file: prompts/list.txt}
          - {file: prompts/p.csv}
          - {file: prompts/p.csv, text: "{prompt} ({mood})", params: {batch: csv}}
          - {file: p.jsonl, params: {steps: 10, hdr: true}}
        """,
    )
    kinds = [type(source) for source in spec.prompts]
    assert kinds == [PlainPrompt, TemplatePrompt, PromptFile, PromptFile, PromptFile, PromptFile]
    assert prompts_of(spec) == [
        "plain {not a template}",
        "a cat at dawn, {literal}",
        "a fox at dawn, {literal}",
        "first line",
        "second line",
        "csv one",
        "csv, two",
        "csv one (calm)",
        "csv, two (wild)",
        "json one",
        "json two",
    ]
    jsonl = list(iter_prompts(spec.prompts[5]))
    assert [dict(p.params) for p in jsonl] == [
        {"steps": 20, "hdr": True},
        {"steps": 10, "hdr": True},
    ]
    assert next(iter_prompts(spec.prompts[4])).params == {"batch": "csv"}


def test_csv_column_can_be_chosen(tmp_path: Path) -> None:
    write(tmp_path, "text,other\nhello,x\n", "p.csv")
    spec = load(tmp_path, "providers: {pixai: {}}\nprompts: [{file: p.csv, column: text}]\n")
    assert prompts_of(spec) == ["hello"]


def test_template_product_covers_every_combination(tmp_path: Path) -> None:
    spec = load(
        tmp_path,
        """
        providers: {pixai: {}}
        prompts:
          - text: "{a}-{b}-{c}"
            vars: {a: [1, 2], b: [x, y, z], c: [true]}
        """,
    )
    assert prompts_of(spec) == [f"{a}-{b}-true" for a in (1, 2) for b in "xyz"]


# --- ${VAR} ---------------------------------------------------------------------------


def test_env_expansion(tmp_path: Path) -> None:
    spec = load(
        tmp_path,
        """
        providers:
          pixai:
            api_key: ${KEY}
            base_url: ${BASE:-http://localhost:8080}
            params:
              note: costs $$5, literal $${KEY}
              empty: ${EMPTY:-fallback}
              nested: [a-$$, "a-${KEY}"]
        prompts: ["${KEY} in a prompt"]
        """,
        env={"KEY": "k1", "EMPTY": ""},
    )
    pixai = spec.providers["pixai"]
    assert pixai.api_key == "k1" and pixai.base_url == "http://localhost:8080"
    assert pixai.params == {
        "note": "costs $$5, literal ${KEY}",
        "empty": "fallback",
        "nested": ["a-$$", "a-k1"],
    }
    assert prompts_of(spec) == ["k1 in a prompt"]


def test_env_defaults_to_os_environ(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIPELINE_TEST_KEY", "from-os")
    path = write(tmp_path, "providers: {pixai: {api_key: '${PIPELINE_TEST_KEY}'}}\nprompts: [x]\n")
    assert load_spec(path, known_providers=KNOWN).providers["pixai"].api_key == "from-os"


# --- errors: file:line, path and what to do ---------------------------------------------


@pytest.mark.parametrize(
    ("text", "line", "path", "says"),
    [
        pytest.param(
            "providers:\n  pixai: {type: pixai\nprompts: [x]\n",
            3,
            None,
            "YAML syntax error",
            id="yaml-syntax",
        ),
        pytest.param(
            "providers:\n  pixai: {}\n  midjourney: {}\nprompts: [x]\n",
            3,
            "providers.midjourney.type",
            "unknown provider type 'midjourney'",
            id="unknown-provider",
        ),
        pytest.param(
            "providers:\n  pixai:\n    concurrency: lots\nprompts: [x]\n",
            3,
            "providers.pixai.concurrency",
            "expected a whole number, got 'lots'",
            id="wrong-type",
        ),
        pytest.param(
            "providers:\n  pixai:\n    api_key: x\n    ratelimit: 5/s\nprompts: [x]\n",
            4,
            "providers.pixai.ratelimit",
            "unknown key 'ratelimit'; allowed keys: type, api_key",
            id="unknown-key",
        ),
        pytest.param(
            "providers: {pixai: {}}\nprompts: [x]\nmatirx: {}\n",
            3,
            "matirx",
            "allowed keys: version, name, output, providers, prompts, matrix",
            id="unknown-top-level-key",
        ),
        pytest.param(
            "providers:\n  pixai:\n    api_key: ${PIXAI_KEY}\nprompts: [x]\n",
            3,
            "providers.pixai.api_key",
            "environment variable PIXAI_KEY is not set",
            id="missing-env",
        ),
        pytest.param(
            "providers:\n  pixai:\n    rate: 5/fortnight\nprompts: [x]\n",
            3,
            "providers.pixai.rate",
            "bad rate '5/fortnight'",
            id="bad-rate",
        ),
        pytest.param(
            "providers: {pixai: {}}\nprompts: [x]\nrun:\n  poll:\n    max: soon\n",
            5,
            "run.poll.max",
            "bad duration 'soon'",
            id="bad-duration",
        ),
        pytest.param(
            "providers: {pixai: {}}\nprompts: [x]\noutput:\n  path: '{provider}/{prompt}.{ext}'\n",
            4,
            "output.path",
            "unknown field {prompt}",
            id="bad-path-template",
        ),
        pytest.param(
            "providers: {pixai: {}}\nprompts:\n  - x\n  - file: missing.txt\n",
            4,
            "prompts[1].file",
            "prompt file not found",
            id="missing-prompt-file",
        ),
        pytest.param(
            "providers: {pixai: {}}\nprompts:\n  - text: 'a {animal}'\n    vars: {animl: [cat]}\n",
            3,
            "prompts[0].text",
            "unknown variable {animal}",
            id="unknown-template-variable",
        ),
        pytest.param(
            "providers: {pixai: {}}\nprompts:\n  - x\n  - 42\n",
            4,
            "prompts[1]",
            "a prompt is text",
            id="bad-prompt-item",
        ),
        pytest.param(
            "providers: {pixai: {}}\nprompts: [x]\nmatrix:\n  provider: [pixai, apixo]\n",
            4,
            "matrix.provider[1]",
            "provider 'apixo' is not defined",
            id="matrix-unknown-provider",
        ),
        pytest.param(
            "providers: {pixai: {}}\nprompts: [x]\nmatrix:\n  s: [a]\n  exclude:\n    - {t: a}\n",
            6,
            "matrix.exclude[0].t",
            "not a matrix dimension",
            id="exclude-unknown-key",
        ),
        pytest.param(
            "providers: {pixai: {}}\nprompts: [x]\nseeds: [1, 2, 1]\n",
            3,
            "seeds[2]",
            "seed 1 is listed twice",
            id="duplicate-seed",
        ),
        pytest.param(
            "providers:\n  pixai: {}\n  pixai: {}\nprompts: [x]\n",
            3,
            "providers.pixai",
            "duplicate key",
            id="duplicate-key",
        ),
        pytest.param(
            "version: 2\nproviders: {pixai: {}}\nprompts: [x]\n",
            1,
            "version",
            "expected one of 1, got 2",
            id="version",
        ),
        pytest.param(
            "name: x\nprompts: [x]\n",
            1,
            "providers",
            "required",
            id="missing-providers",
        ),
        pytest.param(
            "providers:\n  Pix AI: {type: pixai}\nprompts: [x]\n",
            2,
            "providers.Pix AI",
            "bad provider name",
            id="bad-provider-name",
        ),
        pytest.param(
            "providers:\n  pixai:\n    emulate: 5\nprompts: [x]\n",
            3,
            "providers.pixai.emulate",
            "emulate is true, false, or a mapping",
            id="bad-emulate",
        ),
        pytest.param(
            "providers:\n  pixai:\n    params: {prompt: x}\nprompts: [x]\n",
            3,
            "providers.pixai.params",
            "'prompt' is set from prompts:",
            id="prompt-as-param",
        ),
    ],
)
def test_bad_specs_name_file_line_and_field(
    tmp_path: Path, text: str, line: int, path: str | None, says: str
) -> None:
    error = load_error(tmp_path, text)
    assert (error.file, error.line, error.path) == (str(tmp_path / "spec.yaml"), line, path)
    assert says in error.message
    assert error.render().startswith(f"{tmp_path / 'spec.yaml'}:{line}: ")
    assert error.exit_code == 2


def test_unknown_provider_hint_lists_known_types(tmp_path: Path) -> None:
    error = load_error(tmp_path, "providers:\n  x: {type: dalle}\nprompts: [p]\n")
    assert error.hint is not None and "apixo, pixai, pixellabs" in error.hint


def test_missing_env_hint_says_export(tmp_path: Path) -> None:
    error = load_error(tmp_path, "providers: {pixai: {api_key: '${K}'}}\nprompts: [p]\n")
    assert error.hint == "export K=... before running"


def test_secrets_stay_out_of_error_messages(tmp_path: Path) -> None:
    error = load_error(
        tmp_path,
        "providers:\n  pixai:\n    api_key: ${K}\n    concurrency: ${K}\nprompts: [p]\n",
        env={"K": "sk-very-secret"},
    )
    assert error.path == "providers.pixai.concurrency"
    assert "sk-very-secret" not in error.render()


def test_unreadable_spec_file(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="cannot read the spec"):
        load_spec(tmp_path / "nope.yaml", known_providers=KNOWN)


@pytest.mark.parametrize("text", ["", "- a list\n", "just text\n"])
def test_a_spec_must_be_a_mapping(tmp_path: Path, text: str) -> None:
    error = load_error(tmp_path, text)
    assert "a spec is a mapping" in error.message
    assert error.hint is not None and "pipeline init" in error.hint  # installed users lack specs/


def test_bad_csv_column_is_reported_at_load(tmp_path: Path) -> None:
    write(tmp_path, "text,mood\nhi,calm\n", "p.csv")
    error = load_error(tmp_path, "providers: {pixai: {}}\nprompts:\n  - file: p.csv\n")
    assert (error.line, error.path) == (3, "prompts[0].file")
    assert "no column 'prompt'; columns: text, mood" in error.message


def test_bad_jsonl_line_names_the_prompt_file_and_line(tmp_path: Path) -> None:
    write(tmp_path, '{"prompt": "ok"}\n\n{"prompt": "broken"\n', "p.jsonl")
    spec = load(tmp_path, "providers: {pixai: {}}\nprompts: [{file: p.jsonl}]\n")
    with pytest.raises(SpecError) as caught:
        list(iter_jobs(spec))
    assert (caught.value.file, caught.value.line) == (str(tmp_path / "p.jsonl"), 3)
    assert "not valid JSON" in caught.value.message


@pytest.mark.parametrize(
    ("line", "says"),
    [('["a list"]', "JSON object"), ('{"text": "x"}', '"prompt"'), ('{"prompt": NaN}', "NaN")],
)
def test_bad_jsonl_records(tmp_path: Path, line: str, says: str) -> None:
    write(tmp_path, line + "\n", "p.jsonl")
    spec = load(tmp_path, "providers: {pixai: {}}\nprompts: [{file: p.jsonl}]\n")
    with pytest.raises(SpecError, match=says) as caught:
        list(iter_jobs(spec))
    assert caught.value.line == 1


def test_ragged_csv_row_names_its_line(tmp_path: Path) -> None:
    write(tmp_path, "prompt,mood\na,b\nc\n", "p.csv")
    spec = load(tmp_path, "providers: {pixai: {}}\nprompts: [{file: p.csv}]\n")
    with pytest.raises(SpecError, match="1 fields but the header has 2") as caught:
        list(iter_jobs(spec))
    assert caught.value.line == 3


def test_non_utf8_prompt_file(tmp_path: Path) -> None:
    (tmp_path / "p.txt").write_bytes(b"fine\n\xff\xfe broken\n")
    spec = load(tmp_path, "providers: {pixai: {}}\nprompts: [{file: p.txt}]\n")
    with pytest.raises(SpecError, match="not UTF-8"):
        list(iter_jobs(spec))


# --- rates and durations --------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "rate"),
    [
        ("60/min", Rate(60, 60.0)),
        ("5/s", Rate(5, 1.0)),
        ("1000/hour", Rate(1000, 3600.0)),
        ("2/sec", Rate(2, 1.0)),
        ("100/minute", Rate(100, 60.0)),
        ("10/30s", Rate(10, 30.0)),
        ("3 / 2m", Rate(3, 120.0)),
        (5, Rate(5, 1.0)),
        (0.5, Rate(1, 2.0)),
        ("2", Rate(2, 1.0)),
    ],
)
def test_parse_rate(text: str | float, rate: Rate) -> None:
    assert parse_rate(text) == rate


@pytest.mark.parametrize("bad", ["", "fast", "5/fortnight", "0/s", "-1/s", "/s", 0, True, None])
def test_parse_rate_rejects(bad: object) -> None:
    with pytest.raises(ValueError, match="rate"):
        parse_rate(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90", 90),
        (90, 90),
        (1.5, 1.5),
        ("90s", 90),
        ("5m", 300),
        ("1h", 3600),
        ("1h30m", 5400),
        ("250ms", 0.25),
        ("1.5h", 5400),
        ("2d", 172800),
        ("1m 30s", 90),
    ],
)
def test_parse_duration(text: str | float, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("bad", ["", "soon", "5 parsecs", "-5s", "1h-30m", float("nan"), -1, False])
def test_parse_duration_rejects(bad: object) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(bad)  # type: ignore[arg-type]


@given(hours=st.integers(0, 99), minutes=st.integers(0, 59), seconds=st.integers(0, 59))
def test_parse_duration_compound(hours: int, minutes: int, seconds: int) -> None:
    text = f"{hours}h{minutes}m{seconds}s"
    assert parse_duration(text) == hours * 3600 + minutes * 60 + seconds


# --- the JSON Schema ------------------------------------------------------------------


def test_committed_schema_is_current() -> None:
    """Regenerate with: .venv/bin/python -m pipeline.spec.load > pipeline/schema.json"""
    committed = json.loads((REPO / "pipeline" / "schema.json").read_text(encoding="utf-8"))
    assert committed == spec_json_schema()


def test_schema_documents_every_field() -> None:
    schema = spec_json_schema()
    undocumented = [
        f"{name}.{field}"
        for name, model in schema["$defs"].items()
        for field, prop in model.get("properties", {}).items()
        if "description" not in prop
    ]
    undocumented += [
        f for f, p in schema["properties"].items() if "description" not in p and "$ref" not in p
    ]
    assert undocumented == []


def test_poll_settings_left_out_are_the_apis_advice(tmp_path: Path) -> None:
    unset = load(tmp_path, MINIMAL).run
    assert unset.poll_defaults == {"initial", "max", "factor"}
    assert (unset.poll_initial, unset.poll_max, unset.poll_factor) == (1.0, 30.0, 1.5)
    some = load(tmp_path, MINIMAL + "run:\n  poll: {initial: 45s}\n").run
    assert some.poll_defaults == {"max", "factor"}
    assert (some.poll_initial, some.poll_max) == (45.0, 45.0)
