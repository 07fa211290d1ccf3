"""aml: asymmetric metric learning for image retrieval.

The package follows the data: images (``aml.data``) go through a retrieval network
(``aml.layers``, ``aml.networks``) to descriptors (``aml.descriptors``), which feed either
training (``aml.losses``, ``aml.training``) or testing (``aml.evaluation``). ``aml.cli``
holds the command lines behind ``main.py``, ``test.py`` and ``extract_features.py``.
"""

__version__ = "0.1.0"
