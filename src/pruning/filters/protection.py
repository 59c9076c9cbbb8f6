"""PSAP protection: which zeroed filters the loss keeps pulling back, and what became of them.

After a pruning step each zeroed filter's gradient energy is compared with the median energy of
its layer's kept filters; a zeroed filter above ``protect_tau`` times that median is protected: it
is left out of the candidates of the next ``protect_steps`` pruning steps, so it can regrow. When
its protection ends it competes on its score again: with ``l2`` a regrown filter's norm has
exploded behind BN and it always wins, with a BN-aware score (``scores``) it has to earn its
place. ``Protection`` also records the outcome per step (how many filters protected at the
previous step are kept, how many of those competed on score and won) and which regrown filters
survive to the end.
"""
import numpy as np

# columns of Protection.outcome, one row per pruning step (-1 = step not taken yet)
OUTCOME_COLUMNS = ("step", "protected_before", "kept", "still_protected", "competed", "won",
                   "regrew")


def protected_filters(energy_zeroed, energy_kept, tau):
    """Boolean per zeroed filter: its gradient energy exceeds tau * median(kept energies)."""
    energy_zeroed = np.asarray(energy_zeroed, dtype=np.float64)
    energy_kept = np.asarray(energy_kept, dtype=np.float64)
    if energy_zeroed.size == 0 or energy_kept.size == 0:
        return np.zeros(energy_zeroed.shape, dtype=bool)
    return energy_zeroed > tau * float(np.median(energy_kept))


BN_TINY = 1e-12   # floor on gamma^2 in bn_normalized_energy


def bn_normalized_energy(energy, gamma, variance, eps, tiny=BN_TINY):
    """Gradient energy of each filter with its BatchNorm scale divided out:
    G_j * (var_j + eps) / max(gamma_j^2, tiny).

    The conv output z_j of filter j goes through BN in training mode,
    y = gamma_j * (z_j - mean_B) / sqrt(var_B + eps) + beta_j, whose backward is
        dL/dz_j = gamma_j / sqrt(var_B + eps) * (g - mean(g) - z_hat * mean(g * z_hat)),
    with g = dL/dy and z_hat the normalised pre-activation. The conv weight gradient is linear in
    dL/dz_j, so sum(grad^2) carries the factor gamma_j^2 / (var_B + eps); multiplying it by
    (var_B + eps) / gamma_j^2 leaves the energy of sum(x * (g - ...)), the same quantity for a
    zeroed and a kept filter. Without it a zeroed filter (var_B = 0) whose ReLU passes the
    constant beta_j > 0 shows gamma_j^2 / eps ~ 1e5 times the energy (a 316x gradient for eps 1e-5)
    whatever it is worth, and one with beta_j <= 0 (dead ReLU) exactly 0.

    ``variance`` must be the batch variance of the step the energy was measured on: exactly 0 for
    a filter whose weights are exactly 0, about the moving variance for the others (see
    ``Protection.after_step``). gamma_j = 0 gives energy 0 exactly (no gradient flows), so the
    ``tiny`` floor on gamma^2 only avoids 0/0.
    """
    energy = np.asarray(energy, dtype=np.float64)
    gamma = np.asarray(gamma, dtype=np.float64)
    variance = np.maximum(np.asarray(variance, dtype=np.float64), 0.0)
    return energy * (variance + eps) / np.maximum(gamma ** 2, tiny)


class Protection:
    """The protection of one PSAP run over the flat filter array of ``layout`` (``FilterLayout``):
    its own state (protected steps left, the measured energies, the outcome table) and
    ``state_dict``. The pruner hands in which filters it zeroed."""

    def __init__(self, cfg, layout, steps_per_epoch, logger):
        self.cfg, self.layout, self.logger = cfg, layout, logger
        self.steps_per_epoch = steps_per_epoch
        total = layout.total
        self.protect = np.zeros(total, dtype=np.int32)  # remaining protected steps
        # protect_energy normalized: per-filter energies measured on the first step after the last
        # pruning step (see after_step); NaN until measured
        self.measured = np.full(total, np.nan, dtype=np.float64)
        self.last_energy = {}   # per layer: the compared energies and zeroed flags of the last step
        self.protected_before = np.zeros(total, dtype=bool)   # protected at the last step
        self.regrown = np.zeros(total, dtype=bool)            # zeroed once, later kept again
        self.outcome = np.full((cfg.epoch_size + 1, len(OUTCOME_COLUMNS)), -1, np.int64)

    @property
    def protected(self):
        """Boolean per filter: spared at the next pruning step."""
        return self.protect > 0

    def lift(self):
        """Protection ends for every filter (the global target wins over it)."""
        self.protect[:] = 0

    def after_step(self, step, steps_done, zeroed, read_energy, ctx):
        """protect_energy normalized: measure the energies on the first step after a pruning step
        (``read_energy(reset)``: the gradient-energy piece's buffer; ``zeroed``: the filters that
        step zeroed).

        Why that step only: a zeroed filter whose ReLU passes beta > 0 gets a gradient scaled by
        gamma / sqrt(eps) on that step (its batch variance is 0) and typically jumps to a norm
        far above the kept filters' (BN makes the layer invariant to the filter's scale, nothing
        pulls it back); from then on its batch variance is neither 0 nor its moving variance, so
        energies accumulated over the interval cannot be put on a common scale. On the first
        step the state is known exactly: zeroed filters are exactly 0 and their batch variance is
        exactly 0, the kept filters' batch variance is about their moving variance.
        Measured on Fashion-MNIST ResNet-20 (4 epochs, 2048 images): energies accumulated over the
        interval put the live zeroed filters at 1e4-1e11 x the kept median raw, and at 1e7-1e13 x
        once normalised with the BN statistics of the pruning step (the regrown filters' moving
        variance is ~1e5); on the first step they lie at 0.3-50 x, the kept ones at 0.03-27 x.
        """
        if not (self.cfg.psap_protect and self.cfg.protect_energy == "normalized"):
            return
        if steps_done == 0 or step % self.steps_per_epoch != 0:
            return
        epoch = step // self.steps_per_epoch   # the epoch this step belongs to
        if epoch == 0 or epoch % self.cfg.psap_interval_epochs != 0:
            return                             # the previous epoch ended without a pruning step
        energy = read_energy(reset=False)      # the buffer was reset at the pruning step
        self.measured[:] = np.nan
        compared = self._normalized_energy(energy, zeroed, ctx)
        for i, name in enumerate(self.layout.conv_names):
            if name in compared:
                self.measured[self.layout.part(i)] = compared[name]

    def _normalized_energy(self, energy, zeroed, ctx):
        """{conv name: BN-normalised energy}, for energies of one step taken right after a pruning
        step: batch variance 0 for the filters zeroed at that step, moving variance for the rest."""
        layout = self.layout
        names = [n for n in layout.conv_names if n in energy]
        layer_of = {n: (i, layer) for i, (n, layer) in enumerate(zip(layout.conv_names, layout.layers))}
        stats = ctx.get_weights([layer_of[n][1]["bn"][field] for n in names
                                 for field in ("gamma", "moving_variance")])
        result = {}
        for name in names:
            i, layer = layer_of[name]
            variance = np.where(zeroed[layout.part(i)], 0.0, stats[layer["bn"]["moving_variance"]])
            result[name] = bn_normalized_energy(np.asarray(energy[name]).reshape(-1),
                                                stats[layer["bn"]["gamma"]], variance,
                                                layer["bn_eps"])
        return result

    def _compared_energy(self, energy):
        """{conv name: per-filter energy compared for protection} (``protect_energy``), or None
        when the normalised energies were not measured (logged)."""
        names = self.layout.conv_names
        if self.cfg.protect_energy == "raw":
            return {n: np.asarray(energy[n], dtype=np.float64).reshape(-1) for n in names if n in energy}
        if np.isnan(self.measured).any():
            self.logger.warning("psap: no gradient energy was measured on the first step after the "
                                "last pruning step (resumed from an older checkpoint?); no new "
                                "protection at this step")
            return None
        return {n: self.measured[self.layout.part(i)].copy() for i, n in enumerate(names)}

    def _log_energy(self, raw):
        """One line: zeroed filters' energy relative to the median of their layer's kept ones
        (and, for normalised energies, how many the raw interval energies would protect)."""
        ratios, raw_hits = [], 0
        for name, item in self.last_energy.items():
            zeroed = item["zeroed"]
            kept = item["energy"][~zeroed]
            if kept.size and zeroed.any():
                ratios.append(item["energy"][zeroed] / max(float(np.median(kept)), 1e-30))
            if name in raw and self.cfg.protect_energy != "raw":
                e = np.asarray(raw[name], dtype=np.float64).reshape(-1)
                raw_hits += int(protected_filters(e[zeroed], e[~zeroed], self.cfg.protect_tau).sum())
        if not ratios:
            return
        ratios = np.concatenate(ratios)
        q = np.quantile(ratios, [0.1, 0.5, 0.9])
        compare = "" if self.cfg.protect_energy == "raw" else \
            f" (raw interval energies: {raw_hits})"
        self.logger.info("psap protection (%s energy): zeroed/median(kept) over %d zeroed filters:"
                         " exactly 0 %d, p10 %.3g, p50 %.3g, p90 %.3g, max %.3g; > tau %d%s",
                         self.cfg.protect_energy, ratios.size, int(np.sum(ratios == 0)), q[0],
                         q[1], q[2], float(ratios.max()),
                         int(np.sum(ratios > self.cfg.protect_tau)), compare)

    def update(self, energy, zeroed, steps_done):
        """Protect the filters ``zeroed`` at the previous step that the loss keeps pulling back;
        returns how many were newly protected. Every protection serves one more step first."""
        cfg = self.cfg
        self.protect = np.maximum(self.protect - 1, 0)  # one more step served
        newly_protected = 0
        self.last_energy = {}
        if cfg.psap_protect and steps_done > 0:
            compared = self._compared_energy(energy) or {}
            for i, name in enumerate(self.layout.conv_names):
                if name not in compared:
                    continue
                part = self.layout.part(i)
                e, was_zeroed = compared[name], zeroed[part]
                self.last_energy[name] = {"energy": e, "zeroed": was_zeroed.copy()}
                hits = protected_filters(e[was_zeroed], e[~was_zeroed], cfg.protect_tau)
                index = np.flatnonzero(was_zeroed)[hits]
                newly_protected += int(np.sum(self.protect[part][index] == 0))
                self.protect[part][index] = cfg.protect_steps
            self._log_energy(energy)
        self.measured[:] = np.nan
        return newly_protected

    def record_outcome(self, protected, zeroed, new_zeroed, steps_done):
        """Outcome of this step (``zeroed`` before it, ``new_zeroed`` after it) for the filters
        protected at the previous one (a row of ``outcome``) and the regrown filters; returns
        the row."""
        before = self.protected_before
        kept = before & ~new_zeroed
        competed = before & ~protected
        regrew = zeroed & ~new_zeroed
        self.regrown |= regrew
        row = np.array([steps_done + 1, before.sum(), kept.sum(), (before & protected).sum(),
                        competed.sum(), (competed & kept).sum(), regrew.sum()], dtype=np.int64)
        if steps_done < len(self.outcome):
            self.outcome[steps_done] = row
        self.protected_before = protected.copy()
        return dict(zip(OUTCOME_COLUMNS, (int(v) for v in row)))

    def regrowth_summary(self, zeroed):
        """{regrown: filters that regrew at some step, survived: those kept at the last step}."""
        return {"regrown": int(self.regrown.sum()), "survived": int(np.sum(self.regrown & ~zeroed))}

    def state_dict(self):
        return {"psap_protect": self.protect.astype(np.int32),
                "psap_measured_energy": self.measured.astype(np.float64),
                "psap_protected_before": self.protected_before.astype(np.int32),
                "psap_regrown": self.regrown.astype(np.int32),
                "psap_outcome": self.outcome.copy()}

    def load_state_dict(self, state):
        """The keys after psap_protect are absent in checkpoints of older versions: those keep
        their initial values (the measured energies: not measured)."""
        self.protect = np.asarray(state["psap_protect"]).astype(np.int32).reshape(-1)
        self.measured = np.full(self.layout.total, np.nan)
        if state.get("psap_measured_energy") is not None:
            self.measured = np.asarray(state["psap_measured_energy"], np.float64).reshape(-1)
        for key, attr in (("psap_protected_before", "protected_before"), ("psap_regrown", "regrown")):
            if state.get(key) is not None:
                setattr(self, attr, np.asarray(state[key]).astype(bool).reshape(-1))
        if state.get("psap_outcome") is not None:
            outcome = np.asarray(state["psap_outcome"], np.int64)
            rows = min(len(outcome), len(self.outcome))
            self.outcome[:rows] = outcome[:rows]
