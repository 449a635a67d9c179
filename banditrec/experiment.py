"""A/B-test statistics: assignment, sample-ratio check, comparisons of arms (Welch, delta method,
customer bootstrap), CUPED and power; pure array code, customers as the independent units.

Details: docs/abtest.md, "The statistics (`banditrec/experiment.py`)".
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from scipy import optimize, special, stats

from .errors import ValidationError
from .validation import as_1d, check_finite

__all__ = [
    "Comparison",
    "SRM",
    "assign",
    "hash_unit",
    "srm_check",
    "compare_means",
    "compare_ratios",
    "cuped",
    "sample_size",
    "power",
    "minimum_detectable_effect",
    "duration_days",
    "analyse",
    "format_table",
]

# what ``rng`` takes: a Generator, a seed (an int or SeedSequence), or None (fresh entropy)
RngLike = np.random.Generator | np.random.SeedSequence | int | None
_BOOT_CHUNK_CELLS = 2_000_000  # resampled indices held in memory at once, per arm


# ----------------------------------------------------------------------------- results


@dataclass(frozen=True)
class SRM:
    """Result of :func:`srm_check`: Pearson's chi-square of observed vs expected arm counts."""

    chi2: float
    p_value: float
    expected: tuple[float, ...]
    counts: tuple[int, ...]
    alpha: float
    ok: bool  # ``p_value >= alpha``: no evidence of a sample-ratio mismatch


@dataclass(frozen=True)
class Comparison:
    """Treatment (``b``) versus control (``a``) on one metric.

    ``mean_a``/``mean_b`` are the arm means (for a ratio metric, the ratios of sums).
    ``diff_ci`` is Welch's t interval (``kind == "mean"``, or ``"cuped"`` on CUPED-adjusted values) or the
    delta-method normal interval
    (``kind == "ratio"``; ``df`` is then ``inf``); ``p_value`` is the matching two-sided test of
    ``diff == 0``. ``lift = diff / mean_a`` with a delta-method normal interval ``lift_ci``.
    ``boot_ci``/``boot_se``/``lift_boot_ci`` come from ``n_boot`` customer-level bootstrap
    resamples (NaN when ``n_boot == 0``). ``lift*`` are NaN when ``mean_a == 0``.
    Intervals are at level ``1 - alpha``; ``significant`` is ``p_value < alpha``.
    """

    metric: str
    kind: str
    n_a: int
    n_b: int
    mean_a: float
    mean_b: float
    diff: float
    se: float
    df: float
    diff_ci: tuple[float, float]
    p_value: float
    lift: float
    lift_se: float
    lift_ci: tuple[float, float]
    boot_ci: tuple[float, float]
    boot_se: float
    lift_boot_ci: tuple[float, float]
    alpha: float
    n_boot: int
    significant: bool


# ----------------------------------------------------------------------------- checks


def _check_alpha(alpha: Any, name: str = "alpha") -> float:
    try:
        a = float(alpha)
    except (TypeError, ValueError):
        raise ValidationError(f"{name} must be a number in (0, 1), got {alpha!r}", name) from None
    if not 0.0 < a < 1.0:
        raise ValidationError(f"{name} must be in (0, 1), got {alpha!r}", name)
    return a


def _check_positive(value: Any, name: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValidationError(f"{name} must be a positive number, got {value!r}", name) from None
    if not (math.isfinite(v) and v > 0):
        raise ValidationError(f"{name} must be a finite number > 0, got {value!r}", name)
    return v


def _check_n_boot(n_boot: object) -> int:
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 0:
        raise ValidationError(f"n_boot must be an integer >= 0, got {n_boot!r}", "n_boot")
    return int(n_boot)


def _arm(x: ArrayLike, name: str, min_len: int = 2) -> np.ndarray:
    arr = as_1d(x, name, dtype=float)
    if len(arr) < min_len:
        raise ValidationError(f"{name} needs at least {min_len} customers, got {len(arr)}", name)
    check_finite(arr, name)
    return arr


def _rng(rng: RngLike) -> np.random.Generator:
    if isinstance(rng, np.random.Generator):
        return rng
    return np.random.default_rng(rng)  # an int / SeedSequence, or None = fresh entropy


def _weights(weights: ArrayLike | None, k: int, name: str = "weights") -> np.ndarray:
    """Weights normalised to sum 1; default equal."""
    if weights is None:
        return np.full(k, 1.0 / k)
    w = as_1d(weights, name, dtype=float)
    if len(w) != k:
        raise ValidationError(f"{name} must have one entry per arm ({k}), got {len(w)}", name)
    check_finite(w, name)
    if (w <= 0).any():
        i = int(np.argmax(w <= 0))
        raise ValidationError(f"{name} must be > 0, found {w[i]} at index {i}", name)
    normalised: np.ndarray = w / w.sum()
    return normalised


# ----------------------------------------------------------------------------- assignment


def hash_unit(user_ids: Iterable[Any], salt: str) -> np.ndarray:
    """``u_i`` uniform in [0, 1) from ``blake2b(f"{salt}:{user_ids[i]}", 8 bytes)``.

    The top 53 bits of the big-endian 64-bit digest, times ``2**-53``: stable across
    processes, platforms and Python versions (unlike ``hash()``), so an assignment can be
    recomputed anywhere from the id and the salt alone.
    """
    if not isinstance(salt, str):
        raise ValidationError(f"salt must be a str, got {type(salt).__name__}", "salt")
    if isinstance(user_ids, np.ndarray) and user_ids.ndim != 1:
        raise ValidationError(f"user_ids must be 1-dimensional, got shape {user_ids.shape}", "user_ids")
    ids = user_ids.tolist() if isinstance(user_ids, np.ndarray) else list(user_ids)  # np.int64(5) -> "5"
    digests = b"".join(hashlib.blake2b(f"{salt}:{uid}".encode(), digest_size=8).digest() for uid in ids)
    words = np.frombuffer(digests, dtype=">u8").astype(np.uint64)
    return (words >> np.uint64(11)).astype(np.float64) * 2.0**-53


def assign(
    user_ids: Iterable[Any], arms: Sequence[str], salt: str, weights: Sequence[float] | None = None
) -> np.ndarray:
    """Arm index (``int64``, in ``[0, len(arms))``) of each user: deterministic hashing.

    ``u = hash_unit(user_ids, salt)``; the arm is the first ``j`` with ``u < cumsum(w)[j]``
    for the normalised weights ``w`` (equal by default). The same salt always gives the same
    assignment; different salts give (pseudo-)independent ones. ``str(id)`` is hashed, so
    ``5`` and ``"5"`` land in the same arm but ``5.0`` does not.
    """
    if isinstance(arms, str) or not isinstance(arms, Sequence):
        raise ValidationError(f"arms must be a sequence of names, got {arms!r}", "arms")
    names = list(arms)
    if len(names) < 2:
        raise ValidationError(f"arms needs at least 2 arms, got {len(names)}", "arms")
    if len(set(names)) != len(names):
        dup = next(a for a in names if names.count(a) > 1)
        raise ValidationError(f"arms must be unique, found {dup!r} twice", "arms")
    w = _weights(weights, len(names))
    cum = np.cumsum(w)
    cum[-1] = 1.0
    u = hash_unit(user_ids, salt)
    return np.minimum(np.searchsorted(cum, u, side="right"), len(names) - 1).astype(np.int64)


def srm_check(counts: ArrayLike, weights: Sequence[float] | None = None, alpha: float = 0.001) -> SRM:
    """Sample-ratio-mismatch test: ``chi2 = sum_j (n_j - N w_j)^2 / (N w_j)``, ``k - 1`` df.

    ``counts[j]`` customers were assigned to arm ``j`` with intended share ``weights[j]``
    (equal by default). ``ok`` is False when ``p < alpha``; the usual threshold is 0.001
    because an SRM check runs on every experiment and a mismatch invalidates its analysis.
    """
    alpha = _check_alpha(alpha)
    c = as_1d(counts, "counts", dtype=float)
    check_finite(c, "counts")
    if len(c) < 2:
        raise ValidationError(f"counts needs at least 2 arms, got {len(c)}", "counts")
    if (c < 0).any() or (c != np.round(c)).any():
        i = int(np.argmax((c < 0) | (c != np.round(c))))
        raise ValidationError(f"counts must be non-negative integers, found {c[i]} at index {i}", "counts")
    if c.sum() <= 0:
        raise ValidationError("counts must not all be zero", "counts")
    w = _weights(weights, len(c))
    expected = c.sum() * w
    res = stats.chisquare(c, expected)
    p = float(res.pvalue)
    return SRM(
        chi2=float(res.statistic),
        p_value=p,
        expected=tuple(float(e) for e in expected),
        counts=tuple(int(x) for x in c),
        alpha=alpha,
        ok=bool(p >= alpha),
    )


# ----------------------------------------------------------------------------- comparisons


def _boot_resample(arrays: tuple[np.ndarray, ...], n_boot: int, rng: np.random.Generator) -> list[np.ndarray]:
    """``n_boot`` customer-level resamples of one arm: the resampled *means* of each array.

    All arrays share the customer index (a ratio's numerator and denominator move together).
    Drawn as ``rng.integers(0, n, size=(chunk, n))`` blocks of at most ``_BOOT_CHUNK_CELLS``.
    """
    n = len(arrays[0])
    out = [np.empty(n_boot) for _ in arrays]
    chunk = max(1, _BOOT_CHUNK_CELLS // n)
    for start in range(0, n_boot, chunk):
        stop = min(n_boot, start + chunk)
        idx = rng.integers(0, n, size=(stop - start, n))
        for x, o in zip(arrays, out):
            o[start:stop] = x[idx].mean(axis=1)
    return out


def _percentile(x: np.ndarray, alpha: float) -> tuple[float, float]:
    x = x[np.isfinite(x)]
    if x.size == 0:
        return (math.nan, math.nan)
    lo, hi = np.quantile(x, [alpha / 2, 1 - alpha / 2])
    return (float(lo), float(hi))


def _lift(ma: float, mb: float, va: float, vb: float, z: float) -> tuple[float, float, tuple[float, float]]:
    """``lift = mb/ma - 1`` and its delta-method SE for independent arms:
    ``Var(mb/ma) ~ vb/ma^2 + mb^2 va/ma^4`` (``va``, ``vb`` the variances of the arm means)."""
    if ma == 0:
        return math.nan, math.nan, (math.nan, math.nan)
    lift = mb / ma - 1.0
    se = math.sqrt(vb / ma**2 + mb**2 * va / ma**4)
    return lift, se, (lift - z * se, lift + z * se)


def cuped(a: ArrayLike, b: ArrayLike, x_a: ArrayLike, x_b: ArrayLike) -> tuple[np.ndarray, np.ndarray, float]:
    """CUPED: ``y - theta (x - mean(x))`` in each arm, with ``x`` a covariate measured before
    assignment and ``theta = cov(y, x) / var(x)`` over both arms pooled (the OLS slope of ``y``
    on ``x``); returns the adjusted ``a``, ``b`` and ``theta``.

    The difference of the adjusted means is ``diff - theta (mean x_b - mean x_a)``, unbiased
    for the treatment effect when assignment is independent of ``x`` (randomised), with
    variance smaller by the factor ``1 - rho^2`` (``rho`` the correlation of ``y`` and ``x``).
    A constant covariate gives ``theta = 0`` (no adjustment). Estimating ``theta`` from the
    same data adds a term of order ``1/n`` to the variance, which the usual intervals ignore.
    """
    a, b = _arm(a, "a"), _arm(b, "b")
    x_a, x_b = _arm(x_a, "covariate_a"), _arm(x_b, "covariate_b")
    if len(x_a) != len(a) or len(x_b) != len(b):
        raise ValidationError(
            f"covariates need one value per customer: a has {len(a)} and covariate_a {len(x_a)}, "
            f"b has {len(b)} and covariate_b {len(x_b)}",
            "covariates",
        )
    y, x = np.concatenate([a, b]), np.concatenate([x_a, x_b])
    xc = x - x.mean()
    sxx = float(xc @ xc)
    theta = float(xc @ (y - y.mean()) / sxx) if sxx > 0 else 0.0
    return a - theta * (x_a - x.mean()), b - theta * (x_b - x.mean()), theta


def compare_means(
    a: ArrayLike,
    b: ArrayLike,
    *,
    alpha: float = 0.05,
    n_boot: int = 2000,
    rng: RngLike = None,
    metric: str = "",
    covariates: Sequence[ArrayLike] | None = None,
) -> Comparison:
    """Compare a per-customer metric: ``a`` (control) and ``b`` (treatment), one value per customer.

    Welch: ``se^2 = s_a^2/n_a + s_b^2/n_b`` (``ddof=1``), Welch--Satterthwaite
    ``df = se^4 / ((s_a^2/n_a)^2/(n_a-1) + (s_b^2/n_b)^2/(n_b-1))``, interval
    ``diff +- t_{1-alpha/2, df} se``; the p-value ``2 P(T_df > |diff|/se)`` is
    ``scipy.stats.ttest_ind(b, a, equal_var=False)``'s. Lift: delta method (see :func:`_lift`), normal
    quantile. Bootstrap:
    ``n_boot`` resamples of customers within each arm independently, percentile intervals of
    ``diff*`` and ``mean_b*/mean_a* - 1``. Assumes independent customers; the t interval
    relies on the CLT, so heavy tails need more customers. If both arms are constant
    (``se == 0``) the p-value is NaN. ``rng``: a Generator, a seed, or None (fresh entropy).

    ``covariates=(x_a, x_b)``: one pre-assignment value per customer of each arm; the arms are
    first adjusted by :func:`cuped` and everything above is computed on the adjusted values
    (``kind == "cuped"``; the means are then the adjusted means, whose difference estimates
    the same effect with less variance).
    """
    alpha = _check_alpha(alpha)
    n_boot = _check_n_boot(n_boot)
    a = _arm(a, "a")
    b = _arm(b, "b")
    kind = "mean"
    if covariates is not None:
        if not isinstance(covariates, (tuple, list)) or len(covariates) != 2:
            raise ValidationError("covariates must be a pair (covariate_a, covariate_b)", "covariates")
        a, b, _ = cuped(a, b, *covariates)
        kind = "cuped"
    na, nb = len(a), len(b)
    ma, mb = float(a.mean()), float(b.mean())
    va, vb = float(a.var(ddof=1)) / na, float(b.var(ddof=1)) / nb
    diff = mb - ma
    se = math.sqrt(va + vb)
    if se > 0:
        df = (va + vb) ** 2 / (va**2 / (na - 1) + vb**2 / (nb - 1))
        p = float(2 * special.stdtr(df, -abs(diff) / se))  # == ttest_ind(b, a, equal_var=False), faster (bench choices)
        half = float(special.stdtrit(df, 1 - alpha / 2)) * se
    else:
        df, p, half = math.nan, math.nan, 0.0
    z = float(special.ndtri(1 - alpha / 2))
    lift, lift_se, lift_ci = _lift(ma, mb, va, vb, z)
    if n_boot:
        gen = _rng(rng)
        (boot_a,) = _boot_resample((a,), n_boot, gen)
        (boot_b,) = _boot_resample((b,), n_boot, gen)
        boot_diff = boot_b - boot_a
        boot_ci, boot_se = _percentile(boot_diff, alpha), float(boot_diff.std(ddof=1)) if n_boot > 1 else math.nan
        with np.errstate(divide="ignore", invalid="ignore"):
            lift_boot_ci = _percentile(boot_b / boot_a - 1.0, alpha) if ma != 0 else (math.nan, math.nan)
    else:
        boot_ci, boot_se, lift_boot_ci = (math.nan, math.nan), math.nan, (math.nan, math.nan)
    return Comparison(
        metric=metric,
        kind=kind,
        n_a=na,
        n_b=nb,
        mean_a=ma,
        mean_b=mb,
        diff=diff,
        se=se,
        df=float(df),
        diff_ci=(diff - half, diff + half),
        p_value=p,
        lift=lift,
        lift_se=lift_se,
        lift_ci=lift_ci,
        boot_ci=boot_ci,
        boot_se=boot_se,
        lift_boot_ci=lift_boot_ci,
        alpha=alpha,
        n_boot=n_boot,
        significant=bool(p < alpha),
    )


def _ratio_arm(
    num: ArrayLike, den: ArrayLike, num_name: str, den_name: str
) -> tuple[np.ndarray, np.ndarray, float, float]:
    """Validated ``(num, den)`` of one arm, its ratio ``R = sum(num)/sum(den)`` and the
    delta-method variance of ``R`` (Deng et al. 2018, eq. for a ratio of means):
    ``Var(R) ~ (s_nn - 2 R s_nd + R^2 s_dd) / (n mean(den)^2)``."""
    x = _arm(num, num_name)
    y = _arm(den, den_name)
    if len(x) != len(y):
        raise ValidationError(
            f"{num_name} and {den_name} must have the same length, got {len(x)} and {len(y)}", den_name
        )
    if (y < 0).any():
        i = int(np.argmax(y < 0))
        raise ValidationError(f"{den_name} must be >= 0, found {y[i]} at index {i}", den_name)
    if y.sum() == 0:
        raise ValidationError(f"{den_name} sums to 0: the ratio is undefined in this arm", den_name)
    n = len(x)
    mx, my = x.mean(), y.mean()
    r = mx / my
    cov = np.cov(x, y, ddof=1)
    var = (cov[0, 0] - 2 * r * cov[0, 1] + r**2 * cov[1, 1]) / (n * my**2)
    return x, y, float(r), float(max(var, 0.0))


def compare_ratios(
    num_a: ArrayLike,
    den_a: ArrayLike,
    num_b: ArrayLike,
    den_b: ArrayLike,
    *,
    alpha: float = 0.05,
    n_boot: int = 2000,
    rng: RngLike = None,
    metric: str = "",
) -> Comparison:
    """Compare a ratio-of-sums metric, one ``(num, den)`` pair per customer in each arm.

    ``R = sum(num) / sum(den)`` per arm (e.g. CTR = clicks / impressions). Customers are the
    independent units, so a customer's numerator and denominator are correlated and the
    variance comes from the delta method (see :func:`_ratio_arm`); ``diff = R_b - R_a`` gets a
    normal interval and a two-sided z-test p-value, ``lift = R_b/R_a - 1`` the delta-method
    interval. The bootstrap resamples customers (their pairs) within each arm; a resample whose
    denominator sums to 0 is dropped. Customers with ``den == 0`` count as 0 in both sums; an
    arm whose ``den`` sums to 0 raises. ``den`` must be ``>= 0``.
    """
    alpha = _check_alpha(alpha)
    n_boot = _check_n_boot(n_boot)
    xa, ya, ra, va = _ratio_arm(num_a, den_a, "num_a", "den_a")
    xb, yb, rb, vb = _ratio_arm(num_b, den_b, "num_b", "den_b")
    diff = rb - ra
    se = math.sqrt(va + vb)
    z = float(special.ndtri(1 - alpha / 2))
    p = float(2 * special.ndtr(-abs(diff) / se)) if se > 0 else math.nan
    lift, lift_se, lift_ci = _lift(ra, rb, va, vb, z)
    if n_boot:
        gen = _rng(rng)
        with np.errstate(divide="ignore", invalid="ignore"):
            nxa, nya = _boot_resample((xa, ya), n_boot, gen)
            nxb, nyb = _boot_resample((xb, yb), n_boot, gen)
            boot_a, boot_b = nxa / nya, nxb / nyb
            boot_diff = boot_b - boot_a
            finite = boot_diff[np.isfinite(boot_diff)]
            boot_ci = _percentile(boot_diff, alpha)
            boot_se = float(finite.std(ddof=1)) if finite.size > 1 else math.nan
            lift_boot_ci = _percentile(boot_b / boot_a - 1.0, alpha) if ra != 0 else (math.nan, math.nan)
    else:
        boot_ci, boot_se, lift_boot_ci = (math.nan, math.nan), math.nan, (math.nan, math.nan)
    return Comparison(
        metric=metric,
        kind="ratio",
        n_a=len(xa),
        n_b=len(xb),
        mean_a=ra,
        mean_b=rb,
        diff=diff,
        se=se,
        df=math.inf,
        diff_ci=(diff - z * se, diff + z * se),
        p_value=p,
        lift=lift,
        lift_se=lift_se,
        lift_ci=lift_ci,
        boot_ci=boot_ci,
        boot_se=boot_se,
        lift_boot_ci=lift_boot_ci,
        alpha=alpha,
        n_boot=n_boot,
        significant=bool(p < alpha),
    )


# ----------------------------------------------------------------------------- power


def _effect(baseline: Any, mde: Any, relative: bool) -> tuple[float, float]:
    """``(baseline, delta)`` with ``delta`` the absolute effect (``mde * baseline`` if relative)."""
    try:
        base = float(baseline)
    except (TypeError, ValueError):
        raise ValidationError(f"baseline must be a number, got {baseline!r}", "baseline") from None
    if not math.isfinite(base):
        raise ValidationError(f"baseline must be finite, got {baseline!r}", "baseline")
    try:
        m = float(mde)
    except (TypeError, ValueError):
        raise ValidationError(f"mde must be a number, got {mde!r}", "mde") from None
    if not math.isfinite(m) or m == 0:
        raise ValidationError(f"mde must be a finite non-zero number, got {mde!r}", "mde")
    if relative and base == 0:
        raise ValidationError("baseline must be non-zero for a relative mde", "baseline")
    return base, (m * base if relative else m)


def _sds(baseline: float, sd: float | None, delta: float) -> tuple[float, float]:
    """Per-customer SDs of control and treatment: ``sd`` for both, or for a proportion
    (``sd is None``) ``sqrt(p (1 - p))`` at ``p = baseline`` and ``p = baseline + delta``."""
    if sd is not None:
        s = _check_positive(sd, "sd")
        return s, s
    if not 0.0 < baseline < 1.0:
        raise ValidationError(f"baseline must be in (0, 1) for a proportion (sd=None), got {baseline}", "baseline")
    p2 = baseline + delta
    if not 0.0 < p2 < 1.0:
        raise ValidationError(f"baseline + effect must stay in (0, 1) for a proportion, got {p2}", "mde")
    return math.sqrt(baseline * (1 - baseline)), math.sqrt(p2 * (1 - p2))


def _z_alpha(alpha: float, two_sided: bool) -> float:
    return float(stats.norm.ppf(1 - alpha / 2 if two_sided else 1 - alpha))


def _power(n: float, delta: float, s_a: float, s_b: float, alpha: float, ratio: float, two_sided: bool) -> float:
    se = math.sqrt(s_a**2 / n + s_b**2 / (ratio * n))
    za, shift = _z_alpha(alpha, two_sided), abs(delta) / se
    return float(stats.norm.cdf(shift - za) + (stats.norm.cdf(-shift - za) if two_sided else 0.0))


def _design(
    baseline: Any, sd: float | None, mde: Any, relative: bool, alpha: Any, ratio: Any
) -> tuple[float, float, float, float, float]:
    alpha = _check_alpha(alpha)
    ratio = _check_positive(ratio, "ratio")
    base, delta = _effect(baseline, mde, relative)
    s_a, s_b = _sds(base, sd, delta)
    return alpha, ratio, delta, s_a, s_b


def power(
    n_per_arm: float,
    *,
    baseline: float,
    sd: float | None = None,
    mde: float,
    relative: bool = True,
    alpha: float = 0.05,
    ratio: float = 1.0,
    two_sided: bool = True,
) -> float:
    """Power of the two-sample z-test with ``n_per_arm`` control and ``ratio * n_per_arm``
    treatment customers to detect ``mde`` (relative to ``baseline`` unless ``relative=False``).

    ``se = sqrt(s_a^2/n + s_b^2/(ratio n))``; power ``= Phi(|delta|/se - z) + Phi(-|delta|/se - z)``
    (second term only if two-sided) with ``z = z_{1-alpha/2}`` (``z_{1-alpha}`` one-sided).
    A mean needs ``sd`` (assumed equal in both arms); with ``sd=None`` the metric is a
    proportion with ``s^2 = p(1-p)`` at the baseline and at ``baseline + delta``.
    """
    n = _check_positive(n_per_arm, "n_per_arm")
    alpha, ratio, delta, s_a, s_b = _design(baseline, sd, mde, relative, alpha, ratio)
    return _power(n, delta, s_a, s_b, alpha, ratio, two_sided)


def sample_size(
    *,
    baseline: float,
    sd: float | None = None,
    mde: float,
    relative: bool = True,
    alpha: float = 0.05,
    power: float = 0.8,
    ratio: float = 1.0,
    two_sided: bool = True,
) -> int:
    """Control-arm customers needed (the treatment arm gets ``ceil(ratio * n)``).

    Closed form ``n = (z_{1-alpha/2} + z_{power})^2 (s_a^2 + s_b^2/ratio) / delta^2``, i.e.
    ``2 (z_{1-alpha/2} + z_{1-beta})^2 sigma^2 / delta^2`` for equal arms and SDs, rounded up;
    the result is then the smallest ``n >= 2`` with :func:`power` ``>= power`` (the closed form
    ignores the far tail, so this moves it by at most one). See :func:`power` for ``sd``.
    """
    target = _check_alpha(power, "power")
    alpha, ratio, delta, s_a, s_b = _design(baseline, sd, mde, relative, alpha, ratio)
    z = _z_alpha(alpha, two_sided) + float(stats.norm.ppf(target))
    n = max(2, math.ceil(z**2 * (s_a**2 + s_b**2 / ratio) / delta**2))
    while _power(n, delta, s_a, s_b, alpha, ratio, two_sided) < target:
        n += 1
    while n > 2 and _power(n - 1, delta, s_a, s_b, alpha, ratio, two_sided) >= target:
        n -= 1
    return n


def minimum_detectable_effect(
    n_per_arm: float,
    *,
    baseline: float,
    sd: float | None = None,
    relative: bool = True,
    alpha: float = 0.05,
    power: float = 0.8,
    ratio: float = 1.0,
    two_sided: bool = True,
) -> float:
    """The smallest positive effect (relative to ``baseline`` unless ``relative=False``) that
    ``n_per_arm`` customers detect with the given power: the root of :func:`power` ``= power``
    in ``delta`` (about ``(z_{1-alpha/2} + z_{power}) sqrt(s_a^2 + s_b^2/ratio) / sqrt(n)``).
    For a proportion (``sd=None``) the treatment variance moves with the effect, and an
    increase beyond ``p = 1`` cannot be detected (raises)."""
    n = _check_positive(n_per_arm, "n_per_arm")
    target = _check_alpha(power, "power")
    alpha = _check_alpha(alpha)
    ratio = _check_positive(ratio, "ratio")
    base, _ = _effect(baseline, 1.0, relative)
    s_a, _ = _sds(base, sd, 0.0)
    z = _z_alpha(alpha, two_sided) + float(stats.norm.ppf(target))

    def gap(delta: float) -> float:
        sa, sb = _sds(base, sd, delta)
        return _power(n, delta, sa, sb, alpha, ratio, two_sided) - target

    if sd is not None:
        hi = 10 * z * s_a * math.sqrt(1 + 1 / ratio) / math.sqrt(n)
    else:
        hi = (1 - base) * (1 - 1e-12)
        if gap(hi) < 0:
            raise ValidationError(
                f"n_per_arm={n} cannot detect any increase of a proportion {base} with power {target}", "n_per_arm"
            )
    delta = float(optimize.brentq(gap, 1e-12 * max(1.0, abs(base)), hi, xtol=1e-14, rtol=1e-12))
    return delta / base if relative else delta


def duration_days(n_per_arm: float, daily_eligible: float, n_arms: int, traffic_share: float = 1.0) -> int:
    """Days to enrol ``n_per_arm`` customers in each of ``n_arms`` equal arms:
    ``ceil(n_per_arm * n_arms / (daily_eligible * traffic_share))``. Assumes ``daily_eligible``
    *new* eligible customers a day (count returning customers once) of whom ``traffic_share``
    enter the experiment. Round up to whole weeks yourself if weekly cycles matter."""
    n = _check_positive(n_per_arm, "n_per_arm")
    daily = _check_positive(daily_eligible, "daily_eligible")
    if isinstance(n_arms, bool) or not isinstance(n_arms, (int, np.integer)) or n_arms < 2:
        raise ValidationError(f"n_arms must be an integer >= 2, got {n_arms!r}", "n_arms")
    share = _check_positive(traffic_share, "traffic_share")
    if share > 1:
        raise ValidationError(f"traffic_share must be in (0, 1], got {traffic_share!r}", "traffic_share")
    return math.ceil(n * n_arms / (daily * share) - 1e-9)


# ----------------------------------------------------------------------------- report


def analyse(
    metrics: Mapping[str, tuple[Any, ...]], *, alpha: float = 0.05, n_boot: int = 2000, rng: RngLike = None
) -> list[Comparison]:
    """One :class:`Comparison` per metric, in the mapping's order.

    ``metrics[name]`` is ``(a, b)`` -- per-customer values, :func:`compare_means` --,
    ``(a, b, (x_a, x_b))`` -- the same adjusted for pre-experiment covariates (CUPED, see
    :func:`compare_means`) -- or ``(num_a, den_a, num_b, den_b)`` -- a ratio of sums,
    :func:`compare_ratios`. Each metric bootstraps with its own stream, ``rng.spawn``-ed in
    order, so adding a metric at the end leaves the others' intervals unchanged.
    """
    if not isinstance(metrics, Mapping) or not metrics:
        raise ValidationError("metrics must be a non-empty mapping of name -> arrays", "metrics")
    streams = _rng(rng).spawn(len(metrics))
    rows = []
    for (name, arrays), gen in zip(metrics.items(), streams):
        if (
            not isinstance(arrays, (tuple, list))
            or len(arrays) not in (2, 3, 4)
            or (len(arrays) == 3 and not (isinstance(arrays[2], (tuple, list)) and len(arrays[2]) == 2))
        ):
            raise ValidationError(
                f"metrics[{name!r}] must be (a, b), (a, b, (x_a, x_b)) or (num_a, den_a, num_b, den_b)", "metrics"
            )
        kw: dict[str, Any] = dict(alpha=alpha, n_boot=n_boot, rng=gen, metric=str(name))
        if len(arrays) == 4:
            rows.append(compare_ratios(*arrays, **kw))
        else:
            rows.append(compare_means(arrays[0], arrays[1], covariates=arrays[2] if len(arrays) == 3 else None, **kw))
    return rows


def _num(x: float) -> str:
    return "nan" if not math.isfinite(x) else f"{x:.4g}"


def _ci(ci: tuple[float, float], scale: float = 1.0) -> str:
    return f"[{_num(ci[0] * scale)}, {_num(ci[1] * scale)}]"


def format_table(rows: Sequence[Comparison]) -> str:
    """A Markdown table of :func:`analyse`'s rows (4 significant digits; lift in %)."""
    level = f"{100 * (1 - rows[0].alpha):g}%" if rows else "95%"
    head = [
        "metric",
        "control",
        "treatment",
        f"diff [{level} CI]",
        f"lift % [{level} CI]",
        f"bootstrap {level} CI",
        "p-value",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        p = "nan" if not math.isfinite(r.p_value) else (f"{r.p_value:.2e}" if r.p_value < 1e-4 else f"{r.p_value:.4f}")
        cells = [
            r.metric,
            _num(r.mean_a),
            _num(r.mean_b),
            f"{_num(r.diff)} {_ci(r.diff_ci)}",
            f"{_num(100 * r.lift)} {_ci(r.lift_ci, 100)}",
            _ci(r.boot_ci),
            p + (" *" if r.significant else ""),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
