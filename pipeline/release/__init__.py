"""The reproducible IS4 release: official layout, card, Croissant, checksums, archive, verification."""
