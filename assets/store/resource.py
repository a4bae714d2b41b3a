"""The `lensless_home` Dagster resource: which `Home` the assets, checks and sensors use.

Swap it in a test or a deployment (`LenslessHome(path=...)`) instead of setting
`LENSLESS_HOME`; left empty, it is `$LENSLESS_HOME`, else `./.lensless`.
"""

import dagster as dg

from assets.store.files import Home


class LenslessHome(dg.ConfigurableResource):
    """The root of everything the pipeline writes (a folder or an fsspec URL)."""

    path: str = ""  # empty: $LENSLESS_HOME, else ./.lensless

    def get(self) -> Home:
        """The `Home` this resource names."""
        return Home.at(self.path) if self.path else Home.from_env()
