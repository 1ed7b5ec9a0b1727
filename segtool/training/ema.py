"""An exponential moving average of a model's weights (`train.ema`)."""

from __future__ import annotations

import copy
from typing import Any

import torch


class WeightAverage:
    """An exponential moving average of the weights (and BatchNorm statistics), updated
    after every optimizer step: the model a run validates and saves when `train.ema` is
    set. The decay ramps up as (1 + n) / (10 + n) to `decay`, so the first steps do not
    drag the random initialisation along."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay, self.updates = decay, 0
        pairs = list(zip(self.model.state_dict().values(), model.state_dict().values()))
        self._avg = [a for a, _ in pairs if a.is_floating_point()]
        self._cur = [b for a, b in pairs if a.is_floating_point()]
        self._counts = [(a, b) for a, b in pairs if not a.is_floating_point()]  # BatchNorm's batch counters

    @torch.no_grad()
    def update(self) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        torch._foreach_lerp_(self._avg, self._cur, 1 - d)
        for a, b in self._counts:
            a.copy_(b)

    def state(self) -> dict[str, Any]:
        return {"updates": self.updates}

    def load(self, weights: dict[str, torch.Tensor], state: dict[str, Any]) -> None:
        self.model.load_state_dict(weights)
        self.updates = state["updates"]
