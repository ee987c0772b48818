"""segdistill model zoo: ``build_model(name, num_classes, ...)`` returns a module whose forward gives a SegOutput."""
from .backbones import load_backbone_weights
from .layers import count_parameters
from .output import DeployModel, SegOutput, deploy_copy, upsample_logits
from .registry import build_model, list_models, register_model

__all__ = [
    "build_model", "list_models", "register_model", "SegOutput", "upsample_logits", "DeployModel", "deploy_copy",
    "load_backbone_weights",
    "count_parameters",
]
