"""The latency tables committed for the CamVid search (benchmarks/latency/chain) cover the chain space.

A search reads them with ``search.lut.<platform>=PATH``; a key missing there would make it measure on this machine
(or, for torch-cuda, fail). These tests fail when the space gains a block the tables lack, or a table loses its
correction."""
from pathlib import Path

import pytest

from segdistill.latency.lut import LatencyTable
from segdistill.latency.predictor import LatencyPredictor
from segdistill.latency.spaces import build_space

CHAIN = Path(__file__).resolve().parents[1] / "benchmarks" / "latency" / "chain"
PLATFORMS = ["torch-cpu", "onnxruntime-cpu", "torch-cuda"]


@pytest.mark.parametrize("platform", PLATFORMS)
def test_chain_table_covers_the_space(platform):
    table = LatencyTable.load(CHAIN / f"lut-{platform}.json")
    assert table.platform == platform
    keys = build_space("chain", (1, 3, 180, 240), 11).keys()
    assert keys and table.missing(keys) == []


@pytest.mark.parametrize("platform", ["torch-cpu", "torch-cuda"])
def test_chain_table_has_a_fitted_correction(platform):
    table = LatencyTable.load(CHAIN / f"lut-{platform}.json")
    assert table.correction is not None and table.correction["fitted_on"] >= 30


def test_three_platforms_predict_one_derived_network_without_measuring():
    """A derived network predicted from each table with measuring off (torch-cuda is another machine's table)."""
    import torch

    from segdistill.search.genotype import derive, genotype_netspec
    from segdistill.search.space_chain import build_supernet

    torch.manual_seed(0)
    genotype = derive(build_supernet(11, (1, 3, 180, 240)))
    net = genotype_netspec(genotype, (1, 3, 180, 240), 11)
    ms = {p: float(LatencyPredictor(LatencyTable.load(CHAIN / f"lut-{p}.json"), measure=False, progress=False)
                   .predict(net)["predicted_ms"]) for p in PLATFORMS}
    assert all(v > 0 for v in ms.values()), ms
    assert ms["torch-cuda"] < ms["torch-cpu"], ms  # an H200 beats 2 CPU cores on the same network
