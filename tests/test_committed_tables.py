"""The latency tables committed for the CamVid search (benchmarks/latency/chain) cover the chain space.

A search reads them with ``search.lut.<platform>=PATH``; a key missing there would make it measure on this machine
(or, for torch-cuda, fail). These tests fail when the space gains a block the tables lack, or a table loses its
correction."""
from pathlib import Path

import pytest

from segdistill.latency.lut import LatencyTable
from segdistill.latency.predictor import LatencyPredictor
from segdistill.latency.spaces import build_space

REPO = Path(__file__).resolve().parents[1]
CHAIN = REPO / "benchmarks" / "latency" / "chain"
LGCNET = REPO / "benchmarks" / "latency" / "lgcnet"
PLATFORMS = ["torch-cpu", "onnxruntime-cpu", "torch-cuda"]


def camvid_space(space: str = "chain"):
    """The ``space`` of configs/search-camvid-cpu.yaml (the benchmark's), and of the defaults."""
    from segdistill.config import load_config
    from segdistill.search.hook import space_options

    cfg = load_config(REPO / "segdistill" / "configs" / "search-camvid-cpu.yaml", [f"search.space={space}"])
    opts = space_options(cfg.search)
    shape = opts.pop("input")
    for supernet_only in ("share_cells", "ggm_gamma"):  # the LGCNet supernet's, not its blocks'
        opts.pop(supernet_only, None)
    return [build_space(space, shape, 11, **opts), build_space(space, (1, 3, 180, 240), 11)]


@pytest.mark.parametrize("platform", PLATFORMS)
def test_chain_table_covers_the_space(platform):
    table = LatencyTable.load(CHAIN / f"lut-{platform}.json")
    assert table.platform == platform
    # torch-cuda was built on a lent H200 before the CamVid config widened its space: the default space only
    for space in camvid_space()[1:] if platform == "torch-cuda" else camvid_space():
        keys = space.keys()
        assert keys and table.missing(keys) == [], space


@pytest.mark.parametrize("platform", ["torch-cpu", "torch-cuda"])
def test_chain_table_has_a_fitted_correction(platform):
    table = LatencyTable.load(CHAIN / f"lut-{platform}.json")
    assert table.correction is not None and table.correction["fitted_on"] >= 30


@pytest.mark.parametrize("platform", ["torch-cpu", "onnxruntime-cpu"])
def test_lgcnet_tables_cover_the_space_with_a_correction_fitted_on_it(platform):
    """benchmarks/latency/lgcnet: the chain tables' blocks, with a correction fitted on random LGCNet networks (the
    chain one under-predicts them); the chain tables' correction is the chain space's."""
    table = LatencyTable.load(LGCNET / f"lut-{platform}.json")
    assert table.platform == platform and table.missing(camvid_space("lgcnet")[0].keys()) == []
    assert table.correction["space"] == "lgcnet" and table.correction["fitted_on"] >= 30
    assert table.space_note("lgcnet") is None and "'lgcnet' space" in table.space_note("chain")
    assert LatencyTable.load(CHAIN / f"lut-{platform}.json").correction["space"] == "chain"


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


def test_space_options_reach_the_table_commands(tmp_path):
    """`lut blocks/build --space chain --space-option base_widths=[...]` use the widths a search config sets; an
    option the space does not have is a clear error naming it."""
    import json

    from segdistill.cli import main
    from segdistill.errors import LatencyError

    out = tmp_path / "blocks.json"
    main(["lut", "blocks", "--space", "chain", "--space-option", "base_widths=[96,192,320]", "--out", str(out)])
    keys = json.loads(out.read_text())["keys"]
    assert keys == build_space("chain", (1, 3, 180, 240), 11, base_widths=[96, 192, 320]).keys()
    assert keys != build_space("chain", (1, 3, 180, 240), 11).keys()
    with pytest.raises((LatencyError, SystemExit)):
        main(["lut", "blocks", "--space", "chain", "--space-option", "bogus=1", "--out", str(out)])
    with pytest.raises(LatencyError, match="bogus"):
        build_space("chain", (1, 3, 180, 240), 11, bogus=1)
