"""End-of-life forecasts: robust trends of the ohmic rise (and EMF) extrapolated to the replacement thresholds,
and the temperature life budget.

* Linear trend: Theil-Sen (median of pairwise slopes), with Sen's distribution-free confidence interval of
  the slope.  Robust to the odd bad reading and to a step or two.
* Accelerating rise (weak units age exponentially): ``y = c + b * exp(k * x)``, ``k`` found on a grid, ``c`` and
  ``b`` by Theil-Sen on ``exp(k x)`` for each ``k``; chosen over the line when the bend is real (the second half
  of the window rises faster, and the curve fits clearly better or the line's residuals run in long same-sign
  stretches).  The date is then the mean of that curve's and a linear-wear-plus-exponential curve's, and the
  spread between them is part of the confidence range.
* Temperature life budget: life used = sum(dt * 2 ** ((T - 25) / 8)) against the design life; the date the
  budget runs out at the recent rate.

Times are in years relative to "now" (x <= 0 for the data), values in % rise over the baseline.
"""
from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from itertools import pairwise

YEAR_S = 365.25 * 86400.0
_Z95 = 1.959964


@dataclass(frozen=True, slots=True)
class Fit:
    model: str  # "linear" | "exponential" | "linear+exponential"
    c: float  # intercept (linear: value at x = 0)
    b: float  # slope per year (linear) or amplitude of the exponential part
    k: float = 0.0  # exponential rate per year
    scale: float = 0.0  # robust residual scale (MAD x 1.4826)
    m: float = 0.0  # linear+exponential: the linear part's slope per year

    def value(self, x: float) -> float:
        if self.model == "linear":
            return self.c + self.b * x
        return self.c + self.m * x + self.b * math.exp(self.k * x)

    def slope(self, x: float = 0.0) -> float:
        """Rate of rise per year at ``x``."""
        if self.model == "linear":
            return self.b
        return self.m + self.b * self.k * math.exp(self.k * x)

    def crossing(self, level: float, limit_years: float = 100.0) -> float | None:
        """Years from now until the fit reaches ``level`` (0 if already there); None if it never does."""
        if self.value(0.0) >= level:
            return 0.0
        if self.model == "linear":
            return (level - self.c) / self.b if self.b > 0 else None
        if self.b <= 0 or self.k <= 0:
            return (level - self.c) / self.m if self.m > 0 else None
        if self.m == 0:
            return math.log((level - self.c) / self.b) / self.k
        lo, hi = 0.0, min(limit_years, 700.0 / self.k)  # increasing in x: bisection (no float overflow)
        if self.value(hi) < level:
            return None
        for _ in range(60):
            mid = 0.5 * (lo + hi)
            if self.value(mid) >= level:
                hi = mid
            else:
                lo = mid
        return hi


@dataclass(slots=True)
class Forecast:
    """Years from now until a threshold is reached: ``years`` (best estimate) and a range."""

    threshold: float
    years: float | None
    early: float | None
    late: float | None
    fit: Fit | None
    points: int
    evidence: list[str] = field(default_factory=list)


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def mad_scale(residuals: Sequence[float]) -> float:
    if not residuals:
        return 0.0
    m = median(residuals)
    return 1.4826 * median([abs(r - m) for r in residuals])


def theil_sen(x: Sequence[float], y: Sequence[float], alpha: float = 0.05) -> tuple[float, float, float, float]:
    """Theil-Sen slope and intercept, with the (1 - alpha) confidence interval of the slope (Sen 1968).

    Returns (slope, intercept, slope_low, slope_high)."""
    n = len(x)
    if n < 2:
        raise ValueError("need two points for a trend")
    slopes = []
    for i in range(n - 1):
        xi, yi = x[i], y[i]
        for j in range(i + 1, n):
            dx = x[j] - xi
            if dx:
                slopes.append((y[j] - yi) / dx)
    if not slopes:
        raise ValueError("all points at the same time")
    slopes.sort()
    m = len(slopes)
    slope = slopes[m // 2] if m % 2 else 0.5 * (slopes[m // 2 - 1] + slopes[m // 2])
    intercept = median([yi - slope * xi for xi, yi in zip(x, y, strict=True)])
    z = _Z95 if alpha == 0.05 else statistics.NormalDist().inv_cdf(1 - alpha / 2)
    c = z * math.sqrt(n * (n - 1) * (2 * n + 5) / 18.0)
    lo_i = max(0, int(math.floor((m - c) / 2)))
    hi_i = min(m - 1, int(math.ceil((m + c) / 2)))
    return slope, intercept, slopes[lo_i], slopes[hi_i]


def runs_z(residuals: Sequence[float]) -> float:
    """Wald-Wolfowitz runs test on the residual signs: strongly negative when residuals come in long runs
    of one sign (a systematic bend), about 0 for noise."""
    signs = [r > 0 for r in residuals if r != 0]
    n1 = sum(signs)
    n2 = len(signs) - n1
    if n1 == 0 or n2 == 0:
        return 0.0
    runs = 1 + sum(1 for a, b in pairwise(signs) if a != b)
    n = n1 + n2
    mean = 2.0 * n1 * n2 / n + 1
    var = 2.0 * n1 * n2 * (2.0 * n1 * n2 - n) / (n * n * (n - 1))
    return (runs - mean) / math.sqrt(var) if var > 0 else 0.0


def huber_line(x: Sequence[float], y: Sequence[float], delta: float = 1.345,
               iterations: int = 20) -> tuple[float, float]:
    """Huber M-estimate of a line (iteratively reweighted least squares); (slope, intercept)."""
    w = [1.0] * len(x)
    slope = intercept = 0.0
    for _ in range(iterations):
        sw = sum(w)
        mx = sum(wi * xi for wi, xi in zip(w, x, strict=True)) / sw
        my = sum(wi * yi for wi, yi in zip(w, y, strict=True)) / sw
        sxx = sum(wi * (xi - mx) ** 2 for wi, xi in zip(w, x, strict=True))
        if sxx <= 0:
            break
        new_slope = sum(wi * (xi - mx) * (yi - my) for wi, xi, yi in zip(w, x, y, strict=True)) / sxx
        new_intercept = my - new_slope * mx
        res = [yi - (new_intercept + new_slope * xi) for xi, yi in zip(x, y, strict=True)]
        s = mad_scale(res) or 1e-12
        w = [1.0 if abs(r) <= delta * s else delta * s / abs(r) for r in res]
        if abs(new_slope - slope) < 1e-12 and abs(new_intercept - intercept) < 1e-12:
            slope, intercept = new_slope, new_intercept
            break
        slope, intercept = new_slope, new_intercept
    return slope, intercept


def thin(x: Sequence[float], y: Sequence[float], max_points: int) -> tuple[list[float], list[float]]:
    """At most ``max_points`` points: consecutive points averaged in equal groups (keeps the fits cheap)."""
    n = len(x)
    if n <= max_points:
        return list(x), list(y)
    group = math.ceil(n / max_points)
    xs, ys = [], []
    for i in range(0, n, group):
        gx, gy = x[i:i + group], y[i:i + group]
        xs.append(sum(gx) / len(gx))
        ys.append(median(gy))
    return xs, ys


ACCEL_ERROR_RATIO = 0.85
_K_GRID = [0.1 * 1.25 ** i for i in range(24)]  # 0.1 .. ~17 per year


def _exp_fit(x: Sequence[float], y: Sequence[float]) -> tuple[Fit, float] | None:
    """The best ``c + b exp(k x)`` over the k grid, by total absolute residual."""
    best = None
    for k in _K_GRID:
        z = [math.exp(k * xi) for xi in x]
        try:
            b, c, _, _ = theil_sen(z, y)
        except ValueError:
            continue
        if b <= 0:
            continue
        err = sum(abs(yi - (c + b * zi)) for zi, yi in zip(z, y, strict=True))
        if best is None or err < best[1]:
            best = (Fit("exponential", c, b, k), err)
    return best


def _solve3(a: list[list[float]], v: list[float]) -> list[float] | None:
    m = [row[:] + [vi] for row, vi in zip(a, v, strict=True)]
    for col in range(3):
        piv = max(range(col, 3), key=lambda r: abs(m[r][col]))
        if abs(m[piv][col]) < 1e-12:
            return None
        m[col], m[piv] = m[piv], m[col]
        for r in range(3):
            if r != col:
                f = m[r][col] / m[col][col]
                for c in range(col, 4):
                    m[r][c] -= f * m[col][c]
    return [m[r][3] / m[r][r] for r in range(3)]


def _lin_exp_fit(x: Sequence[float], y: Sequence[float]) -> tuple[Fit, float] | None:
    """The best ``c + m x + b exp(k x)`` (linear wear plus an accelerating part) over the k grid, least
    squares on the (median-thinned) points, with m >= 0 and b > 0."""
    best = None
    n = len(x)
    for k in _K_GRID:
        z = [math.exp(k * xi) for xi in x]
        cols = ([1.0] * n, x, z)
        a = [[sum(p * q for p, q in zip(cols[r], cols[s], strict=True)) for s in range(3)] for r in range(3)]
        v = [sum(p * yi for p, yi in zip(cols[r], y, strict=True)) for r in range(3)]
        sol = _solve3(a, v)
        if sol is None:
            continue
        c, m, b = sol
        if b <= 0 or m < 0:
            continue
        err = sum(abs(yi - (c + m * xi + b * zi)) for xi, zi, yi in zip(x, z, y, strict=True))
        if best is None or err < best[1]:
            best = (Fit("linear+exponential", c, b, k, m=m), err)
    return best


def fit_trend(x: Sequence[float], y: Sequence[float], max_points: int = 60) -> tuple[Fit, tuple[float, float, float]]:
    """The trend of ``y`` over ``x`` (years, <= 0): a Theil-Sen line, or an exponential when the rise
    accelerates.  Also returns the line's 95 % slope interval and the upper end of the interval of the
    recent half's slope (per year)."""
    xs, ys = thin(x, y, max_points)
    slope, intercept, lo, hi = theil_sen(xs, ys)
    res_lin = [yi - (intercept + slope * xi) for xi, yi in zip(xs, ys, strict=True)]
    line = Fit("linear", intercept, slope, scale=mad_scale(res_lin))
    n = len(xs)
    if n < 12 or slope <= 0:
        return line, (lo, hi, hi)
    half = n // 2
    s1 = theil_sen(xs[:half], ys[:half])[0]
    s2, _, s2_lo, s2_hi = theil_sen(xs[half:], ys[half:])
    bounds = (lo, hi, max(hi, s2_hi))
    if s2_lo <= s1:  # the recent half does not rise clearly faster: no acceleration to look for
        return line, bounds
    found = _exp_fit(xs, ys)
    if found is None:
        return line, bounds
    exp_fit, err = found
    lin_err = sum(abs(r) for r in res_lin)
    # keep the line unless the curve explains the data clearly better, or the line's residuals run in long
    # same-sign stretches (a bend the noise hides from the error sum)
    if err >= lin_err or (err > ACCEL_ERROR_RATIO * lin_err and runs_z(res_lin) > -2.5):
        return line, bounds
    res = [yi - exp_fit.value(xi) for xi, yi in zip(xs, ys, strict=True)]
    return Fit("exponential", exp_fit.c, exp_fit.b, exp_fit.k, mad_scale(res)), bounds


def _ls_line(z: Sequence[float], y: Sequence[float]) -> tuple[float, float, float, float] | None:
    """Least squares ``y = c + b z``: (b, c, sse, variance factor of b: 1 / sum((z - mean)^2))."""
    n = len(z)
    mz, my = sum(z) / n, sum(y) / n
    szz = sum((zi - mz) ** 2 for zi in z)
    if szz <= 0:
        return None
    b = sum((zi - mz) * (yi - my) for zi, yi in zip(z, y, strict=True)) / szz
    c = my - b * mz
    sse = sum((yi - c - b * zi) ** 2 for zi, yi in zip(z, y, strict=True))
    return b, c, sse, 1.0 / szz


def plausible_curves(x: Sequence[float], y: Sequence[float], max_points: int = 60) -> list[Fit]:
    """Every curve the data cannot rule out.

    A noisy year of ohmic tests pins the rise now, but hardly whether it accelerates: the line, the
    exponentials ``c + b exp(k x)`` and the linear wear plus an exponential ``c + m x + b exp(k x)`` whose fit is
    within the 95 % profile-likelihood bound of the best one (residual sum of squares within 3.84 noise
    variances) are all plausible; the line and the exponentials also turned about the data's centre to the
    ends of their rate's 95 % interval."""
    xs, ys = thin(x, y, max_points)
    n = len(xs)
    if n < 8:
        return []
    fits: list[tuple[Fit, float, float, float]] = []  # (curve, sse, var factor of b, mean z)
    my = sum(ys) / n
    for k in [0.0, *_K_GRID]:
        z = list(xs) if k == 0.0 else [math.exp(k * xi) for xi in xs]
        line = _ls_line(z, ys)
        if line is not None:
            b, c, sse, vb = line
            curve = Fit("linear", c, b) if k == 0.0 else Fit("exponential", c, b, k)
            fits.append((curve, sse, vb, sum(z) / n))
        if k == 0.0:
            continue
        cols = ([1.0] * n, xs, z)
        a = [[sum(p * q for p, q in zip(cols[r], cols[t], strict=True)) for t in range(3)] for r in range(3)]
        sol = _solve3(a, [sum(p * yi for p, yi in zip(cols[r], ys, strict=True)) for r in range(3)])
        if sol is None or sol[1] < 0 or sol[2] <= 0:
            continue
        c, m, b = sol
        sse = sum((yi - c - m * xi - b * zi) ** 2 for xi, zi, yi in zip(xs, z, ys, strict=True))
        fits.append((Fit("linear+exponential", c, b, k, m=m), sse, 0.0, 0.0))
    if not fits:
        return []
    best = min(f[1] for f in fits)
    var = max(best / max(n - 4, 1), 1e-12)
    out: list[Fit] = []
    for curve, sse, vb, mz in fits:
        if sse - best > 3.84 * var:
            continue
        if not vb:
            out.append(curve)
            continue
        half = _Z95 * math.sqrt(var * vb)
        out.extend(replace(curve, b=amp, c=my - amp * mz) for amp in (curve.b - half, curve.b + half))
    return out


def plausible_range(x: Sequence[float], y: Sequence[float], threshold: float, limit_years: float = 100.0,
                    max_points: int = 60, curves: list[Fit] | None = None) -> tuple[float | None, float | None]:
    """The (early, late) crossing of ``threshold`` over ``plausible_curves`` (computed once, passed in, for
    several thresholds): the earliest and the latest (late None: one of them never crosses within
    ``limit_years``)."""
    if curves is None:
        curves = plausible_curves(x, y, max_points)
    if not curves:
        return None, None
    early: float | None = None
    late: float | None = 0.0
    for v in curves:
        crossing = v.crossing(threshold, limit_years) if v.b > 0 or v.m > 0 else None
        if crossing is None or crossing > limit_years:
            late = None
            continue
        early = crossing if early is None else min(early, crossing)
        if late is not None:
            late = max(late, crossing)
    return early, late


def forecast_crossing(x: Sequence[float], y: Sequence[float], threshold: float, horizon_years: float = 3.0,
                      max_points: int = 60, min_spread: float = 0.1,
                      trend: tuple[Fit, tuple[float, float, float]] | None = None,
                      curves: list[Fit] | None = None) -> Forecast:
    """When does the trend of ``y`` reach ``threshold``?  ``x`` in years relative to now (<= 0).

    The range: for a line, Sen's 95 % interval of the slope (the early end from the recent half's slope when
    that is steeper); for an accelerating rise, the spread between
    the two curve models (pure exponential, and linear wear plus an exponential part; the estimate is their
    mean).  Never narrower than ``min_spread`` x the lead time either side: an extrapolation cannot be more
    certain than the model behind it, nor narrower than the crossings of every curve the data cannot rule out
    (``plausible_curves``; a noisy year of 2 V-cell tests hides an acceleration).  ``trend``: a ``fit_trend``
    result, ``curves``: a ``plausible_curves`` result, to reuse for several thresholds."""
    if len(x) < 2:
        return Forecast(threshold, None, None, None, None, len(x), ["not enough data for a trend"])
    fit, (slo, shi, recent_hi) = trend or fit_trend(x, y, max_points)
    now_level = fit.value(0.0)
    early: float | None
    late: float | None
    if fit.model == "linear":
        years = fit.crossing(threshold)
        if years == 0.0:
            early = late = 0.0
        else:
            # the early end also allows for the recent half's faster rise (a bend the noise may hide)
            early = (threshold - now_level) / recent_hi if recent_hi > 0 else None
            late = (threshold - now_level) / slo if slo > 0 else None
    else:
        xs, ys = thin(x, y, max_points)
        other = _lin_exp_fit(xs, ys)
        a = fit.crossing(threshold)
        b = other[0].crossing(threshold) if other is not None else None
        found = [v for v in (a, b) if v is not None]
        years = sum(found) / len(found) if found else None
        early = min(found) if found else None
        late = max(found) if len(found) == 2 else None
    if years is not None:
        # the range holds every curve the data cannot rule out (an acceleration a noisy year hides included);
        # when one of them never crosses, the range has no late end (None)
        p_early, p_late = plausible_range(x, y, threshold, max_points=max_points, curves=curves)
        open_ended = p_early is not None and p_late is None
        if p_early is not None:
            early = p_early if early is None else min(early, p_early)
        if p_late is not None and late is not None:
            late = max(late, p_late)
        floor = min_spread * years
        early = years - floor if early is None else min(early, years - floor)
        late = None if open_ended else (years + floor if late is None else max(late, years + floor))
        early = max(0.0, early)
    evidence = [f"{fit.model} trend over {abs(min(x)) * 365.25:.0f} days: {now_level:+.1f} % now, "
                f"rising {fit.slope(0.0):.1f} %/year"]
    if years is not None and years > horizon_years:
        evidence.append(f"+{threshold:g} % is beyond the {horizon_years:g}-year horizon")
    return Forecast(threshold, years, early, late, fit, len(x), evidence)


# -- temperature life budget --------------------------------------------------------------------------------
def aging_factor(temp_c: float, halving_c: float = 8.0) -> float:
    """How much faster than at 25 C a battery ages at ``temp_c`` (life halves every ``halving_c`` above 25 C)."""
    return 2.0 ** ((temp_c - 25.0) / halving_c)


def life_budget_years(used_years: float, design_life_years: float, recent_factor: float) -> float | None:
    """Calendar years left until the design life (in 25 C-equivalent years) is used up at the recent rate."""
    if recent_factor <= 0:
        return None
    return max(0.0, design_life_years - used_years) / recent_factor
