"""`numbaconv export`: a checkpoint as an ONNX graph that takes raw images."""
from __future__ import annotations

from enum import Enum
from pathlib import Path

import typer

from ..console import console, fail


class InputType(str, Enum):
    uint8 = "uint8"
    float32 = "float32"


def export(
    checkpoint: Path = typer.Argument(..., help="A checkpoint written by `numbaconv train` (best.h5 or last.h5)."),
    output: Path = typer.Option(..., "-o", "--output", help="ONNX file to write."),
    input_type: InputType = typer.Option(InputType.uint8, "--input-type", help="Element type of the graph's "
                                         "input: raw 0-255 pixels, NCHW (N,3,32,32), as uint8 or float32."),
) -> None:
    """Export the model to ONNX (opset 17, standard operators) with its preprocessing as the
    first nodes: the graph takes raw 0-255 images and outputs class probabilities; class
    names are in the metadata. Needs the `onnx` extra (pip install 'numbaconv[onnx]')."""
    from numbaconv.export import export_onnx

    try:
        path = export_onnx(checkpoint, output, input_type.value)
    except ValueError as e:
        raise fail(str(e), 2) from None
    console.print(f"wrote {path} (input 'images' {input_type.value} NCHW 0-255, output 'probabilities')",
                  highlight=False)


def register(app: typer.Typer) -> None:
    app.command()(export)
