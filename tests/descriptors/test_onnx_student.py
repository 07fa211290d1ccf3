"""An exported student as an encoder: descriptors that are not finite are an error naming the file."""

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("onnxruntime")

from aml.descriptors.onnx_student import OnnxStudentError, describe_with_onnx, onnx_session  # noqa: E402


def _onnx(path, op):
    """An ONNX graph image -> 3-d descriptor: ``op`` of the channel means (Neg then Log: NaN)."""
    import onnx
    from onnx import TensorProto, helper

    axes = helper.make_tensor("axes", TensorProto.INT64, [2], [2, 3])
    nodes = [helper.make_node("ReduceMean", ["image", "axes"], ["mean"], keepdims=0)]
    nodes += [helper.make_node(kind, [f"x{i}" if i else "mean"], [f"x{i + 1}" if i + 1 < len(op) else "descriptor"])
              for i, kind in enumerate(op)]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("image", TensorProto.FLOAT,
                                                                            ["batch", 3, "height", "width"])],
                              [helper.make_tensor_value_info("descriptor", TensorProto.FLOAT, ["batch", 3])], [axes])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8), str(path))
    return path


def test_nan_descriptors_of_an_onnx_student_are_an_error_naming_the_file(tmp_path):
    image = tmp_path / "q.jpg"
    Image.new("RGB", (40, 30), (200, 100, 50)).save(image)
    good = describe_with_onnx(onnx_session(_onnx(tmp_path / "good.onnx", ["Identity"])), [image], 32)
    assert good.shape == (3, 1) and np.isfinite(good).all()
    damaged = _onnx(tmp_path / "damaged.onnx", ["Neg", "Log"])  # the log of a negative mean
    with pytest.raises(OnnxStudentError, match=f"{damaged} gives NaN or infinite descriptors for 1 of 1 images "
                                               f"\\(first: {image}\\): the file is damaged"):
        describe_with_onnx(onnx_session(damaged), [image], 32)
    with pytest.raises(OnnxStudentError, match="student-int8.onnx gives NaN"):
        describe_with_onnx(onnx_session(damaged), [image], 32, source="student-int8.onnx")
    with pytest.raises(ValueError, match="2 boxes for 1 images"):  # as the torch path says it
        describe_with_onnx(onnx_session(damaged), [image], 32, bbxs=[None, None])


def test_an_image_too_small_for_the_onnx_student_is_named(tmp_path):
    """onnxruntime's InvalidArgument (an image smaller than a kernel) was a traceback; the
    PyTorch path names the image."""
    import onnx
    from onnx import TensorProto, helper

    kernel = helper.make_tensor("kernel", TensorProto.FLOAT, [3, 3, 7, 7], [0.01] * 441)
    axes = helper.make_tensor("axes", TensorProto.INT64, [2], [2, 3])
    nodes = [helper.make_node("Conv", ["image", "kernel"], ["features"]),  # 7 x 7, no padding
             helper.make_node("ReduceMean", ["features", "axes"], ["descriptor"], keepdims=0)]
    graph = helper.make_graph(nodes, "conv", [helper.make_tensor_value_info("image", TensorProto.FLOAT,
                                                                            ["batch", 3, "height", "width"])],
                              [helper.make_tensor_value_info("descriptor", TensorProto.FLOAT, ["batch", 3])],
                              [kernel, axes])
    path = tmp_path / "conv.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8), str(path))
    large, small = tmp_path / "large.png", tmp_path / "small.png"
    Image.new("RGB", (40, 30)).save(large)
    Image.new("RGB", (40, 4)).save(small)
    session = onnx_session(path)
    assert describe_with_onnx(session, [large], None).shape == (3, 1)
    with pytest.raises(OnnxStudentError, match=f"{path} cannot encode {small} \\(40 x 4 pixels as given to it: .*"
                                               "too small for the network: leave it out"):
        describe_with_onnx(session, [large, small], None)


@pytest.mark.parametrize("key, value, message", [
    ("aml.dim", "abc", r"its metadata aml.dim is 'abc', not a positive integer"),
    ("aml.dim", "-512", r"its metadata aml.dim is '-512', not a positive integer"),
    ("aml.dim", "5\u00b2", r"its metadata aml.dim is '5\u00b2', not a positive integer"),  # isdigit, but int() refused it
    ("aml.calibration_images", "1e3", r"its metadata aml.calibration_images is '1e3', not a positive integer"),
    ("aml.dim", "", r"its metadata says dim None"),
    ("aml.precision", "int4", r"its metadata says dim 512 and precision 'int4' \(one of float32, int8\)"),
])
def test_edited_metadata_is_named_with_the_fix(key, value, message):
    """A metadata field of the wrong type was a ValueError traceback of int()."""
    from aml.descriptors.onnx_student import OnnxStudentInfo

    props = OnnxStudentInfo("student", "0123", "vgg16", None, 512, None, "int8", 362, 100).props()
    with pytest.raises(OnnxStudentError, match=f"^deploy/student.onnx: {message}.*; export the student again"):
        OnnxStudentInfo.from_props(dict(props, **{key: value}), "deploy/student.onnx")
