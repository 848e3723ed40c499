"""Prefect flows and tasks: thin wrappers that call the stages in `is4.pipeline`."""
