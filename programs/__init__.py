"""What the programs (trainer, evaluator, exporter, predictor, aa-visualize) share and the library
does not need: the run folder's layout, the files of runs and exports, the absl command line."""
