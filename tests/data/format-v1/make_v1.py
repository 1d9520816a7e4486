"""Made with neurocodec at 348c65f (before issue 14): the format-v1 reference datasets."""
import sys
from pathlib import Path
import numpy as np
sys.path.insert(0, "/tmp/oldwt/tests")
import nwbfiles as nf
from neurocodec import create_shards_from_arrays
from neurocodec.nwb.converter import NWBToWebDatasetConverter
import neurocodec
assert neurocodec.__file__.startswith("/tmp/oldwt"), neurocodec.__file__
import neurocodec_plugins
assert neurocodec_plugins.__file__.startswith("/tmp/oldpath"), neurocodec_plugins.__file__
out = Path(sys.argv[1])
rng = np.random.default_rng(14)
nwb = nf.new_file(identifier="v1ref", session_id="v1ref", subject_id="m14")
t0 = 1.2345
nf.add_units(nwb, nf.random_spikes(rng, 3, t0, t0 + 4.0, mean=40), [[[t0, t0 + 3.0]], [[t0 + 0.5, t0 + 4.0]], [[t0, t0 + 4.0]]])
raw = rng.integers(-2000, 2000, size=(1000, 4), dtype=np.int16)
es = nf.electrical_series(nwb, "lfp", raw, rate=250.0, starting_time=t0, conversion=1.95e-7, offset=-3.5e-5,
                          channel_conversion=np.array([1.0, 0.5, 2.0, 1.25], dtype=np.float32))
nf.add_lfp(nwb, es)
path = nf.write(nwb, out / "session.nwb")
with NWBToWebDatasetConverter(out / "nwb", shard_size=8, modalities=["spikes", "lfp"], bin_size_ms=20.0,
                              sequence_length=25, overlap=0.5, compression="zstd", progress=False) as c:
    c.convert_nwb_files([path])
    print(c.finalize()["samples"])
create_shards_from_arrays(out / "arrays", {"eeg": rng.standard_normal((6, 16, 3)).astype(np.float32),
                                           "spikes": rng.integers(0, 3, (6, 10, 2)).astype(np.int64)},
                          shard_size=4, metadata=[{"i": i} for i in range(6)], progress=False)
