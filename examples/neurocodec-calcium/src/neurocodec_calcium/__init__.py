"""neurocodec-calcium: calcium-imaging traces as a neurocodec modality.

Installing this distribution is all a user does: neurocodec discovers the plugin through the
`neurocodec.plugins` entry point declared in its pyproject.toml. Importing this package does
no registration of its own.
"""

from neurocodec_calcium.codec import CalciumDeltaCodec

__version__ = "0.1.0"
__all__ = ["CalciumDeltaCodec", "__version__"]
