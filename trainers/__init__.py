"""Trainers over the manifests: datasets (`data`), the engine (`engine`), methods (`registry.METHODS`), heatmaps for
`is4 eval` (`predict`)."""
