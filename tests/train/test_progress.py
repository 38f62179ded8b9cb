"""Without a bar (logs, the experiment runner), progress lines still say how far a run is."""
from umema_jax.train import progress
from umema_jax.train.progress import Progress


def test_lines_without_a_bar_carry_count_and_eta(capsys, monkeypatch):
    clock = iter([100.0, 160.0])                       # start, then 60 s later
    monkeypatch.setattr(progress.time, "perf_counter", lambda: next(clock))
    bar = Progress(total=50, initial=10, enabled=False)
    bar.update(10)
    bar.write("step 20: dev f1=0.5")
    line = capsys.readouterr().err.strip()
    # 10 steps in 60 s, 30 to go: 3 minutes left
    assert line == "step 20: dev f1=0.5 [20/50, elapsed 1:00, ETA 3:00]"


def test_clock_formats_hours():
    assert progress._clock(3725) == "1:02:05" and progress._clock(59.6) == "1:00"
