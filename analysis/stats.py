"""The statistics every table and console summary uses: one place, one convention.

The grids are paired designs: for a given seed, the arms of a comparison (IQA-LS vs Original of
Table 2, a setting vs one-hot in an ablation) share the training subset, the mixture draws, the batch
order and the initial weights; only the targets differ. So a difference between two settings is
taken seed by seed, over the seeds both arms finished, and reported with its mean, the 95 % t
interval of that mean (scipy's t quantile, n - 1 degrees of freedom), n and the two-sided paired p
value (`paired`, the same numbers as scipy.stats.ttest_rel). Welch's interval (`welch`, unequal
variances, as scipy.stats.ttest_ind(equal_var=False)) is used only where no pairing exists (the arms
share no seed, or the seeds are unknown) and is labelled so (`method`). One arm alone gets the t
interval of its mean over seeds (`mean_ci`).

With n < 2 (per arm for Welch, pairs for the paired test) there is no interval and no p value: the
fields are NaN and the tables say "n < 2". A difference whose interval spans 0 is "unresolved",
whatever its sign (`verdict`). Across the comparisons of one table (Table 2: 4 pairs x 10 test sets),
`holm` adjusts the p values (Holm 1979, step-down, family-wise error rate) and `mark` puts "*" beside
a cell whose adjusted p is below ALPHA.

Degenerate case: when every paired difference is identical (zero spread: two seeds of a smoke run
whose accuracies on 100 images moved by the same 0.01 steps), the interval has zero width and there is
no p value (NaN, left out of Holm), and `verdict` says "no spread". scipy's ttest_rel returns p = 0
there; we do not: a few seeds that agree exactly on a discrete metric are not evidence of a difference
known without error.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

CI_LEVEL = 0.95  # every interval of the project
ALPHA = 0.05  # Holm-adjusted significance of a table's marks
PAIRED, WELCH, NONE = "paired", "welch", "none"  # `method` of a comparison
# a spread this small is float rounding of identical differences (0.15 - 0.13 vs 0.12 - 0.10), not data
SPREAD_EPS = 1e-9


def _finite(values) -> np.ndarray:
    return np.asarray([float(v) for v in values if v is not None and math.isfinite(float(v))], dtype=np.float64)


def _t_half(sd: float, n: int, df: float, level: float) -> float:
    from scipy.stats import t

    return float(t.ppf(0.5 + level / 2, df)) * sd / math.sqrt(n)


def _p_two_sided(tstat: float, df: float) -> float:
    from scipy.stats import t

    return float(2 * t.sf(abs(tstat), df))


def mean_ci(values: Sequence[float], level: float = CI_LEVEL) -> dict:
    """Mean of the finite values, their sample std (ddof 1), n, and the t interval of the mean."""
    x = _finite(values)
    n = int(x.size)
    out = {"mean": float(x.mean()) if n else math.nan, "std": math.nan, "ci_low": math.nan,
           "ci_high": math.nan, "n": n}
    if n >= 2:
        sd = float(x.std(ddof=1))
        half = _t_half(sd, n, n - 1, level)
        out.update(std=sd, ci_low=out["mean"] - half, ci_high=out["mean"] + half)
    return out


def paired(a: Mapping, b: Mapping, level: float = CI_LEVEL) -> dict:
    """b - a, seed by seed over the seeds both have (keys: seeds; values: a metric), then the mean
    difference, its t interval, n and the two-sided p value of the paired t test."""
    seeds = sorted(k for k in a if k in b and _ok(a[k]) and _ok(b[k]))
    d = np.asarray([float(b[k]) - float(a[k]) for k in seeds], dtype=np.float64)
    n = int(d.size)
    out = {"diff": float(d.mean()) if n else math.nan, "ci_low": math.nan, "ci_high": math.nan,
           "p": math.nan, "df": math.nan, "n": n, "n_a": n, "n_b": n, "method": PAIRED, "seeds": seeds}
    if n < 2:
        return out
    sd = float(d.std(ddof=1))
    out["df"] = n - 1
    if sd <= SPREAD_EPS * max(1.0, abs(out["diff"])):  # module docstring: no p value from zero spread
        out.update(ci_low=out["diff"], ci_high=out["diff"], no_spread=True)
        return out
    half = _t_half(sd, n, n - 1, level)
    out.update(ci_low=out["diff"] - half, ci_high=out["diff"] + half,
               p=_p_two_sided(out["diff"] / (sd / math.sqrt(n)), n - 1))
    return out


def welch(a: Sequence[float], b: Sequence[float], level: float = CI_LEVEL) -> dict:
    """mean(b) - mean(a) of two independent samples with Welch's t interval and p value (Welch-
    Satterthwaite degrees of freedom); no interval when either side has fewer than 2 values."""
    xa, xb = _finite(a), _finite(b)
    na, nb = int(xa.size), int(xb.size)
    out = {"diff": float(xb.mean() - xa.mean()) if na and nb else math.nan, "ci_low": math.nan,
           "ci_high": math.nan, "p": math.nan, "df": math.nan, "n": min(na, nb), "n_a": na, "n_b": nb,
           "method": WELCH, "seeds": []}
    if na < 2 or nb < 2:
        return out
    va, vb = float(xa.var(ddof=1)) / na, float(xb.var(ddof=1)) / nb
    se = math.sqrt(va + vb)
    if se <= SPREAD_EPS * max(1.0, abs(out["diff"])):
        out.update(ci_low=out["diff"], ci_high=out["diff"], no_spread=True)
        return out
    df = (va + vb) ** 2 / (va * va / (na - 1) + vb * vb / (nb - 1))
    from scipy.stats import t

    half = float(t.ppf(0.5 + level / 2, df)) * se
    out.update(ci_low=out["diff"] - half, ci_high=out["diff"] + half, df=df,
               p=_p_two_sided(out["diff"] / se, df))
    return out


def _ok(v) -> bool:
    return v is not None and math.isfinite(float(v))


def compare(a: Mapping, b: Mapping, level: float = CI_LEVEL) -> dict:
    """b - a for two arms given as {seed: value}: paired by seed when the arms share a known seed,
    Welch (labelled `method = "welch"`) only when they share none or the seeds are unknown (None)."""
    known = [k for k in a if k is not None and k in b]
    if known:
        return paired({k: a[k] for k in known}, {k: b[k] for k in known}, level)
    return welch(list(a.values()), list(b.values()), level)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p values (same order as given); NaN entries stay NaN and are not
    counted in the family size."""
    idx = [i for i, p in enumerate(pvalues) if p is not None and math.isfinite(p)]
    m = len(idx)
    out = [math.nan] * len(pvalues)
    running = 0.0
    for rank, i in enumerate(sorted(idx, key=lambda i: (pvalues[i], i))):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        out[i] = running
    return out


def with_holm(rows: list[dict]) -> list[dict]:
    """The rows (dicts with "p") with "p_holm" and "mark" added, Holm over all of them (one table)."""
    adj = holm([r["p"] for r in rows])
    return [{**r, "p_holm": q, "mark": mark(q)} for r, q in zip(rows, adj)]


def mark(p_holm: float) -> str:
    return "*" if p_holm is not None and math.isfinite(p_holm) and p_holm < ALPHA else ""


def verdict(row: Mapping) -> str:
    """"higher" / "lower" when the interval excludes 0, "unresolved" when it spans 0, "n < 2", or
    "no spread" (a zero-width interval from identical differences: see the module docstring)."""
    lo, hi = row.get("ci_low", math.nan), row.get("ci_high", math.nan)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return "n < 2"
    if lo == hi and not (row.get("p") is not None and math.isfinite(row.get("p", math.nan))):
        return "no spread"
    if lo > 0:
        return "higher"
    if hi < 0:
        return "lower"
    return "unresolved"


def ci_from_summary(mean: float, std: float, n: int, level: float = CI_LEVEL) -> tuple[float, float]:
    """The t interval of a mean given only its mean, sample std and n (for re-reading a summary that
    printed mean ± std over n seeds: the interval of paired differences when they were paired)."""
    if n < 2 or not math.isfinite(std):
        return math.nan, math.nan
    half = _t_half(std, n, n - 1, level)
    return mean - half, mean + half


def tally(rows: list[Mapping]) -> dict:
    """How many of a table's comparisons (rows with the interval, "mark" and "method") are resolved
    up / down (the interval excludes 0), unresolved, without an interval, with no spread, Holm-
    significant, and unpaired (Welch)."""
    verdicts = [verdict(r) for r in rows]
    return {"higher": verdicts.count("higher"), "lower": verdicts.count("lower"),
            "unresolved": verdicts.count("unresolved"), "no_ci": verdicts.count("n < 2"),
            "no_spread": verdicts.count("no spread"), "holm": sum(r.get("mark") == "*" for r in rows),
            "total": len(rows), "welch": sum(r.get("method") == WELCH for r in rows)}


def tally_text(rows: list[Mapping]) -> str:
    """The one-line summary every table prints under its paired differences."""
    s = tally(rows)
    text = (f"{s['total']} comparisons: {s['higher']} resolved higher, {s['lower']} resolved lower, "
            f"{s['unresolved']} unresolved (interval spans 0)")
    if s["no_ci"]:
        text += f", {s['no_ci']} without an interval (n < 2)"
    if s["no_spread"]:
        text += f", {s['no_spread']} with no spread (identical differences: no p value)"
    text += f"; {s['holm']} with Holm-adjusted p < {ALPHA:g} (*)"
    if s["welch"]:
        text += f"; {s['welch']} unpaired (Welch: the arms share no seed)"
    return text


def main(argv=None) -> int:
    """`python -m analysis.stats MEAN STD N [MEAN STD N ...]`: for a summary that printed only mean ±
    sample std over n (e.g. the seed-by-seed differences of an older page), the 95 % t interval of each
    mean, the two-sided one-sample t test's p value against 0 (the paired test when the values were
    paired differences) and Holm's adjustment over all the triples given."""
    import sys

    args = list(sys.argv[1:] if argv is None else argv)
    if not args or len(args) % 3:
        print("usage: python -m analysis.stats MEAN STD N [MEAN STD N ...]", file=sys.stderr)
        return 2
    rows = []
    for i in range(0, len(args), 3):
        mean, std, n = float(args[i]), float(args[i + 1]), int(args[i + 2])
        lo, hi = ci_from_summary(mean, std, n)
        p = _p_two_sided(mean / (std / math.sqrt(n)), n - 1) if n >= 2 and std > 0 else math.nan
        rows.append({"mean": mean, "std": std, "n": n, "ci_low": lo, "ci_high": hi, "p": p})
    for r in with_holm(rows):
        print(f"{r['mean']:+.4f} ± {r['std']:.4f} (n = {r['n']}) -> {CI_LEVEL:.0%} t interval "
              f"[{r['ci_low']:+.4f}, {r['ci_high']:+.4f}], p {r['p']:.2g}, Holm over {len(rows)} "
              f"{r['p_holm']:.2g}{r['mark']}: {verdict(r)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

