"""Which (task, dataset) group each step trains on, and how its batches are formed."""

from mtl.core.sampling_config import SamplingConfig
from sampling.adaptive import AdaptiveRates
from sampling.batches import MultiTaskBatchSampler
from sampling.unimax import unimax_allocation, unimax_rates
from sampling.weights import GroupKey, exponent_at, group_weights, mean_weights, rates_table, temperature_at

__all__ = [
    "AdaptiveRates",
    "GroupKey",
    "MultiTaskBatchSampler",
    "SamplingConfig",
    "exponent_at",
    "group_weights",
    "mean_weights",
    "rates_table",
    "temperature_at",
    "unimax_allocation",
    "unimax_rates",
]
