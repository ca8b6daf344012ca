"""The layout of a training run's folder, in one place: the trainer writes it; the evaluator,
the exporter and the predictor read its model, class names and settings.

    <model_dir>/
        run_config.json     the run's settings (and `changes` made on resume)
        labels.txt          the class names, one a line in index order
        checkpoints/        ckpt-<step>.* and TensorFlow's state file; damaged/<time>/ aside
        logs/train, logs/eval   TensorBoard summaries
        train.log           resumption, recovery and settings changes, with times
        train.lock          held by the trainer while it runs
        model.keras         the final model        } written atomically
        metrics.json        its metrics, history   } at the end
"""

import os
import time

from . import files


class RunFolder:
    """The paths of the run folder `path` (nothing is created or read until asked).

    Attributes:
        path: the folder.
        run_config, labels, checkpoints, log_file, lock, model, metrics: the paths of its
            entries (the file names are the class attributes in capitals).
    """

    RUN_CONFIG = "run_config.json"
    LABELS = files.LABELS
    CHECKPOINTS = "checkpoints"
    LOGS = "logs"
    LOG = "train.log"
    LOCK = "train.lock"
    MODEL = "model.keras"
    METRICS = "metrics.json"

    def __init__(self, path):
        self.path = os.fspath(path)
        self.run_config = self.file(self.RUN_CONFIG)
        self.labels = self.file(self.LABELS)
        self.checkpoints = self.file(self.CHECKPOINTS)
        self.log_file = self.file(self.LOG)
        self.lock = self.file(self.LOCK)
        self.model = self.file(self.MODEL)
        self.metrics = self.file(self.METRICS)

    @classmethod
    def of_model(cls, model_path):
        """The folder that holds the model file `model_path` (a run's `model.keras`)."""
        return cls(os.path.dirname(os.path.abspath(os.fspath(model_path))))

    def __repr__(self):
        return f"RunFolder({self.path!r})"

    def file(self, name):
        """The path of the entry `name`."""
        return os.path.join(self.path, name)

    def logs(self, name):
        """The TensorBoard folder `logs/<name>` ("train" or "eval")."""
        return os.path.join(self.path, self.LOGS, name)

    def read_run_config(self, default=None):
        """run_config.json's settings, or `default` when there is none."""
        return files.read_json(self.run_config, default)

    def log(self, message):
        """Appends `message`, with the time, to `train.log`."""
        with open(self.log_file, "a") as f:
            f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}\n")
