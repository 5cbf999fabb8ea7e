"""Named training metrics over a logging window, summed on the device and reduced once per log step.

Every figure is a (numerator, denominator) pair of sums, so one all-reduce of the stacked pairs turns the
ranks' local shares into global values with no host sync between log steps. Every rank adds the same
names in the same steps (they follow the step kind and the objectives' state, both the same on all
ranks), so the stacked tensors line up.
"""

from __future__ import annotations

import torch

from sftcli import dist


class MetricWindow:
    def __init__(self, env: dist.DistEnv):
        self.env = env
        self.sums: dict[str, list[torch.Tensor]] = {}
        self.step_means: set[str] = set()  # names whose denominator counts steps (reduced to an integer)
        self.steps = 0
        self.seconds = 0.0
        self.samples = 0
        self.tokens_local = 0
        self.skipped = 0
        self.lr = 0.0

    def add(self, name: str, numerator: torch.Tensor, denominator: torch.Tensor | float) -> None:
        """Accumulate a local share of `name` = sum(numerator) / sum(denominator) over ranks and steps."""
        num = numerator.detach().double()
        den = torch.as_tensor(denominator, dtype=torch.float64, device=num.device)
        if name in self.sums:
            self.sums[name][0] += num
            self.sums[name][1] += den
        else:
            self.sums[name] = [num.clone(), den.clone()]

    def add_step_mean(self, name: str, value: torch.Tensor) -> None:
        """A per-step global value (each rank holds the same-weight local share): its mean over the steps
        in which it occurs."""
        w = self.env.world_size
        self.step_means.add(name)
        self.add(name, value.detach().double() / w, 1.0 / w)

    def add_finite_step_mean(self, name: str, value: torch.Tensor) -> None:
        """As add_step_mean, over the steps in which the value is finite (the same on every rank)."""
        w = self.env.world_size
        finite = torch.isfinite(value)
        self.step_means.add(name)
        self.add(name, torch.where(finite, value.double(), 0.0) / w, finite.double() / w)

    def end_step(self, seconds: float, samples: int, tokens_local: int, skipped: bool) -> None:
        self.steps += 1
        self.seconds += seconds
        self.samples += samples
        self.tokens_local += tokens_local
        self.skipped += int(skipped)

    def reduce(self) -> dict[str, float]:
        """Global values of every name (one collective), plus perf/* figures."""
        names = sorted(self.sums)
        device = self.env.device
        flat = [t for name in names for t in self.sums[name]]
        stacked = torch.stack(flat) if flat else torch.zeros(0, dtype=torch.float64, device=device)
        extra = torch.tensor([float(self.tokens_local), self.seconds], dtype=torch.float64, device=device)
        dist.all_reduce_sum(self.env, stacked)
        dist.all_reduce_sum(self.env, extra)
        totals = stacked.tolist()
        values: dict[str, float] = {}
        for i, name in enumerate(names):
            num, den = totals[2 * i], totals[2 * i + 1]
            if name in self.step_means:
                den = round(den)
            if den:
                values[name] = num / den
        seconds = extra[1].item() / self.env.world_size
        if seconds > 0:
            values["perf/samples_per_s"] = self.samples / seconds
            values["perf/tokens_per_s"] = extra[0].item() / seconds
        if self.skipped:
            values["train/skipped_steps"] = self.skipped
        return values
