"""The redactor: known key values in every echoed form, credential-looking tokens
whatever their value, and no absurd over-redaction."""

from __future__ import annotations

import json
import re
from urllib.parse import quote, quote_plus, urlencode

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.errors import FinalError, ProviderError
from pipeline.redact import REDACTED, Redactor, register_secrets, scrub

KEY = 'sk-Zx9/Qk+"abc\\def=='


@pytest.mark.parametrize(
    "form",
    [
        KEY,
        quote(KEY, safe=""),
        re.sub("%[0-9A-F]{2}", lambda m: m.group().lower(), quote(KEY, safe="")),
        quote_plus(KEY),
        json.dumps(KEY)[1:-1],
        json.dumps(KEY)[1:-1].replace("/", "\\/"),
        repr(KEY)[1:-1],
    ],
)
def test_a_known_key_is_caught_in_every_echoed_form(form: str) -> None:
    text = f"invalid key <{form}> for this account"
    assert Redactor([KEY])(text) == f"invalid key <{REDACTED}> for this account"


def test_a_key_inside_a_json_body_and_a_query_string() -> None:
    redact = Redactor([KEY])
    body = json.dumps({"error": {"message": f"bad token {KEY}"}})
    assert KEY not in redact(body)
    assert json.dumps(KEY)[1:-1] not in redact(body)
    query = urlencode({"q": 1, "k": KEY})
    assert "Zx9" not in redact(f"GET /v1?{query}")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Authorization: Bearer abc.def-ghi", "Authorization: Bearer [redacted]"),
        ("got 'bearer eyJhbGciOi.x.y' from you", "got 'bearer [redacted]' from you"),
        ("authorization: Basic dXNlcjpwYXNz", "authorization: [redacted]"),
        ('{"Authorization": "Token abc123"}', '{"Authorization": "[redacted]"}'),
        ("GET /x?api_key=s3cr3t&page=2", "GET /x?api_key=[redacted]&page=2"),
        ("url ?key=AIzaSyD-123 failed", "url ?key=[redacted] failed"),
        ('{"api_key": "s3\\"cr3t", "n": 1}', '{"api_key": "[redacted]", "n": 1}'),
        ("X-Api-Key: 0123abcd", "X-Api-Key: [redacted]"),
        ("access_token=ya29.a0Af", "access_token=[redacted]"),
    ],
)
def test_credential_looking_tokens_are_caught_whatever_their_value(
    text: str, expected: str
) -> None:
    assert Redactor()(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "401 invalid_token: Invalid or expired API token",
        "task_key=abc is not a credential; monkey=5",
        "the key is missing",
        "422: field 'seed' must be an integer",
        "deadline of 20s passed; remote task cancelled",
    ],
)
def test_ordinary_messages_are_left_alone(text: str) -> None:
    assert Redactor(["sk-long-enough-key"])(text) == text


def test_short_keys_do_not_cause_absurd_over_redaction() -> None:
    assert Redactor(["a"]).secrets == frozenset()  # too short to tell from a word
    assert Redactor(["a"])("a cat and a dog") == "a cat and a dog"
    tiny = Redactor(["k3y9"])  # short: only where it stands alone
    assert tiny("monk3y9s and k3y9 and 1k3y9") == "monk3y9s and [redacted] and 1k3y9"
    assert tiny("key=k3y9") == "key=[redacted]"


def test_registered_secrets_reach_every_provider_error() -> None:
    register_secrets(["pe-test-0b6f2c77d1"])
    error = FinalError("no permission for pe-test-0b6f2c77d1", status=403, code="forbidden")
    assert "pe-test-0b6f2c77d1" not in error.reason()
    assert "pe-test-0b6f2c77d1" not in str(error)
    assert scrub("x pe-test-0b6f2c77d1 y") == f"x {REDACTED} y"
    assert isinstance(error, ProviderError)


@given(st.text(min_size=8, max_size=40), st.text(max_size=40), st.text(max_size=40))
def test_a_known_key_never_survives(key: str, before: str, after: str) -> None:
    redact = Redactor([key])
    for form in (key, quote(key, safe=""), json.dumps(key)[1:-1]):
        assert form not in redact(before + form + after) or form in before + after


def test_progress_notes_are_scrubbed() -> None:
    import io

    from pipeline.runner.progress import TqdmProgress

    stream = io.StringIO()
    progress = TqdmProgress(stream)
    progress.start({"p": 1})
    progress.note("p", "submits stopped: 401 Authorization: Bearer sk-echoed-12345")
    progress.close()
    assert "sk-echoed-12345" not in stream.getvalue()
    assert "Bearer [redacted]" in stream.getvalue()


def test_manifest_writes_and_reads_never_carry_a_key(tmp_path) -> None:
    """Writes are scrubbed; rows an older version stored are scrubbed when shown."""
    import io
    import sqlite3

    from pipeline.commands import status_report
    from pipeline.manifest.store import Manifest
    from pipeline.models import Job, JobState

    register_secrets(["mk-test-93fd01aa77"])
    job = Job(id="j1", provider="p", model=None, params={"prompt": "x"}, replicate=0)
    with Manifest.open(tmp_path) as manifest:
        manifest.add_jobs([job])
        manifest.transition("j1", JobState.SUBMITTING, expect=JobState.PENDING)
        manifest.log_event("j1", "retry", "refused: key mk-test-93fd01aa77 over quota")
        manifest.transition(
            "j1", JobState.FAILED, expect=JobState.SUBMITTING, error="401 mk-test-93fd01aa77"
        )
        assert all("mk-test" not in (e.detail or "") for e in manifest.events("j1"))
    with sqlite3.connect(tmp_path / "manifest.sqlite") as conn:  # as an older version wrote
        conn.execute("UPDATE jobs SET error = 'Authorization: Bearer legacy-12345678'")
    with Manifest.open(tmp_path, readonly=True) as manifest:
        out = io.StringIO()
        manifest.export_jsonl(out)
        report = status_report(manifest)
    assert "legacy-12345678" not in out.getvalue()
    assert report["failures"][0]["error"] == "Authorization: Bearer [redacted]"


def test_an_error_kept_without_a_state_change_is_stored_scrubbed(tmp_path) -> None:
    import sqlite3

    from pipeline.manifest.store import Manifest
    from pipeline.models import Job

    register_secrets(["rk-test-5d1e0a9c44"])
    job = Job(id="j1", provider="p", model=None, params={"prompt": "x"}, replicate=0)
    with Manifest.open(tmp_path) as manifest:
        manifest.add_jobs([job])
        manifest.record_error("j1", "crashed while holding rk-test-5d1e0a9c44")
    with sqlite3.connect(tmp_path / "manifest.sqlite") as conn:
        stored = [
            *conn.execute("SELECT error FROM jobs"),
            *conn.execute("SELECT detail FROM events"),
        ]
    conn.close()
    assert stored and all("rk-test" not in (text or "") for (text,) in stored)
