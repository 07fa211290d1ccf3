"""aml: asymmetric metric learning for image retrieval.

The package follows the data: images (``aml.data``) go through a retrieval network
(``aml.layers``, ``aml.networks``) to descriptors (``aml.descriptors``), which feed either
training (``aml.losses``, ``aml.training``) or testing (``aml.evaluation``); ``aml.search``
and ``aml.export`` take a trained student to a database and a phone, ``aml.reports`` draws
what users look at, and ``aml.cli`` holds every command line. Each layer imports only from
the layers below it (docs/design.md).
"""

__version__ = "0.1.0"
