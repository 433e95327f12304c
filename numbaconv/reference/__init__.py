"""The reference backend: plain loops that read like the maths. It is the spec.

Every other backend exports the same names with the same signatures and is
tested against this one. Nothing here is meant to be fast.
"""
from .batchnorm import BatchNorm, SpatialBatchNorm
from .conv import Conv
from .linear import Linear
from .pool import MaxPool
from .relu import ReLU
from .softmax import softmax_loss

NAME = "reference"

__all__ = ["Conv", "MaxPool", "BatchNorm", "SpatialBatchNorm", "Linear", "ReLU", "softmax_loss", "NAME"]
