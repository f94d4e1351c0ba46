"""The export error every GGUF step raises."""


class GGUFExportError(ValueError):
    """A model or request that the GGUF writer cannot honour; the message says why and what to do."""
