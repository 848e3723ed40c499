"""Stage logic as plain functions (no Prefect, no FiftyOne): they read and write manifests and files."""
