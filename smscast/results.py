"""The results dataset contract (DESIGN.md): one row per input row per attempt, under
`<results>/campaign=<id>/attempt=<n>/`. Downstream jobs read these columns; add, never rename."""

from __future__ import annotations

import polars as pl

RESULT_SCHEMA: dict[str, pl.DataType] = {
    "campaign_id": pl.String(),
    "attempt": pl.Int32(),
    "row_index": pl.Int64(),  # position in the input, so every input row is accounted for
    "recipient_id": pl.String(),
    "phone": pl.String(),  # E.164 when it could be normalised, else the input as given
    "provider": pl.String(),
    "batch_id": pl.String(),
    "idempotency_key": pl.String(),
    "status": pl.String(),
    "error_code": pl.String(),
    "error_message": pl.String(),
    "provider_message_id": pl.String(),
    "provider_batch_ref": pl.String(),  # async providers' job/batch reference, for reconciliation
    "encoding": pl.String(),
    "segments": pl.Int32(),
    "submitted_at": pl.Datetime("us", "UTC"),
}

RESULT_COLUMNS: tuple[str, ...] = tuple(RESULT_SCHEMA)

# The outcome columns a send produces for each row it handled (joined back onto the plan by row_index).
OUTCOME_SCHEMA: dict[str, pl.DataType] = {
    "row_index": pl.Int64(),
    "status": pl.String(),
    "error_code": pl.String(),
    "error_message": pl.String(),
    "provider_message_id": pl.String(),
    "provider_batch_ref": pl.String(),
    "submitted_at": pl.Datetime("us", "UTC"),
}


def conform(df: pl.DataFrame) -> pl.DataFrame:
    """Select and cast to the results schema, filling absent columns with nulls."""
    return df.select(
        [
            (pl.col(name) if name in df.columns else pl.lit(None)).cast(dtype).alias(name)
            for name, dtype in RESULT_SCHEMA.items()
        ]
    )


def attempt_path(results: str, campaign_id: str, attempt: int) -> str:
    return f"{results.rstrip('/')}/campaign={campaign_id}/attempt={attempt}"
