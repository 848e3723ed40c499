"""Shared pieces of the model stages: model resolution and loading, the chat LLM, batching, ffmpeg."""
