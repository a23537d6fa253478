"""The CLI's progress lines (transfers, a remote merge's wait): on a terminal, nothing otherwise."""
from __future__ import annotations

from hub.cli.progress import ByteProgress, MergeProgress, human_bytes


def test_human_bytes_picks_a_readable_unit():
    assert [human_bytes(n) for n in (512, 1536, 12 * 1024**2, 3.2 * 1024**3)] == [
        "512 B", "1.5 KiB", "12.0 MiB", "3.2 GiB"]


def test_the_progress_line_has_bytes_done_percent_rate_and_time_left(capsys):
    now = [10.0]
    bar = ByteProgress("pulling alice/tiny@1", 40 * 1024**2, enabled=True, clock=lambda: now[0])
    now[0] = 12.0
    bar.update(10 * 1024**2)  # 10 MiB in 2 s: 5 MiB/s, 30 MiB to go
    assert bar.line() == "pulling alice/tiny@1 10.0 MiB / 40.0 MiB  25% 5.0 MiB/s, about 6s left"
    now[0] = 12.05
    bar.update(1024**2)  # within REDRAW_S of the last draw: not redrawn
    now[0] = 18.0
    bar.update(29 * 1024**2)
    bar.finish()
    drawn = capsys.readouterr().err.split("\r")[1:]
    assert [line.rstrip() for line in drawn] == [
        "pulling alice/tiny@1 10.0 MiB / 40.0 MiB  25% 5.0 MiB/s, about 6s left",
        "pulling alice/tiny@1 40.0 MiB / 40.0 MiB 100% 5.0 MiB/s",
        "pulling alice/tiny@1 40.0 MiB / 40.0 MiB 100% 5.0 MiB/s"]
    assert drawn[-1].endswith("\n") and not drawn[-2].endswith("\n")


def test_no_progress_is_drawn_when_stderr_is_not_a_terminal(capsys):
    with ByteProgress("pushing", 100) as bar:
        bar.update(100)
    assert capsys.readouterr() == ("", "")


def test_the_wait_line_shows_queued_then_modules_done_and_time_left(capsys):
    now = [100.0]
    bar = MergeProgress("m1", enabled=True, clock=lambda: now[0])
    bar.update({"status": "queued", "queue_position": 3, "progress": 0.0, "modules": 64})
    now[0] = 130.0  # half a minute queued: not counted against the merge's speed
    bar.update({"status": "running", "progress": 0.0, "modules": 64})
    now[0] = 131.0
    bar.update({"status": "running", "progress": 0.125, "modules": 64})  # too early to guess
    now[0] = 140.0
    bar.update({"status": "running", "progress": 0.25, "modules": 64})
    bar.update({"status": "running", "progress": 0.25, "modules": 64})  # unchanged: not redrawn
    bar.finish()
    drawn = capsys.readouterr().err.split("\r")[1:]
    assert [line.rstrip() for line in drawn] == [
        "merge m1 queued, 3 in line",
        "merge m1 running: 0/64 modules   0%",
        "merge m1 running: 8/64 modules  12%",
        "merge m1 running: 16/64 modules  25%, about 30s left"]
    assert drawn[-1].endswith("\n") and not drawn[-2].endswith("\n")


def test_the_wait_line_is_silent_when_stderr_is_not_a_terminal(capsys):
    bar = MergeProgress("m1")
    bar.update({"status": "queued", "progress": 0.0, "modules": 6})
    bar.finish()
    assert capsys.readouterr() == ("", "")
