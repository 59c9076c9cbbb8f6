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

from src import checkpoint, run_record
from src.config import keys_of_other_methods
from src.dataset import batches, create_dataset, input_shape, split_path
from src.device import set_up_device
from src.errors import ConfigError, TrainingError
from src.interrupt import STOP, Interrupted
from src.logs import FILE_ONLY, MetricsFile, open_log_file, setup_logger
from src.metrics import all_reduce, evaluate
from src.models import build_network
from src.pruning.core.base import prunable_weight_names, sparsity_of
from src.pruning.core.registry import keys_of
from src.training_graph import average_bn_statistics, build_training_graph, load_pretrained


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
        # A fresh run must not replace another run's checkpoints: checked before anything is written.
        self.run_id = None if cfg.resume_ckpt else run_record.claim_fresh(self.output_dir, cfg, self.is_main)
        self.logger = setup_logger(self.output_dir, self.rank)
        ignored = keys_of_other_methods(cfg)
        if ignored:  # e.g. --prune_method gmp on an RPG recipe: its RPG keys do nothing
            self.logger.warning(f"warning: config key(s) {', '.join(ignored)} belong to other pruning "
                                f"methods and are ignored under prune_method {cfg.prune_method}")

        self.train_data = self._dataset(training=True, epoch=0)
        self.steps_per_epoch = self.train_data.get_dataset_size()
        if self.steps_per_epoch == 0:
            raise TrainingError(f"training set gives 0 batches of {cfg.batch_size}: "
                                "lower batch_size or raise train_samples")
        self.total_steps = self.steps_per_epoch * cfg.epoch_size
        self.eval_data = self._dataset(training=False, epoch=0) if self.is_main or cfg.run_distribute else None

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
        self.start_step = 0
        self.best = {"top1": None, "epoch": None}
        self.last_periodic = (None, None)
        if cfg.resume_ckpt:
            self._resume(cfg.resume_ckpt)
        open_log_file(self.logger)
        self.stop.check("during start-up, before the first step; nothing to resume from yet")

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
                              drop_remainder=True if training else False)

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

    def _save(self, path, step):
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
        checkpoint.save_atomic(state, path, meta=meta, pruner_state=self.pruner.state_dict())

    def _save_periodic(self, step):
        name = f"{self.cfg.net}_{self.cfg.prune_method}_step{step}.ckpt"
        path = os.path.join(self.output_dir, name)
        self._save(path, step)
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
            self.run_id = run_record.claim_fresh(self.output_dir, self.cfg, self.is_main)
            self._check_same_start()
            return
        errors = []
        for path in paths:
            try:
                params, meta, pruner_state = checkpoint.load(path)
                if resume == "auto" and record and meta.get("run_id") != record["run_id"]:
                    raise checkpoint.CheckpointError(f"{path} belongs to another run (run id "
                                                     f"{meta.get('run_id')}, this directory's run is "
                                                     f"{record['run_id']})")
                # first: a pruning key changed mid-run can never be allowed, so say that, not
                # "allow it with resume_allow_changes"
                self._refuse_pruning_changes(path, meta)
                run_record.check_recipe(path, meta, self.cfg)
                # the per-step learning rates follow from the recipe (and an allowed epoch_size change)
                checkpoint.load_into(self.train_step, params, path, strict=True,
                                     skip=("learning_rate",))
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
        if meta.get("steps_per_epoch") != self.steps_per_epoch:
            raise checkpoint.CheckpointError(
                f"checkpoint {path} was made with {meta.get('steps_per_epoch')} steps per epoch, "
                f"this run has {self.steps_per_epoch} (batch_size or train_samples changed)")
        self.run_id = meta.get("run_id") or run_record.new_run_id()
        if record and record["run_id"] != self.run_id and run_record.training_checkpoints(self.output_dir):
            raise ConfigError(f"output_dir {self.output_dir} holds another run's checkpoints; continue "
                              f"{path} in an empty --output_dir")
        self.start_step = int(meta["step"])
        saved_steps = meta.get("steps_per_epoch", 0) * (meta.get("recipe") or {}).get("epoch_size", 0)
        if self.cfg.prune_method != "none" and saved_steps and saved_steps != self.total_steps:
            # mask updates sit at fractions of the whole run: another length moves every one of them
            raise ConfigError(f"checkpoint {path} is from a {saved_steps}-step run, this one has "
                              f"{self.total_steps}: a pruning schedule cannot be stretched mid-run "
                              "(only a dense run, prune_method none, can be given more epochs)")
        if self.start_step >= self.total_steps:
            changed = [k for k in run_record.recipe_changes(meta.get("recipe") or {}, self.cfg, allowed=())
                       if k in self.cfg.resume_allow_changes or "all" in self.cfg.resume_allow_changes]
            if meta.get("recipe") is not None and changed:
                raise ConfigError(f"the run in {self.output_dir} is already complete ({self.start_step} "
                                  f"steps): changing {', '.join(changed)} now would have no effect")
        elif self.is_main:
            run_record.write_run(self.output_dir, self.run_id, run_record.recipe_of(self.cfg))
            run_record.remove_stale_temporaries(self.output_dir)
        # also sets the learning-rate schedule's step (checkpoints of older versions lag behind)
        self.session.resume(pruner_state, self.start_step)
        self.metrics.truncate_after(self.start_step)
        self.best = {"top1": meta.get("best_top1"), "epoch": meta.get("best_epoch")}
        # epochs counted from 1, as the progress lines and metrics.jsonl count them
        where = (f"continuing in epoch {self.start_step // self.steps_per_epoch + 1}"
                 if self.start_step < self.total_steps else "all epochs done")
        self.logger.info(f"resumed from {path} at step {self.start_step} ({where})")
        self._check_same_start()

    def _refuse_pruning_changes(self, path, meta):
        """The pruning target and the method's keys cannot change once a pruning run has begun,
        even when resume_allow_changes names them: the masks so far were built for the old ones
        (the run would end off target, or the change would do nothing)."""
        step = int(meta.get("step") or 0)
        if self.cfg.prune_method == "none" or not step or meta.get("recipe") is None:
            return
        fixed = set(keys_of(self.cfg.prune_method)) | {"sparsity", "prune_include", "prune_exclude",
                                                       "prune_method"}
        changed = [k for k in run_record.recipe_changes(meta["recipe"], self.cfg, allowed=()) if k in fixed]
        if changed:
            raise ConfigError(f"checkpoint {path} is {step} steps into a pruning run: "
                              f"{', '.join(changed)} cannot change mid-run (start a new run instead)")

    def _check_same_start(self):
        """Data-parallel resume: every worker must continue from the same step (a collective call)."""
        if not self.cfg.run_distribute:
            return
        steps = np.zeros(self.group_size, np.float32)
        steps[self.rank] = self.start_step
        steps = all_reduce(steps)  # every worker's start step (exact below 2**24)
        if steps.min() != steps.max():
            raise checkpoint.CheckpointError(
                f"workers resumed from different steps ({int(steps.min())} to {int(steps.max())}): "
                f"every worker must see the same checkpoints in {self.output_dir} (shared storage)")

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
            path = self._save_periodic(step)
        message = (f"interrupted at step {step}/{self.total_steps}; saved {path}; "
                   "resume with --resume_ckpt auto")
        self.logger.info(message, extra=FILE_ONLY)  # the entry script prints it on stderr
        raise Interrupted(message)

    # --- evaluation -------------------------------------------------------------------------
    def _evaluate(self, epoch, step):
        average_bn_statistics(self.net, self.group_size)  # every worker evaluates the same model
        result = evaluate(self.net, self.eval_data, self.cfg.label_smoothing,
                          distributed=self.cfg.run_distribute)
        self.net.set_train(True)
        names = prunable_weight_names(self.net)
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
        """last.ckpt, the method's extra outputs (PSAP's compact network) beside it."""
        self._save(os.path.join(self.output_dir, "last.ckpt"), step)
        dump_dir = os.environ.get("PRUNE_DUMP_RANK_STATE")
        if dump_dir:  # debugging aid, see the module docstring
            checkpoint.save_atomic(self._state_params(), os.path.join(dump_dir, f"rank{self.rank}.ckpt"),
                                   meta={"step": step, "rank": self.rank})
        outputs = self.session.finish()
        if self.is_main:
            for name, (cell, meta) in outputs.items():
                path = os.path.join(self.output_dir, name)
                meta = dict(meta, run_id=self.run_id, recipe=run_record.recipe_of(self.cfg))
                checkpoint.save_atomic(cell, path, meta=meta)
                self.logger.info(f"saved {path}")
            self.logger.info(f"done: {os.path.join(self.output_dir, 'last.ckpt')}")

    # --- the loop ---------------------------------------------------------------------------
    def train(self):
        cfg, log = self.cfg, self.logger
        if self.start_step >= self.total_steps:
            log.info(f"the run in {self.output_dir} is already complete ({self.start_step} of "
                     f"{self.total_steps} steps): nothing to train")
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
                if cfg.save_checkpoint_steps and step % cfg.save_checkpoint_steps == 0 \
                        and step % self.steps_per_epoch != 0:
                    self._save_periodic(step)
            self.session.end_epoch()
            last_epoch = epoch + 1 == cfg.epoch_size
            if self.eval_data is not None and (
                    last_epoch or (cfg.eval_interval and (epoch + 1) % cfg.eval_interval == 0)):
                result = self._evaluate(epoch, step)
            step_due = cfg.save_checkpoint_steps and step % cfg.save_checkpoint_steps == 0
            if not last_epoch and ((epoch + 1) % cfg.save_checkpoint_epochs == 0 or step_due):
                self._save_periodic(step)
            if not last_epoch and self._stop_requested(step):
                self._interrupt(step)
        self._finish(step)
        return result
