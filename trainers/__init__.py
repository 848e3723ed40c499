"""Trainers over the manifests: datasets (`data`), the engine (`engine`), methods (`method.METHODS`), heatmaps for
`is4 eval` (`predict`)."""
