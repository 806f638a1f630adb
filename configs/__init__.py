"""Experiment configs: one file per experiment, each `get_config(arg=None) -> ConfigDict`."""
