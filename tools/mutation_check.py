"""Mutation check: does the suite notice when the algorithm breaks?

Each mutant is a named breakage (one exact search/replace in one file). For each, the repository
(src/, tests/, config/, scripts/, benchmarks/, tools/ and the entry scripts: tests run the
benchmarks and tools as modules) is copied to a scratch directory, the breakage applied there,
and only the tests that guard it are run (``pytest -x -q``). A mutant is
KILLED when those tests fail, SURVIVED when they pass. The unmutated copy is run first on the
union of the selections (a failing baseline makes every kill meaningless).

    python -m tools.mutation_check            # all mutants
    python -m tools.mutation_check --list
    python -m tools.mutation_check --only rpg_no_rank_term evaluate_top1_second_class

Exit code 0 when every mutant is killed, 1 when any survives (or a breakage no longer applies
because the code moved: update its search text), 2 when the baseline fails.
"""
import os
import shutil
import subprocess
import sys
import tempfile
import time

from src.cli import OneLineParser

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COPIED = ("src", "tests", "config", "scripts", "benchmarks", "tools", "train.py", "eval.py",
          "export.py")

RPG_T = "tests/test_method_rpg.py"
PSAP_T = "tests/test_method_psap.py"
PROM_T = "tests/test_promises.py"


def m(name, path, old, new, *tests):
    return {"name": name, "path": path, "old": old, "new": new, "tests": list(tests)}


MUTANTS = [
    # --- the breakages of issue 13 that the suite used to miss -----------------------------
    m("rpg_no_rank_term", "src/pruning/masks/rpg/pruner.py",
      "if cfg.lamb > 0 and self.rank_names:", "if False:",
      f"{RPG_T}::test_regrowth_gradient_is_task_plus_lamb_rank"),
    m("dense_gradient_stop_gradient_on_rank", "src/pruning/core/train_cell.py",
      "            extra = self.extra_loss()", "            extra = ops.stop_gradient(self.extra_loss())",
      f"{RPG_T}::test_regrowth_gradient_is_task_plus_lamb_rank"),
    m("rpg_drop_fraction_zero", "src/pruning/masks/hard_mask.py",
      "fraction = self.schedule.drop_fraction(step) if scores is not None else 0.0", "fraction = 0.0",
      f"{RPG_T}::test_first_update_masks_match_the_definition"),
    m("rpg_regrown_not_zeroed", "src/pruning/masks/update.py",
      "np.where(target & mask, weights[name], np.float32(0.0))",
      "np.where(mask, weights[name], np.float32(0.0))",
      f"{RPG_T}::test_first_update_masks_match_the_definition"),
    m("psap_zeroes_highest_scores", "src/pruning/filters/pruner.py",
      "order = np.lexsort((scores[candidates], ~dead[part][candidates]))",
      "order = np.lexsort((-scores[candidates], ~dead[part][candidates]))",
      f"{PSAP_T}::test_exactly_the_lowest_scoring_filters_are_zeroed"),
    m("zero_outside_keeps_optimizer_state", "src/pruning/core/context.py",
      "            for param in [self._params[name]] + state.get(name, []):",
      "            for param in [self._params[name]]:",
      f"{PSAP_T}::test_exactly_the_lowest_scoring_filters_are_zeroed"),
    m("evaluate_top1_second_class", "src/metrics.py",
      "correct1 += int((top[:, 0] == labels).sum())", "correct1 += int((top[:, 1] == labels).sum())",
      f"{PROM_T}::test_evaluate_on_planted_logits"),
    m("best_accepted_before_last_update", "src/pruning/masks/hard_mask.py",
      "return step > self.last_update_step", "return step >= self.last_update_step",
      f"{PROM_T}::test_best_accuracy_counts_only_after_the_last_update"),
    m("final_sparsity_error_disabled", "src/pruning/masks/hard_mask.py",
      "if abs(achieved - self.cfg.sparsity) > SPARSITY_TOLERANCE:", "if False:",
      f"{PROM_T}::test_final_sparsity_error_and_its_exit_code"),
    m("mindir_verification_disabled", "src/export_model.py",
      "if not diff <= TOLERANCE:", "if False:",
      "tests/test_export.py::test_failed_verification_exits_1_and_keeps_the_earlier_file"),
    m("masking_by_multiplication", "src/pruning/masks/hard_mask.py",
      "ops.assign(tensor, ops.select(keep, tensor, ops.zeros_like(tensor)))",
      "ops.assign(tensor, tensor * self.masks[self.mask_of[i]])",
      "tests/test_train_cell.py::test_masked_weights_and_momentum_stay_zero"),
    m("update_count_boundary", "src/pruning/masks/schedules.py",
      "sum(1 for t in update_steps if t <= iterative_t_end)",
      "sum(1 for t in update_steps if t < iterative_t_end)",
      f"{RPG_T}::test_every_update_reaches_the_scheduled_density"),
    # --- the other promises of the issue -------------------------------------------------------
    m("export_renames_before_verifying", "src/export_model.py",
      "        if verify is not None:\n            verify(tmp)\n    return final",
      "    if verify is not None:\n        verify(final)\n    return final",
      "tests/test_export.py::test_failed_verification_exits_1_and_keeps_the_earlier_file"),
    m("sparse_renamed_before_read_back", "src/sparse_format.py",
      "        if verify is not None:\n            verify(tmp)\n        size = os.path.getsize(tmp)\n    return size",
      "        size = os.path.getsize(tmp)\n    if verify is not None:\n        verify(path)\n    return size",
      "tests/test_bad_inputs.py::test_sparse_export_replaces_only_after_its_read_back"),
    m("existing_output_not_refused", "src/outputs.py",
      "    if path and not overwrite and os.path.lexists(path):", "    if False:",
      "tests/test_bad_inputs.py::test_bad_input_is_one_line[convert-torchvision-output-exists]",
      "tests/test_convert.py::test_overwrite_replaces_an_earlier_output_only_when_asked"),
    m("rename_replaces_without_overwrite", "src/outputs.py",
      "    if overwrite:\n        os.replace(tmp, path)", "    if True:\n        os.replace(tmp, path)",
      "tests/test_unusual_paths.py::test_no_replacement_at_the_rename_without_overwrite"),
    m("rpg_no_finite_loss_check", "src/pruning/masks/drop_grow.py",
      '        require_finite_loss(task, step + 1, f" ({self.update_label})")', "        pass",
      f"{RPG_T}::test_nan_loss_at_a_mask_update_changes_nothing"),
    m("rpg_no_finite_gradient_check", "src/pruning/masks/drop_grow.py",
      "        if bad:  # a NaN input can leave the loss finite", "        if False:  # a NaN input can leave the loss finite",
      f"{RPG_T}::test_nan_gradient_with_finite_loss_at_a_mask_update_changes_nothing"),
    m("checkpoint_crc_not_checked", "src/checkpoint.py",
      "raw = ms.load_checkpoint(path, crc_check=True)", "raw = ms.load_checkpoint(path, crc_check=False)",
      f"{PROM_T}::test_bit_flipped_checkpoint_is_refused"),
    m("checkpoint_written_in_place", "src/checkpoint.py",
      "        ms.save_checkpoint(items, tmp_path,",  # in place first, so a failure lands on the file
      "        ms.save_checkpoint(items, path, append_dict=append or None, crc_check=True)\n"
      "        ms.save_checkpoint(items, tmp_path,",
      f"{PROM_T}::test_checkpoint_writer_failing_mid_write_keeps_the_earlier_file"),
    m("sparse_written_in_place", "src/sparse_format.py",
      'with open(tmp, "wb") as handle:', 'with open(path, "wb") as handle:',
      f"{PROM_T}::test_sparse_writer_failing_mid_write_keeps_the_earlier_file"),
    m("failed_write_leaves_its_temporary", "src/outputs.py",
      "            if os.path.exists(leftover):\n                os.remove(leftover)", "            pass",
      f"{PROM_T}::test_checkpoint_writer_failing_mid_write_keeps_the_earlier_file"),
    # --- spot checks: a subject replaced by a constant or a no-op ------------------------------
    m("const_evaluate", "src/metrics.py",
      'return {"top1": correct1 / count, "top5": correct5 / count, "loss": loss_sum / count,',
      'return {"top1": 0.5, "top5": 0.75, "loss": 1.0,',
      f"{PROM_T}::test_evaluate_on_planted_logits"),
    m("noop_global_magnitude_masks", "src/pruning/masks/mask_ops.py",
      "    keep = _top_k_mask(flat, k)\n", "    keep = np.ones(flat.size, dtype=bool)\n",
      f"{RPG_T}::test_first_update_masks_match_the_definition"),
    m("noop_drop_and_grow", "src/pruning/masks/mask_ops.py",
      "    new_mask = kept | regrown\n", "    new_mask = target_mask.copy()\n",
      f"{RPG_T}::test_first_update_masks_match_the_definition"),
    m("const_exponential_density", "src/pruning/masks/schedules.py",
      "    return d ** (r / big_r)", "    return d",
      f"{RPG_T}::test_every_update_reaches_the_scheduled_density"),
    m("const_filter_score_l2", "src/pruning/filters/scores.py",
      "        return np.sqrt(np.sum(flat ** 2, axis=1))", "        return np.zeros(flat.shape[0])",
      f"{PSAP_T}::test_exactly_the_lowest_scoring_filters_are_zeroed"),
    m("noop_protected_filters", "src/pruning/filters/protection.py",
      "    return energy_zeroed > tau * float(np.median(energy_kept))",
      "    return np.zeros(energy_zeroed.shape, dtype=bool)",
      f"{PSAP_T}::test_protection_keeps_the_planted_filter"),
    m("noop_psap_apply_masks", "src/pruning/filters/pruner.py",
      "        ctx.zero_outside({**masks, **stream_masks})\n", "        pass\n",
      f"{PSAP_T}::test_exactly_the_lowest_scoring_filters_are_zeroed"),
    m("noop_canonical_zeros", "src/sparse_format.py",
      "    return np.where(array == 0, np.float32(0.0), array)", "    return array",
      f"{PROM_T}::test_sparse_format_round_trip_bit_for_bit"),
    m("noop_read_sparse_values", "src/sparse_format.py",
      "            flat[index] = values[v_at:v_at + nnz]", "            pass",
      f"{PROM_T}::test_sparse_format_round_trip_bit_for_bit"),
    m("const_rank_loss_from_targets", "src/pruning/masks/rpg/rank_loss.py",
      "    return (losses * okf).sum() / ops.maximum(count, ops.ones_like(count))",
      "    return (losses * okf).sum() * 0.0",
      f"{RPG_T}::test_regrowth_gradient_is_task_plus_lamb_rank"),
    m("noop_require_finite_loss", "src/errors.py",
      "    if math.isfinite(loss):\n        return", "    if True:\n        return",
      f"{RPG_T}::test_nan_loss_at_a_mask_update_changes_nothing"),
    m("noop_load_into", "src/checkpoint.py",
      "    ms.load_param_into_net(net, selected, strict_load=False)", "    pass",
      "tests/test_training_parts.py::test_pretrained_with_other_class_count"),
    m("hard_masks_keep_optimizer_state", "src/pruning/masks/hard_mask.py",
      "            for tensor in [params[name]] + state[name]:", "            for tensor in [params[name]]:",
      "tests/test_train_cell.py::test_masked_weights_and_momentum_stay_zero"),
    m("mask_update_through_the_host_twice", "src/pruning/masks/hard_mask.py",
      "        self.masks_piece.install(masks)\n",
      "        self.masks_piece.install(masks)\n        ctx.zero_outside(masks)\n",
      f"{RPG_T}::test_a_mask_update_moves_each_weight_once_each_way"),
    m("noop_install_masks", "src/pruning/masks/hard_mask.py",
      "        self.masks_piece.install(masks)", "        pass",
      f"{RPG_T}::test_every_update_reaches_the_scheduled_density"),
    m("const_sparsity_of", "src/pruning/core/base.py",
      "    return zeros / total if total else 0.0", "    return 0.9",
      f"{PROM_T}::test_sparsity_of_counts_exact_zeros"),
    m("const_filter_score_bn_l2", "src/pruning/filters/scores.py",
      "        return bn_scale(bn) * np.sqrt(np.sum(flat ** 2, axis=1))",
      "        return np.sqrt(np.sum(flat ** 2, axis=1))",
      "tests/test_psap.py"),
    m("sparse_positions_off_by_one", "src/sparse_format.py",
      "            flat[index] = values[v_at:v_at + nnz]", "            flat[np.maximum(index - 1, 0)] = values[v_at:v_at + nnz]",
      f"{PROM_T}::test_sparse_format_round_trip_bit_for_bit", "tests/test_sparse_format.py"),
    # --- issue 8 (trust): each fix has a test that fails without it ---------------------------
    m("lr_schedule_lags_at_mask_updates", "src/sparse_training.py",
      "            self.advance_schedule(step + 1)", "            pass",
      "tests/test_end_to_end.py::test_rpg_applied_update_step_keeps_the_schedule",
      "tests/test_end_to_end.py::test_rpg_contract_reaches_exact_sparsity"),
    m("loss_scale_never_multiplies_the_loss", "src/pruning/core/train_cell.py",
      "        return loss * self.loss_scale", "        return loss",
      "tests/test_train_cell.py::test_static_loss_scale_gives_the_unscaled_update"),
    m("nan_accepted_as_a_float", "src/config.py",
      "            if not math.isfinite(number):", "            if False:",
      "tests/test_bad_inputs.py::test_recipe_mistake_is_one_line"),
    m("fresh_run_overwrites_a_finished_run", "src/run_record.py",
      "    if existing:\n        raise ConfigError", "    if False:\n        raise ConfigError",
      "tests/test_bad_inputs.py::test_bad_input_is_one_line"),
    m("resume_ignores_the_recipe", "src/run_record.py",
      "    changed = recipe_changes(saved, cfg)", "    changed = []",
      "tests/test_config.py::test_resume_from_a_checkpoint_of_another_recipe_is_refused_naming_the_keys"),
    m("keep_checkpoint_max_forgets_earlier_sessions", "src/trainer.py",
      "for old in run_record.step_checkpoints(self.output_dir)[:-self.cfg.keep_checkpoint_max]:",
      "for old in [p for p in run_record.step_checkpoints(self.output_dir) if p == path][:-self.cfg.keep_checkpoint_max]:",
      "tests/test_interruption.py::test_truncated_newest_checkpoint_falls_back"),
    m("export_in_the_users_folder", "src/export_model.py",  # the old way: refused names, 0700 folder
      'staged = os.path.join(folder, "export")', 'staged = os.path.join(os.path.dirname(tmp), ".staged")',
      "tests/test_export.py::test_onnx_export_keeps_the_folders_permissions",
      "tests/test_export.py::test_export_into_a_folder_with_spaces_and_umlauts"),
    m("launcher_forces_cpu", "scripts/run_standalone_train.sh",
      'ARGS=(--config_path "$CONFIG")', 'ARGS=(--config_path "$CONFIG" --device_target CPU)',
      "tests/test_bad_inputs.py::test_launcher_keeps_the_recipes_device"),
    m("ctrl_c_kills_without_a_checkpoint", "src/interrupt.py",
      "            signal.signal(sig, self._handle)", "            pass",
      "tests/test_interruption.py::test_ctrl_c_saves_and_resume_matches_uninterrupted"),
    # --- issue 10: the RigL family and RPG's remaining knobs ----------------------------------
    m("erk_never_makes_a_layer_dense", "src/pruning/masks/distributions.py",
      "        if top * eps <= 1.0:", "        if True:",
      "tests/test_rigl.py::test_erk_densities_follow_rigl_formula"),
    m("static_topology_regrows", "src/pruning/masks/rigl.py",
      'self.final_density, cfg.alpha, cfg.grow_rule != "none")', "self.final_density, cfg.alpha, True)",
      "tests/test_rigl.py::test_static_topology_never_changes"),
    m("sparsity_thres_ignored", "src/pruning/masks/rpg/pruner.py",
      "        if not self.thresholded:\n            return\n", "        return\n",
      "tests/test_rpg_pruner.py::test_sparsity_thres_keeps_the_rank_loss_to_sparse_layers"),
    m("bn_statistics_not_reestimated", "src/pruning/filters/pruner.py",
      "        if final:\n            self._recalibrate_bn(ctx)\n", "",
      "tests/test_psap.py::test_bn_statistics_are_reestimated_after_the_final_step_only"),
    m("stream_channel_pruned_under_a_carried_one", "src/pruning/filters/streams.py",
      "                candidates[kept_before] = False\n", "                pass\n",
      "tests/test_psap_streams.py::test_option_a_never_prunes_a_channel_the_previous_stage_keeps"),
    # --- issue 20: density_distribution for RPG and GMP ------------------------------------------
    m("per_layer_distribution_ignored", "src/pruning/masks/hard_mask.py",
      '        if self.cfg.density_distribution == "global":\n            return global_magnitude_masks',
      "        if True:\n            return global_magnitude_masks",
      "tests/test_density_distribution.py::test_layer_counts_follow_the_distribution_and_add_up"),
    m("layer_counts_rounded_per_layer", "src/pruning/masks/distributions.py",
      "    return apportion(quotas, sizes, round(density * sum(sizes)))",
      "    return [round(q) for q in quotas]",
      "tests/test_density_distribution.py::test_layer_counts_follow_the_distribution_and_add_up"),
    m("rigl_default_not_erk", "src/pruning/masks/rigl.py",
      '    key_defaults = {"density_distribution": "erk"}', "    key_defaults = {}",
      "tests/test_density_distribution.py::test_global_is_the_default_of_rpg_and_gmp_and_erk_stays_rigls"),
    m("rank_loss_layers_all_ignored", "src/pruning/masks/rpg/pruner.py",
      'if cfg.rank_loss_layers == "all" or len(params[n].shape) == 4]', "if len(params[n].shape) == 4]",
      "tests/test_density_distribution.py::test_rank_loss_layers_on_a_dense_only_network"),
    m("stream_cut_left_out_of_the_macs_target", "src/pruning/filters/pruner.py",
      "        return masks, cut, max(0.0, (target * dense - (dense - rest)) / rest)",
      "        return masks, records, target",
      "tests/test_psap_streams.py"),
    # --- issue 20: pruning inside ms.Model.train (src/model_train.py) ------------------
    m("model_train_pieces_not_run", "src/model_train.py",
      "        for piece in self.pieces:\n            gradients = piece.on_gradients(gradients)\n"
      "        success = self.optimizer(gradients)\n",
      "        success = self.optimizer(gradients)\n        return success\n",
      "tests/test_model_train.py::test_hard_mask_methods_under_model_train[gmp-keys0-True]"),
    m("model_train_update_one_step_late", "src/model_train.py",
      "            self.before_step(self.iterations, batch)",
      "            self.before_step(self.iterations - 1, batch)",
      "tests/test_model_train.py::test_hard_mask_methods_under_model_train[gmp-keys0-True]"),
    m("model_train_resume_restarts_the_callbacks_pass", "src/model_train.py",
      "            for _ in range(algo.draws % algo.steps_per_epoch):", "            for _ in range(0):",
      "tests/test_model_train.py::test_state_dict_with_the_train_network_continues_exactly"),
    m("model_train_sink_size_not_checked", "src/model_train.py",
      "        if every % sink_size:", "        if False:",
      "tests/test_model_train.py::test_a_sink_size_that_does_not_divide_delta_is_one_line"),
    # --- issue 19: interrupting a distributed run, the launchers' environment -------------------
    m("msrun_gets_the_terminals_sigint", "scripts/run_distribute_train.sh",
      "setsid msrun ", "msrun ",
      "tests/test_distributed.py::test_ctrl_c_and_sigterm_save_and_resume_matches_uninterrupted"),
    m("resume_forgets_each_workers_bn_statistics", "src/trainer.py",
      "                restore_bn_statistics(self.net, params, self.rank, self.group_size)\n", "",
      "tests/test_distributed.py::test_ctrl_c_and_sigterm_save_and_resume_matches_uninterrupted"),
    m("launcher_says_done_without_last_ckpt", "scripts/_launcher.sh",
      'if [ ! -f "$1/last.ckpt" ]; then', "if false; then",
      "tests/test_bad_inputs.py::test_launcher_never_says_done_without_last_ckpt"),
    m("launcher_ignores_the_venv", "scripts/_launcher.sh",
      'PATH="$PRUNE_VENV/bin:$PATH"', "true",
      "tests/test_bad_inputs.py::test_launcher_uses_the_project_venv"),
    # --- this round: BatchNorm re-estimation, dead checkpoints, PSAP on anyone's ResNet ----------
    m("bn_reestimation_keeps_the_stale_statistics", "src/models/batchnorm.py",
      "        for mean, var, _ in stats:   # from zero, the update leaves weight * the batch's statistic\n"
      "            mean.set_data(Tensor(np.zeros(mean.shape, np.float32)))\n"
      "            var.set_data(Tensor(np.zeros(var.shape, np.float32)))\n", "",
      "tests/test_batchnorm.py::test_statistics_are_the_average_of_the_batches_whatever_was_there"),
    m("hard_mask_bn_recalibration_never_runs", "src/pruning/masks/hard_mask.py",
      "        if self.cfg.bn_recalibration and epoch + 1 == self.cfg.epoch_size:", "        if False:",
      "tests/test_batchnorm.py::test_bn_recalibration_of_an_unstructured_method_at_its_last_epoch_end"),
    m("export_takes_a_dead_checkpoint", "src/export_model.py",
      "    if dead:\n        raise ExportError", "    if False:\n        raise ExportError",
      "tests/test_bad_inputs.py::test_a_pruning_run_that_empties_layers_ends_with_exit_1"),
    m("psap_compact_rebuilt_as_resnet20", "src/models/resnet.py",
      "        args = dict(self._build_args, inner_widths=inner_widths)",
      "        args = dict(self._build_args, inner_widths=inner_widths, stage_blocks=[3, 3, 3])",
      "tests/test_model_train.py::test_psap_converts_to_the_compact_network_and_its_mindir"),
    # --- the edges: a refused start, sparse parameter counts, the eval launcher's warning -------
    m("refused_start_records_a_run", "src/run_record.py",
      "    return new_run_id()\n", "    return write_run(output_dir, new_run_id(), {})\n",
      "tests/test_bad_inputs.py::test_a_refused_start_writes_no_run_record"),
    m("nonzero_params_count_the_zeros", "src/evaluation_report.py",
      "np.count_nonzero(value) for value", "value.size for value",
      "tests/test_end_to_end.py::test_rpg_contract_reaches_exact_sparsity"),
    m("run_eval_warning_on_stdout", "scripts/run_eval.sh",
      "grep -v -e '^\\[WARNING\\]' -e '^warning: ' \"$LOG\"", "grep -v -e '^\\[WARNING\\]' \"$LOG\"",
      "tests/test_bad_inputs.py::test_a_pruning_run_that_empties_layers_ends_with_exit_1"),
    m("ctrl_c_after_the_last_step_exits_0", "src/trainer.py",
      "        if self.stop.requested:   # during the last step", "        if False:   # during the last step",
      "tests/test_interruption.py::test_ctrl_c_after_the_last_step_completes_the_run_and_still_exits_130"),
    m("model_train_epoch_records_one_fewer", "src/model_train.py",
      "            self.ctx.step = self.iterations   # an epoch's records", "            pass   # an epoch's records",
      "tests/test_model_train.py::test_psap_converts_to_the_compact_network_and_its_mindir"),
]


def scratch_copy(destination):
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache")
    for item in COPIED:
        source = os.path.join(ROOT, item)
        if os.path.isdir(source):
            shutil.copytree(source, os.path.join(destination, item), ignore=ignore)
        else:
            shutil.copy2(source, destination)


def apply(directory, mutant):
    """Apply the breakage; returns an error text when its search text is not found exactly once."""
    path = os.path.join(directory, mutant["path"])
    with open(path) as handle:
        text = handle.read()
    found = text.count(mutant["old"])
    if found != 1:
        return f"search text found {found} times in {mutant['path']} (code moved? update the mutant)"
    with open(path, "w") as handle:
        handle.write(text.replace(mutant["old"], mutant["new"]))
    return None


def run_tests(directory, tests, timeout):
    env = dict(os.environ, PYTHONPATH=directory, GLOG_v="3", PYTHONWARNINGS="ignore",
               PYTHONDONTWRITEBYTECODE="1")
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]
    start = time.time()
    try:
        proc = subprocess.run(cmd, cwd=directory, env=env, capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, time.time() - start, "timeout"
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    failed = [line for line in lines if line.startswith(("FAILED ", "ERROR "))]   # which test, not only how many
    summary = lines[-1] if lines else ""
    return proc.returncode, time.time() - start, f"{summary} ({failed[0]})" if failed else summary


def main():
    parser = OneLineParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="*", help="names of the mutants to run")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--skip_baseline", action="store_true")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per mutant")
    args = parser.parse_args()
    if args.only == []:   # an empty --only would run every mutant
        parser.error("--only needs at least one mutant name (see --list)")
    mutants = [x for x in MUTANTS if not args.only or x["name"] in args.only]
    if args.only and len(mutants) != len(set(args.only)):
        known = {x["name"] for x in MUTANTS}
        parser.error(f"unknown mutant(s): {', '.join(sorted(set(args.only) - known))}")
    if args.list:
        for x in mutants:
            print(f"{x['name']:40s} {x['path']:28s} {' '.join(x['tests'])}")
        return 0

    if not args.skip_baseline:
        union = sorted({t for x in mutants for t in x["tests"]})
        with tempfile.TemporaryDirectory(prefix="mutation_base_") as directory:
            scratch_copy(directory)
            code, seconds, last = run_tests(directory, union, args.timeout * 3)
        print(f"baseline (unmutated, {len(union)} selections): {last} [{seconds:.0f} s]", flush=True)
        if code != 0:
            print("baseline fails: fix the suite before reading mutation results")
            return 2

    survived, stale = [], []
    for x in mutants:
        with tempfile.TemporaryDirectory(prefix="mutation_") as directory:
            scratch_copy(directory)
            problem = apply(directory, x)
            if problem:
                stale.append(x["name"])
                print(f"STALE     {x['name']}: {problem}", flush=True)
                continue
            code, seconds, last = run_tests(directory, x["tests"], args.timeout)
        verdict = "killed" if code not in (0, None) else ("TIMEOUT" if code is None else "SURVIVED")
        if code == 0:
            survived.append(x["name"])
        print(f"{verdict:9s} {x['name']:40s} [{seconds:5.1f} s] {last}", flush=True)
    killed = len(mutants) - len(survived) - len(stale)
    print(f"\n{killed}/{len(mutants)} killed, {len(survived)} survived"
          + (f": {', '.join(survived)}" if survived else "")
          + (f"; {len(stale)} stale: {', '.join(stale)}" if stale else ""))
    return 1 if survived or stale else 0


if __name__ == "__main__":
    sys.exit(main())
