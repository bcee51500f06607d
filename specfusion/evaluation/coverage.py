"""Which items a result scores, out of how many: no output may silently score a subset of the data.

A feature store whose extraction was interrupted (pending items) or whose audio failed for some items
(failed items) holds features for only part of the dataset. Scoring it silently gives numbers on a
subset that look like numbers on the whole (issue 15: 78.1 % on 96 of 200 items, 60.5 % on all).
Policy (docs/reliability.md):

* ``specfusion svm`` / :func:`specfusion.models.svm_protocol.svm_from_arrays` refuse an incomplete store
  unless asked (``--allow-incomplete`` / ``allow_incomplete=True``);
* the runner scores a system whose store has *failed* items on the items that have features (the
  failures are recorded per item with the reason) and says so; pending items never happen there
  (extraction runs to the end first);
* whenever a subset is scored, every output -- stdout, ``metrics.json``, ``report.md``,
  ``results.json``, ``report.html`` -- states "scored n of N items" and lists the missing ones.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from specfusion.errors import StoreError

#: How many missing items a one-line summary names before "and N more".
SHOWN = 10


@dataclasses.dataclass
class Coverage:
    """How many of a dataset's items a result scores, and which are missing (with the reason)."""

    n_items: int
    n_scored: int
    missing: list[dict[str, str]] = dataclasses.field(default_factory=list)  # {"item": uid, "reason": why}

    @property
    def complete(self) -> bool:
        return self.n_scored == self.n_items and not self.missing

    def as_dict(self) -> dict[str, Any]:
        return {"n_items": self.n_items, "n_scored": self.n_scored, "missing": list(self.missing)}

    @classmethod
    def from_dict(cls, data: dict | None) -> Coverage | None:
        if not isinstance(data, dict) or "n_items" not in data:
            return None
        return cls(n_items=int(data["n_items"]), n_scored=int(data["n_scored"]), missing=list(data.get("missing", [])))

    def headline(self) -> str:
        """``"scored 96 of 200 items (104 missing)"``."""
        return f"scored {self.n_scored} of {self.n_items} items ({self.n_items - self.n_scored} missing)"

    def short_list(self, limit: int = SHOWN) -> str:
        """The first ``limit`` missing items with their reasons, then "and N more"."""
        shown = ", ".join(f"{m['item']} ({m['reason']})" for m in self.missing[:limit])
        more = len(self.missing) - limit
        return shown + (f" and {more} more" if more > 0 else "")


def store_coverage(store) -> Coverage:
    """Coverage of an open :class:`~specfusion.features.store.FeatureStore`: failed and pending items are missing."""
    from specfusion.features.store import DONE

    status = store.status()
    reasons = dict(store.failures())
    uids = list(store.uids)
    missing = [
        {"item": uid, "reason": reasons.get(uid) or "pending (extraction not finished)"}
        for uid, s in zip(uids, status.tolist()) if s != DONE
    ]  # fmt: skip
    return Coverage(n_items=len(uids), n_scored=len(uids) - len(missing), missing=missing)


def refuse_incomplete(coverage: Coverage, *, what: str, hint: str) -> None:
    """StoreError stating the counts and the first missing items when ``coverage`` is incomplete."""
    if coverage.complete:
        return
    n_pending = sum(m["reason"].startswith("pending") for m in coverage.missing)
    n_failed = len(coverage.missing) - n_pending
    raise StoreError(
        f"{what} is incomplete: {coverage.n_scored} of {coverage.n_items} items have features "
        f"({n_pending} pending, {n_failed} failed: {coverage.short_list(3)}); scores on a subset are not comparable "
        f"with scores on the whole dataset. {hint}"
    )


def predictions_coverage(table, names: Sequence[str], reasons: dict[str, str] | None = None) -> Coverage:
    """Coverage of predictions with item ``names`` against a dataset ``table``.

    A table item counts as scored when its key (uid) or its segment name (channel data combined per
    segment) has a prediction. ``reasons`` maps uids to why they have none (default "no prediction").
    """
    have = set(str(n) for n in names)
    reasons = reasons or {}
    missing = [
        {"item": item.uid, "reason": reasons.get(item.uid, "no prediction")}
        for item in table if item.uid not in have and item.name not in have
    ]  # fmt: skip
    return Coverage(n_items=len(table), n_scored=len(table) - len(missing), missing=missing)
