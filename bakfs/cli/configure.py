"""`bakfs config show` and `bakfs config check`."""

from __future__ import annotations

import argparse
import json
from typing import Any

from bakfs import config as config_module
from bakfs.catalog.discovery import find_backups
from bakfs.config import Config, Secret
from bakfs.store import open_store


def run(args: argparse.Namespace, config: Config) -> int:
    if args.config_command == "show":
        return show(config, as_json=args.json)
    return check(config)


def _shown(value: Any) -> Any:
    return "****" if isinstance(value, Secret) else value


def show(config: Config, as_json: bool = False) -> int:
    """Every option with its effective value and source; secrets masked."""
    rows = config_module.describe(config)
    if as_json:
        doc = {
            "file": str(config.path) if config.path else None,
            "store": "s3" if config.uses_s3 else "local",
            "options": {info.key: {"value": _shown(value), "source": source, "env": info.env}
                        for info, value, source in rows},
        }
        print(json.dumps(doc, indent=2))
        return 0
    print(f"# configuration file: {config.path or 'none (defaults and environment only)'}")
    print(f"# store in use: {'S3' if config.uses_s3 else 'embedded local store'}")
    section = None
    for info, value, source in rows:
        if info.section != section:
            section = info.section
            print(f"\n[{section}]")
        if value is None:
            line = f"# {info.name} (unset)"
        elif isinstance(value, Secret):
            line = f'{info.name} = "****"'
        else:
            line = f"{info.name} = {json.dumps(value)}"
        print(f"{line:<56} # {source}")
    return 0


def check(config: Config) -> int:
    """Open the store, make sure the bucket is there, and list it once."""
    store = open_store(config)
    try:
        store.ensure_bucket()
        backups = find_backups(store)
    finally:
        store.close()
    print(f"ok: {store.description} is reachable and holds {len(backups)} complete backups")
    return 0
