"""What jobs cost, from the prices a spec gives (no API publishes them). No I/O.

Money is counted in ``Decimal`` made from each price's text, so 37 jobs at 0.1 cost
exactly 3.7 and a budget of 3.7 allows all 37. A job's cost is an estimate fixed by
the job itself (its parameters), so the plan, the budget gate and what a manifest says
was spent all agree.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal

from pipeline.models import Job, JobRecord, JobState, Price, Spec

__all__ = [
    "SPENT_STATES",
    "Costs",
    "estimate",
    "job_cost",
    "money",
    "plan_lines",
    "spending_lines",
    "spent_on",
]

SPENT_STATES = frozenset(
    {
        JobState.SUBMITTING,  # may have left: counted, as `unknown` is
        JobState.SUBMITTED,
        JobState.RUNNING,
        JobState.SUCCEEDED,
        JobState.DOWNLOADING,
        JobState.DONE,
        JobState.UNKNOWN,  # the task may exist and may be paid
    }
)
"""States of a job whose submit was (or may have been) accepted, so paid for. A failed,
cancelled or timed-out job counts too when it has a remote task; a submit refused for
good never created one."""


def _amount(value: float) -> Decimal:
    return Decimal(str(value))


def job_cost(price: Price, job: Job) -> Decimal:
    """The cost of ``job`` under ``price``."""
    unit = price.per_job if price.per_job is not None else price.per_output
    assert unit is not None, "a price has per_job or per_output"
    amount = _amount(unit)
    for name, prices in price.by.items():
        value = job.model if name == "model" else job.params.get(name)
        if value is not None and str(value) in prices:
            amount = _amount(prices[str(value)])
    if price.per_output is not None:
        count = job.params.get("count", 1)
        amount *= count if isinstance(count, int) and count > 0 else 1
    return amount


def estimate(costs: Costs, jobs: Iterable[Job]) -> tuple[dict[str, int], dict[str, Decimal]]:
    """Per priced provider, its distinct jobs and what they would cost."""
    seen: set[str] = set()
    count: dict[str, int] = {}
    total: dict[str, Decimal] = {}
    for job in jobs:
        cost = costs.of(job)
        if cost is None or job.id in seen:
            continue
        seen.add(job.id)
        count[job.provider] = count.get(job.provider, 0) + 1
        total[job.provider] = total.get(job.provider, Decimal(0)) + cost
    return count, total


def plan_lines(costs: Costs, jobs: Iterable[Job], spent: Mapping[str, Decimal] | None) -> list[str]:
    """The plan's cost: estimated per provider and in total, with budgets, and what the
    manifest says was spent (None: no manifest yet)."""
    count, total = estimate(costs, jobs)
    lines = [f"cost (estimated from the spec's prices, in {costs.currency}):"]
    for name in costs.prices:
        cap = costs.budgets.get(name)
        of = f" (budget {costs.text(cap)})" if cap is not None else ""
        amount = total.get(name, Decimal(0))
        lines.append(f"  {name}: {count.get(name, 0)} jobs, {costs.text(amount)}{of}")
    run_cap = costs.run_budget
    of = f" (run budget {costs.text(run_cap)})" if run_cap is not None else ""
    lines.append(f"  total: {costs.text(sum(total.values(), Decimal(0)))}{of}")
    if spent is not None:
        lines.extend("  already " + line for line in spending_lines(costs, spent))
    return lines


def is_spent(record: JobRecord) -> bool:
    return record.state in SPENT_STATES or record.remote_id is not None


def spent_on(costs: Costs, records: Iterable[JobRecord]) -> dict[str, Decimal]:
    """Per provider, what the jobs among ``records`` that were (or may have been)
    accepted cost; providers without a price are left out."""
    spent: dict[str, Decimal] = {}
    for record in records:
        cost = costs.of(record.job)
        if cost is not None and is_spent(record):
            spent[record.job.provider] = spent.get(record.job.provider, Decimal(0)) + cost
    return spent


@dataclass(frozen=True)
class Costs:
    """The prices and budgets of one spec."""

    prices: Mapping[str, Price]
    budgets: Mapping[str, Decimal]  # per provider
    run_budget: Decimal | None
    currency: str

    @classmethod
    def of_spec(cls, spec: Spec) -> Costs:
        return cls(
            prices={n: s.price for n, s in spec.providers.items() if s.price is not None},
            budgets={
                n: _amount(s.budget) for n, s in spec.providers.items() if s.budget is not None
            },
            run_budget=None if spec.run.budget is None else _amount(spec.run.budget),
            currency=spec.run.currency,
        )

    @property
    def priced(self) -> bool:
        return bool(self.prices)

    @property
    def capped(self) -> bool:
        return bool(self.budgets) or self.run_budget is not None

    def of(self, job: Job) -> Decimal | None:
        """The cost of ``job``, or None when its provider has no price."""
        price = self.prices.get(job.provider)
        return None if price is None else job_cost(price, job)

    def text(self, amount: Decimal) -> str:
        return money(amount, self.currency)


def money(amount: Decimal, currency: str) -> str:
    """``3.70 USD``: two decimals at least, more when the amount has them."""
    exponent = amount.normalize().as_tuple().exponent
    places = max(2, -exponent) if isinstance(exponent, int) else 2
    return f"{amount:.{places}f} {currency}"


def spending_lines(costs: Costs, spent: Mapping[str, Decimal]) -> list[str]:
    """``spent X of budget Y`` per priced provider and for the run (budgets when set)."""
    lines = []
    for name in costs.prices:
        amount = spent.get(name, Decimal(0))
        cap = costs.budgets.get(name)
        of = f" of budget {costs.text(cap)}" if cap is not None else ""
        lines.append(f"{name}: spent {costs.text(amount)}{of}")
    total = sum(spent.values(), Decimal(0))
    of = f" of budget {costs.text(costs.run_budget)}" if costs.run_budget is not None else ""
    lines.append(f"run: spent {costs.text(total)}{of}")
    return lines
