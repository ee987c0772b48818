"""The configs shipped with segdistill, and how a config argument finds them.

The YAML files live in this package folder, so a non-editable ``pip install`` has them too. In a checkout,
``configs/`` at the repository root is a symlink to this folder, so the README's ``configs/camvid-cpu.yaml`` is
the same file. :func:`resolve_config_path` turns a config argument into a file::

    resolve_config_path("my.yaml")                  # an existing file: itself
    resolve_config_path("camvid-cpu")               # a shipped config by name: .../segdistill/configs/camvid-cpu.yaml
    resolve_config_path("camvid-cpu.yaml")          # the same
    resolve_config_path("configs/camvid-cpu.yaml")  # the README's spelling, from any working directory: the same
"""
from __future__ import annotations

import os
from pathlib import Path

CONFIG_DIR = Path(__file__).parent
SUFFIX = ".yaml"


def shipped_configs() -> list[str]:
    """The names of the shipped configs (file stems, sorted): what :func:`resolve_config_path` accepts by name."""
    return sorted(p.stem for p in CONFIG_DIR.glob(f"*{SUFFIX}"))


def resolve_config_path(spec: str | os.PathLike) -> Path:
    """The config file that ``spec`` (a command-line config argument) means.

    1. An existing file is itself (a local file wins over a shipped config of the same name).
    2. Otherwise a bare name, with or without ``.yaml`` (``camvid-cpu``, ``camvid-cpu.yaml``), or the README's
       ``configs/<name>.yaml``, that names a shipped config is the packaged file.
    3. Anything else is returned as ``Path(spec)``, unchanged, for the caller to report as not found
       (:func:`shipped_configs` lists the names for that message).
    """
    path = Path(spec)
    if path.is_file():
        return path
    if path.parent.as_posix() in (".", "configs"):
        name = path.name[: -len(SUFFIX)] if path.name.endswith(SUFFIX) else path.name
        if name and name in shipped_configs():
            return CONFIG_DIR / f"{name}{SUFFIX}"
    return path
