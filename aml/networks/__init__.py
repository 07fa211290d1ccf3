"""Retrieval networks: trunks by name, the network, checkpoints, published weights."""

from aml.networks.backbones import BACKBONES, get_backbone
from aml.networks.loading import LoadedNetwork, NetworkSpec, load_named_or_file, load_spec
from aml.networks.retrieval_net import ImageRetrievalNet, build_network, init_network, multiscale_power

__all__ = [
    "BACKBONES",
    "get_backbone",
    "ImageRetrievalNet",
    "LoadedNetwork",
    "NetworkSpec",
    "build_network",
    "init_network",
    "load_named_or_file",
    "load_spec",
    "multiscale_power",
]
