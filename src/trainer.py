"""The training loop. It knows nothing about pruning methods: a pruner plugs in through the hooks
of ``src/pruning/core/base.py`` and reaches the training graph through ``TrainContext``.

Data parallel (``run_distribute: true``, launched by msrun): gradients and losses are averaged
over the workers inside the train cells, so every worker holds the same weights, masks and
pruner state; BatchNorm moving statistics (computed on each worker's own batches) are averaged
before every evaluation and checkpoint and whenever a pruner reads them (``ctx.get_weights``);
only rank 0 writes checkpoints. Resuming needs every
worker to see the same checkpoints (one node, or an output_dir on shared storage): the workers
check that they resumed from the same step.

Debugging aid: with the environment variable ``PRUNE_DUMP_RANK_STATE=DIR`` every worker writes
its own final training state to ``DIR/rank<N>.ckpt`` at the end of training (the normal
checkpoints come from rank 0 only), e.g. to check that the workers ended bit-identical.
"""
import os
import time

import numpy as np
import mindspore as ms

from src import checkpoint, run_lock, run_record
from src.config import keys_of_other_methods
from src.dataset import batches, create_dataset, input_shape, split_path
from src.device import set_up_device
from src.errors import ConfigError, DeadNetworkError, TrainingError
from src.interrupt import STOP, Interrupted
from src.logs import FILE_ONLY, MetricsFile, open_log_file, setup_logger
from src.metrics import all_reduce, evaluate
from src.models import build_network
from src.pruning.core.base import sparsity_of
from src.pruning.core.registry import pruned_weight_names
from src.resume import (check_same_start, refuse_impossible_changes, refuse_pruning_changes,
                        refuse_weights_only)
from src.training_graph import (average_bn_statistics, build_training_graph, gather_bn_statistics,
                                load_pretrained, restore_bn_statistics)


def init_context(cfg):
    """MindSpore context, distributed initialisation; returns (rank, group_size)."""
    set_up_device(cfg)
    rank, group_size = 0, 1
    if cfg.run_distribute:
        from mindspore.communication import init, get_rank, get_group_size
        init()
        rank, group_size = get_rank(), get_group_size()
        ms.set_auto_parallel_context(parallel_mode=ms.ParallelMode.DATA_PARALLEL,
                                     gradients_mean=True, device_num=group_size)
    ms.set_seed(cfg.seed)
    return rank, group_size


class Trainer:
    """Builds everything from a config and runs the epochs."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.stop = STOP.install()  # installed by the entry script already; again for library use
        self.rank, self.group_size = init_context(cfg)
        self.output_dir = cfg.output_dir
        self.is_main = self.rank == 0
        if self.is_main:  # one writer per folder, before anything is read or written (src/run_lock.py)
            run_lock.hold(self.output_dir)
        # A fresh run must not replace another run's checkpoints: checked before anything is written.
        self.run_id = None if cfg.resume_ckpt else run_record.claim_fresh(self.output_dir)
        self.resumed_from = None
        self.logger = setup_logger(self.output_dir, self.rank)
        ignored = keys_of_other_methods(cfg)
        if ignored:  # e.g. --prune_method gmp on an RPG recipe: its RPG keys do nothing
            self.logger.warning(f"warning: config key(s) {', '.join(ignored)} are not read by "
                                f"prune_method {cfg.prune_method} and are ignored")

        self.train_data = self._dataset(training=True, epoch=0)
        self.steps_per_epoch = self.train_data.get_dataset_size()
        if self.steps_per_epoch == 0:
            raise TrainingError(f"training set gives 0 batches of {cfg.batch_size}: "
                                "lower batch_size or raise train_samples")
        self.total_steps = self.steps_per_epoch * cfg.epoch_size
        self.eval_data = self._dataset(training=False, epoch=0) if self.is_main or cfg.run_distribute else None

        self._build_training()
        self.start_step = 0
        self.continues_run = False  # set by a resume of the run metrics.jsonl belongs to
        self.best = {"top1": None, "epoch": None}
        self.last_periodic = (None, None)
        if cfg.resume_ckpt:
            self._resume(cfg.resume_ckpt)
        # the run is accepted: its record (run.json) is written only now, so a start refused above
        # leaves the folder's files as they were; metrics.jsonl and train.log hold this attempt's
        # history only
        if self.is_main and self.start_step < self.total_steps:
            run_record.write_run(self.output_dir, self.run_id, run_record.recipe_of(cfg))
            if self.resumed_from:
                run_record.remove_stale_temporaries(self.output_dir)
        for old, new in self.metrics.start(self.start_step, self.continues_run):
            self.logger.info(f"kept an earlier attempt's {old} as {new}")
        open_log_file(self.logger)
        self.stop.check("during start-up, before the first step; nothing to resume from yet")

    def _build_training(self):
        """The network (+ pre_trained), the method and its train step (build_training_graph),
        the context's data-parallel collectives, metrics.jsonl."""
        cfg = self.cfg
        self.net = build_network(cfg)
        if cfg.pre_trained:
            load_pretrained(self.net, cfg.pre_trained, self.logger)
        elif cfg.scratch_warning and not cfg.resume_ckpt:
            self.logger.warning(f"warning: training from scratch (no pre_trained): {cfg.scratch_warning}")
        # what a method may need: the input shape, a pass over the training set beyond the last
        # epoch's (its own augmentation seed)
        self.session = build_training_graph(
            cfg, self.net, self.steps_per_epoch, self.logger, input_shape(cfg),
            lambda: batches(self._dataset(training=True, epoch=cfg.epoch_size)))
        self.pruner, self.lrs = self.session.pruner, self.session.lrs
        self.optimizer, self.train_step, self.ctx = (self.session.optimizer, self.session.train_step,
                                                     self.session.ctx)
        self.ctx.rank, self.ctx.group_size, self.ctx.sum_across_workers = self.rank, self.group_size, all_reduce
        if self.group_size > 1:  # methods read the statistics every worker holds
            self.ctx.before_reading_statistics = lambda: average_bn_statistics(self.net, self.group_size)
        self.metrics = MetricsFile(self.output_dir, enabled=self.is_main)
        self.ctx.recorders.append(self.metrics)

    # --- data -------------------------------------------------------------------------------
    def _dataset(self, training, epoch):
        cfg = self.cfg
        batch = cfg.batch_size if training else (cfg.eval_batch_size or cfg.batch_size)
        path, key = split_path(cfg, training)
        return create_dataset(cfg.dataset, path, training, batch, path_key=key,
                              image_size=cfg.image_size or None, eval_resize=cfg.eval_resize,
                              num_samples=cfg.train_samples if training else cfg.eval_samples,
                              num_shards=self.group_size, shard_id=self.rank,
                              num_parallel_workers=cfg.num_parallel_workers,
                              crop_padding=cfg.crop_padding, seed=cfg.seed + epoch,
                              drop_remainder=True if training else False, num_classes=cfg.num_classes)

    # --- checkpoints ------------------------------------------------------------------------
    def _state_params(self):
        """Everything resume needs: network, optimizer moments and step, masks, energy."""
        seen, items = set(), []
        for param in self.train_step.get_parameters():
            if param.name not in seen:
                seen.add(param.name)
                items.append(param)
        return items

    def _optimizer_step(self):
        return int(self.optimizer.global_step.asnumpy().reshape(-1)[0])

    def _save(self, path, step, extra=()):
        average_bn_statistics(self.net, self.group_size)  # rank 0 saves what every worker holds
        if not self.is_main:
            return
        if self._optimizer_step() != step:  # a broken invariant, not a user error
            raise RuntimeError(f"optimizer step counter {self._optimizer_step()} != iterations {step}")
        state = self._state_params()
        bad = [p.name for p in state if p.dtype in (ms.float16, ms.float32, ms.float64)
               and not np.isfinite(p.asnumpy()).all()]
        if bad:
            raise TrainingError(f"non-finite values in {len(bad)} parameter(s) (first: {bad[0]}) "
                                f"after step {step}; not writing {os.path.basename(path)}, the last "
                                "good checkpoint is left as it was: lower lr_max or check the data")
        meta = {"step": step, "epoch": step // self.steps_per_epoch, "net": self.cfg.net,
                "prune_method": self.cfg.prune_method, "steps_per_epoch": self.steps_per_epoch,
                "best_top1": self.best["top1"], "best_epoch": self.best["epoch"],
                "run_id": self.run_id, "recipe": run_record.recipe_of(self.cfg)}
        checkpoint.save_atomic(state + list(extra), path, meta=meta,
                               pruner_state=self.pruner.state_dict())

    def _step_checkpoint_due(self, step):
        """Whether save_checkpoint_steps asks for a checkpoint after ``step``."""
        return bool(self.cfg.save_checkpoint_steps) and step % self.cfg.save_checkpoint_steps == 0

    def _save_periodic(self, step, extra=()):
        name = f"{self.cfg.net}_{self.cfg.prune_method}_step{step}.ckpt"
        path = os.path.join(self.output_dir, name)
        self._save(path, step, extra)
        self.last_periodic = (step, path)
        if self.is_main:  # count what is on disk, including checkpoints of earlier sessions of the run
            for old in run_record.step_checkpoints(self.output_dir)[:-self.cfg.keep_checkpoint_max]:
                os.remove(old)
        return path

    def _resume(self, resume):
        record = run_record.read_run(self.output_dir)
        paths = run_record.training_checkpoints(self.output_dir) if resume == "auto" else [resume]
        if resume == "auto" and not paths:
            self.logger.info(f"resume_ckpt auto: no checkpoint in {self.output_dir}, starting fresh")
            self.run_id = run_record.claim_fresh(self.output_dir)
            check_same_start(self.cfg, self.rank, self.group_size, self.start_step, self.output_dir)
            return
        errors = []
        for path in paths:
            try:
                params, meta, pruner_state = checkpoint.load(path)
                if resume == "auto" and record and meta.get("run_id") != record["run_id"]:
                    raise checkpoint.CheckpointError(f"{path} belongs to another run (run id "
                                                     f"{meta.get('run_id')}, this directory's run is "
                                                     f"{record['run_id']})")
                refuse_weights_only(path, meta)
                # first: changes that can never be allowed, so say that, not "allow it with
                # resume_allow_changes"
                refuse_pruning_changes(self.cfg, path, meta)
                refuse_impossible_changes(self.cfg, path, meta, self.steps_per_epoch, self.output_dir)
                run_record.check_recipe(path, meta, self.cfg)
                # the per-step learning rates follow from the recipe (and an allowed epoch_size change)
                checkpoint.load_into(self.train_step, params, path, strict=True,
                                     skip=("learning_rate",))
                restore_bn_statistics(self.net, params, self.rank, self.group_size)
            except checkpoint.CheckpointError as err:
                if resume != "auto":
                    raise
                errors.append(str(err))
                self.logger.warning(f"resume_ckpt auto: skipping unusable checkpoint {path}, falling "
                                    f"back to the previous one: {err}")
                continue
            self._continue_from(path, meta, pruner_state, record)
            return
        raise checkpoint.CheckpointError(f"no usable checkpoint in {self.output_dir}: {errors[-1]}")

    def _continue_from(self, path, meta, pruner_state, record):
        self.run_id = meta.get("run_id") or run_record.new_run_id()
        if record and record["run_id"] != self.run_id and run_record.training_checkpoints(self.output_dir):
            raise ConfigError(f"output_dir {self.output_dir} holds another run's checkpoints; continue "
                              f"{path} in an empty --output_dir")
        self.start_step, self.resumed_from = int(meta["step"]), path
        # also sets the learning-rate schedule's step (checkpoints of older versions lag behind)
        self.session.resume(pruner_state, self.start_step)
        self.continues_run = bool(record) and record["run_id"] == self.run_id
        self.best = {"top1": meta.get("best_top1"), "epoch": meta.get("best_epoch")}
        # epochs counted from 1, as the progress lines and metrics.jsonl count them
        where = (f"continuing in epoch {self.start_step // self.steps_per_epoch + 1}"
                 if self.start_step < self.total_steps else "all epochs done")
        self.logger.info(f"resumed from {path} at step {self.start_step} ({where})")
        check_same_start(self.cfg, self.rank, self.group_size, self.start_step, self.output_dir)

    def _stop_requested(self, step):
        """Whether to stop after ``step``; data-parallel workers agree (a collective call every
        log_interval steps, so that all of them stop at the same step)."""
        if not self.cfg.run_distribute:
            return self.stop.requested
        if step % self.cfg.log_interval:
            return False
        return bool(all_reduce(np.array([float(self.stop.requested)], np.float32))[0] > 0)

    def _interrupt(self, step):
        saved_step, path = self.last_periodic
        if saved_step != step:
            # between two averagings the workers' BatchNorm statistics differ: keep each one's
            # (before _save averages them), so that a resumed run is the uninterrupted one; at a
            # step where the uninterrupted run saves (and so averages) anyway, it continues from
            # the averaged statistics, and so must the resumed run
            extra = ([gather_bn_statistics(self.net, self.rank, self.group_size)]
                     if self.group_size > 1 and not self._step_checkpoint_due(step) else [])
            path = self._save_periodic(step, extra)
        message = (f"interrupted at step {step}/{self.total_steps}; saved {path}; "
                   "resume with --resume_ckpt auto")
        self.logger.info(message, extra=FILE_ONLY)  # the entry script prints it on stderr
        if self.group_size > 1:
            # a barrier: no worker exits before rank 0 has written the checkpoint and its line
            # (msrun SIGKILLs the other workers as soon as one exits non-zero)
            all_reduce(np.zeros(1, np.float32))
        raise Interrupted(message)

    # --- evaluation -------------------------------------------------------------------------
    def _evaluate(self, epoch, step):
        average_bn_statistics(self.net, self.group_size)  # every worker evaluates the same model
        result = evaluate(self.net, self.eval_data, self.cfg.label_smoothing,
                          distributed=self.cfg.run_distribute)
        self.net.set_train(True)
        names = pruned_weight_names(self.net, self.cfg)   # as the target and eval.py count it
        result["sparsity"] = sparsity_of(self.ctx.get_weights(names).values())
        counted = self.pruner.accept_best(step)
        if counted and (self.best["top1"] is None or result["top1"] > self.best["top1"]):
            self.best = {"top1": result["top1"], "epoch": epoch + 1}
        note = "" if counted else " (before the final sparsity: not counted as best)"
        best = "-" if self.best["top1"] is None else f"{self.best['top1']:.4f}"
        self.logger.info(f"eval epoch {epoch + 1}: top1 {result['top1']:.4f} top5 {result['top5']:.4f} "
                         f"loss {result['loss']:.4f} sparsity {result['sparsity']:.4f} best {best}{note}")
        self.ctx.record({"event": "eval", "step": step, "epoch": epoch + 1, "counted_as_best": counted,
                         **{k: result[k] for k in ("top1", "top5", "loss", "sparsity")}})
        return result

    def _log_progress(self, epoch, step, loss, images_per_s):
        report = self.pruner.report()
        extra = "".join(f" {k} {v:.4f}" if isinstance(v, float) else f" {k} {v}" for k, v in report.items())
        self.logger.info(f"epoch {epoch + 1}/{self.cfg.epoch_size} step {step}/{self.total_steps} "
                         f"loss {loss:.4f} lr {self.lrs[step - 1]:.6f} img/s {images_per_s:.1f}{extra}")
        self.ctx.record({"event": "train", "step": step, "epoch": epoch + 1, "loss": loss,
                         "lr": float(self.lrs[step - 1]), "images_per_s": images_per_s, **report})

    def _finish(self, step):
        """last.ckpt, the method's extra outputs (PSAP's compact network) beside it. A network whose
        output no longer depends on its input still leaves last.ckpt, then ends the run (exit 1); a
        stop requested during the last step or this work ends it with Interrupted (exit 130)."""
        last = os.path.join(self.output_dir, "last.ckpt")
        self._save(last, step)
        dump_dir = os.environ.get("PRUNE_DUMP_RANK_STATE")
        if dump_dir:  # debugging aid, see the module docstring
            checkpoint.save_atomic(self._state_params(), os.path.join(dump_dir, f"rank{self.rank}.ckpt"),
                                   meta={"step": step, "rank": self.rank})
        self._probe_like_evaluation()
        try:
            self._save_outputs()
        except DeadNetworkError as err:
            raise DeadNetworkError(f"{err} ({last} is saved as it is)") from None
        run_lock.release(self.output_dir)
        if self.stop.requested:   # during the last step or the end-of-run work, which completed
            # exit 130 all the same: a command chained after this one must not run
            raise Interrupted(f"interrupted after the last step: the run is complete ({last} saved); "
                              "nothing to resume")
        if self.is_main:
            self.logger.info(f"done: {last}")

    def _save_outputs(self, only_missing=False):
        """Save the method's final outputs ({file name: (cell, metadata)} from ``session.finish()``)
        beside last.ckpt; ``only_missing``: those not on disk. They follow from last.ckpt's state
        (written just before them), so a run stopped between the two writes is finished from it.
        Returns the names written."""
        outputs = self.session.finish()  # every worker: it may read averaged statistics
        written = []
        for name, (cell, meta) in outputs.items() if self.is_main else ():
            path = os.path.join(self.output_dir, name)
            if only_missing and os.path.exists(path):
                continue
            meta = dict(meta, run_id=self.run_id, recipe=run_record.recipe_of(self.cfg))
            checkpoint.save_atomic(cell, path, meta=meta)
            self.logger.info(f"saved {path}")
            written.append(name)
        return written

    def _complete(self):
        """A resumed run with every step done: write the final outputs it lacks (stopped after
        last.ckpt, before them), else nothing to do."""
        own = os.path.dirname(os.path.abspath(self.resumed_from)) == os.path.abspath(self.output_dir)
        written = self._save_outputs(only_missing=True) if own else []
        if written:
            self.logger.info(f"the run in {self.output_dir} had trained all {self.total_steps} steps but "
                             f"stopped before writing {', '.join(written)}: written from "
                             f"{self.resumed_from}")
        else:
            self.logger.info(f"the run in {self.output_dir} is already complete ({self.start_step} of "
                             f"{self.total_steps} steps): nothing to train")
        run_lock.release(self.output_dir)

    def _probe_like_evaluation(self):
        """finish() checks the network's output on random inputs of the last batch's shape; the
        evaluation's batch shape instead reuses its compiled graph (no second compilation)."""
        if self.eval_data is None:
            return
        eval_batch = self.cfg.eval_batch_size or self.cfg.batch_size
        if self.cfg.eval_samples:  # a subset smaller than one batch: its one (partial) batch
            eval_batch = min(eval_batch, -(-self.cfg.eval_samples // self.group_size))
        self.session.input_spec = (input_shape(self.cfg, eval_batch), np.float32)

    # --- the loop ---------------------------------------------------------------------------
    def train(self):
        cfg, log = self.cfg, self.logger
        if self.start_step >= self.total_steps:
            self._complete()
            return None
        log.info(f"{cfg.net} on {cfg.dataset}: {self.steps_per_epoch} steps/epoch x {cfg.epoch_size} "
                 f"epochs, batch {cfg.batch_size} x {self.group_size} device(s), "
                 f"prune_method {cfg.prune_method}")
        step = self.start_step
        first_epoch = step // self.steps_per_epoch
        result = None
        for epoch in range(first_epoch, cfg.epoch_size):
            data = self.train_data if epoch == 0 else self._dataset(training=True, epoch=epoch)
            skip = step - epoch * self.steps_per_epoch
            window_start, window_images = time.time(), 0
            for index, (image, label) in enumerate(batches(data)):
                if index < skip:
                    continue
                loss = self.session.step(image, label)
                step += 1
                window_images += image.shape[0] * self.group_size
                if step % cfg.log_interval == 0 or step == self.total_steps:
                    elapsed = max(time.time() - window_start, 1e-9)
                    self._log_progress(epoch, step, loss, window_images / elapsed)
                    window_start, window_images = time.time(), 0
                # at an epoch's end the epoch hooks run first (a resume starts after them)
                if step % self.steps_per_epoch and self._stop_requested(step):
                    self._interrupt(step)
                # checkpoints at an epoch's end are written after the epoch hooks below
                if self._step_checkpoint_due(step) and step % self.steps_per_epoch != 0:
                    self._save_periodic(step)
            self.session.end_epoch()
            last_epoch = epoch + 1 == cfg.epoch_size
            if self.eval_data is not None and (
                    last_epoch or (cfg.eval_interval and (epoch + 1) % cfg.eval_interval == 0)):
                result = self._evaluate(epoch, step)
            if not last_epoch and ((epoch + 1) % cfg.save_checkpoint_epochs == 0
                                   or self._step_checkpoint_due(step)):
                self._save_periodic(step)
            if not last_epoch and self._stop_requested(step):
                self._interrupt(step)
        self._finish(step)
        return result
