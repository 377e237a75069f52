"""Readers for recipients sources (files, S3, SQL), used by tasks/load.py, and their shared names."""

from __future__ import annotations

import re

ROW_INDEX = "row_index"
PHONE = "phone"
PHONE_RAW = "phone_raw"
FORMATS = {".csv": "csv", ".parquet": "parquet", ".ndjson": "ndjson", ".jsonl": "ndjson"}
SUPPORTED = ".csv, .parquet, .ndjson, .jsonl, or a directory / s3:// prefix (ending in /) of such files"
SNIFF_BYTES = 64 * 1024
NAME_CHARS = 40  # a column name quoted in a message is cut to this
NAME_SCAN = 1024  # names longer than this are data, not names: never regex-scanned in full
SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")
