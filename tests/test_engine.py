"""The engine's contract: closed forms without contention, FIFO sharing, bytes and memory kept."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hetsim.models.spec import Op, OpKind
from hetsim.sim.bandwidth import BandwidthTimeline
from hetsim.sim.engine import Engine
from hetsim.sim.memory import OutOfMemory


def matmul(flops: float, nbytes: float, name: str = "mm") -> Op:
    return Op(name, OpKind.MATMUL, 0, flops, nbytes, 0.0, 0.0)


def run(rig, body) -> tuple[Engine, float]:
    engine = Engine(rig, trace=True)

    def schedule(e):
        yield from body(e)

    return engine, engine.run(schedule)


def test_serial_schedule_is_the_closed_form_sum(rig):
    op = matmul(100e12, 0.0)  # 1 s on the GPU
    gpu_mem_op = matmul(0.0, 2e12)  # 2 s of HBM traffic

    def body(e):
        yield e.transfer("n0.cpu0", "n0.gpu0", 10e9)  # 1 s over PCIe
        yield e.compute("n0.gpu0", op)
        yield e.compute("n0.gpu0", gpu_mem_op)
        yield e.transfer("n0.disk0", "n0.cpu0", 4e9)  # 2 s at the disk's read rate
        yield e.transfer("n0.cpu0", "n0.disk0", 1e9)  # 1 s at its write rate
        yield e.transfer("n0.gpu0", "n1.gpu0", 1e9)  # 1 s + 2 ms of latency
        e.token_done()

    _, makespan = run(rig, body)
    assert makespan == pytest.approx(1 + 1 + 2 + 2 + 1 + 1.002, rel=1e-12)


def test_two_transfers_sharing_a_link_take_twice_as_long(rig):
    def one(e):
        yield e.transfer("n0.cpu0", "n0.gpu0", 5e9)

    def two(e):
        yield e.all_of([e.transfer("n0.cpu0", "n0.gpu0", 5e9), e.transfer("n0.cpu0", "n0.gpu0", 5e9)])

    _, t1 = run(rig, one)
    _, t2 = run(rig, two)
    assert t2 == pytest.approx(2 * t1)


def test_opposite_directions_overlap(rig):
    def body(e):
        yield e.all_of([e.transfer("n0.cpu0", "n0.gpu0", 5e9), e.transfer("n0.gpu0", "n0.cpu0", 5e9)])

    _, t = run(rig, body)
    assert t == pytest.approx(0.5)


def test_compute_and_copy_overlap(rig):
    def body(e):
        yield e.all_of([e.transfer("n0.cpu0", "n0.gpu0", 10e9), e.compute("n0.gpu0", matmul(100e12, 0))])

    _, t = run(rig, body)
    assert t == pytest.approx(1.0)


def test_pageable_copies_are_slower(rig):
    def body(e):
        yield e.transfer("n0.cpu0", "n0.gpu0", 10e9, pinned=False)

    _, t = run(rig, body)
    assert t == pytest.approx(2.0)


def test_cpu_op_and_dma_share_dram(rig):
    # A CPU op that streams 100 GB (1 s alone at 100 GB/s) while PCIe reads 10 GB from the same
    # DRAM: the DMA books 10 GB/s first, so the op gets 90 GB/s for that second.
    def body(e):
        dma = e.transfer("n0.cpu0", "n0.gpu0", 10e9)
        op = e.compute("n0.cpu0", Op("gemv", OpKind.MATMUL, 0, 0.0, 100e9, 0.0, 0.0))
        yield e.all_of([dma, op])

    _, t = run(rig, body)
    assert t == pytest.approx(1.0 + 10e9 / 100e9)


def test_bytes_moved_equal_bytes_asked(rig):
    sizes = [1e6 * (i + 1) for i in range(20)]

    def body(e):
        yield e.all_of([e.transfer("n0.cpu0", "n0.gpu0", s) for s in sizes])

    engine, _ = run(rig, body)
    assert engine.bytes_transferred == pytest.approx(sum(sizes))
    traced = sum(ev["args"]["bytes"] for ev in engine.tracer.events)
    assert traced == pytest.approx(sum(sizes) * 1)  # one lane on this route


def test_memory_ledger_refuses_past_capacity(rig):
    engine = Engine(rig, memory_timeline=True)
    engine.alloc("n0.gpu0", 10e9, "weights")
    with pytest.raises(OutOfMemory, match=r"n0.gpu0.*kv"):
        engine.alloc("n0.gpu0", 7e9, "kv")
    engine.free("n0.gpu0", "weights")
    engine.alloc("n0.gpu0", 7e9, "kv")
    assert engine.memory.peaks()["n0.gpu0"] == 10e9
    assert all(used <= engine.memory.capacity(dev) for _, dev, used in engine.memory.timeline)


def test_allreduce_is_alpha_beta(rig):
    def body(e):
        yield e.allreduce(["n0.gpu0", "n1.gpu0"], 1e9)

    _, t = run(rig, body)
    # two ranks: recursive doubling, one step of (alpha + m / beta); alpha = 2 ms over the switch
    assert t == pytest.approx(2e-3 + 1.0)


def test_trace_is_chrome_json(rig, tmp_path):
    def body(e):
        yield e.compute("n0.gpu0", matmul(1e12, 0))

    engine, _ = run(rig, body)
    path = tmp_path / "t.json"
    engine.tracer.write(path)
    doc = json.loads(path.read_text())
    names = {ev["args"]["name"] for ev in doc["traceEvents"] if ev["ph"] == "M"}
    assert names == {"n0.gpu0:compute"}
    assert any(ev["ph"] == "X" and ev["args"]["flops"] == 1e12 for ev in doc["traceEvents"])


def test_same_inputs_same_output(rig):
    def body(e):
        for i in range(50):
            yield e.all_of(
                [e.transfer("n0.cpu0", "n0.gpu0", 1e8 * (i % 3 + 1)), e.compute("n0.cpu0", matmul(1e9, 1e9))]
            )

    runs = [run(rig, body) for _ in range(2)]
    assert runs[0][1] == runs[1][1]
    assert runs[0][0].tracer.events == runs[1][0].tracer.events


def test_bandwidth_timeline_books_leftover():
    tl = BandwidthTimeline("dram", 100.0)
    assert tl.book(0.0, 0.0, 100.0, 60.0) == pytest.approx(100 / 60)
    # the second flow gets 40 while the first runs, then up to its cap of 100
    end = tl.book(0.0, 0.0, 100.0, 100.0)
    first_part = 40 * (100 / 60)
    assert end == pytest.approx(100 / 60 + (100 - first_part) / 100)


def test_a_block_of_ops_costs_the_sum_of_its_ops(rig):
    ops = (matmul(100e12, 0.0, "a"), matmul(0.0, 3e12, "b"), matmul(50e12, 1e12, "c"))

    def one_task(e):
        yield e.compute("n0.gpu0", ops)

    def three_tasks(e):
        for op in ops:
            yield e.compute("n0.gpu0", op)

    engine, t_block = run(rig, one_task)
    _, t_ops = run(rig, three_tasks)
    assert t_block == pytest.approx(t_ops) == pytest.approx(1 + 3 + 1)
    assert engine.tasks == 1


def test_lockstep_equals_separate_computes_and_allreduces(rig):
    group = ["n0.gpu0", "n1.gpu0"]
    attention, mlp = (matmul(10e12, 0.0, "attn"),), (matmul(20e12, 0.0, "mlp"),)

    def separate(e):
        for _ in range(3):
            yield e.all_of(e.compute(d, attention) for d in group)
            yield e.allreduce(group, 1e6)
            yield e.all_of(e.compute(d, mlp) for d in group)
            yield e.allreduce(group, 1e6)

    def together(e):
        yield e.lockstep(group, [attention, 1e6, mlp, 1e6], repeat=3)

    engine_a, t_a = run(rig, separate)
    engine_b, t_b = run(rig, together)
    assert t_b == pytest.approx(t_a)
    assert engine_b.bytes_transferred == pytest.approx(engine_a.bytes_transferred)
    assert engine_b.tasks == 1


def test_lockstep_ranks_on_one_shared_dram_compete_for_it():
    """Two ranks on slices of one socket: together they get the shared DRAM, not twice their own."""
    from dataclasses import replace

    from hetsim.hardware.rig import Rig
    from hetsim.hardware.types import ComputeDevice, Link, Node
    from tests.conftest import EFF

    def rig(shared_bw: float) -> Rig:
        cpus = {
            f"n0.cpu{i}": ComputeDevice(
                f"n0.cpu{i}", "slice", "cpu", "n0", 8e9, 10e9, {"fp32": 1e12}, EFF, cores=1
            )
            for i in range(2)
        }
        link = Link("n0.shm", "shm", "n0.cpu0", "n0.cpu1", 1e9, 0.0, 1e9)
        node = Node("n0", "r", 16e9, tuple(cpus), (), (), cpu_sharing="dram", shared_dram_bw=shared_bw)
        return Rig("slices", "<test>", {"n0": node}, cpus, {}, {"n0.shm": link})

    gemv = (Op("gemv", OpKind.MATMUL, 0, 0.0, 1e9, 0.0, 0.0),)  # 0.1 s alone at 10 GB/s

    def body(e):
        yield e.lockstep(["n0.cpu0", "n0.cpu1"], [gemv])

    _, independent = run(replace(rig(20e9)), body)
    _, shared = run(rig(12e9), body)
    assert independent == pytest.approx(0.1)
    assert shared == pytest.approx(2e9 / 12e9)
    # A group that waits for its slowest rank loses the node's straggler share of every segment,
    # DRAM stretch included; one rank alone waits for nobody.
    straggly = rig(12e9)
    straggly = replace(straggly, nodes={"n0": replace(straggly.nodes["n0"], straggler_fraction=0.25)})
    _, waited = run(straggly, body)
    assert waited == pytest.approx(1.25 * 2e9 / 12e9)

    def alone(e):
        yield e.lockstep(["n0.cpu0"], [gemv])

    assert run(straggly, alone)[1] == pytest.approx(0.1)


def test_queued_follow_up_equals_waiting_for_the_copy(rig):
    """``after``: a kernel queued behind its copy (CUDA-stream style) ends when waiting would."""
    op = matmul(50e12, 0.0)

    def waiting(e):
        yield e.transfer("n0.cpu0", "n0.gpu0", 5e9)
        yield e.compute("n0.gpu0", op)

    def queued(e):
        e.transfer("n0.cpu0", "n0.gpu0", 5e9)
        yield e.compute("n0.gpu0", op, after=e.last_end)

    _, t_wait = run(rig, waiting)
    _, t_queue = run(rig, queued)
    assert t_queue == pytest.approx(t_wait) == pytest.approx(0.5 + 0.5)


def test_booked_copies_joined_by_until_equal_all_of(rig):
    """``transfer_time`` + ``until`` (FlexGen's released loop) resumes at the very clock ``transfer``
    + ``all_of`` does, copy sizes and interleaved compute alike, to the bit."""
    import random

    rnd = random.Random(7)

    def copy():
        return rnd.choice(["n0.cpu0", "n0.disk0"]), rnd.uniform(0, 3e9) * rnd.choice([0, 1, 1])

    plan = [[copy() for _ in range(4)] for _ in range(60)]

    def body(booked: bool):
        def schedule(e):
            for copies in plan:
                issue = e.transfer_time if booked else e.transfer
                ev = [issue(src, "n0.gpu0", n, label="load") for src, n in copies[:2]]
                yield e.compute("n0.gpu0", matmul(3e12, 1e9))
                ev += [issue("n0.gpu0", src, n, pinned=False) for src, n in copies[2:]]
                yield e.until(ev) if booked else e.all_of(ev)
                e.token_done()

        return schedule

    runs = []
    for booked in (False, True):
        engine = Engine(rig)
        makespan = engine.run(body(booked))
        runs.append((makespan, engine.token_times, engine.bytes_transferred, engine.tasks,
                     {n: (lane.free_at, lane.busy_s) for n, lane in engine.lanes.items()}))  # fmt: skip
    assert runs[0] == runs[1]


def test_inlined_dram_booking_equals_the_reference():
    """``BandwidthTimeline.book`` (prune and split inlined) against the plain algorithm, to the bit."""
    import random

    class Reference(BandwidthTimeline):
        def book(self, now, start, nbytes, cap_bps):
            if nbytes <= 0:
                return start
            self._prune(now)
            cap = min(cap_bps, self.capacity)
            i = self._split(start)
            remaining, t, k = nbytes, start, i
            while True:
                seg_end = self._times[k + 1] if k + 1 < len(self._times) else float("inf")
                rate = min(cap, self.capacity - self._booked[k])
                if rate > 1.0:
                    if remaining <= rate * (seg_end - t):
                        end = t + remaining / rate
                        break
                    remaining -= rate * (seg_end - t)
                t = seg_end
                k += 1
            for j in range(i, self._split(end)):
                self._booked[j] += min(cap, self.capacity - self._booked[j])
            self.bytes_moved += nbytes
            return end

    rnd = random.Random(3)
    fast, ref = BandwidthTimeline("d", 100e9), Reference("d", 100e9)
    now = 0.0
    for _ in range(2000):
        now += rnd.choice([0.0, rnd.uniform(0, 0.05)])
        start = now + rnd.choice([0.0, rnd.uniform(0, 0.1)])
        nbytes, cap = rnd.choice([0.0, rnd.uniform(1e6, 5e9)]), rnd.uniform(1e9, 150e9)
        assert fast.book(now, start, nbytes, cap) == ref.book(now, start, nbytes, cap)
    assert (fast._times, fast._booked, fast.bytes_moved) == (ref._times, ref._booked, ref.bytes_moved)


def test_copies_issued_at_a_booked_computes_end_equal_waiting_for_it(rig):
    """``compute_time`` + ``transfer_time(at=...)`` + ``until`` (FlexGen's GPU-only positions) equal
    waiting on the kernel, then issuing the copies and ``all_of``, to the bit."""
    import random

    rnd = random.Random(11)
    plan = [(rnd.uniform(0, 5e12), rnd.uniform(0, 3e9), rnd.uniform(0, 2e9)) for _ in range(80)]

    def body(booked: bool):
        def schedule(e):
            for flops, load, store in plan:
                if booked:
                    ev = [e.transfer_time("n0.cpu0", "n0.gpu0", load)]
                    done = e.compute_time("n0.gpu0", matmul(flops, 1e9))
                    ev += [done, e.transfer_time("n0.gpu0", "n0.cpu0", store, pinned=False, at=done)]
                    yield e.until(ev)
                else:
                    ev = [e.transfer("n0.cpu0", "n0.gpu0", load)]
                    yield e.compute("n0.gpu0", matmul(flops, 1e9))
                    ev += [e.transfer("n0.gpu0", "n0.cpu0", store, pinned=False)]
                    yield e.all_of(ev)
                e.token_done()

        return schedule

    runs = []
    for booked in (False, True):
        engine = Engine(rig)
        makespan = engine.run(body(booked))
        lanes = {n: (lane.free_at, lane.busy_s) for n, lane in engine.lanes.items()}
        runs.append((makespan, engine.token_times, engine.bytes_transferred, engine.tasks, lanes))
    assert runs[0] == runs[1]


def test_bound_label_names_each_phase_where_they_differ(rig):
    # 1 s of compute-bound prefill, then two 2 s memory-bound decode steps: the whole run's time is mostly
    # memory-bound, and the label says what each phase was bound by.
    def body(e):
        yield e.compute("n0.gpu0", matmul(100e12, 0.0))
        e.token_done()
        for _ in range(2):
            yield e.compute("n0.gpu0", matmul(0.0, 2e12))
            e.token_done()

    engine, _ = run(rig, body)
    assert engine.bound_of("n0.gpu0:compute") == "compute-bound prefill, memory-bound decode"

    def same(e):  # both phases memory-bound: one word
        for _ in range(3):
            yield e.compute("n0.gpu0", matmul(0.0, 2e12))
            e.token_done()

    engine, _ = run(rig, same)
    assert engine.bound_of("n0.gpu0:compute") == "memory-bound"
    assert engine.bound_of("n0.pcie.gpu0:fwd") == ""  # not a compute stream


@given(
    capacity=st.floats(10e9, 100e9),  # bytes/s (the timeline counts rates <= 1 B/s as none)
    earlier=st.floats(1e9, 150e9),
    cap=st.floats(1e9, 150e9),
    overlap=st.floats(0.1, 5.0),
    extra=st.floats(0.1, 5.0),
)
def test_overlap_delay_is_what_the_timeline_books(capacity, earlier, cap, overlap, extra):
    """``bandwidth.overlap_delay`` (the FlexGen LP's share of host DRAM) is the delay
    ``BandwidthTimeline.book`` gives a later flow that outlasts an earlier one: one formula, the
    engine's."""
    from hetsim.sim.bandwidth import BandwidthTimeline, overlap_delay

    dram = BandwidthTimeline("dram", capacity)
    dram.book(0.0, 0.0, earlier * overlap, earlier)  # ends at `overlap` when it fits
    first_end = overlap * earlier / min(earlier, capacity)
    full = min(cap, capacity)
    got = min(full, capacity - min(earlier, capacity))
    nbytes = got * first_end + full * extra  # the later flow outlasts the earlier one by `extra`
    end = dram.book(0.0, 0.0, nbytes, cap)
    assert end == pytest.approx(nbytes / full + overlap_delay(capacity, earlier, cap) * first_end, rel=1e-9)
