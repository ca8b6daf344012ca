"""Resume bookkeeping: where a run found in its folder stands (the epoch and step it resumes at,
the epochs it has recorded, the steps it was resumed at) and which of its settings changed."""

from . import checkpoints


def epoch_steps(recipe, train_examples, steps_per_epoch):
    """Steps per epoch: whole global batches of the training split, at most `steps_per_epoch`."""
    full_epoch = train_examples // recipe.global_batch_size
    if full_epoch == 0:
        raise ValueError(
            f"Invalid global batch size: global_batch_size={recipe.global_batch_size} is larger than the "
            f"{recipe.train_split!r} split of {recipe.dataset!r}; use a smaller --batch_size."
        )
    return min(full_epoch, steps_per_epoch or full_epoch)


def resume_position(history, step, epoch_steps):
    """(epoch, first step of that epoch) of a run at `step` whose finished epochs are `history`.

    An epoch is finished once it is recorded (its `end_step` at most `step`); a run at an
    epoch's last step that was not yet evaluated resumes that epoch with no steps left. Where
    records are missing, whole epochs of `epoch_steps` are counted on from the last one.
    """
    epoch, start = (len(history), history[-1]["end_step"]) if history else (0, 0)
    skipped = max(0, -(-(step - start) // epoch_steps) - 1)
    return epoch + skipped, start + skipped * epoch_steps


def finished_history(previous, step, epoch_steps):
    """The records of metrics.json `previous` of the epochs finished by `step`, each with its
    `end_step` (older metrics.json files lack it)."""
    history = [{"end_step": (h["epoch"] + 1) * epoch_steps, **h} for h in previous.get("history", [])]
    return [h for h in history if h["end_step"] <= step]


def resumed_at_steps(previous, step):
    """The steps the run was resumed at: those of metrics.json `previous`, and `step` unless 0."""
    return previous.get("resumed_at_steps", []) + ([step] if step else [])


def config_with_changes(started, step):
    """(the config of `started` (a `training.loop.StartedRun`) with the `changes` of the
    run_config.json it found and, when settings changed, a new one at `step`; a line on the
    changes, or None)."""
    stored, config, changes = started.stored, started.config, started.changes
    if stored is None:
        return config, None
    config = {**config, "changes": list(stored.get("changes", []))}
    if not changes:
        return config, None
    config["changes"].append({"step": step, "fields": {k: {"from": a, "to": b} for k, (a, b) in changes.items()}})
    return config, ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in changes.items())


def damaged_message(restored, model_name):
    """The warning on the damaged checkpoint files that `checkpoints.restore_newest` found
    (`restored`), or None."""
    if not (restored.damaged or restored.stale_state):
        return None
    damaged = [f"{path} ({reason})" for path, reason in restored.damaged.items()]
    if restored.stale_state:
        damaged.append(f"the state file {checkpoints.STATE_FILE} (unreadable or not naming the newest intact one)")
    moved = f"; moved to {restored.moved_to}" if restored.moved_to else ""
    return (f"Damaged checkpoint files of {model_name}: {'; '.join(damaged)}{moved}. Resuming from the newest "
            f"intact one, {restored.path}.")
