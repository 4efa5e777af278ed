"""Darknet cfg parsing and writing, the network built from a cfg, and darknet ``.weights`` io. Names are
imported on first use, so cfg parsing loads without torch."""

from yololab.lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "cfg": ["CfgError", "CfgWarning", "net_section", "packaged_cfg", "packaged_cfgs", "parse_cfg", "write_cfg"],
    "darknet": ["Darknet"],
    "weights": ["WeightsError", "WeightsReport", "load_darknet_weights", "save_darknet_weights"],
})
