"""The model output contract, checked the same way for zoo, searched and dynamic models."""
import torch

from segdistill.models import SegOutput


def check_output_contract(model, x: torch.Tensor, num_classes: int) -> SegOutput:
    """Train-mode forward of ``x``: a ``SegOutput`` whose features are ``model.feature_channels`` in network order,
    each at its stride; logits at ``logits_stride``; aux logits at stage3's stride. Then in eval mode no aux
    logits. Returns the train-mode output."""
    n, _, h, w = x.shape
    model.train()
    out = model(x)
    assert isinstance(out, SegOutput)
    assert list(out.features) == list(model.feature_channels)  # network order, same names
    assert set(model.feature_strides) == set(model.feature_channels)
    for k, f in out.features.items():
        s = model.feature_strides[k]
        assert tuple(f.shape) == (n, model.feature_channels[k], h // s, w // s), k
    s = model.logits_stride
    assert tuple(out.logits.shape) == (n, num_classes, h // s, w // s)
    assert out.aux_logits is not None and out.aux_logits.shape[:2] == (n, num_classes)
    stage3 = model.feature_strides["stage3"]
    assert tuple(out.aux_logits.shape[-2:]) == (h // stage3, w // stage3)
    model.eval()
    with torch.no_grad():
        assert model(x[:1]).aux_logits is None
    return out
