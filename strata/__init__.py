"""The `strata` command: every CLI command, above the packages it drives (blocks <- ingest,
compactor, retention, query_gateway <- strata)."""
