"""Run settings as asset metadata, shared by several stages.

Each configurable asset records its effective run config (defaults filled in) under the
`settings` metadata key; the report's provenance (`assets/evaluation/provenance.py`) and the
command line's up-to-date check (`orchestration/runner.py`) read it back.
"""

import dagster as dg

SETTINGS = "settings"  # the metadata key that holds an asset's effective run config


def settings_metadata(config: dg.Config) -> dict:
    """The `settings` metadata entry of an asset run with `config`."""
    return {SETTINGS: dg.MetadataValue.json(config.model_dump())}
