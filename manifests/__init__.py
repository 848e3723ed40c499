"""The data contract: typed table schemas, atomic Parquet I/O, id rules and provenance."""
