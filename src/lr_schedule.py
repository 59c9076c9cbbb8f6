"""Per-step learning-rate schedules: linear warm-up, then cosine, step, poly or constant."""
import math

import numpy as np


def learning_rates(schedule, lr_max, total_steps, steps_per_epoch, warmup_epochs=0.0, lr_end=0.0,
                   decay_epochs=(), decay_rate=0.1, poly_power=2.0):
    """One learning rate per training iteration (float32 array of length ``total_steps``).

    Warm-up rises linearly from lr_max/warmup_steps to lr_max (as the model zoo does), then:
    cosine: lr_end + (lr_max - lr_end) * (1 + cos(pi * t / T)) / 2 over the remaining steps;
    step: lr_max * decay_rate ** (number of decay epochs passed);
    poly: lr_end + (lr_max - lr_end) * (1 - t / T) ** poly_power; constant: lr_max.
    """
    warmup_steps = int(round(warmup_epochs * steps_per_epoch))
    rates = np.empty(total_steps, dtype=np.float32)
    decay_steps = max(total_steps - warmup_steps, 1)
    boundaries = sorted(int(round(e * steps_per_epoch)) for e in decay_epochs)
    for step in range(total_steps):
        if step < warmup_steps:
            rates[step] = lr_max * (step + 1) / warmup_steps
            continue
        t = step - warmup_steps
        if schedule == "cosine":
            rates[step] = lr_end + (lr_max - lr_end) * 0.5 * (1.0 + math.cos(math.pi * t / decay_steps))
        elif schedule == "step":
            rates[step] = lr_max * decay_rate ** sum(step >= b for b in boundaries)
        elif schedule == "poly":
            rates[step] = lr_end + (lr_max - lr_end) * (1.0 - t / decay_steps) ** poly_power
        elif schedule == "constant":
            rates[step] = lr_max
        else:
            raise ValueError(f"unknown lr schedule '{schedule}'")
    return rates
