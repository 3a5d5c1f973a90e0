"""validate.step_profile warms up over every decode position it then times and profiles: three
warm-up steps left it timing a generation's first visits of positions (63 ms a step at batch 1 on the
H200 host, against 11-21 ms once visited, and 5.7 ms of kernels)."""

import pytest

from validate.step_profile import positions


@pytest.mark.parametrize(("prompt_len", "steps"), [(512, 5), (1, 1), (128, 17)])
def test_the_warm_up_visits_every_measured_position(prompt_len, steps):
    warm, timed, profiled = positions(prompt_len, steps)
    assert len(timed) == len(profiled) == steps
    assert set(timed) | set(profiled) <= set(warm)
    assert not set(timed) & set(profiled) and min(timed) == prompt_len  # decode after the prompt
