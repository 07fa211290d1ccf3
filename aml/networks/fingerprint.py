"""Network fingerprints: a content hash of a network, which keys every stored descriptor of it."""

import hashlib
import json

import torch


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
    digest = hashlib.sha1()
    meta = {k: v for k, v in getattr(net, "meta", {}).items() if k != "Lw"}
    digest.update(json.dumps(meta, sort_keys=True, default=str).encode())
    for key, value in sorted(net.state_dict().items()):
        digest.update(key.encode())
        # its bytes as they lie (numpy has no bfloat16: a .bfloat16() network is hashed too)
        digest.update(value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]
