"""Prices, the cost plan and budget caps (issue 13, item 1).

A budget is checked before a submit leaves: what was spent (``unknown`` jobs included)
plus what is in flight never passes it, however many workers submit at once. Proved
against the emulators' charge ledgers, over real HTTP on loopback.
"""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from pipeline.cost import Costs, job_cost, spent_on
from pipeline.errors import SpecError
from pipeline.models import Job, JobRecord, JobState, Price
from pipeline.runner.budget import BudgetGate

from .conftest import FAKE_KEY, run_cli, write_spec
from .test_spec import load

ENV = {"PIXELLABS_API_KEY": FAKE_KEY, "APIXO_API_KEY": FAKE_KEY}


def job(provider: str = "p", n: int = 0, **params: Any) -> Job:
    return Job(id=f"{provider}{n}", provider=provider, model=None, params=params)


# -- prices -----------------------------------------------------------------------------


def test_a_job_costs_its_unit_price_by_parameter_value() -> None:
    price = Price(per_output=0.02, by={"quality": {"high": 0.05, "1024": 0.5}})
    assert job_cost(price, job(quality="standard")) == Decimal("0.02")
    assert job_cost(price, job(quality="high")) == Decimal("0.05")
    assert job_cost(price, job(quality="high", count=4)) == Decimal("0.20")
    assert job_cost(price, job(quality=1024)) == Decimal("0.5")  # matched by its text
    assert job_cost(Price(per_job=0.04), job(count=4)) == Decimal("0.04")
    by_model = Price(per_job=0.1, by={"model": {"big": 0.3}})
    assert job_cost(by_model, Job(id="x", provider="p", model="big", params={})) == Decimal("0.3")


def test_money_is_exact_so_a_budget_of_37_jobs_allows_37() -> None:
    costs = Costs({"p": Price(per_job=0.1)}, {"p": Decimal("3.7")}, None, "USD")
    gate = BudgetGate(costs, ())
    allowed = [gate.reserve(job(n=n)) is None for n in range(40)]
    assert allowed == [True] * 37 + [False] * 3  # 37 * 0.1 in floats is over 3.7


def test_spent_counts_accepted_and_unknown_jobs_never_a_refused_submit() -> None:
    costs = Costs({"p": Price(per_job=1)}, {}, None, "credits")
    records = [
        JobRecord(job(n=0), JobState.UNKNOWN),
        JobRecord(job(n=1), JobState.DONE, remote_id="r1"),
        JobRecord(job(n=2), JobState.SUBMITTED, remote_id="r2"),
        JobRecord(job(n=3), JobState.FAILED, remote_id="r3", failure="remote"),  # paid
        JobRecord(job(n=4), JobState.FAILED, failure="submit"),  # refused: never paid
        JobRecord(job(n=5), JobState.PENDING),
    ]
    assert spent_on(costs, records) == {"p": Decimal(4)}


def test_the_run_budget_spans_providers_and_release_gives_back() -> None:
    prices = {"a": Price(per_job=2), "b": Price(per_job=3)}
    gate = BudgetGate(Costs(prices, {}, Decimal(5), "USD"), ())
    assert gate.reserve(job("a")) is None
    assert gate.reserve(job("b")) is None
    refusal = gate.reserve(job("a", 1))
    assert refusal is not None and refusal.whole_run
    assert "run.budget is 5.00 USD" in refusal.text
    gate.release(job("b"))
    assert gate.reserve(job("a", 1)) is None


# -- the spec ---------------------------------------------------------------------------

PRICED = """
version: 1
providers:
  pixai:
    api_key: k
    price: {per_output: 0.02, by: {quality: {high: 0.05}}}
    budget: 5
run:
  budget: 20.5
  currency: EUR
prompts: [a cat]
"""


def test_prices_and_budgets_load(tmp_path: Path) -> None:
    spec = load(tmp_path, PRICED)
    settings = spec.providers["pixai"]
    assert settings.price == Price(per_output=0.02, by={"quality": {"high": 0.05}})
    assert (settings.budget, spec.run.budget, spec.run.currency) == (5, 20.5, "EUR")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("price: {per_output: 0.02, by:", "price: {per_job: 1, per_output: 0.02, by:"), "one"),
        (("price: {per_output: 0.02, by: {quality: {high: 0.05}}}", "price: {}"), "per_job"),
        (("{quality: {high: 0.05}}", "{quality: {high: 0.05}, model: {x: 1}}"), "one param"),
        (("per_output: 0.02", "per_output: -1"), "must be at least 0"),
        (("    price: {per_output: 0.02, by: {quality: {high: 0.05}}}\n", ""), "needs a price"),
    ],
)
def test_bad_prices_are_refused(tmp_path: Path, change: tuple[str, str], message: str) -> None:
    with pytest.raises(SpecError, match=message):
        load(tmp_path, PRICED.replace(*change))


# -- plan -------------------------------------------------------------------------------


def two_provider_spec(tmp_path: Path, urls: dict[str, str], *, extra: str = "") -> Path:
    return write_spec(
        tmp_path,
        f"""
        name: budget
        output:
          root: {tmp_path / "out"}
        providers:
          pixellabs:
            base_url: {urls["pixellabs"]}
            api_key: ${{PIXELLABS_API_KEY}}
            concurrency: 64
            price: {{per_job: 0.1}}
            {extra}
          apixo:
            base_url: {urls["apixo"]}
            api_key: ${{APIXO_API_KEY}}
            concurrency: 64
            params: {{model: nano-banana}}
            price: {{per_output: 0.02, by: {{model: {{nano-banana: 0.05}}}}}}
        prompts:
          - a lighthouse in a storm
        seeds: {{start: 0, count: 100}}
        run:
          poll: {{initial: 0.05s, max: 0.3s}}
          deadline: 2m
        """,
    )


def test_plan_shows_the_cost_per_provider_and_in_total(tmp_path: Path) -> None:
    urls = {"pixellabs": "http://127.0.0.1:9", "apixo": "http://127.0.0.1:9"}
    spec = two_provider_spec(tmp_path, urls, extra="budget: 4")
    result = run_cli("plan", str(spec), cwd=tmp_path, env=ENV)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "cost (estimated from the spec's prices, in USD):" in lines
    assert "  pixellabs: 100 jobs, 10.00 USD (budget 4.00 USD)" in lines
    assert "  apixo: 100 jobs, 5.00 USD" in lines
    assert "  total: 15.00 USD" in lines
    assert not any("already" in line for line in lines)  # no manifest yet


# -- budgets on the emulators -----------------------------------------------------------


def pixellabs_only(tmp_path: Path, url: str, *, jobs: int, budget: str) -> Path:
    return write_spec(
        tmp_path,
        f"""
        name: capped
        output:
          root: {tmp_path / "out"}
        providers:
          pixellabs:
            base_url: {url}
            api_key: ${{PIXELLABS_API_KEY}}
            concurrency: 64
            price: {{per_job: 0.1}}
            budget: {budget}
        prompts:
          - a lighthouse in a storm
        seeds: {{start: 0, count: {jobs}}}
        run:
          poll: {{initial: 0.05s, max: 0.3s}}
          deadline: 2m
        """,
    )


def test_no_submit_crosses_the_budget_at_concurrency_64(
    tmp_path: Path, emulator_factory: Any
) -> None:
    emulator = emulator_factory(["pixellabs"], task_seconds=0.2)
    spec = pixellabs_only(tmp_path, emulator.urls["pixellabs"], jobs=200, budget="3.7")

    first = run_cli("run", "--quiet", str(spec), cwd=tmp_path, env=ENV)
    assert first.returncode == 1, first.stderr
    assert len(emulator.ledger("pixellabs")) == 37
    said = [line for line in first.stdout.splitlines() if "budget reached" in line]
    assert said == [
        "  budget reached: providers.pixellabs.budget is 3.70 USD, 3.70 USD spent or in "
        "flight (unknown jobs included), the next job costs 0.10 USD; no more submits"
    ], first.stdout
    assert "  pixellabs: spent 3.70 USD of budget 3.70 USD" in first.stdout.splitlines()
    assert "done 37/200" in first.stdout

    again = run_cli("run", "--quiet", str(spec), cwd=tmp_path, env=ENV)
    assert again.returncode == 1, again.stderr
    assert len(emulator.ledger("pixellabs")) == 37  # a resume counts what was spent
    assert "submitted this run: 0" in again.stdout

    status = run_cli("status", str(spec), cwd=tmp_path, env=ENV)
    assert "pixellabs: spent 3.70 USD of budget 3.70 USD" in status.stdout.splitlines()
    as_json = json.loads(run_cli("status", "--json", str(spec), cwd=tmp_path, env=ENV).stdout)
    assert as_json["spending"] == {
        "currency": "USD",
        "spent": {"pixellabs": "3.7"},
        "budgets": {"pixellabs": "3.7"},
        "run_budget": None,
    }
    plan = run_cli("plan", str(spec), cwd=tmp_path, env=ENV)
    assert "  already pixellabs: spent 3.70 USD of budget 3.70 USD" in plan.stdout.splitlines()


def test_the_run_budget_caps_every_provider_together(tmp_path: Path, emulator_factory: Any) -> None:
    emulator = emulator_factory(["pixellabs", "apixo"], task_seconds=0.2)
    spec = two_provider_spec(tmp_path, emulator.urls)
    text = spec.read_text(encoding="utf-8").replace("  deadline: 2m", "  deadline: 2m\n  budget: 4")
    spec.write_text(text, encoding="utf-8")

    result = run_cli("run", "--quiet", str(spec), cwd=tmp_path, env=ENV)
    assert result.returncode == 1, result.stderr
    paid = Decimal("0.1") * len(emulator.ledger("pixellabs")) + Decimal("0.05") * len(
        emulator.ledger("apixo")
    )
    assert Decimal("3.9") <= paid <= Decimal(4), paid  # no next job of either fitted
    assert result.stdout.count("budget reached: run.budget is 4.00 USD") == 1, result.stdout


def test_each_provider_stops_at_its_own_budget_and_says_so_once(
    tmp_path: Path, emulator_factory: Any
) -> None:
    emulator = emulator_factory(["pixellabs", "apixo"], task_seconds=0.2)
    spec = two_provider_spec(tmp_path, emulator.urls, extra="budget: 1")
    text = spec.read_text(encoding="utf-8").replace(
        "nano-banana: 0.05}}}", "nano-banana: 0.05}}}\n    budget: 0.5"
    )
    spec.write_text(text, encoding="utf-8")

    result = run_cli("run", "--quiet", str(spec), cwd=tmp_path, env=ENV)
    assert result.returncode == 1, result.stderr
    assert len(emulator.ledger("pixellabs")) == 10
    assert len(emulator.ledger("apixo")) == 10
    for key in ("providers.pixellabs.budget is 1.00", "providers.apixo.budget is 0.50"):
        assert result.stdout.count(f"budget reached: {key} USD") == 1, result.stdout


def test_unknown_submits_count_as_spent(tmp_path: Path, emulator_factory: Any) -> None:
    """A 5xx after the task was created: `unknown`, maybe paid, so counted; even when
    they are resubmitted later, the budget they took is not given back."""
    emulator = emulator_factory(["pixellabs"], task_seconds=0.2, error_after_create_rate=1.0)
    spec = pixellabs_only(tmp_path, emulator.urls["pixellabs"], jobs=50, budget="0.5")

    first = run_cli("run", "--quiet", str(spec), cwd=tmp_path, env=ENV)
    assert first.returncode == 1, first.stderr
    assert len(emulator.ledger("pixellabs")) == 5
    assert "unknown 5" in first.stdout
    assert "  pixellabs: spent 0.50 USD of budget 0.50 USD" in first.stdout.splitlines()

    emulator.configure("pixellabs", error_after_create_rate=0.0)
    again = run_cli("run", "--quiet", "--resubmit-unknown", str(spec), cwd=tmp_path, env=ENV)
    assert again.returncode == 1, again.stderr
    assert len(emulator.ledger("pixellabs")) == 5
    assert "budget reached" in again.stdout
