"""Network fingerprints: a content hash of a network, which keys every stored descriptor of it."""

import hashlib
import json

import torch

from aml.networks.timm_trunk import canonical_timm_name
from aml.utils.errors import ConfigError

#: families of architectures with several spellings of one network: family -> the one spelling
SPELLINGS = {"timm": canonical_timm_name}


def one_spelling(architecture: str) -> str:
    """``architecture`` as its family spells it (`SPELLINGS`), or as it is (a name of the
    table, or one its family cannot read here: timm missing, or a model of another timm).

    Args:
        architecture: a network's ``meta['architecture']`` (``resnet101``, ``timm:X+patch``).

    Returns:
        The one spelling, e.g. ``timm:X`` for ``timm:X+patch``.

    Examples:
        >>> from aml.networks.fingerprint import one_spelling
        >>> one_spelling("timm:test_vit.r160_in1k+patch"), one_spelling("resnet101")
        ('timm:test_vit', 'resnet101')
    """
    family, colon, model = architecture.partition(":")
    if not colon or family not in SPELLINGS:
        return architecture
    try:
        return f"{family}:{SPELLINGS[family](model)}"
    except (ConfigError, ImportError):
        return architecture


def network_fingerprint(net: torch.nn.Module) -> str:
    """A content hash of the weights and the meta that shape the descriptors.

    Args:
        net: the network (any module; its ``meta``, if it has one, counts except ``Lw``).

    Returns:
        16 hex digits.

    Examples:
        >>> import copy
        >>> import torch
        >>> from aml.descriptors import network_fingerprint
        >>> net = torch.nn.Linear(4, 2)
        >>> len(network_fingerprint(net)), network_fingerprint(copy.deepcopy(net)) == network_fingerprint(net)
        (16, True)
    """
    return _digest(net, _meta(net))


def spelling_free_fingerprint(net: torch.nn.Module) -> str:
    """`network_fingerprint` with the architecture in its one spelling (`one_spelling`):
    ``timm:X``, ``timm:X+patch`` and ``timm:X.<default tag>`` give one, under the installed
    timm. It tells one network given twice apart from two; the fingerprints stored with
    descriptors stay `network_fingerprint`'s (the name as the network records it), which do
    not depend on timm's version.

    Args:
        net: the network.

    Returns:
        16 hex digits.
    """
    meta = _meta(net)
    if isinstance(meta.get("architecture"), str):
        meta["architecture"] = one_spelling(meta["architecture"])
    return _digest(net, meta)


def _meta(net: torch.nn.Module) -> dict:
    return {k: v for k, v in getattr(net, "meta", {}).items() if k != "Lw"}


def _digest(net: torch.nn.Module, meta: dict) -> str:
    digest = hashlib.sha1()
    digest.update(json.dumps(meta, sort_keys=True, default=str).encode())
    for key, value in sorted(net.state_dict().items()):
        digest.update(key.encode())
        # its bytes as they lie (numpy has no bfloat16: a .bfloat16() network is hashed too)
        digest.update(value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]
