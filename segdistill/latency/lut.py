"""Latency lookup tables: a versioned JSON file of measured block latencies for one platform and thread count.

Table format (``format`` = ``segdistill-latency-table``, ``version`` = 1)::

    {
      "format": "segdistill-latency-table", "version": 1,
      "platform": "onnxruntime-cpu",                 # the plug-in that measured it
      "platform_info": {"onnxruntime": "1.31.1", "onnx": "1.23.2", "torch": "2.13.0", "exporter": "auto"},
      "threads": 2,                                  # CPU threads of every measurement (torch's and the runtime's)
      "timing": {"warmup": 10, "min_runs": 50, "min_time": 0.5},   # per entry: warm-up, >= runs AND >= seconds
      "device": {"cpu": "...", "cpu_count": 2, "machine": "x86_64", "os": "...", "gpu": "..."?},
      "versions": {"python": "3.11.9", "torch": "2.13.0+cpu", "onnxruntime": "1.31.1"},
      "date": "2026-11-21T19:30:00+00:00",           # of the last measurement added
      "units": "ms",
      "built_for": ["model deeplabv3_mobilenetv2 @ 1x3x180x240", ...],   # what it was built for (informational)
      "entries": {                                   # one per key (block keys: standalone.BlockKey)
        "mbconv:16-24:90x120:k3s2d1e6:relu6": {"median_ms": 0.812, "p90_ms": 0.85, "min_ms": 0.79, "runs": 50,
                                               "io": 518400},   # input + output elements (for the correction)
        "fixed:segformer_mitb0|w1|osd|k11|180x240:head": {...},      # a zoo model's part measured whole
        ...
      },
      "correction": {"model": "linear", "coef": {"raw": 1.08, "const": 0.21}, ...}   # optional, see predictor.py
    }

A table is used unchanged on any machine. Missing keys are measured on demand only when the table is *local*: its
platform is available here and its device (CPU model, core count, GPU) is this machine's; otherwise the missing keys
are an error that names them (and how to measure them on the table's device).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Sequence

from ..errors import LatencyError
from . import standalone as core


class MissingBlocksError(LatencyError):
    """Keys absent from a table that cannot be measured here. ``keys`` lists them."""

    def __init__(self, message: str, keys: Sequence[str]):
        super().__init__(message)
        self.keys = list(keys)


_REQUIRED = ("platform", "threads", "timing", "device", "versions", "date", "entries")


def validate_table(data, source: str = "table") -> dict:
    """Check a loaded table's format, version and fields; return it. Each problem is a LatencyError naming
    ``source``."""
    rebuild = "rebuild it with `segdistill lut build`"
    if not isinstance(data, dict) or data.get("format") != core.TABLE_FORMAT:
        fmt = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise LatencyError(f"{source} is not a segdistill latency table (format {fmt!r}, expected "
                           f"{core.TABLE_FORMAT!r}); {rebuild}")
    version = data.get("version")
    if not isinstance(version, int) or version > core.TABLE_VERSION:
        raise LatencyError(f"{source} has table format version {version!r}; this segdistill reads version "
                           f"{core.TABLE_VERSION} (upgrade segdistill, or {rebuild})")
    missing = [f for f in _REQUIRED if f not in data]
    if missing:
        raise LatencyError(f"{source} lacks the field(s) {missing}; {rebuild}")
    bad = [k for k, v in data["entries"].items()
           if not isinstance(v, dict) or not isinstance(v.get("median_ms"), (int, float))]
    if bad:
        raise LatencyError(f"{source}: {len(bad)} entries have no numeric median_ms, e.g. {bad[:3]}; {rebuild}")
    return data


class LatencyTable:
    """A loaded (or new) table: lookups, on-demand measurement of missing keys, merging, saving."""

    def __init__(self, data: dict, path: str | Path | None = None):
        self.data = validate_table(data, str(path or "table"))
        self.path = Path(path) if path else None

    # ------------------------------------------------------------------ construction and files
    @classmethod
    def new(cls, platform: str, threads: int, timing: dict | None = None) -> "LatencyTable":
        return cls(core.new_table(platform, threads, timing))

    @classmethod
    def load(cls, path) -> "LatencyTable":
        path = Path(path)
        if not path.is_file():
            raise LatencyError(f"latency table {path} does not exist; build one with `segdistill lut build`")
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise LatencyError(f"{path} is not valid JSON ({e}); rebuild it with `segdistill lut build`") from None
        return cls(data, path)

    def save(self, path=None) -> Path:
        path = Path(path or self.path)
        core.write_json_atomic(self.data, path)
        self.path = path
        return path

    # ------------------------------------------------------------------ facts
    @property
    def platform(self) -> str:
        return self.data["platform"]

    @property
    def threads(self) -> int:
        return int(self.data["threads"])

    @property
    def entries(self) -> dict:
        return self.data["entries"]

    @property
    def correction(self) -> dict | None:
        return self.data.get("correction")

    @correction.setter
    def correction(self, value: dict | None):
        self.data["correction"] = value

    def __contains__(self, key) -> bool:
        return str(key) in self.entries or core.is_free(str(key))

    def __len__(self) -> int:
        return len(self.entries)

    def local_problem(self) -> str | None:
        """None when missing keys can be measured here (same platform available, same device); else why not."""
        if self.platform not in core.PLATFORMS:
            return f"its platform {self.platform!r} is not registered here (load its plug-in with --plugin)"
        reason = core.PLATFORMS[self.platform].available()
        if reason:
            return f"its platform {self.platform} is not available here: {reason}"
        here, there = core.machine_info(), self.data["device"]
        for field in ("cpu", "cpu_count", "gpu"):
            if here.get(field) != there.get(field):
                return f"it was built on another device ({field} {there.get(field)!r}, here {here.get(field)!r})"
        return None

    def device_note(self) -> str:
        """Which device the table's figures are for, beside this machine: said with every prediction, so a figure
        from a table built elsewhere is never taken for this machine's."""
        d, here = self.data["device"], core.machine_info()
        same = all(here.get(f) == d.get(f) for f in ("cpu", "cpu_count", "gpu"))
        table = f"{d.get('cpu')!r} ({d.get('cpu_count')} CPUs{', ' + d['gpu'] if d.get('gpu') else ''}), {self.data['date']}"
        if same:
            return f"table measured on this device: {table}"
        return (f"table measured on ANOTHER device: {table}; this machine is {here.get('cpu')!r} "
                f"({here.get('cpu_count')} CPUs{', ' + here['gpu'] if here.get('gpu') else ''}). The figures below are "
                "for the table's device, not this one (build a table here with `segdistill lut build`)")

    def space_note(self, space: str) -> str | None:
        """A warning when the table's correction was fitted on random networks of another search space
        (``segdistill latency fit --space``) than ``space``, None when it fits or says nothing of a space. Spaces
        differ in how their networks run against the sum of their blocks (RESULTS.md: on CamVid, the chain-fitted
        torch-cpu correction predicted LGCNet networks about 30% too fast)."""
        fitted = (self.correction or {}).get("space")
        if not fitted or fitted == space:
            return None
        return (f"the {self.platform} table's correction was fitted on random networks of the {fitted!r} space, and "
                f"this search is in {space!r}: its predictions may be off by tens of percent. Fit one on this space: "
                f"copy the table and run `segdistill latency fit --lut COPY --space {space} --space-option ...`")

    def missing(self, keys: Iterable[str]) -> list[str]:
        return [k for k in dict.fromkeys(str(k) for k in keys) if k not in self]

    # ------------------------------------------------------------------ lookups
    def ensure(self, keys: Iterable[str], measure: bool = True, progress: bool = True,
               isolate: bool = False) -> list[str]:
        """Make every key present: measure the missing ones when the table is local (and ``measure``), else raise
        :class:`MissingBlocksError` naming them. Returns the keys measured (save the table to keep them)."""
        missing = self.missing(keys)
        if not missing:
            return []
        why = "measuring on demand is off" if not measure else self.local_problem()
        if why:
            shown = "\n  ".join(missing[:12]) + (f"\n  ... and {len(missing) - 12} more" if len(missing) > 12 else "")
            where = self.path or "the table"
            raise MissingBlocksError(
                f"{where} ({self.platform}, {self.threads} threads, built on {self.data['device'].get('cpu')!r}) lacks "
                f"{len(missing)} block(s) and {why}:\n  {shown}\nMeasure them on that device: write them with "
                f"`segdistill lut blocks ...`, run `python standalone.py --blocks blocks.json --platform "
                f"{self.platform} --threads {self.threads} --out {Path(str(where)).name}` there, and use that table.",
                missing)
        return core.measure_into(self.data, missing, isolate=isolate, progress=progress)

    def io_elems(self, key) -> int:
        """Input + output elements of a key (recorded at measurement; derived from a library key otherwise)."""
        key = str(key)
        entry = self.entries.get(key, {})
        if "io" in entry or key.startswith(core.FIXED_PREFIX):
            return int(entry.get("io", 0))
        bk = core.BlockKey.parse(key)
        c, h, w = bk.out_shape()
        return sum(ci * hi * wi for ci, hi, wi in bk.input_shapes()) + c * h * w

    def latency(self, key) -> float:
        """Median latency (ms) of a key present in the table (0 for free keys)."""
        key = str(key)
        if core.is_free(key):
            return 0.0
        if key not in self.entries:
            raise MissingBlocksError(f"{self.path or 'the table'} has no entry {key}", [key])
        return float(self.entries[key]["median_ms"])

    def merge(self, other: "LatencyTable") -> int:
        """Add ``other``'s entries that this table lacks (same platform and threads only); returns how many."""
        if (other.platform, other.threads) != (self.platform, self.threads):
            raise LatencyError(f"cannot merge a {other.platform} table ({other.threads} threads) into a "
                               f"{self.platform} table ({self.threads} threads)")
        new = {k: v for k, v in other.entries.items() if k not in self.entries}
        self.entries.update(new)
        return len(new)

    def note_built_for(self, what: str) -> None:
        if what not in self.data.setdefault("built_for", []):
            self.data["built_for"].append(what)

    def summary(self) -> str:
        d = self.data
        return (f"{self.path or 'table'}: {self.platform}, {self.threads} threads, {len(self.entries)} entries, "
                f"device {d['device'].get('cpu')!r} ({d['device'].get('cpu_count')} CPUs), torch "
                f"{d['versions'].get('torch')}, onnxruntime {d['versions'].get('onnxruntime')}, {d['date']}"
                + (f", correction {d['correction']['model']}" if d.get("correction") else ""))
