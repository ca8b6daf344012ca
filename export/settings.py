"""How a classifier's artifacts are built and checked, in one object (`ExportSettings`): the
settings of `export.classification.export`; its fields carry the flags of `aa-export`
(`aa_keras.programs.field_flags`), from which `export.export` generates them."""

import dataclasses
from typing import Optional

from aa_keras.programs.field_flags import flag_field
from aa_keras.validation import is_int


@dataclasses.dataclass(frozen=True)
class ExportSettings:
    """The settings of one export.

    Attributes:
        image_size: fixes an unknown spatial input size (see `model_source.image_shape`).
        batch: static batch of the TFLite models, and the batch of parity and latency runs.
        threads: interpreter / onnxruntime threads.
        latency_runs: timed runs per artifact (the median is reported).
        uint8_input: the SavedModel signature takes uint8 images and scales them inside.
        overwrite: replace a previous export in the output folder.
        description: free-form dict recorded in the report (e.g. the command line flags).
    """

    image_size: Optional[int] = flag_field("Input height and width; required for builder names.", None, type=int)
    batch: int = flag_field("Batch size of the TFLite models and of the parity and latency runs.", 1)
    threads: int = flag_field("Threads of the LiteRT interpreter and onnxruntime.", 1, task="classification")
    latency_runs: int = flag_field("Timed runs per artifact; the median is reported.", 50, task="classification")
    uint8_input: bool = flag_field(
        "SavedModel takes uint8 images in [0, 255] and scales them to [0, 1] inside.", False, task="classification"
    )
    overwrite: bool = flag_field(
        "Replace a previous export in --output_dir (a folder holding export_report.json and the exporter's artifacts "
        "only; any other folder is refused).", False,
    )  # fmt: skip
    description: Optional[dict] = None

    def check(self):
        """Raises a ValueError naming the first of `batch`, `threads`, `latency_runs` that is not
        a positive int."""
        for name in ("batch", "threads", "latency_runs"):
            value = getattr(self, name)
            if not is_int(value) or value <= 0:
                raise ValueError(f"Invalid `--{name}`: expected a positive int, received {value!r}.")
