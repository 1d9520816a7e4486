"""`Dataset` names its manifest when a field's codec config is rejected. Needs the reader to pass
`source=` (the manifest path) to `Registry.codec`."""

from __future__ import annotations

import re

import pytest

from neurocodec.errors import UnknownCodecError
from neurocodec.dataset.reader import Dataset
from test_registry_errors import bad_config_dataset  # noqa: F401


def test_dataset_names_its_manifest_and_the_field(bad_config_dataset):  # noqa: F811
    manifest = re.escape(str(bad_config_dataset / ".neurocodec" / "dataset_metadata.json"))
    with pytest.raises(UnknownCodecError, match=rf"^{manifest}: codec 'npy' \(field 'x'\) of plugin 'generic' "
                                                r"rejects its config"):
        Dataset(bad_config_dataset)
