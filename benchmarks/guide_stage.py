"""Stage `guide` (issue 18): the user guide's loaders as users call them, beside the peers' own.

One process, the seed workload: neurocodec's `WebDatasetLoader` (shuffle off and on),
`ResumableWebDatasetLoader` and `RandomAccessWebDataset` (`ds[i]` over a permutation of every
index), with `Dataset` (in order, and `ds[i]`) as the floor they are compared with; litdata's
`StreamingDataset` (shuffle off and on, `ds[i]`) and webdataset's `WebDataset` (shuffle off and
on) beside them. Each read digests every array, as the read rows do (`child.task_api_read`).

Through the DataLoader (batch 32, 2 workers, shuffle) under each start method, `fork`, `spawn`
and `forkserver`, over a short epoch (the seed workload, 10,000 samples) and a long one (the
resume stage's 100,000 small samples): every library's DataLoader in a process of its own, so
that one library's global settings cannot slow another. Under forkserver the fork server
preloads torch and the library, as it does for a training script that imports them at its top. Start-up included: all samples of the
epoch over the time from creating the loader to its last batch. Start-up excluded: the samples
after the first `workers + 1` batches over the time after them (by then every worker has handed
a batch over: the workers' batches arrive in turn, and neurocodec builds its first in the
training process). "workers up" is the time to those batches.
"""

from __future__ import annotations

from typing import Any

from report import NC, Row
from workloads import Workload, expected_checksum, random_indices, workload_to_dict

CONTEXTS = ("fork", "spawn", "forkserver")
RANDOM_READS = 1000
"""Samples read by random access (litdata's `ds[i]` reads ~60 a second here); 20 with --quick."""
MEASURES = {"ordered": "iterate in stored order", "shuffled": "iterate shuffled",
            "random": "random access ds[i]"}
USER_API = {"ordered": "WebDatasetLoader", "shuffled": "WebDatasetLoader shuffle", "random": "RandomAccessWebDataset[i]"}
FLOOR_API = {"ordered": "Dataset", "shuffled": "Dataset", "random": "Dataset[i]"}
"""The floor each way of reading is compared with (a shuffled read with the in-order one)."""
BATCH, WORKERS, SEED = 32, 2, 0


class GuideStage:
    """Runs the stage on a `bench.Bench` and adds its rows and goals to the bench's report."""

    def __init__(self, bench: Any) -> None:
        self.bench, self.runner, self.report = bench, bench.runner, bench.report
        self.repeat, self.quick = bench.repeat, bench.args.quick
        self.random_reads = 20 if self.quick else RANDOM_READS

    def run(self) -> None:
        """Both parts; the goals from what they measured."""
        seed, tiny = self.bench.wls["seed"], self.bench.wls["tiny"]
        self.one_process(seed)
        self.start_methods(seed, short=True)
        self.start_methods(tiny)
        self.report.guide_goals = guide_goal_values(self.report, seed, tiny)

    # -- one process -------------------------------------------------------------------------
    def one_process(self, wl: Workload) -> None:
        """Every library's datasets over the same data, best of `repeat`."""
        from bench import best, prewarm
        from libs import LIBRARIES

        self.bench.ensure_datasets(wl, self.bench.libs)
        libs = [lib for lib in self.bench.libs if (wl.name, lib) in self.bench.datasets]
        reads = [(lib, api) for lib in libs for api in LIBRARIES[lib].apis]
        results: dict[tuple[str, str], list] = {read: [] for read in reads}
        scratch = self.bench.workdir / "scratch"
        scratch.mkdir(exist_ok=True)
        for _ in range(self.repeat):
            prewarm([self.bench.datasets[(wl.name, lib)] for lib in libs])
            specs = [{"task": "api_read", "lib": lib, "api": api, "workload": workload_to_dict(wl), "seed": SEED,
                      "path": str(self.bench.datasets[(wl.name, lib)]), "scratch": str(scratch),
                      "random_reads": self.random_reads} for lib, api in reads]
            for read, result in zip(reads, self.runner.run(specs, sync=False)):
                results[read].append(result)
        every = expected_checksum(wl, self.bench.source(wl))
        some = expected_checksum(wl, self.bench.source(wl), random_indices(wl, self.random_reads, SEED))
        rows = {how: [self._api_row(wl, measure, lib, api, best(results[(lib, api)]),
                                    some if how == "random" else every)
                      for lib, api in reads if LIBRARIES[lib].apis[api] == how] for how, measure in MEASURES.items()}
        nc = self.report.label(NC)
        for how, mine in rows.items():
            floor = next((r for r in sum(rows.values(), []) if r.library == f"{nc} {FLOOR_API[how]}"), None)
            _compare(mine, f"{nc} {USER_API[how]}", floor)
            self.report.rows += mine

    def _api_row(self, wl: Workload, measure: str, lib: str, api: str, result: dict[str, Any] | None,
                 expected: str) -> Row:
        section = f"{wl.name}: {wl.samples} samples, the guide's datasets, 1 process"
        label = f"{self.report.label(lib)} {api}"
        if result is None:
            return Row(section, measure, label, None, "", note="failed (see log)", fixed=True)
        rate = result["samples"] / result["seconds"]
        note = self.report._check(f"{wl.name} {lib} {api}", result.get("checksum"), expected)
        return Row(section, measure, label, rate, "samples/s", rate * wl.array_bytes / 1e6,
                   rss=self.report._rss(result), note=note, fixed=True)

    # -- the DataLoader under each start method ----------------------------------------------
    def start_methods(self, wl: Workload, short: bool = False) -> None:
        """One epoch per library and start method, each in a process of its own, best of `repeat`
        (`short`: the short epoch, which --quick measures under fork only)."""
        from bench import prewarm

        self.bench.ensure_datasets(wl, self.bench.libs)
        libs = [lib for lib in self.bench.libs if (wl.name, lib) in self.bench.datasets]
        runs = [(lib, context) for lib in libs for context in self._contexts(lib, short)]
        results: dict[tuple[str, str], list] = {run: [] for run in runs}
        for _ in range(self.repeat):
            prewarm([self.bench.datasets[(wl.name, lib)] for lib in libs])
            for lib, context in runs:
                spec = {"task": "epoch", "lib": lib, "path": str(self.bench.datasets[(wl.name, lib)]),
                        "workload": workload_to_dict(wl), "batch_size": BATCH, "workers": WORKERS, "seed": SEED,
                        "context": context, "startup_batches": WORKERS + 1}
                results[(lib, context)] += self.runner.run([spec], sync=False)  # alone: a process of its own
        expected = expected_checksum(wl, self.bench.source(wl))
        section = f"{wl.name}: {wl.samples} samples through the DataLoader (batch 32, 2 workers, shuffle), by start method"
        for context in CONTEXTS:
            rows: list[Row] = []
            for lib in libs:
                if (lib, context) in results:
                    rows += self._epoch_rows(wl, section, context, lib, results[(lib, context)], expected)
            for measure in {r.measure for r in rows}:
                _compare([r for r in rows if r.measure == measure], self.report.label(NC), None)
            self.report.rows += rows
        _relative_to_fork([r for r in self.report.rows if r.section == section], self.report.label(NC))

    def _contexts(self, lib: str, short: bool) -> tuple[str, ...]:
        """Start methods measured for `lib`: all of them, except webdataset's long epoch (fork
        only: it reads ~1,500 small samples/s, a minute per run). With --quick (the smoke test),
        where each run under spawn or forkserver costs seconds of torch imports in fresh
        workers, only neurocodec's long epoch runs under them; everything else under fork."""
        if self.quick:
            return CONTEXTS if lib == NC and not short else ("fork",)
        return ("fork",) if lib == "webdataset" and not short else CONTEXTS

    def _epoch_rows(self, wl: Workload, section: str, context: str, lib: str, results: list[dict[str, Any]],
                    expected: str) -> list[Row]:
        label = self.report.label(lib)
        ok = [r for r in results if r.get("ok") and r.get("steady_s") is not None and r["seconds"] > r["steady_s"]]
        if not ok:
            return [Row(section, f"{context}: epoch", label, None, "", note="failed (see log)", fixed=True)]
        steady = max(ok, key=_steady_rate)
        whole = max(ok, key=lambda r: r["samples"] / r["seconds"])
        up = min(ok, key=lambda r: r["steady_s"])
        note = self.report._check(f"{wl.name} {context} epoch {lib}", steady.get("checksum"), expected)
        return [
            Row(section, f"{context}: epoch, start-up excluded", label, _steady_rate(steady), "samples/s",
                _steady_rate(steady) * wl.array_bytes / 1e6, rss=self.report._rss(steady, workers=True), note=note,
                fixed=True),
            Row(section, f"{context}: epoch, start-up included", label, whole["samples"] / whole["seconds"],
                "samples/s", whole["samples"] / whole["seconds"] * wl.array_bytes / 1e6, fixed=True),
            Row(section, f"{context}: workers up (first {WORKERS + 1} batches)", label, up["steady_s"], "s",
                fixed=True),
        ]


def _steady_rate(result: dict[str, Any]) -> float:
    return (result["samples"] - result["steady_samples"]) / (result["seconds"] - result["steady_s"])


def _compare(rows: list[Row], reference: str, floor: Row | None) -> None:
    """Each peer's ratio against neurocodec's `reference` row (neurocodec ÷ peer: rates over
    rates, times the other way round); each neurocodec row's share of the `floor` row in its note."""
    ref = next((r for r in rows if r.library == reference and r.value), None)
    for row in rows:
        if row.value is None:
            continue
        if not row.library.startswith(NC):
            if ref is not None:
                row.ratio = f"{(ref.value / row.value if row.unit == 'samples/s' else row.value / ref.value):.2f}×"
        elif row is floor:
            row.note += "; the floor"
        elif floor is not None and floor.value:
            row.note += f"; {100 * row.value / floor.value:.0f}% of {floor.library.split(' ', 2)[-1]}"


def _relative_to_fork(rows: list[Row], label: str) -> None:
    """neurocodec's rate under spawn and forkserver as a share of its rate under fork, in the note."""
    for row in rows:
        context, _, what = row.measure.partition(": ")
        if row.library != label or context == "fork" or row.unit != "samples/s" or not row.value:
            continue
        fork = next((r for r in rows if r.library == label and r.measure == f"fork: {what}" and r.value), None)
        if fork is not None:
            row.note = "; ".join(filter(None, (row.note, f"{row.value / fork.value:.2f} of fork")))


def guide_goal_values(report: Any, seed: Workload, tiny: Workload) -> dict[str, float | None]:
    """Issue 18's goals, as measured in this run (None where a side is missing)."""
    def value(section_start: str, measure: str, library: str) -> float | None:
        return next((r.value for r in report.rows if r.section.startswith(section_start) and r.measure == measure
                     and r.library == library), None)

    def div(a: float | None, b: float | None) -> float | None:
        return a / b if a and b else None

    nc, lit = report.label(NC), report.label("litdata")
    one = f"{seed.name}: {seed.samples} samples, the guide's"
    ordered = MEASURES["ordered"]
    goals = {
        "WebDatasetLoader / Dataset (goal >= 0.9)":
            div(value(one, ordered, f"{nc} WebDatasetLoader"), value(one, ordered, f"{nc} Dataset")),
        "WebDatasetLoader / litdata StreamingDataset (goal >= 2)":
            div(value(one, ordered, f"{nc} WebDatasetLoader"), value(one, ordered, f"{lit} StreamingDataset")),
    }
    for wl in (seed, tiny):
        section = f"{wl.name}: {wl.samples} samples through the DataLoader"
        for context in CONTEXTS[1:]:
            for what in ("start-up excluded", "start-up included"):
                goal = " (goal >= 0.8)" if what.endswith("excluded") else ""
                goals[f"DataLoader {wl.samples} samples, {context} / fork, {what}{goal}"] = div(
                    value(section, f"{context}: epoch, {what}", nc), value(section, f"fork: epoch, {what}", nc))
    return goals
