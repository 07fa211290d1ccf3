"""Frozen settings changed by copy: ``config.but(field=value)``, one implementation for every
settings class (`aml.descriptors.ExtractionConfig`, `aml.evaluation.TestSettings`,
`aml.training.TrainSettings`, `aml.training.TrainConfig`)."""

import dataclasses
from typing import Any, TypeVar

from aml.utils.errors import ConfigError

T = TypeVar("T")


class Changeable:
    """Base of a frozen dataclass whose copies with some fields changed come from `but`."""

    def check_parts(self, **kinds: type) -> None:
        """Refuse a field that holds settings of another kind than ``kinds`` names (a dict given
        for a settings object was a TypeError deep in `dataclasses`).

        Args:
            **kinds: the field's name -> the settings class it must hold.

        Raises:
            ConfigError: naming the field, what it holds and what it takes.
        """
        for name, kind in kinds.items():
            value = getattr(self, name)
            if not isinstance(value, kind):
                raise ConfigError(
                    f"{type(self).__name__}.{name} must hold {kind.__name__}(...), got a {type(value).__name__}"
                )

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
