"""Plain counters the engine keeps about itself, read by ``/metrics`` without locking
(trio's ``statistics()`` habit): no metrics library in the engine."""

from __future__ import annotations


class Histogram:
    """Observation counts per upper bound (the last bucket is +Inf), with sum and count."""

    def __init__(self, bounds: tuple[float, ...]):
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        for i, bound in enumerate(self.bounds):
            if value <= bound:
                self.counts[i] += 1
                break
        else:
            self.counts[-1] += 1
        self.sum += value
        self.count += 1

    def cumulative(self) -> list[tuple[str, int]]:
        """[(le, cumulative count)], as Prometheus wants buckets."""
        out, total = [], 0
        for bound, n in zip(list(self.bounds) + [float("inf")], self.counts):
            total += n
            out.append(("+Inf" if bound == float("inf") else repr(float(bound)), total))
        return out
