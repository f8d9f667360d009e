"""The eval's statistics on synthetic numbers with known answers: a planted difference is found, a null one is found
only at about the nominal 5% rate, the bootstrap equals the exact bootstrap distribution on a tiny example, and
all-equal values (BCa's 0/0) give the value itself."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from llm_dit.comparison import (
    Estimate,
    adherence_kept,
    better_than,
    bootstrap_ci,
    estimate,
    paired_difference,
)
from llm_dit.errors import UserError


@pytest.mark.parametrize("method", ["percentile", "bca"])
def test_bootstrap_equals_the_exact_bootstrap_distribution_of_a_tiny_sample(method):
    # values 0, 1, 2: the 27 equally likely resamples give means 0..2; P(mean = 0) = P(mean = 2) = 1/27 > 2.5%, so
    # the exact 2.5% and 97.5% quantiles are 0 and 2; the sample is symmetric (z0 = 0) and its jackknife has no
    # skew (a = 0), so BCa's interval is the percentile one
    values = [0.0, 1.0, 2.0]
    means = sorted(sum(r) / 3 for r in itertools.product(values, repeat=3))
    assert means[0] == 0.0 and means[-1] == 2.0 and means.count(0.0) == 1
    assert bootstrap_ci(values, method=method, n_resamples=20000, seed=1) == (0.0, 2.0)


def test_bca_shifts_a_skewed_sample_s_interval_the_way_the_skew_points():
    # one large value among small ones: the mean's distribution is right-skewed, BCa moves the interval up
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.normal(0, 0.1, 29), [3.0]])
    p = bootstrap_ci(values, method="percentile", n_resamples=4000)
    b = bootstrap_ci(values, method="bca", n_resamples=4000)
    assert b[0] > p[0] and b[1] > p[1]


def test_all_equal_values_give_the_value_itself_without_warnings():
    with np.errstate(all="raise"):
        assert bootstrap_ci([0.25] * 12) == (0.25, 0.25)
        assert bootstrap_ci([0.7]) == (0.7, 0.7)
        d = paired_difference({("r", "p", 0): 0.5, ("r", "q", 0): 0.6}, {("r", "p", 0): 0.5, ("r", "q", 0): 0.6})
    assert d == Estimate(0.0, 0.0, 0.0, 2)


def test_a_planted_difference_is_found_and_a_null_one_at_about_the_nominal_rate():
    rng = np.random.default_rng(123)
    n, sd, runs = 48, 0.03, 200
    found = null_excluded = 0
    for i in range(runs):
        base = rng.normal(0.5, 0.1, n)
        cells = range(n)
        planted = {c: base[c] + 0.02 + rng.normal(0, sd) for c in cells}
        null = {c: base[c] + rng.normal(0, sd) for c in cells}
        ref = dict(zip(cells, base, strict=True))
        found += paired_difference(planted, ref, n_resamples=999, seed=i).low > 0
        null_excluded += paired_difference(null, ref, n_resamples=999, seed=i).excludes_zero()
    # d = 0.02 / (0.03 / sqrt(48)) = 4.6 standard errors: power ~ P(Z > 1.96 - 4.6) = 0.996, ~1 miss in 200
    assert found >= runs - 4
    # nominal 5% of 200 = 10 (binomial sd ~3.1); BCa on 48 cells runs a little liberal
    assert 2 <= null_excluded <= 22


def test_paired_difference_pairs_by_cell_key_not_by_position():
    a = {("r1", "p", 0): 1.0, ("r2", "p", 0): 2.0, ("r3", "p", 0): 9.0}
    b = {("r2", "p", 0): 1.5, ("r1", "p", 0): 0.5}  # r3 missing: not paired
    d = paired_difference(a, b, n_resamples=100)
    assert d.n == 2 and d.mean == pytest.approx(0.5) and d.low == d.high == pytest.approx(0.5)
    assert paired_difference(a, {}) is None


def test_seeded_intervals_repeat_and_differ_between_seeds():
    values = np.random.default_rng(5).normal(0, 1, 20)
    assert bootstrap_ci(values, seed=3) == bootstrap_ci(values, seed=3)
    assert bootstrap_ci(values, seed=3) != bootstrap_ci(values, seed=4)


def test_the_verdict_needs_a_style_gain_above_zero_and_adherence_within_tolerance():
    gain = Estimate(0.05, 0.02, 0.08, 24)
    no_gain = Estimate(0.02, -0.01, 0.05, 24)
    kept = Estimate(-0.004, -0.009, 0.001, 24)
    lost = Estimate(-0.01, -0.02, 0.0, 24)
    assert better_than(gain, kept).better
    assert not better_than(no_gain, kept).better and "does not exclude 0" in better_than(no_gain, kept).reason
    assert not better_than(gain, lost).better and "tolerance 0.01" in better_than(gain, lost).reason
    assert better_than(gain, lost, tolerance=0.05).better
    assert better_than(gain, None).reason.startswith("undecided")
    assert adherence_kept(kept) and not adherence_kept(lost) and not adherence_kept(None)


def test_bad_input_is_a_user_error():
    with pytest.raises(UserError, match="at least one"):
        bootstrap_ci([])
    with pytest.raises(UserError, match="finite"):
        estimate([0.1, float("nan")])
    with pytest.raises(UserError, match="bootstrap method"):
        bootstrap_ci([0.1, 0.2], method="normal")
