"""pocketlm: pick, build, measure and shrink small language models."""

__version__ = "0.1.0"
