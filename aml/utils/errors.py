"""The errors aml raises for its users, and the one lookup of every registry.

Every error meant for a user (a flag, a name, a file or a data set that cannot work) derives
from `AmlError`, whose message is one line naming what is wrong and how to fix it; the command
lines turn it into ``error: <message>`` and anything else (a bug) keeps its traceback. The
classes also derive from the builtin error they stand for (`ConfigError` and `DataError` are
ValueErrors), so ``except ValueError`` keeps catching them.
"""

import errno
from typing import Callable, Iterable, Mapping, Optional, TypeVar

T = TypeVar("T")


class AmlError(Exception):
    """Base of every error meant for a user: one line naming what is wrong and the fix."""


class ConfigError(AmlError, ValueError):
    """A setting, flag or name that cannot work (an unknown name, a value out of range, a
    combination that cannot run)."""


class SettingsError(ConfigError):
    """A `ConfigError` of the settings alone, which every process of a torchrun job meets alike
    (a batch that does not split over the processes): the command lines say it on process 0
    and end the others without a word."""


class DataError(AmlError, ValueError):
    """A file or data set that does not hold what it should (a damaged ground truth, a feature
    file of another size, a store of another network)."""


class MissingFile(AmlError, FileNotFoundError):
    """A file or data set aml needs is not there (the message says how to make or get it)."""


class NoAccess(AmlError, RuntimeError):
    """A file this user may not read (another user's in a shared data root, or locked): said as
    such, never as damaged, whose fix would be to delete it."""


def no_access(path: object, err: OSError) -> NoAccess:
    """The `NoAccess` of ``path``, which could not be read for ``err`` (a PermissionError).

    Args:
        path: the file.
        err: the error of reading it.

    Returns:
        The error, naming the file and the fix.

    Examples:
        >>> from aml.utils.errors import no_access
        >>> str(no_access("shard.npy", PermissionError(13, "Permission denied")))[:66]
        "shard.npy cannot be read (Permission denied): it is another user's"
    """
    return NoAccess(
        f"{path} cannot be read ({err.strerror or err}): it is another user's or locked, not damaged; ask its owner "
        "for read access, or give a copy this user can read"
    )


def paths_of(err: OSError) -> str:
    """The path or paths an OSError names (``a -> b`` for a rename), else its text.

    Args:
        err: the error.

    Returns:
        The text that names where it happened.

    Examples:
        >>> from aml.utils.errors import paths_of
        >>> paths_of(OSError(13, "Permission denied", "a.tmp", None, "a.pth")), paths_of(OSError("no path"))
        ('a.tmp -> a.pth', 'no path')
    """
    return " -> ".join(str(name) for name in (err.filename, err.filename2) if name is not None) or str(err)


def path_problem(err: OSError) -> Optional[str]:
    """One line for the error of a path too long to name a file, naming it and the fix; None for others.

    Args:
        err: the error.

    Returns:
        ``'<path>: <reason>; <fix>'``, or None.

    Examples:
        >>> import errno
        >>> from aml.utils.errors import path_problem
        >>> path_problem(OSError(errno.ENAMETOOLONG, "File name too long", "x" * 3))
        'xxx: File name too long; give a shorter name, or a path of fewer folders'
        >>> path_problem(OSError(errno.EIO, "Input/output error", "x")) is None
        True
    """
    if not isinstance(err, OSError) or err.errno != errno.ENAMETOOLONG:
        return None
    return f"{paths_of(err)}: {err.strerror}; give a shorter name, or a path of fewer folders"


class TrainingDiverged(AmlError, RuntimeError):
    """The loss (or the weights) became NaN or infinite; nothing non-finite was saved."""


def named_few(names: Iterable[object], shown: int = 10) -> str:
    """The first ``shown`` of ``names`` (sorted) for a message, and how many more there are:
    a file's hundreds of keys would make a line of kilobytes.

    Examples:
        >>> from aml.utils.errors import named_few
        >>> named_few([f"layer{k}" for k in range(4)], shown=2), named_few([])
        ('layer0, layer1 and 2 more', '')
    """
    listed = sorted(map(str, names))
    return ", ".join(listed[:shown]) + (f" and {len(listed) - shown} more" if len(listed) > shown else "")


def lookup(table: Mapping[str, T], name: str, what: str, choices: Optional[Iterable[str]] = None) -> T:
    """The entry ``name`` of a registry, or a `ConfigError` that lists the choices.

    Args:
        table: the registry (name -> entry).
        name: the name asked for.
        what: what the registry holds, for the message (``"loss"``, ``"optimizer"``).
        choices: the names offered, in the order to list them; None: the registry's, sorted.

    Returns:
        The entry.

    Raises:
        ConfigError: ``unknown <what> '<name>'; choose one of a, b, c``.

    Examples:
        >>> from aml.utils.errors import lookup
        >>> lookup({"adam": 1, "sgd": 2}, "sgd", "optimizer")
        2
        >>> lookup({"adam": 1, "sgd": 2}, "adamw", "optimizer")
        Traceback (most recent call last):
        ...
        aml.utils.errors.ConfigError: unknown optimizer 'adamw'; choose one of adam, sgd
    """
    try:
        return table[name]
    except (KeyError, TypeError):
        listed = list(choices) if choices is not None else sorted(table)
        raise ConfigError(f"unknown {what} {name!r}; choose one of {', '.join(listed)}") from None


def lookup_family(table: Mapping[str, T], families: Mapping[str, Callable[[str], T]], name: str, what: str) -> T:
    """The entry ``name`` of a registry, or the one its family makes of ``<family>:<model>``.

    Args:
        table: the registry's named entries.
        families: family -> function that makes the entry of a model of that family.
        name: the name asked for.
        what: what the registry holds, for the message.

    Returns:
        The entry.

    Raises:
        ConfigError: the name is neither in the table nor of a family; the message lists both.

    Examples:
        >>> from aml.utils.errors import lookup_family
        >>> lookup_family({"vgg16": 512}, {"timm": len}, "timm:convnext", "architecture")
        8
        >>> lookup_family({"vgg16": 512}, {"timm": len}, "vgg19", "architecture")
        Traceback (most recent call last):
        ...
        aml.utils.errors.ConfigError: unknown architecture 'vgg19'; choose one of vgg16, timm:NAME
    """
    if isinstance(name, str) and name not in table:
        family, colon, model = name.partition(":")
        if colon and family in families:
            return families[family](model)
    return lookup(table, name, what, sorted(table) + [f"{family}:NAME" for family in families])
