"""Vocabularies (issue 15, point 3): global unit, channel and ROI ids, numbered append-only.

Real NWB files (tests/nwbfiles.py, the calcium tests' ophys files) converted with
NWBToWebDatasetConverter; expected ids are read from the files with h5py, never from the code
under test.
"""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import attrs
import h5py
import numpy as np
import pytest

from neurocodec import Dataset, DatasetError, SpikeTokens, Vocabulary, create_webdataset_dataloader
from neurocodec.dataset.reader import read_manifest
from neurocodec.nwb.converter import NWBToWebDatasetConverter
from nwbfiles import simple_session
from test_nwb_calcium import ORDER, ROI_IDS, ophys_file

pytestmark = pytest.mark.filterwarnings(
    "ignore:.*oriented incorrectly and should be transposed:UserWarning",
    "ignore:The linked table for DynamicTableRegion 'rois' does not share an ancestor:UserWarning",
    "ignore:.*Your data may be transposed:UserWarning",
)
V1 = Path(__file__).parent / "data" / "format-v1"


def convert(out: Path, files, *, length: int = 50, modalities=("spikes", "lfp")) -> Path:
    """Convert `files` (20 ms bins, `length` bins, no overlap); the dataset's path."""
    converter = NWBToWebDatasetConverter(out, 64, list(modalities), 20.0, length, 0.0, progress=False, fsync=False)
    converter.convert_nwb_files([str(f) for f in files])
    converter.finalize()
    return out


def file_ids(path: Path, table: str) -> tuple[str, list[int]]:
    """(identifier, row ids of `table`) straight from the HDF5 file."""
    with h5py.File(path, "r") as f:
        return f["identifier"][()].decode(), f[f"{table}/id"][:].tolist()


def expected_ids(path: Path, table: str = "/units", name: str = "units") -> list[str]:
    identifier, rows = file_ids(path, table)
    return [f"{identifier}/{name}/{i}" for i in rows]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    """Files a (3 units), b (4 units), c (2 units): unit ids 0.. in each; dataset one holds a
    and b, two holds c, again holds a converted again with other windows from another folder."""
    root = tmp_path_factory.mktemp("vocab")
    files = {"a": simple_session(root / "a.nwb", seed=0, units=3), "b": simple_session(root / "b.nwb", seed=1, units=4),
             "c": simple_session(root / "c.nwb", seed=2, units=2)}
    (root / "elsewhere").mkdir()
    moved = Path(shutil.copy(files["a"], root / "elsewhere" / "a.nwb"))
    return {**files, "one": convert(root / "one", [files["a"], files["b"]]), "two": convert(root / "two", [files["c"]]),
            "again": convert(root / "again", [moved], length=25)}


def sessions(path: Path) -> dict[str, dict]:
    return read_manifest(path).extra["sessions"]


def key_of(dataset: Path, file: Path) -> str:
    (key,) = [k for k, s in sessions(dataset).items() if s["file"] == file.name]
    return key


def test_manifest_gives_every_unit_and_channel_a_global_id(data):
    everything = []
    for dataset, file in (("one", "a"), ("one", "b"), ("two", "c")):
        record = sessions(data[dataset])[key_of(data[dataset], data[file])]
        identifier, units = file_ids(data[file], "/units")
        assert record["ids"]["spikes"]["unit_ids"] == units and units[0] == 0  # local ids collide
        assert record["id_prefixes"] == {"spikes": {"unit_ids": f"{identifier}/units/"},
                                         "lfp": {"channel_ids": f"{identifier}/electrodes/"}}
        globals_ = [record["id_prefixes"]["spikes"]["unit_ids"] + str(u) for u in units]
        assert globals_ == expected_ids(data[file])
        everything += globals_
    assert len(everything) == len(set(everything)) == 3 + 4 + 2


def test_vocabulary_is_deterministic_whatever_the_order_path_or_machine(data):
    forward = Vocabulary.build([data["one"], data["two"]])
    backward = Vocabulary.build([Dataset(data["two"]), read_manifest(data["one"])])
    expected = sorted([expected_ids(data[f]) for f in "abc"])  # by recording, then column order
    assert forward.ids == backward.ids == tuple(sum(expected, []))
    assert forward.state_dict() == backward.state_dict()
    # The same file converted again elsewhere (another session key, other windows): the same ids.
    again = Vocabulary.build(data["again"])
    assert again.sessions != Vocabulary.build(data["one"]).sessions
    assert again.ids == tuple(expected_ids(data["a"]))


def test_growth_is_append_only_and_keeps_old_indices(data):
    vocabulary = Vocabulary.build(data["two"])
    old, key_c = vocabulary.ids, key_of(data["two"], data["c"])
    before = vocabulary.unit_index(key_c).copy()
    added = vocabulary.add(data["one"])
    assert vocabulary.ids[: len(old)] == old and vocabulary.ids[len(old):] == tuple(added)
    assert len(added) == 7 and np.array_equal(vocabulary.unit_index(key_c), before)
    key_b = key_of(data["one"], data["b"])
    assert set(vocabulary.unit_index(key_b)) <= set(range(len(old), len(vocabulary)))
    assert vocabulary.add(data["again"]) == [] and len(vocabulary) == 9  # a known recording adds nothing
    assert vocabulary.unit_index(key_of(data["again"], data["a"])).tolist() == \
        vocabulary.unit_index(key_of(data["one"], data["a"])).tolist()


def test_a_checkpoint_keeps_its_numbering_when_data_is_added(data):
    checkpoint = Vocabulary.build(data["two"]).state_dict()
    vocabulary = Vocabulary.build([data["one"], data["two"]])  # numbered differently on its own
    assert vocabulary.ids[:2] != tuple(checkpoint["ids"])
    vocabulary.load_state_dict(checkpoint)
    assert vocabulary.ids[:2] == tuple(checkpoint["ids"]) and len(vocabulary) == 9
    assert vocabulary.unit_index(key_of(data["two"], data["c"])).tolist() == [0, 1]
    rest = sorted(expected_ids(data["a"]) + expected_ids(data["b"]))
    assert sorted(vocabulary.ids[2:]) == rest


def test_save_and_load_round_trip(data, tmp_path):
    vocabulary = Vocabulary.build([data["one"], data["two"]])
    target = tmp_path / "vocab.json"
    vocabulary.save(target)
    assert [p.name for p in tmp_path.iterdir()] == ["vocab.json"]  # no temp file left beside it
    assert json.loads(target.read_text())["ids"] == list(vocabulary.ids)
    loaded = Vocabulary.load(target, [data["two"], data["one"]])
    assert loaded.ids == vocabulary.ids
    for key in vocabulary.sessions:
        assert np.array_equal(loaded.unit_index(key), vocabulary.unit_index(key))
    assert pickle.loads(pickle.dumps(loaded)).ids == loaded.ids  # travels to DataLoader workers
    channels = Vocabulary.build(data["one"], kind="channels")
    with pytest.raises(ValueError, match="'channels'"):
        vocabulary.load_state_dict(channels.state_dict())
    target.write_text('{"format": "something else"}')
    with pytest.raises(ValueError, match="vocab.json is not a neurocodec vocabulary"):
        Vocabulary.load(target)


def test_unit_index_matches_the_session_records_and_the_windows(data):
    vocabulary = Vocabulary.build([data["one"], data["two"]])
    events = Dataset(data["one"], decode={"spikes": {"as": "events"}})
    for index in range(len(events)):
        sample = events[index]
        key = sample["metadata"]["session"]
        indices = vocabulary.unit_index(key)
        assert indices.dtype == np.int64 and len(indices) == sample["spikes"].unit_count
        record = sessions(data["one"])[key]
        file = data["a"] if record["file"] == "a.nwb" else data["b"]
        assert [vocabulary.ids[i] for i in indices] == expected_ids(file)
    with pytest.raises(KeyError, match="attach its dataset"):
        vocabulary.unit_index("not-a-session")


@pytest.mark.multiprocess
def test_tokens_in_dataloader_workers_carry_vocabulary_indices(data):
    """The spike tokens' collate looks units up through `unit_index` in 2 workers: every token
    of a window names, through the vocabulary, the global id of the unit that fired."""
    vocabulary = Vocabulary.build([data["one"], data["two"]])
    decode = {"spikes": {"as": "events"}}
    loader = create_webdataset_dataloader(data["one"], batch_size=3, num_workers=2, seed=0, decode=decode,
                                          collate_fn=SpikeTokens(mode="pad8", unit_index=vocabulary.unit_index))
    files = {record["key"]: data[record["file"][0]] for record in sessions(data["one"]).values()}
    tokens = 0
    with Dataset(data["one"], decode=decode) as ds:
        by_key = {ds[i]["__key__"]: ds[i] for i in range(len(ds))}
        for batch in loader:
            for b, key in enumerate(batch["__key__"]):
                sample = by_key[key]
                mask = batch["spikes_mask"][b].numpy()
                named = [vocabulary.ids[i] for i in batch["spikes_unit_index"][b].numpy()[mask]]
                fired = expected_ids(files[sample["metadata"]["session"]])
                assert named == [fired[u] for u in sample["spikes"].units]
                tokens += len(named)
    assert tokens > 0


def test_channels_and_rois(data, tmp_path):
    channels = Vocabulary.build(data["one"], kind="channels")
    key = key_of(data["one"], data["a"])
    identifier, _ = file_ids(data["a"], "/units")
    with h5py.File(data["a"], "r") as f:
        electrodes = f["/general/extracellular_ephys/electrodes/id"][:].tolist()
    assert [channels.ids[i] for i in channels.indices(key)] == [f"{identifier}/electrodes/{e}" for e in electrodes]
    path = ophys_file(tmp_path / "imaging.nwb", ("DfOverF",))
    rois = Vocabulary.build(convert(tmp_path / "ophys", [path], modalities=("calcium",)), kind="rois")
    (key,) = rois.sessions
    assert rois.session_ids(key) == tuple(f"imaging/PlaneSeg/{ROI_IDS[j]}" for j in ORDER)
    assert rois.indices(key).tolist() == [rois[f"imaging/PlaneSeg/{ROI_IDS[j]}"] for j in ORDER]


def test_a_format_v1_dataset_gets_the_ids_of_todays_conversion(tmp_path):
    old_units, old_channels = (Vocabulary.build(V1 / "nwb", kind=k) for k in ("units", "channels"))
    assert "id_prefixes" not in next(iter(sessions(V1 / "nwb").values()))
    assert old_units.ids == tuple(expected_ids(V1 / "session.nwb"))
    assert old_channels.ids == tuple(expected_ids(V1 / "session.nwb", "/general/extracellular_ephys/electrodes",
                                                  "electrodes"))
    today = convert(tmp_path / "today", [V1 / "session.nwb"], length=25)
    assert Vocabulary.build(today).ids == old_units.ids
    assert Vocabulary.build(today, kind="channels").ids == old_channels.ids


def test_two_recordings_claiming_one_identifier_are_refused(data, tmp_path):
    first = simple_session(tmp_path / "x.nwb", seed=3, identifier="same")
    second = simple_session(tmp_path / "y.nwb", seed=4, identifier="same")  # another session id and subject
    vocabulary = Vocabulary.build(data["two"])
    with pytest.raises(DatasetError, match="'same'.*distinct identifiers"):
        vocabulary.add(convert(tmp_path / "clash", [first, second]))
    assert len(vocabulary) == 2 and len(vocabulary.sessions) == 1  # a refused add changes nothing
    # Same identifier, session, subject and start, but another Units table (a copied identifier).
    third = simple_session(tmp_path / "z.nwb", seed=3, identifier="same", units=5)
    with pytest.raises(DatasetError, match="'same/units/' has other units.*distinct identifiers"):
        vocabulary.add([convert(tmp_path / "first", [first]), convert(tmp_path / "third", [third])])
    assert len(vocabulary) == 2 and len(vocabulary.sessions) == 1


def test_bad_records_get_errors_naming_the_session(data, tmp_path):
    manifest = read_manifest(data["two"])
    (key, record), = manifest.extra["sessions"].items()
    broken = {**record, "ids": {"spikes": {"unit_ids": [0, 0]}}}
    with pytest.raises(DatasetError, match=f"session '{key}', field 'spikes'.*twice"):
        Vocabulary.build(attrs.evolve(manifest, extra={"sessions": {key: broken}}))
    broken = {**record, "ids": {"spikes": {"unit_ids": [[1], 2]}}}
    with pytest.raises(DatasetError, match=f"session '{key}', field 'spikes'.*list of integer"):
        Vocabulary.build(attrs.evolve(manifest, extra={"sessions": {key: broken}}))
    with pytest.raises(DatasetError, match="no NWB session records"):
        Vocabulary.build(attrs.evolve(manifest, extra={}))


def test_fields_name_which_lists_a_session_uses(data, tmp_path):
    """Two fields read the same electrodes: one id each (shared), and a lookup names its field."""
    out = tmp_path / "two-fields"
    converter = NWBToWebDatasetConverter(out, 64, {"lfp": "lfp", "lfp2": "lfp"}, 20.0, 50, 0.0,
                                         progress=False, fsync=False)
    converter.convert_nwb_files([str(data["a"])])
    converter.finalize()
    channels = Vocabulary.build(out, kind="channels")
    (key,) = channels.sessions
    identifier, rows = file_ids(data["a"], "/general/extracellular_ephys/electrodes")
    assert channels.ids == tuple(f"{identifier}/electrodes/{e}" for e in rows)
    with pytest.raises(KeyError, match=r"fields \['lfp', 'lfp2'\]; name one with field="):
        channels.indices(key)
    assert channels.indices(key, field="lfp2").tolist() == channels.indices(key, field="lfp").tolist()
    assert Vocabulary.build(out, kind="channels", fields=["lfp2"]).unit_index(key).tolist() == [0, 1, 2, 3]
    assert len(Vocabulary.build(out, kind="units")) == 0  # no spikes converted: an empty vocabulary
