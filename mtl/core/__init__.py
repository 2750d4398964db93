"""The bottom layer: the words every other layer speaks.

The error types, the experiment schema (frozen dataclasses) with the YAML checker, `--set` overrides and the
checks at the door, the metric-key type, the sampler's settings and the table printer. Nothing here imports
torch, a task family or anything of the project outside this folder, so `sampling/` and `tasks/` stand on it
alone and `mtl/` and `launch/` above them (tests/test_layers.py maps each folder to its layer).
"""
