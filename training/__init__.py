"""The tf.distribute trainer for aa_keras networks: `python -m training.train` (or `aa-train`)."""
