"""The error types every layer raises, already phrased for the user.

At the very bottom of the layers and importing nothing of the project, so that the schema, the readers,
the families, the trainer and the command line all raise and catch the same classes from one home.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A problem in an experiment file, already phrased for the user."""


class DataError(ValueError):
    """Bad input data, phrased for the user with the file and line or example id."""


class TrainingError(RuntimeError):
    """A run that cannot go on (its loss or gradients are no longer numbers, say), phrased for the user."""
