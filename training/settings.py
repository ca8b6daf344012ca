"""The settings of one training run besides its task, strategy and recipe, in one object: what
`training.classification.train` and `training.detection.train` hand the trainer."""

import dataclasses
from typing import Optional


@dataclasses.dataclass(frozen=True)
class RunSettings:
    """What one run takes besides its task, strategy and recipe.

    Attributes:
        model_name: the network's name, for metrics.json and messages.
        model_dir: the run folder.
        config: the run configuration written to run_config.json (a JSON-able dict, checked
            against the run found there by `training.loop.start_run`).
        train_examples: examples in the training split.
        steps_per_epoch: at most this many steps per epoch (None: the whole training split).
        mixed_precision: None, "bfloat16" or "float16" (with dynamic loss scaling).
        checkpoint_steps: steps between checkpoints.
        seed: seed of the data order (epoch e shuffles with seed + e).
        verbose: show a progress bar (on the chief).
        init_from: a .keras model or a run folder (or its `training.init_from.InitSource`)
            whose weights a new run starts from
            (`training.init_from.initialize_from`, tables resampled with `init_method`);
            ignored when the run resumes from its own checkpoint.
        init_method: "linear" or "edge".
    """

    model_name: str
    model_dir: str
    config: dict
    train_examples: int
    steps_per_epoch: Optional[int] = None
    mixed_precision: Optional[str] = None
    checkpoint_steps: int = 200
    seed: int = 0
    verbose: bool = True
    init_from: object = None
    init_method: str = "linear"
