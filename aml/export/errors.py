"""The one error of the export."""

from aml.utils.errors import AmlError


class ExportError(AmlError, RuntimeError):
    """The network cannot be exported, or an export does not match PyTorch.

    Examples:
        >>> import numpy as np
        >>> from aml.export import DeployedStudent, ExportError
        >>> from aml.networks import build_network
        >>> try:
        ...     DeployedStudent(build_network("resnet18", pretrained=False), (np.zeros(4), np.eye(4)))
        ... except ExportError as err:
        ...     print(str(err).split(";")[0])
        the whitening is for 4-d descriptors but the student outputs 512-d ones
    """
