"""The image family: categories, prompts, Stable Diffusion generation, the CLIP pre-screen."""
