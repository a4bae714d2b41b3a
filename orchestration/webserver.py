"""The Dagster UI with a Host-header check: Dagster's own webserver app behind Starlette's
`TrustedHostMiddleware`.

Dagster's webserver answers any `Host` header, so a web page the user visits can reach a UI
bound to loopback by DNS rebinding (its name re-resolves to 127.0.0.1; the browser then
sends the attacker's name as `Host`). Here a request whose `Host` is not an allowed name is
answered 400 before it reaches Dagster. Allowed: `localhost`, `127.0.0.1`, `::1`, the bind
address, and the names in `$LENSLESS_ALLOWED_HOSTS` (comma-separated; add the name a reverse
proxy forwards). `lensless dev` runs this beside `dagster-daemon`.

    python -m orchestration.webserver [-w workspace.yaml] [-h 127.0.0.1] [-p 3000]
"""

from __future__ import annotations

import argparse
import os

ALLOWED_ENV = "LENSLESS_ALLOWED_HOSTS"


def allowed_hosts(bind: str) -> list[str]:
    """Host names (no port) the UI answers for."""
    extra = [h.strip() for h in os.environ.get(ALLOWED_ENV, "").split(",") if h.strip()]
    return sorted({"localhost", "127.0.0.1", "::1", "[::1]", bind, *extra})


def build_app(context, bind: str):
    """Dagster's ASGI app for a workspace context, behind the Host check."""
    from dagster_webserver.app import create_app_from_workspace_process_context
    from starlette.middleware.trustedhost import TrustedHostMiddleware

    app = create_app_from_workspace_process_context(context, "")
    return TrustedHostMiddleware(app, allowed_hosts=allowed_hosts(bind))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], add_help=False)
    p.add_argument("--help", action="help")
    p.add_argument("-w", "--workspace", default="workspace.yaml")
    p.add_argument("-h", "--host", default="127.0.0.1")
    p.add_argument("-p", "--port", type=int, default=3000)
    a = p.parse_args(argv)

    import uvicorn
    from dagster import DagsterInstance
    from dagster._core.workspace.context import WorkspaceProcessContext
    from dagster._core.workspace.load_target import ModuleTarget, WorkspaceFileTarget
    from dagster_webserver.version import __version__

    target = (WorkspaceFileTarget(paths=[a.workspace]) if os.path.exists(a.workspace) else
              ModuleTarget(module_name="orchestration.definitions", attribute=None, working_directory=None,
                           location_name=None))
    with WorkspaceProcessContext(DagsterInstance.get(), workspace_load_target=target, version=__version__) as ctx:
        uvicorn.run(build_app(ctx, a.host), host=a.host, port=a.port, log_level="warning")


if __name__ == "__main__":
    main()
