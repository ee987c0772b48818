"""Depth-level dynamic networks (DDNN) and their Embedded Knowledge Distillation (EKD) training.

* :mod:`segdistill.dynamic.model`: ``ddnn_*`` models (dynamic-depth ResNet-34 / ResNet-50 backbones under the zoo's
  heads), ``set_depth``, per-depth BN statistics, the family registry (``register_family``);
* :mod:`segdistill.dynamic.mobilenet`: the dynamic MobileNetV2 family (``ddnn_*_mobilenetv2``);
* :mod:`segdistill.dynamic.ekd`: the ``ekd`` trainer hook (``ekd.enabled=true``);
* :mod:`segdistill.dynamic.cli`: ``segdistill ddnn pick`` and the ``--depth`` helpers of eval/profile/export/predict.
"""
from .mobilenet import DynamicMobileNetV2
from .model import (
    DynamicResNet,
    DynamicSegmentor,
    bn_statistics_error,
    check_depths,
    is_dynamic,
    recalibrate_bn,
    unwrap_dynamic,
)

__all__ = ["DynamicMobileNetV2", "DynamicResNet", "DynamicSegmentor", "bn_statistics_error", "check_depths", "is_dynamic", "recalibrate_bn",
           "unwrap_dynamic"]
