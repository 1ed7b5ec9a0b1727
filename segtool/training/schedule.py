"""How long a run is and how its learning rate moves: pure functions of step counts and
measured seconds (and the time-limit planner built on them), so each can be tested
without training anything."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass


def schedule_progress(step: int, total: int, warmup: int, anchor: tuple[int, float] = (0, 0.0)) -> float:
    """How far the decay after warmup has gone at `step` (0 to 1) when the run ends at step
    `total`. `anchor` = (step a, progress p0 there): the run was refitted to a new length at
    step a, so the decay goes on from p0 at the pace the new length leaves, and never jumps."""
    a, p0 = anchor
    a = max(a, warmup)
    if step < a:
        return 0.0 if step < warmup else p0
    return min(1.0, p0 + (1 - p0) * (step - a) / max(1, total - a))


def lr_factor(
    step: int, total: int, warmup: int, scheduler: str, power: float, anchor: tuple[int, float] = (0, 0.0)
) -> float:
    """Multiplier of the base lr at `step`: linear warmup, then cosine, poly or constant."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    progress = schedule_progress(step, total, warmup, anchor)
    if scheduler == "cosine":
        return 0.5 * (1 + math.cos(math.pi * progress))
    if scheduler == "poly":
        return (1 - progress) ** power
    return 1.0


def epochs_that_fit(done: int, room_s: float, epoch_s: float, val_s: float, val_every: int, most: int) -> int:
    """How many epochs to plan in all, `done` of them already trained, when `room_s` seconds
    are left, an epoch costs `epoch_s` and a validation `val_s`: validations come every
    `val_every` epochs and after the last one, so they are charged where they fall."""
    planned, spent = done, 0.0
    while planned < most:
        n = planned + 1
        cost = epoch_s + (val_s if n % val_every == 0 else 0.0)
        # The last epoch always validates: the run must still afford that if it stops at n.
        tail = 0.0 if n % val_every == 0 else val_s
        if spent + cost + tail > room_s:
            break
        spent += cost
        planned = n
    return planned


def epoch_seconds(times: list[float], rest_s: float, first_epoch_s: float) -> float:
    """What an epoch costs, from `times` (each epoch's own seconds after the first) and
    `rest_s` (all the training seconds after the first epoch, saves included): the median
    epoch plus its share of the saves. A burst of other work on the machine then shortens
    a run by the time it took, not by its rate over the whole run. Before there are any
    such epochs, the first one's cost (it also filled the image cache)."""
    if not times:
        return first_epoch_s
    return statistics.median(times) + (rest_s - sum(times)) / len(times)


def plan_epochs(done: int, room_s: float, epoch_s: float, val_s: float, val_every: int, most: int) -> tuple[int, bool]:
    """How many epochs to plan in all when `done` are trained and `room_s` seconds are left
    (see epochs_that_fit), and whether `most` (train.epochs) is what stopped it short of
    the time limit."""
    fit = max(done, epochs_that_fit(done, room_s, epoch_s, val_s, val_every, most))
    capped = fit == most and epochs_that_fit(done, room_s, epoch_s, val_s, val_every, most + 1) > most
    return fit, capped


def refit_anchor(step: int, old_total: int, warmup: int, anchor: tuple[int, float]) -> list:
    """The lr schedule's new anchor when a run changes length at `step`: the decay goes on
    from where it stands (see schedule_progress), so the lr never jumps."""
    return [step, schedule_progress(step, old_total, warmup, anchor)]


@dataclass(frozen=True)
class TimeBudget:
    """train.time_limit's planner: how many epochs fit in `limit_s` seconds, refitted after
    every epoch from what epochs and validations cost so far, and never more than `most`
    (train.epochs). The first epoch also fills the image cache, so it is planned after and
    counted apart; a run slowed for a while by other work on the machine takes the time
    back when the machine is free again."""

    limit_s: float
    limit: str  # as the config gives it, for the notes
    most: int
    val_every: int

    def plan(
        self, done: int, train_s: float, val_s: float, vals: int, first_epoch_s: float, epoch_times: list[float]
    ) -> tuple[int, bool]:
        """(epochs to plan in all, whether train.epochs capped them) when `done` epochs took
        `train_s` seconds in all, `vals` validations `val_s` of them, the first epoch
        `first_epoch_s`, and each later one `epoch_times`."""
        per_epoch = epoch_seconds(epoch_times, train_s - val_s - first_epoch_s, first_epoch_s)
        return plan_epochs(done, self.limit_s - train_s, per_epoch, val_s / max(vals, 1), self.val_every, self.most)

    def note(self, planned: int, capped: bool) -> str:
        cap = (
            f" (train.epochs={self.most} caps it: the run ends before the time limit; "
            "set train.epochs: auto to use all of it)"
        )
        return f"time limit {self.limit}: planning {planned} epochs{cap if capped else ''}"
