"""Experiment configs: `--config=configs/<dataset>.py:<preset>,<size>`."""
