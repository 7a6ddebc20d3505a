"""Training image classifiers: the fit loop, checkpoints, calibration, and the train recipe."""
