"""The budget gate: a submit reserves its job's cost before its request leaves.

``reserve`` checks and takes the reservation with no ``await`` in between, so on one
event loop no two workers can both take the last money: however many submit at once,
what is spent plus what is in flight never passes a cap. A submit that provably created
nothing gives its reservation back (``release``); an accepted or ``unknown`` one keeps it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal

from pipeline.cost import Costs, spent_on
from pipeline.models import Job, JobRecord

__all__ = ["RUN_BUDGET", "BudgetGate", "Refusal", "refusal_text"]

RUN_BUDGET = "run.budget"


@dataclass(frozen=True)
class Refusal:
    """Why a submit may not go: the budget's key in the spec, and the message."""

    key: str  # providers.NAME.budget or run.budget
    text: str

    @property
    def whole_run(self) -> bool:
        return self.key == RUN_BUDGET


class BudgetGate:
    """What each provider has spent (or has in flight) against its budget and the run's."""

    def __init__(self, costs: Costs, records: Iterable[JobRecord]) -> None:
        self.costs = costs
        self.spent: dict[str, Decimal] = spent_on(costs, records) if costs.priced else {}

    def reserve(self, job: Job) -> Refusal | None:
        """Take ``job``'s cost; or, when it would pass a cap, take nothing and say why."""
        cost = self.costs.of(job)
        if cost is None:
            return None  # no price: no cap applies (a budget always has one)
        mine = self.spent.get(job.provider, Decimal(0))
        cap = self.costs.budgets.get(job.provider)
        if cap is not None and mine + cost > cap:
            key = f"providers.{job.provider}.budget"
            return Refusal(key, self._text(key, cap, mine, cost))
        total = sum(self.spent.values(), Decimal(0))
        run_cap = self.costs.run_budget
        if run_cap is not None and total + cost > run_cap:
            return Refusal(RUN_BUDGET, self._text(RUN_BUDGET, run_cap, total, cost))
        self.spent[job.provider] = mine + cost
        return None

    def release(self, job: Job) -> None:
        """Give back the reservation of a submit that created nothing."""
        cost = self.costs.of(job)
        if cost is not None:
            self.spent[job.provider] -= cost

    def _text(self, key: str, cap: Decimal, spent: Decimal, cost: Decimal) -> str:
        return refusal_text(self.costs, key, cap, spent, cost)


def refusal_text(costs: Costs, key: str, cap: Decimal, spent: Decimal, cost: Decimal) -> str:
    text = costs.text
    return (
        f"budget reached: {key} is {text(cap)}, {text(spent)} spent or in flight "
        f"(unknown jobs included), the next job costs {text(cost)}; no more submits"
    )
