"""analysis.stats against scipy's own tests and a Holm adjustment computed by hand."""
import math

import numpy as np
import pytest
from scipy import stats as sps

from analysis import stats

A = {0: 0.612, 1: 0.598, 2: 0.631, 3: 0.605, 4: 0.620}
B = {0: 0.625, 1: 0.607, 2: 0.640, 3: 0.622, 4: 0.626}


def test_paired_matches_scipy_ttest_rel_and_its_interval():
    r = stats.paired(A, B)
    ref = sps.ttest_rel([B[k] for k in sorted(B)], [A[k] for k in sorted(A)])
    ci = ref.confidence_interval(0.95)
    assert r["method"] == "paired" and r["n"] == 5 and r["df"] == 4
    assert r["diff"] == pytest.approx(np.mean([B[k] - A[k] for k in A]), abs=1e-15)
    assert r["p"] == pytest.approx(ref.pvalue, rel=1e-10)
    assert (r["ci_low"], r["ci_high"]) == pytest.approx((ci.low, ci.high), rel=1e-10)


def test_paired_uses_only_the_seeds_both_arms_have():
    a = {**A, 7: 0.1}  # seed 7 only in a; seed 2 missing in b
    b = {k: v for k, v in B.items() if k != 2}
    r = stats.paired(a, b)
    seeds = [0, 1, 3, 4]
    ref = sps.ttest_rel([b[k] for k in seeds], [a[k] for k in seeds])
    assert r["seeds"] == seeds and r["n"] == 4 and r["p"] == pytest.approx(ref.pvalue, rel=1e-10)


def test_welch_matches_scipy_ttest_ind_unequal_var():
    a, b = [0.61, 0.60, 0.63, 0.58], [0.65, 0.66, 0.61, 0.70, 0.68]
    r = stats.welch(a, b)
    ref = sps.ttest_ind(b, a, equal_var=False)
    ci = ref.confidence_interval(0.95)
    assert r["method"] == "welch" and (r["n_a"], r["n_b"]) == (4, 5)
    assert r["p"] == pytest.approx(ref.pvalue, rel=1e-10)
    assert (r["ci_low"], r["ci_high"]) == pytest.approx((ci.low, ci.high), rel=1e-10)
    assert r["df"] == pytest.approx(ref.df, rel=1e-10)


def test_compare_pairs_when_seeds_are_shared_and_welch_only_without():
    assert stats.compare(A, B)["method"] == "paired"
    unpaired = stats.compare({None: 0.5, 10: 0.6, 11: 0.55}, {20: 0.7, 21: 0.65})
    assert unpaired["method"] == "welch"
    # the paired and the Welch interval of the same numbers differ: a paired table must not use Welch
    w = stats.welch(list(A.values()), list(B.values()))
    p = stats.compare(A, B)
    assert p["ci_high"] - p["ci_low"] < w["ci_high"] - w["ci_low"]


def test_mean_ci_matches_scipy_t_interval():
    x = [0.61, 0.60, 0.63, 0.58, 0.64]
    r = stats.mean_ci(x)
    lo, hi = sps.t.interval(0.95, len(x) - 1, loc=np.mean(x), scale=sps.sem(x))
    assert (r["ci_low"], r["ci_high"]) == pytest.approx((lo, hi), rel=1e-12) and r["n"] == 5


@pytest.mark.parametrize("n", [0, 1])
def test_below_two_values_there_is_no_interval_and_no_p(n):
    r = stats.paired({k: A[k] for k in list(A)[:n]}, B)
    assert r["n"] == n and math.isnan(r["ci_low"]) and math.isnan(r["p"])
    assert stats.verdict(r) == "n < 2"
    assert math.isnan(stats.mean_ci([0.5] * n)["ci_low"])


def test_holm_by_hand():
    p = [0.01, 0.04, 0.03, 0.005, math.nan]
    # sorted: 0.005 (x4) = 0.02, 0.01 (x3) = 0.03, 0.03 (x2) = 0.06, 0.04 (x1) = 0.04 -> max so far 0.06
    assert stats.holm(p)[:4] == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert math.isnan(stats.holm(p)[4])
    rows = stats.with_holm([{"p": v} for v in p])
    assert [r["mark"] for r in rows] == ["*", "", "", "*", ""]


def test_verdict_says_unresolved_when_the_interval_spans_zero():
    assert stats.verdict({"ci_low": -0.002, "ci_high": 0.01}) == "unresolved"
    assert stats.verdict({"ci_low": 0.001, "ci_high": 0.01}) == "higher"
    assert stats.verdict({"ci_low": -0.01, "ci_high": -0.001}) == "lower"


def test_identical_differences_give_a_zero_width_interval_and_no_p_value():
    r = stats.paired({0: 0.25, 1: 0.5}, {0: 0.5, 1: 0.75})
    assert r["ci_low"] == r["ci_high"] == 0.25 and math.isnan(r["p"])
    assert stats.verdict(r) == "no spread"
    assert stats.with_holm([r, {"p": 0.01}])[0]["mark"] == ""  # left out of Holm's family
    assert math.isnan(stats.welch([0.5, 0.5], [0.6, 0.6])["p"])
    # identical up to float rounding (0.15 - 0.13 != 0.12 - 0.10 in binary) is still no spread
    assert stats.verdict(stats.paired({0: 0.13, 1: 0.10}, {0: 0.15, 1: 0.12})) == "no spread"


def test_ci_from_summary_equals_the_paired_interval():
    d = [B[k] - A[k] for k in sorted(A)]
    lo, hi = stats.ci_from_summary(float(np.mean(d)), float(np.std(d, ddof=1)), len(d))
    r = stats.paired(A, B)
    assert (lo, hi) == pytest.approx((r["ci_low"], r["ci_high"]), rel=1e-12)


def test_cli_rereads_a_summary_with_interval_p_and_holm(capsys):
    d = [B[k] - A[k] for k in sorted(A)]
    m, sd = float(np.mean(d)), float(np.std(d, ddof=1))
    assert stats.main([str(m), str(sd), "5", "0.001", "0.01", "3"]) == 0
    out = capsys.readouterr().out.splitlines()
    ref = sps.ttest_1samp(d, 0.0)
    assert f"p {ref.pvalue:.2g}" in out[0] and out[0].endswith("higher") and out[1].endswith("unresolved")
    assert stats.main(["1", "2"]) == 2


def test_the_summary_line_counts_each_verdict_holm_marks_and_welch_rows():
    rows = [{"diff": 1.0, "ci_low": 0.5, "ci_high": 1.5, "p": 0.01, "mark": "*", "method": stats.PAIRED},
            {"diff": -1.0, "ci_low": -1.5, "ci_high": -0.5, "p": 0.02, "mark": "", "method": stats.PAIRED},
            {"diff": 0.1, "ci_low": -1.0, "ci_high": 1.0, "p": 0.8, "mark": "", "method": stats.WELCH},
            {"diff": 0.2, "ci_low": math.nan, "ci_high": math.nan, "p": math.nan, "mark": "", "method": stats.NONE}]
    assert stats.tally(rows) == {"higher": 1, "lower": 1, "unresolved": 1, "no_ci": 1, "no_spread": 0, "holm": 1,
                                 "total": 4, "welch": 1}
    assert stats.tally_text(rows) == ("4 comparisons: 1 resolved higher, 1 resolved lower, 1 unresolved (interval "
                                      "spans 0), 1 without an interval (n < 2); 1 with Holm-adjusted p < 0.05 (*); "
                                      "1 unpaired (Welch: the arms share no seed)")
