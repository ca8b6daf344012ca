"""The tf.distribute trainer for aa_keras networks: `python -m aa_keras.training.train` (or `aa-train`)."""
