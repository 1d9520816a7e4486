"""neurocodec-photometry: fiber-photometry traces as a neurocodec modality.

Installing this distribution is all a user does: neurocodec discovers the plugin through the
`neurocodec.plugins` entry point declared in its pyproject.toml. Importing this package does
no registration of its own.
"""

from neurocodec_photometry.codec import PhotometryDeltaCodec

__version__ = "0.1.0"
__all__ = ["PhotometryDeltaCodec", "__version__"]
