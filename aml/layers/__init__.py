"""Network building blocks: pooling and normalisation."""

from aml.layers.normalization import L2N, l2n
from aml.layers.pooling import GeM, GeMmp, MAC, POOLINGS, RMAC, Rpool, SPoC, gem, mac, rmac, spoc

__all__ = ["L2N", "l2n", "GeM", "GeMmp", "MAC", "POOLINGS", "RMAC", "Rpool", "SPoC", "gem", "mac", "rmac", "spoc"]
