"""Option choices shared by several commands (one definition, so they cannot drift)."""
from enum import Enum


class Backend(str, Enum):
    reference = "reference"
    cpu = "cpu"
    cuda = "cuda"


class DType(str, Enum):
    float32 = "float32"
    float64 = "float64"
