"""Darknet cfg parsing and writing, the network built from a cfg, and darknet ``.weights`` io."""

from yololab.model.cfg import CfgError, CfgWarning, packaged_cfg, packaged_cfgs, parse_cfg, write_cfg
from yololab.model.darknet import Darknet
from yololab.model.weights import WeightsError, WeightsReport, load_darknet_weights, save_darknet_weights

__all__ = [
    "CfgError", "CfgWarning", "Darknet", "WeightsError", "WeightsReport", "load_darknet_weights",
    "packaged_cfg", "packaged_cfgs", "parse_cfg", "save_darknet_weights", "write_cfg",
]
