"""Option choices shared by several commands (one definition, so they cannot drift).
Choices that name registered things (update rules, recipes) are made from the registries."""
from enum import Enum

from numbaconv.optim import UPDATE_RULES
from numbaconv.recipe import RECIPES
from numbaconv.solver import SAMPLINGS


class Backend(str, Enum):
    reference = "reference"
    cpu = "cpu"
    cuda = "cuda"


class DType(str, Enum):
    float32 = "float32"
    float64 = "float64"


def registry_choice(name: str, names) -> type[Enum]:
    """A str Enum whose members are ``names`` (a registry's keys), for a Typer option."""
    return Enum(name, {n: n for n in names}, type=str)


Optimizer = registry_choice("Optimizer", UPDATE_RULES)
Recipe = registry_choice("Recipe", RECIPES)
Sampling = registry_choice("Sampling", SAMPLINGS)
