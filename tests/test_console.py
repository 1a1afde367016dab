"""The study's console: plain lines without a terminal, a live display on one, the
closing summary, and pty-chi's progress bars kept off the terminal."""

from __future__ import annotations

import io
import json
import logging
import math
import os
import time
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from rich.console import Console

from fly64_recon.display import console as console_module
from fly64_recon.display.console import (
    LiveView,
    PlainView,
    RunPaths,
    StudyRun,
    finished_line,
    render,
)
from fly64_recon.display.logs import LineLog
from fly64_recon.display.progress import StudyProgress
from fly64_recon.display.summary import closing_summary
from fly64_recon.record import JobRecord, JobStatus, report_epoch
from fly64_recon.study import Job

JOBS = [
    Job(1000.0, "baseline", "test"),
    Job(1000.0, "sparse", "test"),
    Job(100000.0, "baseline", "test"),
]
NAMES = [job.namespace for job in JOBS]


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def console(terminal: bool) -> Console:
    return Console(file=io.StringIO(), force_terminal=terminal, width=120)


def output(of: Console) -> list[str]:
    return of.file.getvalue().splitlines()


def succeeded(job: Job, seconds: float = 8.25, loss: float = 0.0213) -> JobRecord:
    return JobRecord(
        job,
        JobStatus.SUCCEEDED,
        device="cpu",
        wall_time_s=seconds,
        final_loss=loss,
        num_epochs=4,
    )


def test_without_a_terminal_a_line_per_job_and_progress_at_most_every_10_s():
    clock = Clock()
    progress = StudyProgress(NAMES, clock)
    plain = console(terminal=False)
    view = PlainView(plain, progress, every=10.0, clock_=clock)

    view.begin()
    progress.start(NAMES[0])
    clock.now = 2.0
    progress.epoch(NAMES[0], 1, 4, 0.5)
    assert view.due() is None  # 2 s after the start
    clock.now = 11.0
    progress.epoch(NAMES[0], 2, 4, 0.25)
    view.show(view.due())
    clock.now = 12.0
    assert view.due() is None  # 1 s after the last progress line
    view.show("a job finished")

    lines = output(plain)
    assert lines[0] == "Running 3 reconstruction job(s)"
    # A quarter of a job in the 9 s since the first epoch; 2.5 jobs left.
    assert lines[1] == (
        "0/3 jobs done, 0:00:11 elapsed, about 0:01:30 left; "
        "running dose_1e3.baseline.test epoch 2/4"
    )
    assert lines[2:] == ["a job finished"]
    assert "\x1b" not in plain.file.getvalue()


def test_a_finished_job_line_says_its_loss_and_the_gist_of_its_warnings():
    progress = StudyProgress(NAMES, Clock())
    misfit = (
        "does not explain its own patterns: final loss 1.7 is 3.4x what their shot "
        "noise allows (0.51); it was still improving when the epoch cap stopped it"
    )
    record = replace(succeeded(JOBS[2]), warnings=[misfit])
    progress.finish(record)

    assert finished_line(progress, record) == (
        "[1/3] dose_1e5.baseline.test succeeded in 8.2 s, final loss 0.0213; "
        "does not explain its own patterns: final loss 1.7 is 3.4x what thei..."
    )
    assert finished_line(progress, succeeded(JOBS[2])).endswith("final loss 0.0213")


def test_epochs_logged_by_a_job_reach_the_display_of_its_run():
    plain = console(terminal=False)
    run = StudyRun(NAMES, RunPaths(), plain)
    run.open()
    try:
        run.job_started(NAMES[1])
        report_epoch(NAMES[1], 3, 20, 0.125)
        report_epoch("dose_1e9.dense.train", 1, 20, 1.0)  # not a job of this run
        assert run.progress.running[NAMES[1]].epoch == 3
        assert list(run.progress.running) == [NAMES[1]]
        run.job_finished(succeeded(JOBS[1]))
    finally:
        run.close()
    lines = output(plain)
    assert "[1/3] dose_1e3.sparse.test succeeded in 8.2 s, final loss 0.0213" in lines
    assert any(line.startswith("Run finished in 0:00:0") for line in lines)


def test_a_terminal_gets_the_live_display():
    progress = StudyProgress(NAMES)
    progress.start(NAMES[0])
    progress.epoch(NAMES[0], 12, 20, 0.0213)
    progress.finish(JobRecord(JOBS[2], JobStatus.CACHED))

    shown = console(terminal=True)
    shown.print(render(progress))
    text = shown.file.getvalue()
    assert "1/3 jobs done (1 cached)" in text
    assert "dose_1e3.baseline.test  epoch 12/20  loss 0.0213" in text

    run = StudyRun(NAMES, RunPaths(), console(terminal=True))
    assert isinstance(run._view, LiveView)
    assert isinstance(StudyRun(NAMES, RunPaths(), console(False))._view, PlainView)


def manifest_entry(job: Job, mae: float | None, null: float | None = None) -> dict:
    entry = {**succeeded(job).to_dict()}
    if mae is not None:
        metrics = {"phase": {"mae": mae}}
        if null is not None:
            metrics["null"] = {"phase": {"mae": null}}
        entry["metrics"] = metrics
    return entry


def test_the_closing_summary_says_what_ran_how_well_what_failed_and_where(tmp_path):
    progress = StudyProgress(NAMES)
    progress.finish(succeeded(JOBS[0]))
    progress.finish(JobRecord(JOBS[2], JobStatus.CACHED))
    why = (
        "reconstruction diverged: loss is nan at epoch 3\nTraceback (most recent call)"
    )
    progress.finish(JobRecord(JOBS[1], JobStatus.FAILED, why))
    manifest = {
        "jobs": [
            manifest_entry(Job(1000.0, "baseline", "train"), 0.2, 0.5),
            manifest_entry(JOBS[0], 0.1, 0.5),
            {**JobRecord(JOBS[1], JobStatus.FAILED, why).to_dict()},
            manifest_entry(JOBS[2], 0.05, 0.4),
        ]
    }
    report = tmp_path / "study_summary.md"
    report.write_text("# summary")
    log = tmp_path / "run.log"
    log.write_text("")
    os.utime(report, (1, 1))  # written long before this run
    where = {"report": report, "manifest": tmp_path / "absent.json", "log": log}

    lines = closing_summary(progress, manifest, where, since=time.time() - 60)

    assert lines[0].startswith("Run finished in 0:00:0")
    assert lines[0].endswith(": 3 job(s) on cpu: 1 succeeded, 1 failed, 1 cached.")
    table = lines[lines.index("view      dose 1e3         dose 1e5") - 1 :][:4]
    assert table[0].startswith("Phase MAE (rad) against the ground truth")
    assert "[null: no reconstruction" in table[0]
    assert table[2] == "baseline  0.1500 [0.5000]  0.0500 [0.4000]"
    assert table[3] == "sparse    -                -"
    assert "Failed jobs:" in lines
    assert (
        "  dose_1e3.sparse.test: reconstruction diverged: loss is nan at epoch 3"
        in lines
    )
    assert lines[-2:] == [  # the absent manifest is not listed
        f"report  {report} (from an earlier run)",
        f"log     {log}",
    ]


def flagged(job: Job, flags: list[str]) -> dict:
    entry = manifest_entry(job, 0.1, 0.5)
    entry["metrics"]["flags"] = flags
    return entry


def test_the_closing_summary_lists_flagged_jobs_a_line_each():
    progress = StudyProgress(NAMES)
    flags = [
        "not converged: stopped by the epoch cap (12 epochs) while the loss was still "
        "improving; raise ptychi_baseline.lsqml.reconstructor_options.num_epochs",
        "phase MAE 0.15 rad is not below the null reference 0.14 rad (a flat object)",
    ]
    jobs = [flagged(JOBS[0], flags), flagged(JOBS[1], []), flagged(JOBS[2], flags[:1])]
    lines = closing_summary(progress, {"jobs": jobs}, {})
    start = lines.index("Flagged jobs (2; every flag in the study report):")
    assert lines[start + 1 : start + 3] == [
        "  dose_1e3.baseline.test: not converged: stopped by the epoch cap (+1 more)",
        "  dose_1e5.baseline.test: not converged: stopped by the epoch cap",
    ]


def test_a_long_list_of_flagged_jobs_is_cut():
    many = [Job(1000.0 * (k + 1), "baseline", "test") for k in range(25)]
    jobs = [flagged(job, ["x"]) for job in many]
    lines = closing_summary(StudyProgress([]), {"jobs": jobs}, {})
    start = lines.index("Flagged jobs (25; every flag in the study report):")
    assert len([line for line in lines[start:] if line.endswith(": x")]) == 20
    assert "  ... and 5 more" in lines


def test_without_metrics_the_summary_says_how_to_get_them():
    progress = StudyProgress(NAMES[:1])
    progress.finish(succeeded(JOBS[0]))
    lines = closing_summary(progress, {"jobs": [manifest_entry(JOBS[0], None)]}, {})
    assert (
        "1 reconstruction(s), none measured yet: kedro run --pipeline evaluation"
        in (lines)
    )


def test_a_stopped_run_says_by_what():
    progress = StudyProgress(NAMES)
    line = closing_summary(progress, None, {}, KeyError("x"))[0]
    assert line.startswith("Run stopped after 0:00:00 by KeyError: 3 job(s): ")
    assert line.endswith("3 not finished.")


@pytest.mark.parametrize(
    ("written", "logged"),
    [
        ("plain line\nsecond\n", ["plain line", "second"]),
        (
            "\r  0%|   | 0/4\r 50%|#  | 2/4\r          \r",
            [],
        ),  # a bar that erased itself
        ("\r 50%|#  | 2/4\rfinal state\n", ["final state"]),
    ],
)
def test_what_a_worker_prints_is_logged_as_a_terminal_would_keep_it(
    written, logged, caplog
):
    logger = logging.getLogger("fly64_recon.test_line_log")
    stream = LineLog(logger)
    with caplog.at_level(logging.INFO, logger=logger.name):
        for start in range(0, len(written), 5):  # in pieces, as tqdm writes
            stream.write(written[start : start + 5])
    assert [r.getMessage() for r in caplog.records] == logged


def test_run_paths_come_from_the_globals_and_runtime_params(tmp_path):
    class Loader(dict):
        runtime_params = {"artifact_root": "/data/out"}

    class Context:
        project_path = tmp_path
        config_loader = Loader(
            globals={"artifact_root": "data/07", "reporting_root": "data/08"}
        )

    paths = RunPaths.from_context(Context())
    assert paths.manifest == Path("/data/out/reconstruction_manifest.json")
    assert paths.report == tmp_path / "data/08/study_summary.md"
    assert paths.logs == Path("/data/out/logs")


def test_the_summary_names_the_files_the_catalog_writes():
    conf = Path(__file__).resolve().parents[1] / "conf" / "base"
    catalog = yaml.safe_load((conf / "catalog.yml").read_text())
    catalog |= yaml.safe_load((conf / "catalog_evaluation.yml").read_text())
    manifest = catalog["{dose}.{view}.{split}.manifest_entry"]["filepath"]
    assert manifest.endswith(
        "${globals:artifact_root}}/" + console_module.MANIFEST_FILE
    )
    report = catalog["study_summary.report"]["filepath"]
    assert report.endswith("${globals:reporting_root}}/" + console_module.REPORT_FILE)


def _compared(model: str, view: str, split: str, status: str, mae: str = "") -> dict:
    return {
        "dose": "10000.0",
        "view": view,
        "split": split,
        "model": model,
        "metric": "mae" if status == "scored" else "",
        "phase": mae,
        "status": status,
    }


def test_a_run_that_compared_models_ends_with_them_against_pty_chi():
    compared = [
        _compared("ptychi", "dense", "test", "scored", "0.2"),
        _compared("ptychi", "dense", "train", "scored", "0.4"),
        _compared("pinn", "dense", "test", "scored", "0.1"),
        _compared("pinn", "dense", "train", "scored", "0.2"),
        _compared("pinn", "sparse", "test", "missing"),
        _compared("tike", "dense", "test", "failed"),
    ]
    manifest = {"jobs": [manifest_entry(JOBS[0], 0.3)]}

    lines = closing_summary(StudyProgress([]), manifest, {}, compared=compared)

    assert lines[0].endswith(": models compared with the pty-chi baseline.")
    assert not any(line.startswith("Phase MAE") for line in lines)  # not the study's
    start = lines.index(
        "Models against pty-chi: phase MAE, model / pty-chi, mean over splits "
        "(below 1: the model is better)"
    )
    assert lines[start + 1].split() == ["model", "view", "dose", "1e4"]
    assert lines[start + 2].split() == ["pinn", "dense", "0.50x"]
    assert "pinn: no file for 1 job(s): dose_1e4.sparse.test" in lines
    assert (
        "tike: a file that could not be scored for 1 job(s): dose_1e4.dense.test"
        in lines
    )


TRACE = Path(__file__).parent / "data" / "default_run_trace.json"


def replay(trace: dict, expected: bool = True) -> list[tuple[float, float]]:
    """The trace of a default run through the console's progress, its clock moved to
    each event: at the end of each job up to a third of them, the estimate of the time
    left and the truth. ``expected=False``: as if no finished job told the epochs a job
    needs (the estimate before: every job to its cap)."""
    clock = Clock()
    progress = StudyProgress(trace["jobs"], clock)
    if not expected:
        progress.expected_epochs = lambda namespace: None
    third = math.ceil(len(trace["jobs"]) / 3)
    end = trace["events"][-1][0]
    found = []
    for time_s, kind, namespace, *numbers in trace["events"]:
        clock.now = time_s
        if kind == "start":
            progress.start(namespace)
        elif kind == "epoch":
            progress.epoch(namespace, numbers[0], numbers[1], 0.0)
        elif len(progress.finished) < third:
            record = JobRecord(Job.from_namespace(namespace), JobStatus.SUCCEEDED)
            progress.finish(replace(record, epochs_run=numbers[0]))
            found.append((progress.remaining(), end - time_s))
    return found


def test_up_to_a_third_of_the_jobs_the_time_left_is_within_30_percent():
    """Recorded: the default `kedro run` of 2026-12-05 (the object rule, 2 workers),
    its log turned into a trace by benchmarks/progress_trace.py."""
    trace = json.loads(TRACE.read_text())

    def within(estimates: list[tuple[float, float]]) -> list[bool]:
        return [abs(guess - truth) <= 0.3 * truth for guess, truth in estimates]

    assert all(within(replay(trace))) and len(replay(trace)) == 6
    assert not all(within(replay(trace, expected=False)))  # by the cap: off by more
