"""What an emulator remembers about its callers: charges and request counts.

The ledger holds every accepted submit (a task was created, so the account was
charged), which is how tests prove that nothing was submitted twice. API keys are
kept only as fingerprints.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Charge", "Ledger", "Stats", "key_fingerprint"]


def key_fingerprint(api_key: str) -> str:
    """A stable, non-reversible name for an API key (never store the key itself)."""
    return "sha256:" + hashlib.sha256(api_key.encode()).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class Charge:
    """One accepted submit."""

    at: float
    task_id: str
    route: str
    key: str
    body: Any

    def to_dict(self) -> dict[str, Any]:
        return {
            "at": self.at,
            "task_id": self.task_id,
            "route": self.route,
            "key": self.key,
            "body": self.body,
        }


class Ledger:
    """Every task the emulator created, in order."""

    def __init__(self) -> None:
        self.charges: list[Charge] = []

    def __len__(self) -> int:
        return len(self.charges)

    def charge(self, *, at: float, task_id: str, route: str, key: str, body: Any) -> None:
        """Record an accepted submit; ``key`` is a fingerprint, never the key."""
        self.charges.append(Charge(at=at, task_id=task_id, route=route, key=key, body=body))

    def task_ids(self) -> list[str]:
        return [charge.task_id for charge in self.charges]

    def duplicate_bodies(self) -> dict[str, int]:
        """Request bodies (canonical JSON) charged more than once, with their counts."""
        counts = Counter(
            json.dumps(c.body, sort_keys=True, separators=(",", ":")) for c in self.charges
        )
        return {body: n for body, n in counts.items() if n > 1}

    def clear(self) -> None:
        self.charges.clear()

    def to_dict(self) -> dict[str, Any]:
        return {"count": len(self.charges), "charges": [c.to_dict() for c in self.charges]}


@dataclass(slots=True)
class Stats:
    """Counters for benchmarks ("requests per job") and for tests."""

    requests: Counter[str] = field(default_factory=Counter)
    """Per ``"METHOD /route/{template}"`` of the API (admin calls are not counted)."""
    faults: Counter[str] = field(default_factory=Counter)
    """Injected misbehaviour by kind: rate_limited, server_error, dropped, truncated…"""
    downloads: int = 0
    downloads_with_auth: int = 0
    """Downloads that carried an Authorization header (a key leaked to the file host)."""
    download_bytes: int = 0
    ranged_downloads: int = 0
    active_requests: int = 0
    """API requests being handled now (admin calls and file downloads are not counted)."""
    peak_requests: int = 0
    """The most API requests ever handled at once."""

    def count(self, route: str) -> None:
        self.requests[route] += 1

    def request_started(self) -> None:
        self.active_requests += 1
        self.peak_requests = max(self.peak_requests, self.active_requests)

    def request_ended(self) -> None:
        self.active_requests -= 1

    def clear(self) -> None:
        self.requests.clear()
        self.faults.clear()
        self.downloads = self.downloads_with_auth = 0
        self.download_bytes = self.ranged_downloads = 0
        self.peak_requests = self.active_requests  # requests still running stay counted

    def to_dict(self) -> dict[str, Any]:
        return {
            "requests": dict(self.requests),
            "requests_total": sum(self.requests.values()),
            "faults": dict(self.faults),
            "downloads": self.downloads,
            "downloads_with_auth": self.downloads_with_auth,
            "download_bytes": self.download_bytes,
            "ranged_downloads": self.ranged_downloads,
            "active_requests": self.active_requests,
            "peak_requests": self.peak_requests,
        }
