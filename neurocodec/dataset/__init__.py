"""Datasets as a whole: opening one (`reader`: manifest, codecs, every shard), writing one
(`writer`, `schema`), concatenating them (`merge`), summarising one (`info`), and the user
guide's older pickled format (`legacy`). Above `format/`, the plugin system and `storage/`;
below the loaders, NWB conversion and the command line (see docs/architecture.md).
"""
