"""Training a personal anchor (issue 5): talking-face data sets (prepared from videos or synthesised with known
ground truth), read by every training stage through :mod:`anchorcast_plugins.engines.wav2lip.training.dataset`."""
