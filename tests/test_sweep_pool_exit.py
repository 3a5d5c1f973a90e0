"""The sweep's pool, left by an interrupt, leaves no live manager thread to the interpreter's exit:
CPython 3.11's ``_python_exit`` wakes such a thread without the pool's lock and races it closing its
pipe ("OSError: [Errno 9] Bad file descriptor" printed after the sweep's last line, a 1-in-28 flake of
test_ctrl_c_while_plots_are_drawn_stops_the_drawing_workers)."""

import threading
import time

import pytest

from hetsim.sweep.runner import stoppable_pool
from hetsim.workers import JoinedPool


def _nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def test_a_pool_left_by_an_interrupt_has_its_manager_thread_joined():
    managers: list[threading.Thread] = []
    with pytest.raises(KeyboardInterrupt), stoppable_pool(2) as (pool, _deliver):
        assert isinstance(pool, JoinedPool)
        futures = [pool.submit(_nap, 30.0) for _ in range(4)]
        while not any(f.running() for f in futures):
            time.sleep(0.01)
        managers.append(pool._executor_manager_thread)
        raise KeyboardInterrupt
    assert managers[0] is not None and not managers[0].is_alive()


def test_a_pool_let_go_still_waits_for_its_manager_at_the_end_of_its_block():
    with JoinedPool(1) as pool:
        assert pool.submit(_nap, 0.0).result() == 0.0
        manager = pool._executor_manager_thread
        pool.shutdown(wait=False)
    assert not manager.is_alive()
