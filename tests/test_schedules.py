"""Schedules of RPG / GMP against independent computations."""
import itertools
import math

import pytest

from src.pruning.masks.schedules import (
    cubic_sparsity, drop_fraction, exponential_density, gmp_update_steps, ExponentialSchedule,
    rpg_update_steps)


# ------------------------------------------------------------------ exponential (RPG) density
def _density_by_repeated_factor(r, d, big_r):
    """Independent: multiply by the constant per-update factor r times, capped at R updates."""
    factor = math.exp(math.log(d) / big_r)
    density = 1.0
    for _ in range(min(r, big_r)):
        density *= factor
    return density


@pytest.mark.parametrize("d,big_r", [(0.2, 1), (0.1, 7), (0.05, 9), (0.02, 1125)])
def test_exponential_density_matches_repeated_factor(d, big_r):
    for r in list(range(min(big_r, 30) + 1)) + [big_r - 1, big_r, big_r + 5]:
        if r < 0:
            continue
        assert exponential_density(r, d, big_r) == pytest.approx(
            _density_by_repeated_factor(r, d, big_r), rel=1e-9)


def test_exponential_density_endpoints_exact():
    assert exponential_density(0, 0.1, 10) == 1.0
    assert exponential_density(10, 0.1, 10) == 0.1  # exact, not 0.1 ** 1.0 in floating point
    assert exponential_density(11, 0.1, 10) == 0.1
    values = [exponential_density(r, 0.1, 10) for r in range(12)]
    assert all(a > b for a, b in itertools.pairwise(values[:11]))


@pytest.mark.parametrize("args", [(-1, 0.1, 10), (1, 0.0, 10), (1, 1.5, 10), (1, 0.1, 0),
                                  (1.5, 0.1, 10), (1, float("nan"), 10)])
def test_exponential_density_rejects_bad_args(args):
    with pytest.raises(ValueError):
        exponential_density(*args)


# ------------------------------------------------------------------------- cubic (GMP) sparsity
def test_cubic_sparsity_against_independent_form():
    s_i, s_f, t0, t1 = 0.1, 0.9, 100, 1100
    for t in range(0, 1300, 37):
        if t < t0:
            expected = s_i
        elif t > t1:
            expected = s_f
        else:
            remaining = (t1 - t) / (t1 - t0)  # fraction of the pruning window still ahead
            expected = s_i + (s_f - s_i) * (1.0 - remaining * remaining * remaining)
        assert cubic_sparsity(t, s_f, t0, t1, s_i) == pytest.approx(expected, abs=1e-12)


def test_cubic_sparsity_endpoints_and_monotone():
    assert cubic_sparsity(0, 0.9, 10, 50) == 0.0
    assert cubic_sparsity(10, 0.9, 10, 50) == 0.0
    assert cubic_sparsity(50, 0.9, 10, 50) == 0.9
    assert cubic_sparsity(10 ** 6, 0.9, 10, 50) == 0.9
    vals = [cubic_sparsity(t, 0.9, 10, 50) for t in range(10, 51)]
    assert all(a < b for a, b in itertools.pairwise(vals))
    assert cubic_sparsity(5, 0.8, 5, 5) == 0.8  # one-shot


@pytest.mark.parametrize("args", [(0, 1.2, 0, 10), (0, 0.5, 10, 5), (0, 0.5, 0, 10, 0.7)])
def test_cubic_sparsity_rejects_bad_args(args):
    with pytest.raises(ValueError):
        cubic_sparsity(*args)


# ---------------------------------------------------------------------------- RigL drop fraction
def test_drop_fraction_values():
    alpha, t_end = 0.3, 1000
    assert drop_fraction(0, alpha, t_end) == pytest.approx(alpha)
    assert drop_fraction(500, alpha, t_end) == pytest.approx(alpha / 2)
    assert drop_fraction(1000, alpha, t_end) == 0.0
    assert drop_fraction(5000, alpha, t_end) == 0.0
    for t in (1, 123, 999):
        # independent: cos^2 form, alpha/2 (1 + cos x) = alpha cos^2(x/2)
        assert drop_fraction(t, alpha, t_end) == pytest.approx(
            alpha * math.cos(math.pi * t / t_end / 2) ** 2, rel=1e-12)


@pytest.mark.parametrize("args", [(0, 1.5, 10), (0, 0.3, 0), (-1, 0.3, 10)])
def test_drop_fraction_rejects_bad_args(args):
    with pytest.raises(ValueError):
        drop_fraction(*args)


# -------------------------------------------------------------------------- RPG update schedule
def _simulate_reference_scheduler(total_steps, delta, t_end_pct):
    """Independent: the reference counter, incremented after every optimizer step."""
    t_end = round(t_end_pct * total_steps * 1e6) // 10 ** 6  # floor without float noise
    steps, counter = [], 0
    for _ in range(total_steps):
        counter += 1
        if counter % delta == 0 and counter < t_end:
            steps.append(counter)
    return steps


COMBOS = [(16, 2), (100, 10), (100, 1), (100, 3), (17, 5), (40, 9), (1000, 100), (1001, 7),
          (125100, 100), (391 * 300, 100), (20, 17)]


@pytest.mark.parametrize("total,delta", COMBOS)
@pytest.mark.parametrize("pcts", [(0.901, 0.9), (0.8, 0.8), (0.5, 0.3), (1.0, 1.0)])
def test_rpg_last_update_reaches_final_density(total, delta, pcts):
    t_end_pct, it_end_pct = pcts
    try:
        steps, big_r = rpg_update_steps(total, delta, t_end_pct, it_end_pct)
    except ValueError:
        assert not _simulate_reference_scheduler(total, delta, t_end_pct)
        return
    assert steps == _simulate_reference_scheduler(total, delta, t_end_pct)
    assert 1 <= big_r <= len(steps)
    for d in (0.2, 0.1, 0.05, 0.02):
        dens = [exponential_density(j, d, big_r) for j in range(1, len(steps) + 1)]
        assert dens[-1] == d
        assert all(a >= b for a, b in itertools.pairwise(dens))
        assert dens[0] < 1.0  # the first update already prunes
        # every update after iterative_T_end is at the final density
        it_end = math.floor(it_end_pct * total + 1e-9)
        assert all(x == d for t, x in zip(steps, dens) if t > it_end)


def test_rpg_update_steps_known_cases():
    # T_end = int(14.416) = 14 and t < T_end is strict: 14 is not an update step
    assert rpg_update_steps(16, 2, 0.901, 0.9) == ([2, 4, 6, 8, 10, 12], 6)
    # T_end = 90: 8 updates; the reference R = 90 // 10 = 9 would leave the last update at
    # 0.1 ** (7/9) instead of 0.1; clipped to 8 here
    assert rpg_update_steps(100, 10, 0.901, 0.9) == ([10, 20, 30, 40, 50, 60, 70, 80], 8)
    # T_end_percent == iterative_T_end_percent with iterative_T_end a multiple of delta: 80 is
    # counted by iterative_T_end // delta but is not an update (t < T_end); R is clipped
    steps, big_r = rpg_update_steps(100, 10, 0.8, 0.8)
    assert steps == [10, 20, 30, 40, 50, 60, 70] and big_r == 7
    # long ImageNet-like run: R equals the reference iterative_T_end // delta
    total = 1251 * 100
    steps, big_r = rpg_update_steps(total, 100, 0.901, 0.9)
    assert big_r == int(0.9 * total) // 100 == 1125
    assert steps[-1] == 112700 and len(steps) == 1127


def rpg_densities(total_steps, delta, t_end_percent, iterative_t_end_percent, final_density):
    """{update step: target density} of a whole RPG run, through the schedule object the method uses."""
    schedule = ExponentialSchedule(total_steps, delta, t_end_percent, iterative_t_end_percent,
                                   final_density, alpha=0.3)
    return {t: schedule.density(j, t) for j, t in enumerate(schedule.update_steps, start=1)}


def test_rpg_densities_map():
    dens = rpg_densities(100, 10, 0.901, 0.9, 0.1)
    assert list(dens) == [10, 20, 30, 40, 50, 60, 70, 80]
    assert dens[80] == 0.1 and dens[10] == pytest.approx(0.1 ** (1 / 8))


def test_rpg_run_too_short_raises_clear_error():
    with pytest.raises(ValueError, match="lower delta or train longer"):
        rpg_update_steps(50, 100, 0.901, 0.9)
    with pytest.raises(ValueError, match="lower delta or train longer"):
        rpg_update_steps(10, 9, 0.901, 0.9)  # T_end = 9, first update 9 is not < 9


@pytest.mark.parametrize("args", [(0, 10, 0.9, 0.9), (100, 0, 0.9, 0.9), (100, 10, 0.5, 0.9),
                                  (100, 10, 0.0, 0.0), (100, 10, 1.2, 0.9)])
def test_rpg_update_steps_rejects_bad_args(args):
    with pytest.raises(ValueError):
        rpg_update_steps(*args)


# ----------------------------------------------------------------------------- GMP update steps
def test_gmp_update_steps():
    assert gmp_update_steps(0, 10, 5) == [0, 5, 10]
    assert gmp_update_steps(0, 12, 5) == [0, 5, 10, 12]
    assert gmp_update_steps(3, 3, 5) == [3]
    steps = gmp_update_steps(100, 1000, 7)
    assert steps[0] == 100 and steps[-1] == 1000
    assert all(b - a == 7 for a, b in itertools.pairwise(steps[:-1]))
    assert cubic_sparsity(steps[-1], 0.9, 100, 1000) == 0.9
    with pytest.raises(ValueError):
        gmp_update_steps(10, 5, 1)
    with pytest.raises(ValueError):
        gmp_update_steps(0, 5, 0)
