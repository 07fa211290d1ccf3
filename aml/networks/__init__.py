"""Retrieval networks: trunks by name, the network, checkpoints, published weights."""

from aml.networks.backbones import BACKBONES, get_backbone
from aml.networks.retrieval_net import ImageRetrievalNet, build_network, init_network, multiscale_power

__all__ = ["BACKBONES", "get_backbone", "ImageRetrievalNet", "build_network", "init_network", "multiscale_power"]
