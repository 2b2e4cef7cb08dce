"""Long probe steps report progress: a line with the time left every so often when not on a terminal."""

import io
import re

from eval.probes.progress import Progress


def test_log_lines_say_how_far_and_how_long_is_left():
    stream = io.StringIO()  # not a terminal: lines, not a bar
    with Progress(4, "linear probe, l2 grid", unit="fit", every_s=0.0, stream=stream) as progress:
        for _ in range(4):
            progress.update()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 4
    assert re.fullmatch(r"linear probe, l2 grid: 2/4 fits, \d+ s, about \d+ s left", lines[1])
    assert lines[-1].endswith("about 0 s left")


def test_short_steps_and_disabled_progress_print_nothing():
    stream = io.StringIO()
    with Progress(3, "features", unit="batch", every_s=3600.0, stream=stream) as progress:
        progress.update(3)  # within the first interval: nothing to say
    with Progress(3, "features", every_s=0.0, enabled=False, stream=stream) as progress:
        progress.update(3)
    assert stream.getvalue() == ""


def test_units_are_pluralised_as_words():
    stream = io.StringIO()
    with Progress(2, "features of 10 images", unit="batch", every_s=0.0, stream=stream) as progress:
        progress.update()
    assert "1/2 batches," in stream.getvalue()
    stream = io.StringIO()
    with Progress(2, "MLP probe", unit="epoch", every_s=0.0, stream=stream) as progress:
        progress.update()
    assert "1/2 epochs," in stream.getvalue()
