"""Frozen settings changed by copy: ``config.but(field=value)``, one implementation for every
settings class (`aml.descriptors.ExtractionConfig`, `aml.evaluation.TestSettings`,
`aml.training.TrainSettings`, `aml.training.TrainConfig`)."""

import dataclasses
from typing import Any, TypeVar

T = TypeVar("T")


class Changeable:
    """Base of a frozen dataclass whose copies with some fields changed come from `but`."""

    def but(self: T, **changes: Any) -> T:
        """A copy with some fields changed.

        Args:
            **changes: the new values, by field name (a field holding settings takes whole settings).

        Returns:
            The changed copy (this one stays as it is).

        Raises:
            TypeError: for a name that is not a field.
        """
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]
