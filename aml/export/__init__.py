"""The student for deployment: one self-contained graph from an RGB image to the descriptor
the teacher's database is searched with, as TorchScript and ONNX (`aml.export.student`), the
int8 ONNX file (`aml.export.quantization`) and what it costs on a test set
(`aml.export.report`)."""

from aml.export.errors import ExportError
from aml.export.quantization import QUANTIZED_NODES, Int8Settings, quantize_student
from aml.export.student import (
    DeployedStudent,
    check_exports,
    export_onnx,
    export_student,
    export_torchscript,
    generated_images,
    int8_agreement,
    student_info,
)

__all__ = [
    "DeployedStudent",
    "ExportError",
    "Int8Settings",
    "QUANTIZED_NODES",
    "check_exports",
    "export_onnx",
    "export_student",
    "export_torchscript",
    "generated_images",
    "int8_agreement",
    "quantize_student",
    "student_info",
]
