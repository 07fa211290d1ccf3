"""Network building blocks: pooling and normalisation; their formulas (and the tuple losses')
are in `aml.layers.functional`, cirtorch's functional API."""

from aml.layers import functional
from aml.layers.functional import gem, l2n, mac, rmac, roipool, spoc
from aml.layers.normalization import L2N, PowerLaw
from aml.layers.pooling import GeM, GeMmp, MAC, POOLINGS, RMAC, Rpool, SPoC

__all__ = [
    "functional",
    "L2N",
    "l2n",
    "GeM",
    "GeMmp",
    "MAC",
    "POOLINGS",
    "PowerLaw",
    "RMAC",
    "Rpool",
    "SPoC",
    "gem",
    "mac",
    "rmac",
    "roipool",
    "spoc",
]
