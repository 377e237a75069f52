"""The delivery-report receiver (`smscast dlr serve`): providers post their DLRs here; each is recorded as a
REPORT_SCHEMA row under `<results>/_dlr/` (smscast.results.dlr_inbox) before it is acknowledged.

    parse.py     one parser per route, with the tables from each provider's states to DeliveryStatus
    writer.py    the group commit: batches of reports made durable before they are answered
    wal.py       the write-ahead log: batches fdatasynced on local disk, rolled into Parquet parts
    app.py       the Starlette app: routes, shared-secret check, answers
    compact.py   merging the inbox's older parts into one, so that reconcile reads a few objects, not thousands
    cli.py       the `dlr` typer app (`serve`, `roll`, `compact`)
    launcher.py  the receiver in a subprocess, for tests and benchmarks
"""
