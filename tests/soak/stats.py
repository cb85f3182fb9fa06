"""Small figures for the soak run: a constant-memory latency histogram and a least-squares slope."""
from __future__ import annotations

import math
from collections import Counter

_STEP = math.log(1.02)  # buckets 2 % wide: quantiles to within 2 %, whatever the number of samples


class Latency:
    """Latencies in seconds, kept as a log-bucket histogram (a soak must not grow its own memory)."""

    def __init__(self) -> None:
        self.buckets: Counter[int] = Counter()
        self.count = 0
        self.max = 0.0

    def add(self, seconds: float) -> None:
        self.buckets[round(math.log(max(seconds, 1e-7)) / _STEP)] += 1
        self.count += 1
        self.max = max(self.max, seconds)

    def merge(self, other: Latency) -> None:
        self.buckets.update(other.buckets)
        self.count += other.count
        self.max = max(self.max, other.max)

    def quantile(self, q: float) -> float:
        if not self.count:
            return float("nan")
        rank = q * (self.count - 1)
        seen = 0
        for k in sorted(self.buckets):
            seen += self.buckets[k]
            if seen > rank:
                return min(math.exp(k * _STEP), self.max)
        return self.max

    def as_dict(self) -> dict:
        return {"buckets": {str(k): n for k, n in self.buckets.items()}, "count": self.count, "max": self.max}

    @classmethod
    def from_dict(cls, data: dict) -> Latency:
        out = cls()
        out.buckets.update({int(k): n for k, n in data["buckets"].items()})
        out.count, out.max = data["count"], data["max"]
        return out

    def summary_ms(self) -> str:
        if not self.count:
            return "no samples"
        return (f"p50 {self.quantile(0.5) * 1000:.1f} ms, p99 {self.quantile(0.99) * 1000:.1f} ms, "
                f"max {self.max * 1000:.0f} ms ({self.count} samples)")


def slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of y over x (0 with fewer than two distinct x)."""
    n = len(points)
    if n < 2:
        return 0.0
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    if sxx == 0:
        return 0.0
    return sum((x - mx) * (y - my) for x, y in points) / sxx
