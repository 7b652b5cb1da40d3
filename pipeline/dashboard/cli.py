"""`rassylka dashboard`: mounted by `pipeline.cli`; the web app is imported when it runs."""

from __future__ import annotations

import typer


def dashboard_command(
    host: str = typer.Option("127.0.0.1", help="Address to listen on (0.0.0.0: every interface; "
                             "the page shows business figures, so mind who can reach it)."),
    port: int = typer.Option(8050, help="Port to listen on."),
) -> None:
    """Serve the analytics dashboard: funnel, delivery, A/B variants, campaigns, opt-outs, cost.

    Reads the store of CLICKHOUSE_URL (default: the embedded chDB folder .run/clickhouse).
    Embedded chDB lets one process hold a folder: stop the sink first, or point
    CLICKHOUSE_URL at a ClickHouse server to watch while the pipeline runs.
    """
    from connectors.clickhouse import redact
    from pipeline.analytics.cli import open_client
    from pipeline.dashboard.app import plotly_js, run

    plotly_js()  # a missing dependency is said before the store is opened
    client = open_client(migrate_first=True)
    def listening() -> None:
        typer.echo(f"[rassylka] dashboard on http://{host}:{port}/ reading {redact(client.url)} "
                   f"(Ctrl-C stops it)", err=True)

    try:
        run(client, host, port, listening)
    finally:
        client.close()
