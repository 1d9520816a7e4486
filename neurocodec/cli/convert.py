"""`neurocodec convert`: NWB sessions or .npz arrays to shards, from the command line.

    neurocodec convert --input data/*.nwb --output ./shards --format nwb --shard-size 1000 \\
        --workers 8 --validate [--compression zstd] [--modalities spikes lfp behavior]

`--input` takes files, NWB-Zarr folders, glob patterns and directories, which stand for the
.nwb and .npz files and NWB-Zarr folders in them and below them (`neurocodec.cli.inputs`).
`--format` defaults to the inputs' extension. npz inputs are converted as
`create_shards_from_arrays` does (row i of every array is sample i), several files one after
the other. `--modalities` takes modality names or FIELD=MODALITY pairs, so two fields can share
one modality (`--modalities pupil_left=behavior pupil_right=behavior`); npz inputs use only the
pairs, which store an array with a modality other than its name's. NWB fields from any series:
`--field position=behavior:x,y,z --field running=behavior:running_speed` (NAME=MODALITY, then
the series by name or HDF5 path; several 1-D series sharing their timing become columns).
`--validate` re-reads every shard and checks it against the manifest afterwards (as `neurocodec
verify` does: every bad shard is named).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from neurocodec.format.compression import COMPRESSIONS
from neurocodec.nwb.extract import NAN_POLICIES
from neurocodec.nwb.part import COVERAGE
from neurocodec.cli.inputs import input_format, input_paths, load_npz
from neurocodec.cli.options import CommandLineError, add_storage_arguments, cache_from_args, storage_options_from_args
from neurocodec.cli.split import parse_fractions
from neurocodec.cli.wording import in_flags
from neurocodec.dataset.splits import BY
from neurocodec.storage.location import dataset_path, is_remote


def _series_names(text: str) -> str | list[str]:
    """One series name or path, or a comma-separated list of them (combined into columns)."""
    names = text.split(",")
    return names[0] if len(names) == 1 else names


def _series(pairs: list[str]) -> dict[str, str | list[str]]:
    out = {}
    for pair in pairs:
        field, sep, name = pair.partition("=")
        if not sep or not field or not name or "" in name.split(","):
            raise ValueError(f"--series takes FIELD=NAME or FIELD=NAME,NAME,..., got {pair!r}")
        out[field] = _series_names(name)
    return out


def _fields(entries: list[str]) -> dict[str, tuple[str, str | list[str] | None]]:
    """--field NAME=MODALITY[:SERIES[,SERIES...]] as the converter's `fields`."""
    fields = {}
    for entry in entries:
        field, sep, spec = entry.partition("=")
        modality, colon, names = spec.partition(":")
        if not sep or not field or not modality or (colon and (not names or "" in names.split(","))):
            raise ValueError(f"--field takes NAME=MODALITY or NAME=MODALITY:SERIES[,SERIES...], got {entry!r}")
        if field in fields:
            raise ValueError(f"--field names {field!r} twice")
        fields[field] = (modality, _series_names(names) if colon else None)
    return fields


def _field_codecs(entries: list[str]) -> dict[str, dict]:
    """--field-codec FIELD=JSON as the converter's `field_codecs`."""
    codecs = {}
    for entry in entries:
        field, sep, text = entry.partition("=")
        try:
            config = json.loads(text) if sep and field else None
        except json.JSONDecodeError as exc:
            raise ValueError(f"--field-codec {entry!r}: the config is not JSON ({exc})") from None
        if not isinstance(config, dict) or not isinstance(config.get("id"), str):
            raise ValueError(f"--field-codec takes FIELD=JSON with a JSON object holding a string \"id\", "
                             f"e.g. 'video={{\"id\": \"av-video\", \"codec\": \"ffv1\"}}', got {entry!r}")
        if field in codecs:
            raise ValueError(f"--field-codec names {field!r} twice")
        codecs[field] = config
    return codecs


def _modalities(entries: list[str] | None, fmt: str) -> list[str] | dict[str, str] | None:
    """--modalities as the converter's list, or a field -> modality dict when a pair is given."""
    if entries is None:
        return None
    pairs = {}
    for entry in entries:
        field, sep, modality = entry.partition("=")
        if sep and (not field or not modality):
            raise ValueError(f"--modalities takes MODALITY or FIELD=MODALITY, got {entry!r}")
        if sep or fmt == "nwb":  # npz inputs ignore plain names, as they always have
            pairs[field] = modality if sep else field
    if fmt == "nwb" and all(f == m for f, m in pairs.items()):
        return list(pairs)
    return pairs


def convert_npz(paths: list[Path], output: Path | str, args: argparse.Namespace) -> dict[str, Any]:
    """Write the rows of the arrays of each .npz file, file after file, as samples."""
    from neurocodec.dataset.writer import WebDatasetWriter, create_shards_from_arrays

    modalities = _modalities(args.modalities, "npz") or None
    remote = [str(p) for p in paths if not isinstance(p, Path)]
    if remote:
        raise CommandLineError(f"--input {remote[0]}: .npz inputs must be local files (URLs are read in place "
                               "only for NWB files)")
    if len(paths) == 1:
        data = load_npz(paths[0])
        return create_shards_from_arrays(output, data, args.shard_size, args.compression,
                                         overwrite=args.overwrite, append=args.append,
                                         progress=False if args.no_progress else None,
                                         storage_options=storage_options_from_args(args), modalities=modalities)
    with WebDatasetWriter(output, args.shard_size, args.compression, overwrite=args.overwrite, append=args.append,
                          storage_options=storage_options_from_args(args), modalities=modalities) as writer:
        for path in paths:
            data = load_npz(path)
            for i in range(len(next(iter(data.values()), ()))):
                writer.write_sample({k: v[i, ...] for k, v in data.items()})
    return writer.finalize()


def convert_nwb(paths: list[Path], output: Path | str, args: argparse.Namespace) -> dict[str, Any]:
    """Convert NWB files with NWBToWebDatasetConverter."""
    from neurocodec.nwb.converter import NWBToWebDatasetConverter, window_shape
    from neurocodec.nwb.fields import DEFAULT_MODALITIES

    fields = _fields(args.field)
    window_shape(args.bin_size_ms, args.sequence_length, args.overlap, args.chunk_seconds, CHUNK_FLAGS)
    modalities = _modalities(args.modalities, "nwb") or (None if fields else list(DEFAULT_MODALITIES))
    with NWBToWebDatasetConverter(
        output, shard_size=args.shard_size, modalities=modalities, bin_size_ms=args.bin_size_ms,
        sequence_length=args.sequence_length, overlap=args.overlap, chunk_seconds=args.chunk_seconds,
        compression=args.compression,
        workers=args.workers, series=_series(args.series), coverage=args.coverage, nan_policy=args.nan_policy,
        on_error=args.on_error, overwrite=args.overwrite, append=args.append,
        progress=False if args.no_progress else None,
        storage_options=storage_options_from_args(args), fields=fields or None, intervals=args.intervals,
        input_storage_options=storage_options_from_args(args, "input-") or None, codecs=args.codec,
        field_codecs=_field_codecs(args.field_codec) or None, split=split_options(args), stats=args.stats,
    ) as converter:
        converter.convert_nwb_files(paths)
        return converter.finalize()


def split_options(args: argparse.Namespace) -> dict[str, Any] | None:
    """--split-by, --split-fractions and --split-seed as the converter's `split=`."""
    if args.split_by is None:
        if args.split_fractions is not None or args.split_seed is not None:
            raise CommandLineError("--split-fractions and --split-seed describe the split --split-by makes: "
                                   "give --split-by too")
        return None
    options: dict[str, Any] = {"by": args.split_by}
    if args.split_fractions is not None:
        options["fractions"] = parse_fractions(args.split_fractions, "--split-fractions")
    if args.split_seed is not None:
        options["seed"] = args.split_seed
    return options


_FINISH_FLAGS = (("stats=True", "--stats"), ("split=", "--split-by"), ("fractions must", "--split-fractions must"),
                 ("fraction of", "--split-fractions: fraction of"), ("seed must", "--split-seed must"),
                 ("by must", "--split-by must"), ("a local output directory", "a local --output"))


def check_finish(args: argparse.Namespace, fmt: str, output: Path | str) -> None:
    """--split-by, --split-fractions, --split-seed and --stats, checked before converting."""
    from neurocodec.dataset.finish import Finish

    options = split_options(args)
    if options is not None and fmt != "nwb":
        raise CommandLineError("--split-by assigns sessions or stretches of recordings: it needs NWB inputs")
    try:
        Finish.of(options, args.stats, append=args.append, remote=is_remote(output))
    except ValueError as exc:
        message = str(exc)
        for words, flag in _FINISH_FLAGS:
            message = message.replace(words, flag)
        raise CommandLineError(message) from None


CHUNK_FLAGS = {"chunk_seconds": "--chunk-seconds", "sequence_length": "--sequence-length",
               "overlap": "--overlap", "bin_size_ms": "--bin-size-ms"}


def _objects(chosen: Any) -> str:
    return ", ".join(chosen) if isinstance(chosen, list) else str(chosen)


def run_convert(args: argparse.Namespace) -> int:
    """The `convert` subcommand."""
    paths = input_paths(args.input)
    output = dataset_path(args.output)
    fmt = input_format(args.format, paths)
    if args.append and (args.overwrite or is_remote(output)):
        raise CommandLineError("--append adds samples to a local dataset: not with --overwrite, nor to a URL "
                               f"(--output {args.output})")
    check_finish(args, fmt, output)
    summary = convert_nwb(paths, output, args) if fmt == "nwb" else convert_npz(paths, output, args)
    if fmt == "npz" and args.stats:
        from neurocodec.dataset.finish import Finish

        summary.update(Finish(None, True).run(output))
    print(f"wrote {summary['samples']:,} samples in {summary['shards']} shards "
          f"({summary['bytes'] / 2**20:.1f} MiB, compression {summary['compression']}) to {output}")
    if summary.get("version", 1) > 1:
        print(f"appended: {output} is now version {summary['version']} with {summary['total_samples']:,} samples "
              f"(version {summary['version'] - 1} stays readable: version={summary['version'] - 1} in the loaders)")
    print(f"modalities: {', '.join(summary['modalities'])}")
    for skipped in summary.get("skipped_files", []):
        print(f"skipped {skipped['file']}: {in_flags(skipped['error'], args.cli_flags)}")
    if summary.get("skipped_windows"):
        print(f"windows not covered by every modality (skipped): {summary['skipped_windows']}")
    for source, chosen in summary.get("series", {}).items():
        print(f"{source}: " + "; ".join(f"{field} <- {_objects(obj)}" for field, obj in chosen.items()))
    if summary.get("report"):
        print(f"report: {summary['report']}")
    for what in ("split", "stats"):
        if summary.get(what):
            print(f"{what}: {summary[what]}")
    if args.validate:
        from neurocodec.cli.info import verify_every_shard
        from neurocodec.dataset.reader import Dataset

        with Dataset(output, verify="full", storage_options=storage_options_from_args(args),
                     cache=cache_from_args(args)) as ds:
            verify_every_shard(ds, str(output), progress=not args.no_progress)
            print(f"validated: {len(ds):,} samples match the manifest")
    return 0


def add_parsers(sub: Any) -> None:
    """Register `convert` on the `neurocodec` command's subparsers."""
    p = sub.add_parser("convert", help="convert NWB files or .npz arrays to shards",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", nargs="+", required=True,
                   help="input NWB files, NWB-Zarr folders, .npz files, glob patterns or directories (the .nwb "
                        "and .npz files and NWB-Zarr folders in them and below), or URLs of NWB files "
                        "(s3://, https://: read in place, not globbed)")
    p.add_argument("--output", required=True, help="output dataset directory or URL (s3://, gs://, ...)")
    p.add_argument("--format", choices=("nwb", "npz"), help="input format (default: from the extension)")
    p.add_argument("--shard-size", type=int, default=1000, help="samples per shard (default 1000)")
    p.add_argument("--workers", type=int, default=1, help="conversion processes for NWB (default 1)")
    p.add_argument("--compression", choices=COMPRESSIONS, default="none", help="per-member compression")
    p.add_argument("--validate", action="store_true", help="re-read every shard against the manifest")
    p.add_argument("--overwrite", action="store_true", help="replace a dataset already in --output")
    p.add_argument("--append", action="store_true", help="add the samples (sessions) to the dataset in --output "
                   "as its next version, without rewriting it (the old version stays readable)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    nwb = p.add_argument_group("NWB options")
    p.add_argument("--modalities", nargs="+", metavar="[FIELD=]MODALITY",
                   help="NWB: modalities to extract (default: spikes lfp behavior), FIELD=MODALITY to name "
                        "the field; npz: FIELD=MODALITY stores a field with that modality's plugin")
    nwb.add_argument("--bin-size-ms", type=float, default=10.0, help="bin size in ms (default 10)")
    nwb.add_argument("--sequence-length", type=int, default=None, help="bins per window (default 100)")
    nwb.add_argument("--overlap", type=float, default=None, help="window overlap in [0, 1) (default 0.5)")
    nwb.add_argument("--chunk-seconds", type=float, default=None, metavar="SECONDS",
                     help="write each session as consecutive chunks of SECONDS without overlap (a whole "
                          "number of bins; sets --sequence-length and --overlap 0, which must not say "
                          "otherwise), with the sessions' timeline in the manifest for load-time windows")
    nwb.add_argument("--series", nargs="*", default=[], metavar="FIELD=NAME",
                     help="pick a field's series by name or HDF5 path (NAME,NAME,... combines 1-D series "
                          "sharing their timing into columns)")
    nwb.add_argument("--field", action="append", default=[], metavar="NAME=MODALITY[:SERIES[,SERIES...]]",
                     help="extract field NAME with MODALITY's extractor, from the named series (default: the "
                          "modality's default choice); repeatable, e.g. --field position=behavior:x,y,z "
                          "--field running=behavior:running_speed. With --field and no --modalities, only "
                          "the fields are converted")
    nwb.add_argument("--intervals", nargs="*", metavar="TABLE",
                     help="TimeIntervals tables whose rows overlapping each window go into its metadata "
                          "(default: every table; --intervals with no name: none)")
    nwb.add_argument("--coverage", choices=COVERAGE, default="all", help="window coverage policy")
    nwb.add_argument("--nan-policy", choices=NAN_POLICIES, default="error", help="windows holding NaN")
    nwb.add_argument("--on-error", choices=("raise", "skip"), default="raise", help="bad input files")
    nwb.add_argument("--codec", choices=("neural", "npy"), default="neural",
                     help="neural (default): spikes as events re-binnable at load time, integer signals "
                          "as raw integers with their scale; npy: every field as plain .npy, readable by "
                          "webdataset, Hugging Face datasets and Ray Data")
    nwb.add_argument("--field-codec", action="append", default=[], metavar="FIELD=JSON",
                     help="a field's codec config, over --codec (repeatable), e.g. "
                          "'video={\"id\": \"av-video\", \"codec\": \"ffv1\"}'")
    after = p.add_argument_group("once converted: a split and normalisation statistics (docs/splits.md, "
                                 "docs/stats.md)")
    after.add_argument("--split-by", choices=BY, help="NWB: make the split 'default' by session, subject or "
                       "time (loaders then take split='train')")
    after.add_argument("--split-fractions", metavar="PART=F,...", help="the split's parts and fractions in "
                       "order, the first one the training part (default: train=0.8,valid=0.1,test=0.1)")
    after.add_argument("--split-seed", type=int, default=None, help="seed of the split's assignment (default 0)")
    after.add_argument("--stats", action="store_true", help="compute normalisation statistics from the "
                       "split's first (training) part, or from every sample without --split-by")
    add_storage_arguments(p)
    inputs = p.add_argument_group("storage of NWB inputs at URLs (default: the --storage-option(s) above)")
    inputs.add_argument("--input-storage-option", action="append", default=[], metavar="KEY=VALUE",
                        help="fsspec storage option for --input URLs, repeatable (as --storage-option)")
    inputs.add_argument("--input-storage-options", metavar="JSON", default=None,
                        help="fsspec storage options for --input URLs as one JSON object")
    p.set_defaults(func=run_convert)
