"""Data paths written in a config file resolve from that file's directory, so a config runs from any directory.

A path given on the command line stays relative to the current directory, as a shell user expects.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

DATA_PATH_KEYS = ("train_file", "val_file", "predict_file", "skip_list")
PROJECT_DIR = Path(__file__).resolve().parents[2]  # the checkout (or site-packages) holding sft_lightning/


def resolve_config_paths(config: Any) -> None:
    """Rewrite, in the parsed ``config`` of one subcommand, the relative data paths its config files set."""
    data = config.get("data") if hasattr(config, "get") else None
    if data is None:
        return
    for config_file in config.get("config") or []:
        written = _data_section(config_file)
        directory = _config_file_path(config_file).parent
        for key in DATA_PATH_KEYS:
            if key in written and written[key] is not None and data.get(key) == written[key]:
                data[key] = resolve_path(str(written[key]), directory)
        extra = data.get("extra_val_files")
        for name, path in (written.get("extra_val_files") or {}).items():
            if isinstance(extra, dict) and extra.get(name) == path:
                extra[name] = resolve_path(str(path), directory)


def resolve_path(path: str, config_dir: Path) -> str:
    """``path`` from ``config_dir``, else the current directory (configs written before this rule), else the project
    directory (shipped data); unchanged where it is absolute or found nowhere (the loader's error then names it)."""
    candidate = Path(path).expanduser()
    if candidate.is_absolute():
        return path
    for base in (config_dir, Path.cwd(), PROJECT_DIR):
        if (base / candidate).exists():
            return str((base / candidate).resolve())
    return path


def _data_section(config_file: Any) -> Mapping[str, Any]:
    """The ``data`` section of a config file as written (its ``init_args`` form included); empty when unreadable."""
    try:
        content = yaml.safe_load(_config_file_path(config_file).read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return {}
    data = content.get("data") if isinstance(content, dict) else None
    if isinstance(data, dict) and isinstance(data.get("init_args"), dict):
        data = data["init_args"]
    return data if isinstance(data, dict) else {}


def _config_file_path(config_file: Any) -> Path:
    """A ``--config`` entry as an absolute path (jsonargparse's ``Path`` keeps it in ``absolute``)."""
    absolute = getattr(config_file, "absolute", None)
    return Path(absolute if isinstance(absolute, str) else str(config_file)).resolve()
