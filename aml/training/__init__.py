"""Training: modes and tuples, mining, optimizer set-up, the loop, teacher descriptors, and
the library's entry point, `run` with a `TrainConfig`."""

from aml.training.config import TrainConfig, TrainSettings
from aml.training.runner import TrainResult, run

__all__ = ["TrainConfig", "TrainResult", "TrainSettings", "run"]
