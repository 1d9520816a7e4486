"""neurocodec's built-in modality plugins.

Each module is one plugin, registered through the `neurocodec.plugins` entry-point group in
neurocodec's own packaging metadata, exactly as a third-party plugin is. They use only the
public plugin API (`neurocodec.plugin`).
"""
