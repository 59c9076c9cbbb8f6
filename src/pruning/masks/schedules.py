"""Density / sparsity schedules of RPG, GMP and the RigL family (pure Python, no framework).

Conventions used throughout:

- ``step`` is the number of finished training iterations. A mask update "at step t" happens
  before iteration t runs (after t optimizer steps), exactly like the reference RigL scheduler,
  which increments its counter after every optimizer step and updates when ``counter % delta == 0``.
- density = 1 - sparsity = fraction of weights kept.
"""
import math

# Tolerance added before flooring ``percent * total_steps``: 0.29 * 100 is 28.999999999999996 in
# floating point and must give 29, not 28.
_FLOOR_EPS = 1e-9


def _check_fraction(name, value, low_open=False):
    """Raise ValueError unless ``value`` is a real number in [0, 1] (or (0, 1] if low_open)."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if math.isnan(value) or value > 1.0 or value < 0.0 or (low_open and value == 0.0):
        interval = "(0, 1]" if low_open else "[0, 1]"
        raise ValueError(f"{name} must be in {interval}, got {value}")
    return value


def _check_int(name, value, minimum):
    if isinstance(value, bool) or int(value) != value:
        raise ValueError(f"{name} must be an integer, got {value!r}")
    value = int(value)
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def exponential_density(update_index, final_density, total_updates):
    """RPG "magnitude-exponential" target density after ``update_index`` mask updates.

    density(r) = final_density ** (r / R)   for 0 <= r < R
    density(r) = final_density              for r >= R

    with R = ``total_updates``. density(0) = 1 (dense); the ratio between consecutive
    densities is constant, so every update removes the same fraction of the remaining weights.

    Caller convention (see :func:`rpg_update_steps`): the j-th update of the run (1-based, j = 1
    at the first entry of ``update_steps``) uses ``update_index = j``.
    """
    r = _check_int("update_index", update_index, 0)
    d = _check_fraction("final_density", final_density, low_open=True)
    big_r = _check_int("total_updates", total_updates, 1)
    if r >= big_r:
        return d  # exactly the target, not d ** (R/R) evaluated in floating point
    return d ** (r / big_r)


def cubic_sparsity(step, final_sparsity, begin_step, end_step, initial_sparsity=0.0):
    """Zhu & Gupta (2017) gradual pruning sparsity at ``step``.

    s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (t_end - t0)) ** 3   for t0 <= t <= t_end,
    s_t = s_i before t0 and s_f from t_end on (begin_step == end_step: one-shot pruning).

    The cubic prunes fast at first (many redundant weights) and slowly near the end.
    """
    s_f = _check_fraction("final_sparsity", final_sparsity)
    s_i = _check_fraction("initial_sparsity", initial_sparsity)
    if s_i > s_f:
        raise ValueError(f"initial_sparsity ({s_i}) must not exceed final_sparsity ({s_f})")
    begin_step = _check_int("begin_step", begin_step, 0)
    end_step = _check_int("end_step", end_step, 0)
    if end_step < begin_step:
        raise ValueError(f"end_step ({end_step}) must be >= begin_step ({begin_step})")
    if step < begin_step:
        return s_i
    if step >= end_step:
        return s_f
    progress = (step - begin_step) / (end_step - begin_step)
    return s_f + (s_i - s_f) * (1.0 - progress) ** 3


def drop_fraction(step, alpha, t_end):
    """RigL cosine-annealed drop fraction: f = alpha / 2 * (1 + cos(pi * step / t_end)).

    f = alpha at step 0, alpha / 2 half way, 0 at ``t_end``; 0 for step >= t_end (no more
    topology changes after T_end).
    """
    alpha = _check_fraction("alpha", alpha)
    if not t_end > 0:
        raise ValueError(f"t_end must be > 0, got {t_end}")
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if step >= t_end:
        return 0.0
    return alpha / 2.0 * (1.0 + math.cos(math.pi * step / t_end))


def rpg_update_steps(total_steps, delta, t_end_percent, iterative_t_end_percent):
    """Steps at which RPG updates the masks, and the number R of density-decreasing updates.

    With T_end = floor(t_end_percent * total_steps) and
    iterative_T_end = floor(iterative_t_end_percent * total_steps) (the reference truncates with
    ``int()`` too):

    - ``update_steps`` = [t for t = delta, 2*delta, ... if t < T_end]; an update at step t runs
      before iteration t (t iterations finished) - the reference updates when its step counter,
      incremented after every optimizer step, is a multiple of delta and below T_end.
    - R = number of update steps t <= iterative_T_end (the reference's
      ``iterative_T_end // delta`` counts the same multiples of delta), clipped to
      [1, len(update_steps)].

    Why the clip: the j-th update (1-based) gets ``exponential_density(j, d, R)``, which equals
    d exactly once j >= R. For long runs R < len(update_steps) holds and the last updates
    (between iterative_T_end and T_end) all sit at d. For short runs, or when
    t_end_percent == iterative_t_end_percent and iterative_T_end is a multiple of delta (then
    iterative_T_end itself is counted in R but is not an update step because t < T_end is
    strict), R could exceed the number of updates and the run would end above the target
    density. Clipping R to len(update_steps) guarantees that the LAST update always reaches
    the final density, for any run length. R >= 1 keeps the exponent finite when
    iterative_T_end < delta.

    Raises ValueError if no update fits (T_end <= delta): lower delta or train longer.
    """
    total_steps = _check_int("total_steps", total_steps, 1)
    delta = _check_int("delta", delta, 1)
    t_end_percent = _check_fraction("t_end_percent", t_end_percent, low_open=True)
    iterative_t_end_percent = _check_fraction("iterative_t_end_percent", iterative_t_end_percent)
    if iterative_t_end_percent > t_end_percent:
        raise ValueError(
            f"iterative_t_end_percent ({iterative_t_end_percent}) must not exceed "
            f"t_end_percent ({t_end_percent}): the density must reach its target before "
            "topology updates stop")
    t_end = t_end_step(t_end_percent, total_steps)
    iterative_t_end = t_end_step(iterative_t_end_percent, total_steps)
    update_steps = list(range(delta, t_end, delta))  # t < T_end, strict as in the reference
    if not update_steps:
        raise ValueError(
            f"no mask update fits: total_steps={total_steps} gives T_end={t_end} "
            f"(t_end_percent={t_end_percent}), but the first update would be at step "
            f"delta={delta}, which must be < T_end; lower delta or train longer")
    n_before_iterative_end = sum(1 for t in update_steps if t <= iterative_t_end)
    total_updates = min(max(n_before_iterative_end, 1), len(update_steps))
    return update_steps, total_updates


def gmp_update_steps(begin_step, end_step, frequency):
    """GMP mask-update steps: begin, begin + freq, ... (< end), and always end_step last.

    end_step is appended even when (end - begin) is not a multiple of ``frequency`` so that
    the final sparsity s_f = cubic_sparsity(end_step, ...) is actually applied.
    """
    begin_step = _check_int("begin_step", begin_step, 0)
    end_step = _check_int("end_step", end_step, 0)
    frequency = _check_int("frequency", frequency, 1)
    if end_step < begin_step:
        raise ValueError(f"end_step ({end_step}) must be >= begin_step ({begin_step})")
    steps = list(range(begin_step, end_step, frequency))
    steps.append(end_step)
    return steps


def t_end_step(t_end_percent, total_steps):
    """T_end = floor(t_end_percent * total_steps), robust to 0.29 * 100 = 28.999999999999996 (the
    reference truncates with ``int()``; the one place every method computes it)."""
    return math.floor(t_end_percent * total_steps + _FLOOR_EPS)


class ExponentialSchedule:
    """RPG's schedule: an update every ``delta`` iterations before T_end, target density
    d ** (r / R) after update r, and the RigL cosine drop fraction annealed to 0 at T_end."""

    def __init__(self, total_steps, delta, t_end_percent, iterative_t_end_percent, final_density,
                 alpha):
        self.update_steps, self.total_updates = rpg_update_steps(
            total_steps, delta, t_end_percent, iterative_t_end_percent)
        self.t_end = t_end_step(t_end_percent, total_steps)
        self.final_density = final_density
        self.alpha = alpha

    def density(self, index, step):
        return exponential_density(index, self.final_density, self.total_updates)

    def drop_fraction(self, step):
        return drop_fraction(step, self.alpha, self.t_end)


class ConstantSchedule:
    """RigL / SET's schedule: the final density from the first mask on (at step 0, before any
    training), then drop-and-grow every ``delta`` iterations before T_end with the cosine drop
    fraction; ``regrow=False`` (a static topology) keeps only the first mask."""

    def __init__(self, total_steps, delta, t_end_percent, final_density, alpha, regrow=True):
        delta = _check_int("delta", delta, 1)
        self.t_end = t_end_step(_check_fraction("t_end_percent", t_end_percent, low_open=True),
                                _check_int("total_steps", total_steps, 1))
        regrowth = list(range(delta, self.t_end, delta)) if regrow else []
        if regrow and not regrowth:  # would silently be a static topology
            raise ValueError(f"no drop-and-grow update fits: total_steps={total_steps} gives "
                             f"T_end={self.t_end}, but the first would be at step delta={delta}, "
                             "which must be < T_end; lower delta or train longer")
        self.update_steps = [0] + regrowth
        self.final_density = final_density
        self.alpha = alpha

    def density(self, index, step):
        return self.final_density

    def drop_fraction(self, step):
        return drop_fraction(step, self.alpha, self.t_end)


class CubicSchedule:
    """GMP's schedule (Zhu & Gupta): updates every ``frequency`` iterations from ``begin`` to
    ``end`` (always included), sparsity on the cubic curve; no regrowth (drop fraction 0)."""

    def __init__(self, begin, end, frequency, final_sparsity):
        self.update_steps = gmp_update_steps(begin, end, frequency)
        self.begin, self.end = begin, end
        self.final_sparsity = final_sparsity

    def density(self, index, step):
        return 1.0 - cubic_sparsity(step, self.final_sparsity, self.begin, self.end)

    def drop_fraction(self, step):
        return 0.0
