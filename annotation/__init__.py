"""FiftyOne review sessions, SAM and grounding backends (issue 4)."""
