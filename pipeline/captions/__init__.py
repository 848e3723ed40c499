"""The LLM-guidance captions: BLIP-2 image captions, audio captions, the LLM's sounding-object phrase."""
