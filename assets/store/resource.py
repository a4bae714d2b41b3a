"""The `lensless_home` Dagster resource: which `Home` the assets, checks and sensors use.

Swap it in a test or a deployment (`LenslessHome(path=...)`) instead of setting
`LENSLESS_HOME`; left empty, it is `$LENSLESS_HOME`, else `./.lensless`.

While a run's step uses it, it holds the home's lock shared (`store.lock.step_lock`), so the
step waits for a `lensless` command that is writing the home, and the command waits for the
step; a command's own in-process runs pass through. Sensors get no lock from it.
"""

from contextlib import ExitStack

import dagster as dg
from pydantic import PrivateAttr

from assets.store.files import Home
from assets.store.lock import step_lock


class LenslessHome(dg.ConfigurableResource):
    """The root of everything the pipeline writes (a folder or an fsspec URL)."""

    path: str = ""  # empty: $LENSLESS_HOME, else ./.lensless
    _held: ExitStack = PrivateAttr(default_factory=ExitStack)

    def get(self) -> Home:
        """The `Home` this resource names."""
        return Home.at(self.path) if self.path else Home.from_env()

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        run = context.dagster_run
        if run is not None:  # a run's step (a sensor's evaluation has no run)
            self._held.enter_context(step_lock(self.get(), f"Dagster run {run.run_id[:8]} ({run.job_name})"))

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        self._held.close()
