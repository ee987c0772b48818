"""CamVid search benchmark under camvid-cpu (issue 10): searched + distilled students against the hand-designed ones
distilled the same way, an ablation of the search objective, random architectures at the same predicted latency, and
the headline rows again on Stanford Background.

Rows (one iteration budget per table: every retrain uses ``RETRAIN`` below, every search ``SEARCH``; the distillation
recipe is camvid_kd.py's ``--recipe`` row, default ``best`` = pixel KD (T 1, weight 10) + CWD on logits (T 4, weight 3),
teacher-output cache, with camvid_kd.py's teacher):

* ``kd_<student>``: every hand-designed student of camvid_baselines.py / camvid_kd.py, distilled;
* ``torch<B>`` (one per ``--torch-budgets``, default 12,16,20,30 ms; 16 since 2026-12-06 night, a third budget inside the space) and ``ort<B>`` (``--ort-budget``, default 8 ms):
  ``segdistill search`` (configs/search-camvid-cpu.yaml: chain space, CE + KD + GED + latency, 920 iterations at
  120x160 crops, latency keys at 1x3x180x240, 2 threads) with that one budget, then the derived student retrained.
  The config's space (base widths 96/192/320) spans 2.0-22.1 ms torch-cpu and 0.8-12.6 ms onnxruntime-cpu by the
  committed tables (2-core AMD EPYC, corrections fitted on the space's own networks since 2026-12-06; it was
  3.7-35.2 and 1.5-17.7 ms under the first corrections, when the budgets were chosen). So torch30 is out of reach:
  its search returns the space's dearest network, a reference row for "as large as the space goes". The ORT budget
  was 14 ms (out of reach too) and is 8 ms since 2026-12-06 night, no ORT row having run;
* ``lgc<B>`` (issue 11, same budgets): the LGCNet space (``search.space=lgcnet``: cell-independent cells, the
  GCN-guided module, the dense fusion cell; same base widths), searched and retrained the same way; its ablation at the
  middle budget: ``lgc_share`` (cell-sharing, no GGM), ``lgc_noggm`` (gamma 0), ``lgc_nofusion`` (the chain head),
  ``lgc_plain`` (none of the three: the package defaults, since none helped); ``lgcnf<B>``: the space without its
  fusion cell (the ablation's best) at each budget; the LGCNet rows' settings
  (``share_cells``, ``ggm_gamma``, ``fusion``) being those of configs/search-camvid-cpu.yaml, LGCNet as published;
  ``lgc_supernet`` (``search.expectation=supernet``: the terms priced on all of the supernet's edges, each absent with
  its ``none`` probability, instead of the 2 kept inputs per node; the searches before 2026-12-07, where the cells
  collapsed onto ``none``);
* ablation at the middle torch budget: ``abl_ce`` (no teacher in the search: CE only, lambda_kd 0, lambda_ged 0),
  ``abl_cekd`` (lambda_ged 0), ``abl_nominal`` (the full objective with the teacher's graph staged by nominal stride,
  ``search.ged_stages=nominal``: the dilated teacher's last stage meets the student's stride-32 stage), ``abl_derived``
  (the full objective with the structural term priced on the derived network's graph, ``search.expectation=derived``,
  the default since 2026-12-07; every other chain row keeps the supernet's own wiring, ``supernet``, so the table
  keeps one objective), ``abl_archlr`` (the full objective with the architecture learning rate 0.01 instead of
  0.003: at 0.003 the 690 architecture steps move a logit by at most ~2, and every row's weights stayed near
  uniform), ``abl_auxskip`` (the full objective with DARTS-' auxiliary skip, ``search.aux_skip=1``: every
  row's skip candidate led within the first epoch of architecture steps, also with CE only); the full objective is
  ``torch<mid>``;
* long-search table: ``long_torch<mid>`` (the full objective) and ``long_cekd`` (lambda_ged 0), each searched three
  times as long (``LONG_SEARCH``: 2,760 iterations, 690 weights-only, so 2,070 architecture steps instead of 690),
  everything else as above. At 690 steps the architecture weights barely move (benchmarks/arch_gradient.py: about 0.4
  logit); this table asks whether a longer search lets them decide. The random rows need no search, so they compare
  with this table as they are;
* ops picked by the weights (``search.derive_ops=weights``): ``w_torch<mid>``, ``w_cekd``, ``w_ce`` derive the finished
  supernets of torch<mid>, abl_cekd and abl_ce again (``w_archlr``, ``w_auxskip``, ``w_long_torch<mid>``: of those
  rows) (``segdistill derive --ops weights``; no new search), and
  ``w_random<i>`` derive random<i>'s own draw the same way. Under the priced rule every row, searched or random,
  came out as the budget filled with MBConv-e6 ops (a negative price rewards latency); under this one each layer's
  op is its weights' likeliest non-skip op, so a searched row differs from a random one in its ops. The rule keeps
  every layer at full width and still lands under the band (13-15 ms for 20 ms): these rows compare with each other;
* ops ranked by perturbation (``segdistill derive --ops perturb``, after DARTS-PT): ``p_torch<mid>``, ``p_cekd``,
  ``p_archlr``, ``p_lgc<mid>`` (LGCNet: each edge and fusion level) derive those finished supernets again with each
  op ranked by the cross entropy the trained supernet loses when that op is taken out of its mixed op (``PERTURB_BATCHES`` batches of its architecture half; no new
  search; the price sets depth, inputs and widths). The architecture weights stayed near uniform, so this asks
  whether the supernet's trained weights know better, and gives the search a choice of its own to set beside the
  random rows;
* ``random<i>`` (``--random-archs``, default 3): random architecture weights of the same space (standard normal
  logits), derived by the search's own rule for the middle budget (the argmax priced by latency, in the search's band
  0.9-1.0 x budget): a searched row differs from a random one only in where its weights came from;
* Stanford Background (8 classes, folder layout, resized to 180x240 like CamVid): ``sb_teacher`` (the
  camvid_baselines teacher recipe, 1,200 iterations, seed 0; distillation there needs a teacher of 8 classes),
  ``sb_kd_<student>`` and ``sb_torch<mid>`` (searched on Stanford Background with its teacher, then retrained).

Every retrained row: val mIoU per seed, params and MACs at 1x3x180x240, predicted latency per platform whose table
exists (searched and random rows), budget; ``--latency`` measures torch-cpu and onnxruntime-cpu latency of every
finished row in one process and one window: ``--latency-repeats`` round-robin passes over all rows (each pass times
every row once, median of >= 50 runs after warm-up; a row's figure is the median over passes), batch 1, ``--threads``.
This machine's speed flips between two states about 25% apart (RESULTS.md), so rows measured at different times do not
compare; rows measured in the same passes do. Run it with nothing else on the machine. ``--state-tables DIR`` adds the
state control: three of the networks each table in DIR was fitted on run in the same passes, and ``--report
--check-tables DIR`` scales DIR's predictions by their ratio now/at the fit (``segdistill/latency/state.py``) and counts
the rows at or under their budget both as measured and at DIR's fit state (median / ratio). A row restored from
``--archive`` has no checkpoint on a new machine: its architecture is rebuilt from its result file and measured with
fresh weights, beside one trained row measured both ways (the window's control). Searched rows add the search's
wall time and peak RSS (the search runs in a child process of its own). Distilled rows record their teacher
(checkpoint, val mIoU, sha256); a new machine retrains it, and the report names rows distilled from different ones.

    python benchmarks/camvid_search.py --rows all --seeds 0,1          # every row (resumable; see RESULTS.md)
    python benchmarks/camvid_search.py --latency --report               # measured latency, then table + Pareto plot
    python benchmarks/camvid_search.py --latency --state-tables DIR --report --check-tables DIR   # with the state control

Latency tables: ``--lut-dir`` holds ``lut-<platform>.json``; a missing one, or one lacking blocks of the config's
space, is built or extended first (``segdistill lut build --space chain --space-option base_widths=[...] --platform P
--threads 2 --input 3x180x240``; ``--lut-dir benchmarks/latency/chain`` uses the committed tables), a new one seeded from benchmarks/latency/lut-P.json when that
table was measured on this machine, which keeps its fitted correction; otherwise ``segdistill latency fit`` fits one
afterwards). **Build tables on a quiet machine**: every figure of a search comes from them. A table holds one
correction; ``--lgc-lut-dir`` gives the LGCNet rows tables of their own (a copy of the chain tables refitted with
``segdistill latency fit --space lgcnet``), since the chain-fitted correction under-predicts small LGCNet networks.

Resumable: runs train with ``train.resume=auto`` (a killed run continues from its last.pt); a finished row
(``result.json``, ``search/genotype.json`` + ``search/search.json``) is skipped unless ``--force``.
Results: OUT_DIR/<row>/seed<k>/result.json, searches OUT_DIR/<row>/search/ (default OUT_DIR ../runs/camvid_search).
``--archive benchmarks/results/camvid_search`` keeps a copy of the small result files (never checkpoints) in the
repository and restores them when OUT_DIR lacks them (a run folder lost with its machine): finished searches and rows
are not redone, and a genotype searched once is retrained from its archived copy.
"""
from __future__ import annotations

import argparse
import json
import math
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

sys.path.insert(0, str(Path(__file__).resolve().parent))
import camvid_baselines as base  # noqa: E402  (the hand-designed students' overrides)
import camvid_kd as kd  # noqa: E402  (teacher, students and the distillation recipe)

REPO = kd.REPO
CONFIG = REPO / "segdistill" / "configs" / "camvid-cpu.yaml"
SEARCH_CONFIG = REPO / "segdistill" / "configs" / "search-camvid-cpu.yaml"
SHARED = REPO.parent / "shared" / "data"
DATASETS = {  # name -> (description, data overrides)
    "camvid": ("CamVid (SegNet layout, 11 classes, train 367 -> val 101, 240x180)",
               [f"data.root={SHARED / 'camvid'}"]),
    "sb": ("Stanford Background (8 classes, folder layout, train 500 -> val 100, resized to 240x180)",
           ["data.name=folder", f"data.root={SHARED / 'stanford-background'}"]),
}
NUM_CLASSES = {"camvid": 11, "sb": 8}  # the head's latency blocks depend on it
PROTOCOL = ("camvid-cpu (../shared/docs/benchmark-protocol.md): train->val, images resized to 240x180, void/unknown "
            "ignored; whole-image val mIoU of best.pt; latency batch 1, eval, no grad, 1x3x180x240, median of >= 50 "
            "runs after warm-up")
LAT_SHAPE = (1, 3, 180, 240)
PLATFORMS = ("torch-cpu", "onnxruntime-cpu")
SHORT = {"torch-cpu": "torch", "onnxruntime-cpu": "ort"}
# One budget per table (protocol: >= 400 iterations at batch 8 for a comparison table).
RETRAIN = ["train.iters=400", "train.val_interval=100", "train.ckpt_interval=50", "optim.warmup_iters=50"]
SEARCH = ["train.iters=920", "train.val_interval=115", "train.ckpt_interval=115", "search.warmup_iters=230"]
# The long-search table (rows long_*): the same search three times as long, warm-up included (2,070 architecture
# steps instead of 690), every other setting and the retrain budget unchanged.
LONG_SEARCH = ["train.iters=2760", "train.val_interval=230", "train.ckpt_interval=115", "search.warmup_iters=690"]
TEACHER_ITERS = ["train.iters=1200", "train.val_interval=300", "train.ckpt_interval=100", "optim.warmup_iters=100"]
# The hand-designed students: camvid_kd.py's two (LR-ASPP at OS 16) and camvid_baselines.py's other two.
STUDENTS = {**{k: v for k, v in kd.STUDENTS.items()},
            **{k: (base.ROWS[k][0], base.ROWS[k][1]) for k in ("dlv3_r18_half", "dlv3p_mbv2")}}
PERTURB_BATCHES = 8  # architecture batches (of 8 images) per op taken out, p_* rows
RANDOM_BAND = (0.9, 1.0)  # the search's band (search.band): random networks at the searched ones' latency
# Stanford Background's searched rows: the middle budget, and 16 ms (where torch16 dominated LR-ASPP on CamVid)
SB_EXTRA_BUDGETS = (16.0,)
SEARCHED_OV = ["model.output_stride=null"]  # the chain space fixes its strides (camvid-cpu.yaml says 8)
# The chain rows' structural term prices the supernet's own wiring, as every chain search run before 2026-12-07
# did (search.expectation=supernet), so that the table keeps one objective; abl_derived prices the derived network.
SUPERNET_EXP = ["search.expectation=supernet"]


# ---------------------------------------------------------------------------- rows
def define_rows(torch_budgets: list[float], ort_budget: float, n_random: int) -> dict[str, dict]:
    """row -> {desc, kind (kd | search | random | teacher), dataset, student | platform + budget + search_ov}."""
    mid = sorted(torch_budgets)[len(torch_budgets) // 2]
    rows: dict[str, dict] = {}

    def headline(ds: str, prefix: str, budgets: list[float]):
        if ds == "sb":
            rows["sb_teacher"] = {"desc": base.ROWS["teacher"][0], "kind": "teacher", "dataset": ds}
        for s, (desc, _) in STUDENTS.items():
            rows[f"{prefix}kd_{s}"] = {"desc": f"{desc}, distilled", "kind": "kd", "dataset": ds, "student": s}
        for b in budgets:
            rows[f"{prefix}torch{b:g}"] = {"desc": f"searched for torch-cpu {b:g} ms (CE + KD + GED), distilled",
                                           "kind": "search", "dataset": ds, "platform": "torch-cpu", "budget": b,
                                           "search_ov": list(SUPERNET_EXP)}

    headline("camvid", "", torch_budgets)
    rows[f"ort{ort_budget:g}"] = {"desc": f"searched for onnxruntime-cpu {ort_budget:g} ms (CE + KD + GED), distilled",
                                  "kind": "search", "dataset": "camvid", "platform": "onnxruntime-cpu",
                                  "budget": ort_budget, "search_ov": list(SUPERNET_EXP)}
    rows["abl_ce"] = {"desc": f"ablation: searched for torch-cpu {mid:g} ms, CE only (no teacher in the search), "
                              "distilled", "kind": "search", "dataset": "camvid", "platform": "torch-cpu", "budget": mid,
                      "search_ov": ["distill.teacher=null", "search.lambda_kd=0", "search.lambda_ged=0", *SUPERNET_EXP]}
    rows["abl_cekd"] = {"desc": f"ablation: searched for torch-cpu {mid:g} ms, CE + KD (lambda_ged 0), distilled",
                        "kind": "search", "dataset": "camvid", "platform": "torch-cpu", "budget": mid,
                        "search_ov": ["search.lambda_ged=0", *SUPERNET_EXP]}  # as torch<mid> (the default then)
    rows["abl_nominal"] = {"desc": f"ablation: searched for torch-cpu {mid:g} ms, CE + KD + GED with the teacher's nodes "
                                   "staged by nominal stride (search.ged_stages=nominal), distilled", "kind": "search",
                           "dataset": "camvid", "platform": "torch-cpu", "budget": mid,
                           "search_ov": ["search.ged_stages=nominal", *SUPERNET_EXP]}
    rows["abl_derived"] = {"desc": f"ablation: searched for torch-cpu {mid:g} ms, CE + KD + GED with the GED priced on "
                                   "the derived network's graph (search.expectation=derived), distilled", "kind": "search",
                           "dataset": "camvid", "platform": "torch-cpu", "budget": mid,
                           "search_ov": ["search.expectation=derived"]}
    rows["abl_archlr"] = {"desc": f"ablation: searched for torch-cpu {mid:g} ms, CE + KD + GED with the architecture "
                                  "learning rate 0.01 instead of 0.003 (search.arch_lr=0.01: 690 steps x 0.01 ~ the "
                                  "logit drift DARTS allows, ~6), distilled", "kind": "search", "dataset": "camvid",
                          "platform": "torch-cpu", "budget": mid, "search_ov": ["search.arch_lr=0.01", *SUPERNET_EXP]}
    rows["abl_auxskip"] = {"desc": f"ablation: searched for torch-cpu {mid:g} ms, CE + KD + GED with DARTS-' "
                                   "auxiliary skip (search.aux_skip=1, decaying to 0), distilled", "kind": "search",
                           "dataset": "camvid", "platform": "torch-cpu", "budget": mid,
                           "search_ov": ["search.aux_skip=1.0", *SUPERNET_EXP]}
    for name, what, ov in (("long_torch20", "CE + KD + GED", []), ("long_cekd", "CE + KD (lambda_ged 0)",
                                                                    ["search.lambda_ged=0"])):
        rows[name.replace("20", f"{mid:g}")] = {
            "desc": f"long search (3x: {LONG_SEARCH[0]}, {LONG_SEARCH[3]}) for torch-cpu {mid:g} ms, {what}, distilled",
            "kind": "search", "dataset": "camvid", "platform": "torch-cpu", "budget": mid,
            "search_ov": [*ov, *SUPERNET_EXP], "search_budget": list(LONG_SEARCH)}
    for b in torch_budgets:  # issue 11: the LGCNet space at the same budgets
        rows[f"lgc{b:g}"] = {"desc": f"LGCNet space (cell-independent + GGM + dense fusion) searched for torch-cpu {b:g} "
                                     "ms (CE + KD + GED), distilled", "kind": "search", "space": "lgcnet",
                             "dataset": "camvid", "platform": "torch-cpu", "budget": b, "search_ov": []}
    for b in torch_budgets:  # the LGCNet space without its fusion cell, the ablation's best (2026-12-07)
        rows[f"lgcnf{b:g}"] = {"desc": f"LGCNet space without the dense fusion cell (the chain head) searched for "
                                       f"torch-cpu {b:g} ms (CE + KD + GED), distilled", "kind": "search",
                               "space": "lgcnet", "dataset": "camvid", "platform": "torch-cpu", "budget": b,
                               "search_ov": ["search.fusion=false"]}
    for name, what, ov in (("lgc_share", "cell-sharing (one alpha for every cell, no GGM)",
                            ["search.share_cells=true", "search.ggm_gamma=0"]),
                           ("lgc_noggm", "cell-independent without the GGM (gamma 0)", ["search.ggm_gamma=0"]),
                           ("lgc_nofusion", "without the dense fusion cell (the chain head)", ["search.fusion=false"]),
                           ("lgc_plain", "none of the three parts (cell-sharing, no GGM, the chain head: the package "
                            "defaults since 2026-12-07)", ["search.share_cells=true", "search.ggm_gamma=0",
                                                           "search.fusion=false"]),
                           ("lgc_supernet", "structural and latency terms over the supernet's own edges (every edge "
                            "absent with its none probability; search.expectation=supernet, the lgc20 run of "
                            "2026-12-06)", SUPERNET_EXP)):
        rows[name] = {"desc": f"LGCNet ablation: {what}, torch-cpu {mid:g} ms, distilled", "kind": "search",
                      "space": "lgcnet", "dataset": "camvid", "platform": "torch-cpu", "budget": mid, "search_ov": ov}
    # Ops picked by the weights (search.derive_ops=weights): the finished supernets derived again, and the random
    # rows' own logits (the same draws) derived the same way
    for name, src in (("w_torch", f"torch{mid:g}"), ("w_cekd", "abl_cekd"), ("w_ce", "abl_ce"),
                      ("w_archlr", "abl_archlr"), ("w_auxskip", "abl_auxskip"), ("w_long_torch", f"long_torch{mid:g}")):
        rows[name.replace("_torch", f"_torch{mid:g}")] = {
            "desc": f"{src}'s supernet derived again with its ops picked by the weights (search.derive_ops=weights; "
                    "the price sets depth, inputs and widths), distilled", "kind": "rederived", "from": src,
            "dataset": "camvid", "platform": "torch-cpu", "budget": mid, "derive_ops": "weights"}
    # Ops ranked by perturbation (segdistill derive --ops perturb, after DARTS-PT): what the trained supernet loses
    # without each op on PERTURB_BATCHES batches of its architecture half; the price sets depth, inputs and widths
    for name, src in ((f"p_torch{mid:g}", f"torch{mid:g}"), ("p_cekd", "abl_cekd"), ("p_archlr", "abl_archlr"),
                      (f"p_lgc{mid:g}", f"lgc{mid:g}")):
        rows[name] = {
            "desc": f"{src}'s supernet derived again with each op ranked by the loss the trained supernet takes "
                    f"without it ({PERTURB_BATCHES} architecture batches; segdistill derive --ops perturb; the price "
                    "sets depth, inputs and widths), distilled", "kind": "rederived", "from": src,
            "dataset": "camvid", "platform": "torch-cpu", "budget": mid, "derive_ops": "perturb",
            "derive_args": ["--batches", str(PERTURB_BATCHES), "--threads", "1"],
            **({"space": rows[src]["space"]} if "space" in rows[src] else {})}
    for i in range(n_random):
        rows[f"w_random{i}"] = {"desc": f"random{i}'s logits derived with the ops picked by them (search.derive_ops="
                                        f"weights), torch-cpu {mid:g} ms, distilled", "kind": "random",
                                "dataset": "camvid", "platform": "torch-cpu", "budget": mid, "index": i,
                                "derive_ops": "weights"}
    for i in range(n_random):
        rows[f"random{i}"] = {"desc": f"random architecture {i} of the space, predicted torch-cpu {mid:g} ms "
                                      f"x [{RANDOM_BAND[0]:g}, {RANDOM_BAND[1]:g}], distilled", "kind": "random", "dataset": "camvid",
                              "platform": "torch-cpu", "budget": mid, "index": i}
    headline("sb", "sb_", sorted({mid, *(b for b in SB_EXTRA_BUDGETS if b in torch_budgets)}))
    return rows


CAMVID_TEACHER = [kd.TEACHER]  # --teacher changes it (a smoke run's own teacher)


def teacher_for(dataset: str, out_dir: Path) -> Path:
    return CAMVID_TEACHER[0] if dataset == "camvid" else out_dir / "sb_teacher" / "seed0" / "best.pt"


def teacher_record(path: Path) -> dict:
    """Which teacher a row was distilled from: a new machine retrains the teacher, which lands within about a point
    of the last one but is another network, so rows record it and the report says when rows had different ones."""
    import hashlib

    from segdistill.engine.checkpoint import load_checkpoint

    metrics = load_checkpoint(path)["meta"].get("metrics", {})
    return {"checkpoint": str(path), "val_miou": metrics.get("miou"),
            "sha256": hashlib.sha256(path.read_bytes()).hexdigest()[:16]}


def recipe_overrides(dataset: str, out_dir: Path, recipe: str) -> list[str]:
    """camvid_kd.py's distillation row ``recipe``: its terms, the teacher, and the teacher cache for logit terms."""
    cache = f"distill.cache={out_dir / 'teacher_cache'}" if recipe in kd.LOGIT_ONLY else "distill.cache=null"
    return [*kd.ROWS[recipe][1], f"distill.teacher={teacher_for(dataset, out_dir)}", cache]


# ---------------------------------------------------------------------------- latency tables
def lut_path(lut_dir: Path, platform: str) -> Path:
    return lut_dir / f"lut-{platform}.json"


SUPERNET_ONLY = ("share_cells", "ggm_gamma")  # search.* options of a supernet, not of its blocks


def ensure_lut(lut_dir: Path, platform: str, threads: int, space: dict, timing: list[str], name: str = "chain",
               num_classes: int = 11) -> Path:
    """The table of ``platform`` in ``lut_dir`` covering the search's space ``name`` (``space``: its options, ``input``
    included) for ``num_classes`` classes (the head's blocks depend on it): blocks it lacks are measured first (run
    this on a quiet machine), then its correction fitted if none."""
    from segdistill.errors import LatencyError
    from segdistill.latency.lut import LatencyTable
    from segdistill.latency.spaces import build_space

    path = lut_path(lut_dir, platform)
    opts = {k: v for k, v in space.items() if k != "input" and k not in SUPERNET_ONLY}
    if path.is_file():
        keys = build_space(name, space["input"], num_classes, **opts).keys()
        if not LatencyTable.load(path).missing(keys):
            return path
    lut_dir.mkdir(parents=True, exist_ok=True)
    seed = REPO / "benchmarks" / "latency" / f"lut-{platform}.json"
    try:
        seeded = not path.is_file() and seed.is_file() and LatencyTable.load(seed).local_problem() is None and \
            LatencyTable.load(seed).threads == threads
    except LatencyError:
        seeded = False
    if seeded:
        shutil.copy(seed, path)
        print(f"lut: {path} starts from {seed} (measured on this machine; keeps its correction)", flush=True)
    size = "x".join(map(str, space["input"][1:]))
    cli = [sys.executable, "-m", "segdistill"]
    cmd = cli + ["lut", "build", "--space", name, "--platform", platform, "--threads", str(threads), "--input", size,
                 "--num-classes", str(num_classes), "--out", str(path),
                 *[f"--space-option={k}={json.dumps(v)}" for k, v in opts.items()], *timing]
    print(f"lut: measuring the space's blocks into {path} (needs a quiet machine): {shlex.join(cmd[2:])}", flush=True)
    subprocess.run(cmd, check=True, cwd=REPO)
    if LatencyTable.load(path).correction is None:
        fit = cli + ["latency", "fit", "--lut", str(path), "--nets", "30", "--input", size, *timing]
        print(f"lut: fitting its correction: {shlex.join(fit[2:])}", flush=True)
        subprocess.run(fit, check=True, cwd=REPO)
    return path


def predictor(lut_dir: Path, platform: str, measure: bool = False):
    from segdistill.latency.lut import LatencyTable
    from segdistill.latency.predictor import LatencyPredictor

    path = lut_path(lut_dir, platform)
    return LatencyPredictor(LatencyTable.load(path), measure=measure, progress=False) if path.is_file() else None


def predict_genotype(genotype, lut_dir: Path, num_classes: int) -> dict:
    """Predicted latency (ms) of a genotype per platform with a table, at the genotype's (the search's) input."""
    from segdistill.errors import LatencyError
    from segdistill.search.genotype import genotype_netspec

    out = {}
    for p in PLATFORMS:
        pred = predictor(lut_dir, p)
        if pred is None:
            continue
        try:
            out[p] = float(pred.predict(genotype_netspec(genotype, tuple(genotype["input"]), num_classes))["predicted_ms"])
        except LatencyError as e:
            print(f"   predicted {p}: {str(e).splitlines()[0]}", flush=True)
    return out


# ---------------------------------------------------------------------------- training, evaluation
def train_eval(config: Path, ov: list[str], run_dir: Path) -> dict:
    import torch

    from segdistill.config import load_config
    from segdistill.data import build_dataset
    from segdistill.engine.checkpoint import build_from_checkpoint
    from segdistill.engine.evaluate import evaluate
    from segdistill.engine.hooks import build_hooks
    from segdistill.engine.trainer import Trainer
    from segdistill.tools.profile import profile_model

    ov = ov + [f"train.out_dir={run_dir}", "train.resume=auto" if (run_dir / "last.pt").exists() else "train.resume=null"]
    cfg = load_config(config, ov)
    t0 = time.perf_counter()
    trainer = Trainer(cfg, build_hooks(cfg))
    start = trainer.state.iteration
    trainer.train()
    wall = time.perf_counter() - t0
    prev = json.loads((run_dir / "wall.json").read_text())["s"] if (run_dir / "wall.json").exists() and start else 0.0
    (run_dir / "wall.json").write_text(json.dumps({"s": prev + wall}))
    model, _ = build_from_checkpoint(run_dir / "best.pt")
    val = build_dataset(cfg.data, "val", train=False)
    m = evaluate(model, val, cfg.eval, torch.device("cpu"), val.num_classes, val.ignore_index, progress=False)
    cost = profile_model(model, LAT_SHAPE, platforms=())  # params and MACs only
    return {"miou": m["miou"], "iou": m["iou"], "pixel_acc": m.get("pixel_acc"), "class_names": list(val.class_names),
            "params": cost["params_inference"], "macs": cost["macs"], "train_wall_s": prev + wall,
            "iters": cfg.train.iters, "batch_size": cfg.data.batch_size, "overrides": ov,
            "num_classes": val.num_classes}


# ---------------------------------------------------------------------------- archive
def restore_archive(archive: Path, out_dir: Path) -> None:
    """Copy every archived result file that OUT_DIR lacks back into it (a new machine, a lost run folder): finished
    searches and rows are then skipped as done, and their figures reported."""
    n = 0
    for src in sorted(archive.rglob("*")):
        dst = out_dir / src.relative_to(archive)
        if src.is_file() and not dst.exists():
            dst.parent.mkdir(parents=True, exist_ok=True)
            if src.name == "search.json":  # its genotype path points into the run folder it was written in
                data = json.loads(src.read_text())
                data["genotype"] = str(dst.parent / "genotype.json")
                dst.write_text(json.dumps(data, indent=2))
            else:
                shutil.copy2(src, dst)
            n += 1
    if n:
        print(f"archive: restored {n} result files from {archive} into {out_dir}", flush=True)


def to_archive(opts, out_dir: Path, *paths: Path) -> None:
    """Copy small result files (never checkpoints) into ``--archive``, which can be committed."""
    if not opts.archive:
        return
    for path in paths:
        if path.is_file():
            dst = Path(opts.archive) / path.relative_to(out_dir)
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, dst)


# ---------------------------------------------------------------------------- search
def search_config(row: dict, search_dir: Path, lut_dir: Path) -> Path:
    """configs/search-camvid-cpu.yaml with ``search.budget`` and ``search.lut`` set to this row's one platform.

    Written as a file beside the search: overrides merge into the shipped ``budget: {torch-cpu: 25}`` mapping and no
    override removes a platform from it (an onnxruntime-cpu-only search needs that)."""
    import yaml

    data = yaml.safe_load(SEARCH_CONFIG.read_text())
    p = row["platform"]
    data["search"]["budget"] = {p: float(row["budget"])}
    data["search"]["space"] = row.get("space", "chain")
    data["search"]["lut"] = {p: str(lut_path(lut_dir, p))}
    search_dir.mkdir(parents=True, exist_ok=True)
    path = search_dir / "search-config.yaml"
    path.write_text(f"# {SEARCH_CONFIG.name} with one budget, written by benchmarks/camvid_search.py\n"
                    + yaml.safe_dump(data, sort_keys=False))
    return path


def row_space(row: dict, opts) -> dict:
    """The search space options (``search.*`` of configs/search-camvid-cpu.yaml with the row's and the command's
    overrides) of a search row."""
    from segdistill.config import load_config
    from segdistill.search.hook import space_options

    ov = [*opts.search_extra, f"search.space={row.get('space', 'chain')}",
          *[o for o in row.get("search_ov", []) if o.startswith("search.")]]
    return space_options(load_config(SEARCH_CONFIG, ov).search)


def search_one(request: Path) -> dict:
    """Child process: run one search (``request``: config + overrides), report its wall time and peak RSS."""
    from segdistill.config import load_config
    from segdistill.engine.hooks import build_hooks
    from segdistill.engine.trainer import Trainer

    req = json.loads(request.read_text())
    cfg = load_config(req["config"], req["overrides"])
    t0 = time.perf_counter()
    trainer = Trainer(cfg, build_hooks(cfg))
    start, kept = trainer.state.iteration, trainer.state.wall_s
    out = trainer.train()
    return {"wall_s": time.perf_counter() - t0, "train_wall_s": out["wall_s"], "train_wall_start_s": kept,
            "start_iter": start, "iters": cfg.train.iters,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "peak_rss_children_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}


def search_wall(pieces: list[dict]) -> float:
    """A search's wall time from its pieces (one per process; a killed one is resumed by the next): the trainer's clock
    of the training kept (a killed piece's tail after its last checkpoint is not counted) plus the last piece's set-up
    and finish (building, derivation, report). Pieces resumed from a checkpoint written without the trainer's clock
    (searches before 2026-12-07) sum the processes' wall times instead."""
    last = pieces[-1]
    before = last.get("train_wall_start_s", math.nan)  # the training kept by the earlier pieces
    if not math.isfinite(before) or not math.isfinite(last.get("train_wall_s", math.nan)):
        return sum(x["wall_s"] for x in pieces)
    return before + last["wall_s"]


def run_search(name: str, row: dict, out_dir: Path, lut_dir: Path, opts) -> dict:
    """The search of a row (once; resumable), in its own process. Returns OUT_DIR/<row>/search/search.json."""
    sdir = out_dir / name / "search"
    done = sdir / "search.json"
    if done.exists() and (sdir / "genotype.json").exists() and not opts.force:
        return json.loads(done.read_text())
    ensure_lut(lut_dir, row["platform"], opts.threads, row_space(row, opts), opts.lut_timing, row.get("space", "chain"),
               NUM_CLASSES[row["dataset"]])
    config = search_config(row, sdir, lut_dir)
    budget = row["search_budget"] if "search_budget" in row and not opts.iters else opts.search_budget
    ov = [*DATASETS[row["dataset"]][1], "train.seed=0", *budget,
          f"distill.teacher={teacher_for(row['dataset'], out_dir)}", f"distill.cache={out_dir / 'teacher_cache'}",
          *row["search_ov"], *opts.common, *opts.search_extra, f"train.out_dir={sdir}",
          "train.resume=auto" if (sdir / "last.pt").exists() else "train.resume=null"]
    if opts.force and done.exists():
        done.unlink()
    request = sdir / "request.json"
    request.write_text(json.dumps({"config": str(config), "overrides": ov}, indent=1))
    print(f"== {name} / search: {row['desc']}\n   segdistill search {config} {shlex.join(ov)}", flush=True)
    p = subprocess.run([sys.executable, __file__, "--search-one", str(request)], stdout=subprocess.PIPE, text=True)
    if p.returncode != 0:
        raise SystemExit(f"{name}: the search failed (exit {p.returncode}); its output is above, its run folder {sdir}")
    piece = json.loads(p.stdout.strip().splitlines()[-1])
    parts = json.loads((sdir / "pieces.json").read_text()) if (sdir / "pieces.json").exists() and piece["start_iter"] else []
    parts.append(piece)
    (sdir / "pieces.json").write_text(json.dumps(parts, indent=1))
    log = [json.loads(ln) for ln in (sdir / "search_log.jsonl").read_text().splitlines() if ln.strip()]
    last = [r for r in log if r.get("event") == "validate"][-1]
    res = {"row": name, "platform": row["platform"], "budget_ms": row["budget"], "config": str(config), "overrides": ov,
           "wall_s": search_wall(parts),
           "wall_pieces_s": sum(x["wall_s"] for x in parts), "pieces": len(parts),
           "peak_rss_mb": max(x["peak_rss_mb"] for x in parts),
           "peak_rss_workers_mb": max(x["peak_rss_children_mb"] for x in parts),
           "search_input": last.get("search_input") or json.loads((sdir / "genotype.json").read_text())["input"],
           "final": last, "genotype": str(sdir / "genotype.json"), "date": time.strftime("%Y-%m-%d"),
           "command": "python benchmarks/camvid_search.py " + shlex.join(sys.argv[1:])}
    done.write_text(json.dumps(res, indent=2))
    to_archive(opts, out_dir, *(sdir / f for f in ("genotype.json", "search_log.jsonl", "report.md", "search.json", "latency.png")))
    print(f"   search done in {res['wall_s']:.0f} s, peak RSS {res['peak_rss_mb']:.0f} MB; derived network predicted "
          + ", ".join(f"{k.split('/')[1]} {v:.2f} ms" for k, v in last.items() if k.startswith("predicted_ms/")), flush=True)
    return res


# ---------------------------------------------------------------------------- random architectures
def sample_random(name: str, row: dict, out_dir: Path, lut_dir: Path, opts, tries: int = 100) -> Path:
    """Genotype ``index``: random architecture weights (standard normal logits, so every plain-argmax choice is
    uniform), derived by the search's own rule for the row's budget (``derive_within_budget``: the argmax priced by
    latency, in RANDOM_BAND x the budget). A searched row and a random row then differ only in where the weights came
    from: learned, or drawn. A draw the rule cannot bring into the band is skipped. Deterministic per index. A row
    with ``derive_ops: weights`` derives with its ops picked by the logits (random ones) and keeps the rule's network
    at or under the budget, in the band or not, as a searched row under that rule does."""
    import torch

    from segdistill.config import load_config
    from segdistill.models import build_model
    from segdistill.search.genotype import random_genotype, save_genotype
    from segdistill.search.hook import space_options
    from segdistill.search.objective import derive_within_budget

    index, ops = row["index"], row.get("derive_ops", "priced")
    path = out_dir / name / "genotype.json"
    if path.exists() and not opts.force:
        return path
    ensure_lut(lut_dir, row["platform"], opts.threads, opts.search_space, opts.lut_timing,
               num_classes=NUM_CLASSES[row["dataset"]])
    cfg = load_config(SEARCH_CONFIG, [*DATASETS["camvid"][1], *opts.search_extra])
    net = build_model("chain_supernet", 11, **space_options(cfg.search))
    pred = predictor(lut_dir, row["platform"], measure=True)
    n_before = len(pred.table)
    gen = torch.Generator().manual_seed(1000 + index)
    p, budget = row["platform"], float(row["budget"])
    for t in range(tries):
        random_genotype(net, gen)  # sets the supernet's logits
        g, info = derive_within_budget(net, {p: pred}, {p: budget}, RANDOM_BAND, ops=ops)
        ms = info["predicted_ms"][p]
        if (RANDOM_BAND[0] * budget if ops == "priced" else 0.0) <= ms <= RANDOM_BAND[1] * budget:
            g["sampled"] = {"index": index, "tries": t + 1, "predicted_ms": ms, "platform": p, "budget_ms": budget,
                            "band": list(RANDOM_BAND), "generator_seed": 1000 + index, "rule": info["rule"],
                            "mu": info["mu"], "argmax_ms": info["argmax_ms"][p],
                            "derive_ops": ops,
                            "method": "standard-normal architecture logits, derived by derive_within_budget"}
            path.parent.mkdir(parents=True, exist_ok=True)
            save_genotype(g, path)
            to_archive(opts, out_dir, path)
            if len(pred.table) > n_before:  # keys measured on demand (a space not in the table): keep them
                pred.table.save()
            print(f"== {name}: draw {t + 1} derived at {ms:.2f} ms predicted ({p}, budget {budget:g} ms x "
                  f"{list(RANDOM_BAND)}, rule {info['rule']}, mu {info['mu']:.3g})", flush=True)
            return path
    raise SystemExit(f"{name}: none of {tries} random architecture weights derived within "
                     f"{list(RANDOM_BAND)} x {budget:g} ms on {p}; is the budget inside the space's range?")


# ---------------------------------------------------------------------------- another derive rule
def run_derive(name: str, run: Path, out: Path, row: dict, lut_dir: Path, *extra: str) -> tuple[dict, list[str]]:
    """``segdistill derive RUN --out OUT --json --lut <row's platform table> [extra]`` in a child process: (its JSON
    line, the command)."""
    cmd = [sys.executable, "-m", "segdistill", "derive", str(run.resolve()), "--out", str(out.resolve()), "--json",
           "--lut", f"{row['platform']}={lut_path(lut_dir, row['platform']).resolve()}", *extra]
    print(f"== {name} / derive: {shlex.join(['segdistill', *cmd[3:]])}", flush=True)
    p = subprocess.run(cmd, cwd=REPO, stdout=subprocess.PIPE, text=True)
    if p.returncode != 0:
        raise SystemExit(f"{name}: segdistill derive failed (exit {p.returncode}); its output is above")
    print(p.stdout, end="", flush=True)
    return json.loads(p.stdout.strip().splitlines()[-1]), cmd


def derive_again(name: str, row: dict, out_dir: Path, lut_dir: Path, opts) -> dict | None:
    """A ``rederived`` row: the finished supernet of row ``row["from"]`` (its last.pt) derived again for the same
    budget with ``segdistill derive --ops row["derive_ops"]``, into OUT_DIR/<name>/search/genotype.json. Returns the
    source's search.json with the new genotype and the derivation (``derived_again``); once. None (the row is not
    run yet) while the source's search is unfinished."""
    sdir, src = out_dir / name / "search", out_dir / row["from"] / "search"
    done = sdir / "search.json"
    if done.exists() and (sdir / "genotype.json").exists() and not opts.force:
        return json.loads(done.read_text())
    for need in (src / "last.pt", src / "search.json"):
        if not need.exists():
            print(f"== {name}: not run, {need} is missing (run the row {row['from']} first)", flush=True)
            return None
    sdir.mkdir(parents=True, exist_ok=True)
    info, cmd = run_derive(name, src, sdir / "genotype.json", row, lut_dir, "--ops", row["derive_ops"],
                           *row.get("derive_args", ()))
    res = {**json.loads((src / "search.json").read_text()), "row": name, "genotype": str(sdir / "genotype.json"),
           "derived_again": {"from": row["from"], "command": shlex.join(["segdistill", *cmd[3:]]),
                             **{k: info.get(k) for k in ("ops", "rule", "mu", "logp", "predicted_ms", "argmax_ms",
                                                         "perturbation")}},
           "date": time.strftime("%Y-%m-%d")}
    done.write_text(json.dumps(res, indent=2))
    to_archive(opts, out_dir, sdir / "genotype.json", done, sdir / "genotype-perturbation.json")
    return res


# ---------------------------------------------------------------------------- tables changed: derive again
ARCH_KEYS = ("widths", "stages", "cells", "fusion", "fusion_edges")  # what a genotype's network is (chain, lgcnet)


def rederive(name: str, row: dict, out_dir: Path, lut_dir: Path, opts) -> bool:
    """After the latency tables or the derive rule changed (a correction fitted on the space's own networks, say):
    derive a search row's network again from its finished supernet (``segdistill derive`` on its last.pt, for the same budget and band), or
    draw a random row's genotype again. A changed genotype sets the old one (``genotype-before-<stamp>.json``) and the
    row's retrains (``seed<k>-before-<stamp>``) aside, and drops their archived results, so that the row retrains;
    ``search.json`` lists every re-derivation. Returns whether the genotype changed."""
    stamp = time.strftime("%Y%m%d-%H%M")
    if row["kind"] == "search":
        sdir = out_dir / name / "search"
        if not (sdir / "last.pt").exists():
            print(f"== {name}: not re-derived, {sdir / 'last.pt'} is missing (its search must run again)", flush=True)
            return False
        new = sdir / f"genotype-{stamp}.json"
        info, cmd = run_derive(name, sdir, new, row, lut_dir)
        old, now = json.loads((sdir / "genotype.json").read_text()), json.loads(new.read_text())
        changed = any(now.get(k) != old.get(k) for k in ARCH_KEYS)
        if changed:
            (sdir / "genotype.json").rename(sdir / f"genotype-before-{stamp}.json")
            new.rename(sdir / "genotype.json")
            res = json.loads((sdir / "search.json").read_text())
            res.setdefault("rederivations", []).append(
                {"date": stamp, "command": shlex.join(["segdistill", *cmd[3:]]),
                 "why": opts.rederive_why,
                 "before": f"genotype-before-{stamp}.json", **{k: info.get(k) for k in
                                                                 ("rule", "mu", "logp", "predicted_ms", "argmax_ms")}})
            (sdir / "search.json").write_text(json.dumps(res, indent=2))
            to_archive(opts, out_dir, *(sdir / f for f in ("genotype.json", f"genotype-before-{stamp}.json",
                                                           "search.json")))
        else:
            new.unlink()
    else:
        path = out_dir / name / "genotype.json"
        before = path.with_name(f"genotype-before-{stamp}.json")
        if not path.exists():
            return False  # never drawn: the run draws it under the current tables
        path.rename(before)
        try:
            sample_random(row["index"], row, out_dir, lut_dir, argparse.Namespace(**{**vars(opts), "force": True}))
        except BaseException:
            before.rename(path)  # nothing is lost: the row keeps its genotype and results
            raise
        changed = json.loads(path.read_text())["stages"] != json.loads(before.read_text())["stages"]
        if changed:
            to_archive(opts, out_dir, before)
        else:
            before.unlink()
    if changed:
        for d in sorted((out_dir / name).glob("seed[0-9]*")):
            if d.is_dir() and "-before-" not in d.name:
                aside = d.with_name(f"{d.name}-before-{stamp}")
                d.rename(aside)
                to_archive(opts, out_dir, aside / "result.json")  # kept as history, never read as a row
                if opts.archive:
                    (Path(opts.archive) / name / d.name / "result.json").unlink(missing_ok=True)
    print(f"== {name}: genotype {'changed: its retrains are set aside and run again' if changed else 'unchanged'} "
          "under the current tables", flush=True)
    return changed


# ---------------------------------------------------------------------------- one row
def run(name: str, row: dict, seed: int, out_dir: Path, lut_dir: Path, opts) -> dict | None:
    run_dir = out_dir / name / f"seed{seed}"
    res_path = run_dir / "result.json"
    if res_path.exists() and not opts.force:
        print(f"== {name} / seed {seed}: done ({res_path})", flush=True)
        return json.loads(res_path.read_text())
    if row["kind"] == "teacher" and seed != 0:
        return None  # one teacher, seed 0 (the protocol's rule for teachers)
    ds = row["dataset"]
    extra, search = {}, None
    if row["kind"] == "teacher":
        config, ov = CONFIG, [*DATASETS[ds][1], "train.seed=0", *base.ROWS["teacher"][1], *opts.teacher_budget]
    else:
        config = CONFIG
        ov = [*DATASETS[ds][1], f"train.seed={seed}", *opts.budget, *recipe_overrides(ds, out_dir, opts.recipe)]
        if row["kind"] == "kd":
            ov += STUDENTS[row["student"]][1]
        else:
            if row["kind"] == "search":
                search = run_search(name, row, out_dir, lut_dir, opts)
                genotype = Path(search["genotype"])
            elif row["kind"] == "rederived":
                search = derive_again(name, row, out_dir, lut_dir, opts)
                if search is None:
                    return None
                genotype = Path(search["genotype"])
            else:
                genotype = sample_random(name, row, out_dir, lut_dir, opts)
            ov += [f"model.name=searched:{genotype}", *SEARCHED_OV]
            extra["genotype"] = json.loads(genotype.read_text())
    ov += opts.common
    teacher = teacher_for(ds, out_dir)
    if row["kind"] != "teacher" and not teacher.exists():
        print(f"== {name} / seed {seed}: not run, its teacher {teacher} is missing (run the row "
              f"{'sb_teacher' if ds == 'sb' else 'teacher of camvid_baselines.py'} first)", flush=True)
        return None
    print(f"== {name} / seed {seed}: {row['desc']}\n   overrides: {shlex.join(ov)}", flush=True)
    r = train_eval(config, ov, run_dir)
    if "genotype" in extra:
        r["predicted_ms"] = predict_genotype(extra["genotype"], lut_dir, r["num_classes"])
        r["predicted_input"] = extra["genotype"]["input"]
        r["predicted_tables"] = str(lut_dir)  # the LGCNet rows may have their own (--lgc-lut-dir)
    result = {"row": name, "seed": seed, "kind": row["kind"], "dataset": ds, "description": row["desc"],
              "platform": row.get("platform"), "budget_ms": row.get("budget"), "protocol": PROTOCOL, **r,
              "search": search, "recipe": opts.recipe, "budget_overrides": opts.budget, "date": time.strftime("%Y-%m-%d"),
              "checkpoint": str(run_dir / "best.pt"),
              **({"teacher": teacher_record(teacher)} if row["kind"] != "teacher" else {}),
              "command": "python benchmarks/camvid_search.py " + shlex.join(sys.argv[1:])}
    res_path.write_text(json.dumps(result, indent=2, default=float))
    to_archive(opts, out_dir, res_path)
    pred = ", ".join(f"predicted {p} {v:.2f} ms" for p, v in result.get("predicted_ms", {}).items())
    print(f"   val mIoU {100 * r['miou']:.2f}, {r['params'] / 1e6:.2f} M params, {r['macs'] / 1e9:.3f} GMACs"
          + (f", {pred}" if pred else ""), flush=True)
    return result


def result_paths(out_dir: Path) -> list[Path]:
    """Every row's current results (``<row>/seed<k>/result.json``); runs set aside by ``--rederive``
    (``seed<k>-before-<stamp>``) are history, not rows."""
    return [p for p in out_dir.glob("*/seed*/result.json") if "-before-" not in p.parent.name]


FRESH = "{} (fresh weights)"  # the control of a latency window that measures restored rows


def moved(text: str, result: dict, out_dir: Path) -> str:
    """``text`` (an override or a path) with the folder the row ran in (``<that>/<row>/seed<k>/best.pt``) moved to
    OUT_DIR, where ``--archive`` restores a row's files on another machine."""
    return text.replace(str(Path(result["checkpoint"]).parents[2]), str(out_dir))


def row_network(result: dict, out_dir: Path):
    """A row's network built from its result file alone, freshly initialised: the retrain's recorded overrides on
    camvid-cpu.yaml give the model (a searched row's genotype path is moved from the folder the row ran in to
    OUT_DIR, where ``--archive`` restores it). Latency is a property of the architecture, not of the weights, so a
    new machine measures restored rows in the same window as the rows it trained."""
    from segdistill.config import load_config
    from segdistill.models import build_model

    cfg = load_config(CONFIG, [moved(o, result, out_dir) for o in result["overrides"]])
    m = cfg.model
    return build_model(m.name, int(result["num_classes"]), width_mult=m.width_mult, output_stride=m.output_stride,
                       aux=m.aux, **m.arch).eval()


def state_references(lut_dirs: list[Path], threads: int) -> list[tuple[str, str, object, list]]:
    """``(folder name, platform, table, its reference networks)`` for the state control, from the tables in each of
    ``lut_dirs``."""
    from segdistill.errors import LatencyError
    from segdistill.latency import state
    from segdistill.latency.lut import LatencyTable

    refs = []
    for lut_dir in lut_dirs:
        found = [p for p in PLATFORMS if lut_path(lut_dir, p).is_file()]
        if not found:
            raise LatencyError(f"--state-tables {lut_dir}: no lut-<platform>.json there for {', '.join(PLATFORMS)}")
        for platform in found:
            table = LatencyTable.load(lut_path(lut_dir, platform))
            if table.threads != threads:
                raise LatencyError(f"{table.path} was measured with {table.threads} threads and the window uses "
                                   f"{threads}: its state ratio would mix two things; pass --threads {table.threads}")
            refs.append((lut_dir.name, platform, table, state.references(table)))
    return refs


def add_latency(out_dir: Path, threads: int, repeats: int = 5, opts=None):
    """Measured latency of every finished row on both CPU platforms, all rows in the same ``repeats`` round-robin
    passes (``standalone.measure_interleaved``: each pass times every row once, median of >= 50 runs after 10 warm-up;
    a row's figure is the median over passes), so that a machine whose speed drifts or flips between states shifts
    every row alike and rows compare within one window. One seed per row (the architecture sets latency; a row whose
    checkpoint is gone is measured as ``row_network``, fresh weights, and named in the meta); the
    deployed model (network + upsampling to the input), batch 1, eval, no grad, ``threads`` threads, the steady
    allocator as ``segdistill profile``. Run it with nothing else on the machine.

    ``opts.state_tables`` (folders of tables whose corrections kept their timed networks): the state control
    (``segdistill/latency/state.py``). Three of each table's fit networks are timed in the same passes as the rows,
    and the ratio of their times now to their times at the fit is recorded in the window's meta (``state``), so
    that the report can scale that table's predictions to the machine's state during the window."""
    from segdistill.engine.checkpoint import build_from_checkpoint
    from segdistill.latency import standalone as core
    from segdistill.latency import state
    from segdistill.models.output import deploy_copy

    refs = state_references([Path(d) for d in getattr(opts, "state_tables", None) or []], threads)
    first: dict[str, Path] = {}
    for path in sorted(result_paths(out_dir), key=lambda q: (q.parent.parent.name, q.parent.name)):
        first.setdefault(json.loads(path.read_text())["row"], path)
    if not first:
        return
    models, fresh = {}, []
    for row, path in first.items():
        if (path.parent / "best.pt").exists():
            models[row] = deploy_copy(build_from_checkpoint(path.parent / "best.pt")[0]).eval()
        else:
            models[row] = deploy_copy(row_network(json.loads(path.read_text()), out_dir)).eval()
            fresh.append(row)
    control = next((row for row in first if row not in fresh), None) if fresh else None
    if fresh:
        print(f"latency: {len(fresh)} rows' checkpoints are gone (results restored from --archive); their "
              f"architectures are measured with fresh weights: {', '.join(fresh)}", flush=True)
    if control:  # the check that weights do not matter: one trained row measured again with fresh weights
        models[FRESH.format(control)] = deploy_copy(row_network(json.loads(first[control].read_text()), out_dir)).eval()
    x = core.example_inputs([LAT_SHAPE])
    measured: dict[str, dict] = {row: {} for row in models}
    states: list[dict] = []
    with core.malloc_mode(None) as malloc, core.torch_threads(threads):
        for platform in PLATFORMS:
            plat = core.get_platform(platform)
            fns = {row: plat.prepare(m, x, threads).fn for row, m in models.items()}
            mine = [(d, table, nets) for d, p, table, nets in refs if p == platform]
            for d, _, nets in mine:  # the state control: the tables' fit networks, in the same passes as the rows
                fns.update({f"{d}/{k}": fn for k, fn in state.reference_fns(nets, platform, threads).items()})
            res = core.measure_interleaved(fns, repeats, warmup=10, min_runs=50, min_time=0.5,
                                           progress=lambda r: print(f"latency {platform}: pass {r + 1}/{repeats} of "
                                                                    f"{len(fns)} rows done", flush=True))
            for row in models:
                measured[row][platform] = res[row]
            for d, table, nets in mine:
                now = {k: res[f"{d}/{k}"]["median_ms"] for k, _, _ in nets}
                states.append({"platform": platform, **state.state_ratio(nets, now), "table": state.table_stamp(table)})
                print(f"latency {platform} ({d}/): {state.describe(states[-1])}", flush=True)
    meta = {"threads": threads, "input": list(LAT_SHAPE), "min_runs": 50, "warmup": 10, "repeats": repeats,
            "malloc": malloc, "rows_in_window": sorted(first), "fresh_weights": sorted(fresh), "machine": core.machine_info()["cpu"],
            "date": core.now_iso(), "command": "python benchmarks/camvid_search.py " + shlex.join(sys.argv[1:])}
    if states:
        meta["state"] = states
    if control:
        again = measured.pop(FRESH.format(control))
        meta["fresh_control"] = {"row": control, "ms": {p: {"checkpoint": measured[control][p]["median_ms"],
                                                            "fresh": again[p]["median_ms"]} for p in again}}
        print(f"latency: {control} with its checkpoint against fresh weights: " + ", ".join(
            f"{p} {v['checkpoint']:.2f} vs {v['fresh']:.2f} ms" for p, v in meta["fresh_control"]["ms"].items()),
            flush=True)
    for row, path in first.items():
        res = json.loads(path.read_text())
        res["latency"], res["latency_meta"] = measured[row], meta
        path.write_text(json.dumps(res, indent=2, default=float))
        if opts is not None:
            to_archive(opts, out_dir, path)
        print(f"latency {row}: " + ", ".join(f"{p} {v['median_ms']:.2f} ms ({v['fastest_ms']:.2f}-{v['slowest_ms']:.2f})"
                                             for p, v in measured[row].items()), flush=True)


# ---------------------------------------------------------------------------- report
def _ms(v) -> str:
    return f"{v:.1f}" if isinstance(v, (int, float)) else "-"


def _lat(m: dict) -> str:
    """A measured latency cell: the median over passes, and the fastest pass where there were several."""
    return _ms(m.get("median_ms")) + (f" ({m['fastest_ms']:.1f})" if "fastest_ms" in m else "")


def latency_protocol(meta: dict | None, stale: set[str]) -> str:
    """The report's sentence on how the latest latency window measured (``meta``: its ``latency_meta``)."""
    if not meta:
        return " Measured latency: not measured yet (`--latency`)."
    text = (f" Measured latency: {meta['threads']} threads, batch 1, {'x'.join(map(str, meta['input']))}, median of >= "
            f"{meta['min_runs']} runs after {meta['warmup']} warm-up"
            + (f", every row in the same {meta['repeats']} round-robin passes (median over passes)" if meta.get("repeats")
               else "") + f", one seed per row, `--latency`, {meta['date'][:10]}.")
    for st in meta.get("state") or []:
        text += (f" State control on {st['platform']}: {len(st['nets'])} of the networks the table `{st['table']['path']}` was "
                 f"fitted on ({st['table']['fit_date'][:16]}) timed in the same passes run {st['ratio']:.2f} x their "
                 f"fit times (spread {st['spread']:.2f}).")
    if stale:
        text += f" Rows marked * were measured in an earlier window ({', '.join(sorted(stale))}): compare them with care."
    if meta.get("fresh_weights"):
        control = meta.get("fresh_control", {})
        text += (f" {len(meta['fresh_weights'])} rows' checkpoints were gone on the window's machine, so their "
                 "architectures were measured with fresh weights (`row_network`)"
                 + "".join(f"; {control['row']} on {p}: {v['checkpoint']:.2f} ms with its checkpoint, {v['fresh']:.2f} "
                           "ms fresh" for p, v in control.get("ms", {}).items()) + ".")
    return text


def latest_window(results: list[dict]) -> dict[str, dict]:
    """row -> its result of the latest latency window it was measured in."""
    latest: dict[str, dict] = {}
    for r in results:
        if "latency_meta" in r and r["latency_meta"]["date"] >= latest.get(r["row"], {}).get("latency_meta", {}).get("date", ""):
            latest[r["row"]] = r
    return latest


def report(out_dir: Path, rows: dict[str, dict], seeds: list[int], check_tables: list[Path] = ()) -> str:
    """OUT_DIR/report.md (returned) and OUT_DIR/pareto.png; ``check_tables``: folders of tables to predict every
    measured searched row with again, beside its measured latency (``prediction_check``)."""
    results = [json.loads(p.read_text()) for p in sorted(result_paths(out_dir))]
    by_row: dict[str, list] = {}
    for r in results:
        by_row.setdefault(r["row"], []).append(r)
    done = [n for n in rows if n in by_row and {r["seed"] for r in by_row[n]} >= set(seeds if rows[n]["kind"] != "teacher" else [0])]
    partial = [n for n in rows if n in by_row and n not in done]
    missing = [n for n in rows if n not in by_row]
    r0 = results[0] if results else {}
    latest = latest_window(results)
    lat_meta = max((r["latency_meta"] for r in latest.values()), key=lambda m: m["date"], default=None)
    stale = {n for n, r in latest.items() if r["latency_meta"]["date"] != lat_meta["date"]}
    lines = [f"Protocol: {PROTOCOL}. Retrain budget (every distilled row, the same): "
             f"{' '.join(r0.get('budget_overrides', []) or RETRAIN)} at batch 8; distillation: camvid_kd.py's "
             f"`{r0.get('recipe', 'best')}` row ({kd.ROWS[r0.get('recipe', 'best')][0]}). Search budget: "
             f"{' '.join(SEARCH)} (configs/search-camvid-cpu.yaml: 120x160 crops, latency keys at the search input)."
             + latency_protocol(lat_meta, stale),
             "", f"Rows done ({len(done)}): {', '.join(done) or 'none'}",
             f"Rows partly done ({len(partial)}): {', '.join(partial) or 'none'}",
             f"Rows not done ({len(missing)}): {', '.join(missing) or 'none'}", ""]
    head = ("| row | what | seeds | val mIoU % (each) | params M | GMACs | torch-cpu ms (fastest pass) | ORT-cpu ms "
            "(fastest pass) | predicted ms "
            "(platform) | budget ms | search wall s | search peak RSS MB |")
    groups = [("CamVid: hand-designed distilled vs searched + distilled (chain and LGCNet spaces)",
               lambda n, r: r["dataset"] == "camvid" and r["kind"] in ("kd", "search")
               and not n.startswith(("abl_", "lgc_", "long_", "w_", "p_"))),
              ("CamVid ablation at the middle budget (search objective; random architectures at the same predicted "
               "latency)", lambda n, r: r["dataset"] == "camvid" and (n.startswith(("abl_", "random"))
                                                                       or n == mid_row(rows))),
              ("CamVid LGCNet ablation at the middle budget (cell-sharing, GGM, dense fusion cell)",
               lambda n, r: n.startswith("lgc_") or n == mid_row(rows, "lgc")),
              (f"CamVid long search ({' '.join(LONG_SEARCH)}; the retrain budget unchanged, so the random rows "
               "compare as they are)", lambda n, r: n.startswith(("long_", "random"))),
              ("CamVid ops picked by the weights (search.derive_ops=weights: the supernets above derived again, and "
               "the random rows' own draws; the price sets only depth, inputs and widths)",
               lambda n, r: n.startswith("w_")),
              ("CamVid ops ranked by perturbation (segdistill derive --ops perturb: the loss the trained supernet takes "
               "without each op; the price sets only depth, inputs and widths), beside the priced rows and random "
               "ones", lambda n, r: n.startswith("p_") or n in ("abl_cekd", "abl_archlr", mid_row(rows), mid_row(rows, "lgc"))
               or (n.startswith("random") and r["kind"] == "random")),
              ("Stanford Background (second dataset)", lambda n, r: r["dataset"] == "sb")]
    points = []
    for title, keep in groups:
        lines += [f"**{title}**", "", head, "|---" * 12 + "|"]
        for n, row in rows.items():
            if not keep(n, row):
                continue
            rs = sorted(by_row.get(n, []), key=lambda r: r["seed"])
            if not rs:
                lines.append(f"| {n} | {row['desc']} | not done |  |  |  |  |  |  |  |  |  |")
                continue
            m = [100 * r["miou"] for r in rs]
            lat = latest[n]["latency"] if n in latest else {}
            x = rs[0]
            s = x.get("search") or {}
            predicted = {k.split("/", 1)[1]: v for k, v in s.get("final", {}).items() if k.startswith("predicted_ms/")}
            predicted.update(x.get("predicted_ms", {}))  # the search's own figure where the lut-dir table lacks keys
            pred = ", ".join(f"{v:.1f} ({SHORT[p]})" for p, v in predicted.items())
            lines.append(
                f"| {n}{' *' if n in stale else ''} | {row['desc']} | "
                f"{','.join(str(r['seed']) for r in rs)} | {statistics.mean(m):.2f} "
                f"({', '.join(f'{v:.2f}' for v in m)}) | {x['params'] / 1e6:.2f} | {x['macs'] / 1e9:.3f} | "
                f"{_lat(lat.get('torch-cpu', {}))} | {_lat(lat.get('onnxruntime-cpu', {}))} | "
                f"{pred or '-'} | {_ms(row.get('budget'))}{' (' + SHORT[row['platform']] + ')' if row.get('platform') else ''} | "
                f"{_ms(s.get('wall_s'))} | {_ms(s.get('peak_rss_mb'))} |")
            for p in PLATFORMS:
                if isinstance(lat.get(p, {}).get("median_ms"), (int, float)):
                    kind = "lgcnet" if row.get("space") == "lgcnet" else row["kind"]
                    points.append(Point(p, row["dataset"], kind, n, lat[p]["median_ms"], statistics.mean(m), min(m),
                                        max(m), lat[p].get("fastest_ms", lat[p]["median_ms"]),
                                        lat[p].get("slowest_ms", lat[p]["median_ms"])))
        lines.append("")
    for lut_dir in check_tables:
        lines += prediction_check(out_dir, rows, lut_dir) + [""]
    nets = [(n, describe_network(by_row[n][0], out_dir)) for n in rows if n in by_row]
    nets = [(n, d) for n, d in nets if d]
    if nets:
        lines += ["**The networks** (searched and random rows: widths and kept layers per stage, and their ops; under the "
                  "priced rule a negative price fills the budget with the dearest ops the weights allow)", "",
                  "| row | widths | layers per stage | ops (count) |", "|---|---|---|---|"]
        lines += [f"| {n} | {w} | {d} | {o} |" for n, (w, d, o) in nets] + [""]
    tables: dict[str, list[str]] = {}
    for n in rows:
        if by_row.get(n) and by_row[n][0].get("predicted_tables"):
            tables.setdefault(Path(by_row[n][0]["predicted_tables"]).name, []).append(n)
    if tables:  # which rows which tables predicted (their corrections may be fitted on different spaces)
        lines += ["Predicted latency from the tables in " + "; ".join(f"`{d}/`: {', '.join(ns)}" for d, ns in
                                                                     tables.items())
                  + " (rows not named: benchmarks/latency/chain/, or the search's own tables).", ""]
    teachers: dict[str, list[str]] = {}  # which teacher each row's seeds were distilled from, where recorded
    for r in results:
        t = r.get("teacher")
        key = f"{t['sha256']} (val mIoU {100 * t['val_miou']:.2f})" if t else "not recorded (older rows)"
        if r["row"] not in teachers.setdefault(key, []):
            teachers[key].append(r["row"])
    if len(teachers) > 1:
        lines += ["Teachers differ between rows (each machine retrains its own; compare across them with care): "
                  + "; ".join(f"{k}: {', '.join(ns)}" for k, ns in teachers.items()) + ".", ""]
    if any(r.get("predicted_input") and tuple(r["predicted_input"]) != LAT_SHAPE for r in results):
        lines.append("Predicted latency is at the search input of each genotype, which differs from the measured "
                     f"{'x'.join(map(str, LAT_SHAPE))} for some rows (a smoke run's tiny search input).")
    if points:
        png = out_dir / "pareto.png"
        _plot(points, png)
        lines.append(f"Pareto plot (mIoU vs measured latency, per platform): {png}")
    lines += ["", "Commands:", ""] + sorted({f"    {r['command']}" for r in results}
                                             | {f"    {r['latency_meta']['command']}" for r in results if "latency_meta" in r})
    text = "\n".join(lines)
    (out_dir / "report.md").write_text(text + "\n")
    return text


def row_genotype(result: dict, out_dir: Path) -> dict | None:
    """A searched or random row's genotype (None for a zoo student, or a genotype file no longer there); its path is
    moved from the folder the row ran in to OUT_DIR, where ``--archive`` restores it."""
    path = next((o.split(":", 1)[1] for o in result.get("overrides", []) if o.startswith("model.name=searched:")), None)
    if path is None:
        return None
    path = Path(moved(path, result, out_dir))
    return json.loads(path.read_text()) if path.is_file() else None


def describe_network(result: dict, out_dir: Path) -> tuple[str, str, str] | None:
    """(widths, layers per stage, ops by count) of a retrained row's genotype (None for a zoo student)."""
    g = row_genotype(result, out_dir)
    if g is None:
        return None
    if g.get("space") == "lgcnet":
        ops = [o for c in g["cells"] for nd in c["nodes"] for o in nd["ops"]] + [e["op"] for e in g["fusion_edges"]]
        widths, depth = g["widths"], [len(c["nodes"]) for c in g["cells"]]
    else:
        ops = [st["down"] for st in g["stages"]] + [ly["op"] for st in g["stages"] for ly in st["layers"]]
        widths, depth = [st["width"] for st in g["stages"]], [len(st["layers"]) for st in g["stages"]]
    counts = sorted({o: ops.count(o) for o in ops}.items(), key=lambda kv: (-kv[1], kv[0]))
    per = "/".join(map(str, depth)) + (" nodes per cell" if g.get("space") == "lgcnet" else "")
    return "/".join(map(str, widths)), per, ", ".join(f"{o} {c}" for o, c in counts)


def prediction_check(out_dir: Path, rows: dict[str, dict], lut_dir: Path) -> list[str]:
    """Report lines: every row with a genotype and a measured latency, predicted again with the tables in ``lut_dir``
    (e.g. tables measured on the machine of the latency window, where the search used another machine's), beside
    its measured median and fastest pass of the latest window. The issue's goal is the measured latency within
    +-10% of the prediction. Where that window ran the state control against these very tables (``--latency
    --state-tables``), each prediction also appears scaled by the window's state ratio, with its own count."""
    from segdistill.errors import LatencyError
    from segdistill.latency import state
    from segdistill.latency.lut import LatencyTable
    from segdistill.search.genotype import genotype_netspec

    results = [json.loads(p.read_text()) for p in sorted(result_paths(out_dir))]
    latest, firsts = latest_window(results), {}
    for r in sorted(results, key=lambda r: r["seed"]):
        firsts.setdefault(r["row"], r)
    tables = {p: LatencyTable.load(lut_path(lut_dir, p)) for p in PLATFORMS if lut_path(lut_dir, p).is_file()}
    if not tables:
        return [f"Prediction check: no tables in {lut_dir}."]
    lines = [f"**Predicted again with the tables in `{lut_dir.name}/`** ("
             + "; ".join(f"{p}: {t.data['device'].get('cpu')!r}, {t.data['date'][:10]}" for p, t in tables.items())
             + "), against the latest window (measured on "
             + ", ".join(sorted({repr(r["latency_meta"].get("machine", "?")) for r in latest.values()})) + ")", "",
             "| row | platform | predicted ms | measured median ms (error) | fastest pass ms (error) | predicted x "
             "state ratio ms (median's error) | budget ms | median / state ratio ms |", "|---|---|---|---|---|---|---|---|"]
    within, within_scaled, total, uncovered = 0, 0, 0, []
    budgets = {"rows": 0, "under": 0, "scaled_rows": 0, "scaled_under": 0}  # medians at or under the row's budget
    predictors = {p: predictor(lut_dir, p) for p in tables}
    ratios = {}  # platform -> the latest window's state ratio against these tables (same table build and fit)
    meta = max((r["latency_meta"] for r in latest.values()), key=lambda m: m["date"], default={})
    for st in meta.get("state") or []:
        t = tables.get(st["platform"])
        here = state.table_stamp(t) if t is not None else {}
        if here and (st["table"]["date"], st["table"]["fit_date"]) == (here["date"], here["fit_date"]):
            ratios[st["platform"]] = st["ratio"]
    for n in rows:
        r = firsts.get(n)
        g = row_genotype(r, out_dir) if r and n in latest else None
        if g is None:
            continue
        for p in tables:
            m = latest[n]["latency"].get(p, {})
            if not isinstance(m.get("median_ms"), (int, float)):
                continue
            try:
                spec = genotype_netspec(g, tuple(g["input"]), int(r["num_classes"]))
                pred = float(predictors[p].predict(spec)["predicted_ms"])
            except LatencyError:
                uncovered.append(f"{n} ({SHORT[p]})")
                continue
            err = {k: 100 * (m[k] - pred) / pred for k in ("median_ms", "fastest_ms") if k in m}
            total += 1
            within += abs(err["median_ms"]) <= 10
            scaled, ratio = "-", None
            if p in ratios and latest[n]["latency_meta"]["date"] == meta["date"]:
                ratio = ratios[p]
                s_err = 100 * (m["median_ms"] - pred * ratio) / (pred * ratio)
                within_scaled += abs(s_err) <= 10
                scaled = f"{pred * ratio:.2f} ({s_err:+.0f}%)"
            budget = rows[n].get("budget") if rows[n].get("platform") == p else None
            if budget is not None:
                budgets["rows"] += 1
                budgets["under"] += m["median_ms"] <= budget
                if ratio is not None:
                    budgets["scaled_rows"] += 1
                    budgets["scaled_under"] += m["median_ms"] / ratio <= budget
            lines.append(f"| {n} | {p} | {pred:.2f} | {m['median_ms']:.2f} ({err['median_ms']:+.0f}%) | "
                         + (f"{m['fastest_ms']:.2f} ({err['fastest_ms']:+.0f}%)" if "fastest_ms" in err else "-")
                         + f" | {scaled} | {_ms(budget)} | "
                         + (f"{m['median_ms'] / ratio:.2f}" if ratio is not None else "-") + " |")
    lines += ["", f"{within} of {total} measured medians within +-10% of these tables' prediction."
              + (f" Scaled by the latest window's state ratio ({', '.join(f'{p} {r:.3f}' for p, r in ratios.items())}"
                 f"): {within_scaled} within +-10%." if ratios else
                 " (No state ratio against these tables in the latest window: `--latency --state-tables`.)")
              + (f" Not covered by these tables: {', '.join(uncovered)}." if uncovered else "")]
    if budgets["rows"]:
        lines[-1] += (f" Budgets (rows measured on their search's platform): {budgets['under']} of {budgets['rows']} "
                      "medians at or under the budget"
                      + (f"; at these tables' fit state (median / state ratio): {budgets['scaled_under']} of "
                         f"{budgets['scaled_rows']}" if budgets["scaled_rows"] else "") + ".")
    return lines


def mid_row(rows: dict[str, dict], prefix: str = "torch") -> str | None:
    abl = rows.get("abl_cekd")
    return f"{prefix}{abl['budget']:g}" if abl else None


class Point(NamedTuple):
    """One row on one platform in the Pareto plot: latency median and pass range, mIoU seed mean and range."""
    platform: str
    dataset: str
    kind: str
    row: str
    ms: float
    miou: float
    miou_lo: float
    miou_hi: float
    ms_lo: float
    ms_hi: float


def _plot(points: list[Point], path: Path):
    from segdistill.viz import new_figure, save_figure

    fig = new_figure(11, 4.5, "the Pareto plot")
    markers = {"kd": "s", "search": "*", "rederived": "D", "lgcnet": "P", "random": "x", "teacher": "o"}
    for i, p in enumerate(PLATFORMS):
        ax = fig.add_subplot(1, 2, i + 1)
        for ds, colour in (("camvid", "tab:blue"), ("sb", "tab:orange")):
            for kind, mk in markers.items():
                ps = [q for q in points if q.platform == p and q.dataset == ds and q.kind == kind]
                if ps:
                    ms, miou = [q.ms for q in ps], [q.miou for q in ps]
                    ax.scatter(ms, miou, marker=mk, color=colour, s=60 if mk == "*" else 30,
                               label=f"{'CamVid' if ds == 'camvid' else 'Stanford Bg'} {kind}")
                    # the spread behind each point: seeds' lowest-highest mIoU, and passes' fastest-slowest latency
                    ax.errorbar(ms, miou, fmt="none", ecolor=colour, alpha=0.35, lw=0.8,
                                yerr=[[q.miou - q.miou_lo for q in ps], [q.miou_hi - q.miou for q in ps]],
                                xerr=[[q.ms - q.ms_lo for q in ps], [q.ms_hi - q.ms for q in ps]])
                for q in ps:
                    ax.annotate(q.row, (q.ms, q.miou), fontsize=6)
        ax.set_xlabel(f"{p} ms (measured median, batch 1, 180x240;\nbars: fastest-slowest pass)", fontsize=8)
        ax.set_ylabel("val mIoU % (seed mean; bars: seed range)")
        ax.set_title(p, fontsize=9)
        if ax.get_legend_handles_labels()[0]:  # a platform with no measured row yet stays an empty panel
            ax.legend(fontsize=6)
    save_figure(fig, path)


# ---------------------------------------------------------------------------- main
def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", default="", help="comma-separated row names, or all (see --list)")
    p.add_argument("--list", action="store_true", help="print the rows and exit")
    p.add_argument("--seeds", default="0,1", help="seeds of every retrain (searches: seed 0)")
    p.add_argument("--iters", type=int, help="smoke run: train.iters of retrains, searches and teacher (intervals follow)")
    p.add_argument("--torch-budgets", default="12,16,20,30", help="torch-cpu budgets (ms at 1x3x180x240); the middle one "
                                                                 "(sorted, index n // 2: 20 of the default) is the "
                                                                 "ablation's and Stanford Background's")
    p.add_argument("--ort-budget", type=float, default=8.0, help="the onnxruntime-cpu search's budget (ms)")
    p.add_argument("--random-archs", type=int, default=3, help="random architectures at the middle budget")
    p.add_argument("--recipe", default="best", help=f"camvid_kd.py row used as the distillation recipe ({','.join(kd.ROWS)})")
    p.add_argument("--out-dir", default=str(REPO.parent / "runs" / "camvid_search"))
    p.add_argument("--teacher", default=str(kd.TEACHER), help="the CamVid teacher checkpoint (default camvid_kd.py's)")
    p.add_argument("--lut-dir", help="latency tables lut-<platform>.json (default OUT_DIR/lut); missing ones are built "
                                     "(on a quiet machine!)")
    p.add_argument("--lgc-lut-dir", help="tables of the LGCNet rows (default: --lut-dir), e.g. a copy of the chain "
                                         "tables whose correction `segdistill latency fit --space lgcnet` refitted")
    p.add_argument("--lut-timing", default="", help="'WARMUP,RUNS,MIN_TIME' for tables built here (smoke runs only; "
                                                    "default: segdistill lut build's)")
    p.add_argument("--threads", type=int, default=2, help="threads of latency tables and measured latency")
    p.add_argument("--force", action="store_true", help="redo finished rows (and searches, random draws)")
    p.add_argument("--rederive", action="store_true",
                   help="the tables changed: derive each selected search row again from its supernet (random rows: "
                        "draw again); a row whose network changed retrains (the old run is set aside)")
    p.add_argument("--rederive-why", default="the latency tables changed since the search",
                   help="the reason --rederive records in search.json")
    p.add_argument("--latency", action="store_true", help="measure latency of every finished row, all in the same "
                                                           "round-robin passes (quiet machine)")
    p.add_argument("--latency-repeats", type=int, default=5, help="round-robin passes of --latency")
    p.add_argument("--state-tables", metavar="DIR", action="append", default=[],
                   help="with --latency (repeatable): time 3 of the networks each table in DIR was fitted on in the same passes, "
                        "and record how much slower or faster the machine runs than at the fit (the state control; "
                        "the report scales that table's predictions by it)")
    p.add_argument("--report", action="store_true", help="Markdown table (OUT_DIR/report.md) and OUT_DIR/pareto.png")
    p.add_argument("--check-tables", action="append", default=[], metavar="DIR",
                   help="with --report: predict every measured searched row again with the tables in DIR (e.g. "
                        "tables measured on this machine) beside its measured latency; repeatable")
    p.add_argument("--archive", help="folder that keeps a copy of every small result file (search.json, genotype.json, "
                                     "search_log.jsonl, report.md, result.json; no checkpoints) and restores what "
                                     "OUT_DIR lacks at start, e.g. benchmarks/results/camvid_search (committed)")
    p.add_argument("--search-one", help=argparse.SUPPRESS)
    p.add_argument("overrides", nargs="*", help="extra section.key=value: search.* ones go to the searches (and the "
                                                "random sampler's space), the others to every run")
    args = p.parse_args()
    if args.search_one:
        print(json.dumps(search_one(Path(args.search_one))))
        return
    out_dir = Path(args.out_dir)
    CAMVID_TEACHER[0] = Path(args.teacher)
    lut_dir = Path(args.lut_dir) if args.lut_dir else out_dir / "lut"
    lgc_lut_dir = Path(args.lgc_lut_dir) if args.lgc_lut_dir else lut_dir

    def lut_for(row: dict) -> Path:  # the LGCNet rows may have tables of their own (a correction fitted on them)
        return lgc_lut_dir if row.get("space") == "lgcnet" else lut_dir
    budgets = [float(b) for b in args.torch_budgets.split(",") if b]
    rows = define_rows(budgets, args.ort_budget, args.random_archs)
    if args.list:
        for n, r in rows.items():
            print(f"{n}: {r['desc']}")
        return
    if args.recipe not in kd.ROWS:
        p.error(f"unknown --recipe {args.recipe}; known: {', '.join(kd.ROWS)}")
    print(f"protocol: {PROTOCOL}\ncommand: python benchmarks/camvid_search.py {shlex.join(sys.argv[1:])}", flush=True)
    if args.archive and Path(args.archive).is_dir():
        restore_archive(Path(args.archive), out_dir)
    names = list(rows) if args.rows == "all" else [r for r in args.rows.split(",") if r]
    bad = set(names) - set(rows)
    if bad:
        p.error(f"unknown rows {sorted(bad)}; known (--list): {', '.join(rows)}")
    args.search_extra = [o for o in args.overrides if o.startswith("search.")]
    args.common = [o for o in args.overrides if not o.startswith("search.")]
    args.budget, args.search_budget, args.teacher_budget = list(RETRAIN), list(SEARCH), list(TEACHER_ITERS)
    if args.iters:
        n = args.iters
        its = [f"train.iters={n}", f"train.val_interval={n}", f"train.ckpt_interval={n}"]
        args.budget = args.teacher_budget = its + [f"optim.warmup_iters={n // 2}"]
        args.search_budget = its + [f"search.warmup_iters={n // 2}", f"optim.warmup_iters={n // 2}"]
    t = [float(v) for v in args.lut_timing.split(",") if v]
    args.lut_timing = ["--warmup", str(int(t[0])), "--runs", str(int(t[1])), "--min-time", str(t[2])] if t else []
    from segdistill.config import load_config
    from segdistill.search.hook import space_options

    args.search_space = space_options(load_config(SEARCH_CONFIG, args.search_extra).search)
    order = sorted(names, key=lambda n: rows[n]["kind"] != "teacher")  # a teacher before the rows distilled from it
    if args.rederive:
        for n in order:
            if rows[n]["kind"] in ("search", "random") and "derive_ops" not in rows[n]:
                rederive(n, rows[n], out_dir, lut_for(rows[n]), args)
    for n in order:
        for seed in map(int, args.seeds.split(",")):
            run(n, rows[n], seed, out_dir, lut_for(rows[n]), args)
    if args.latency:
        add_latency(out_dir, args.threads, args.latency_repeats, args)
    if args.report:
        print(report(out_dir, rows, [int(s) for s in args.seeds.split(",")], [Path(d) for d in args.check_tables]))


if __name__ == "__main__":
    main()
