"""The ingest family: VGGSound csv → validated rows → subset → section downloads → one-pass extraction."""
