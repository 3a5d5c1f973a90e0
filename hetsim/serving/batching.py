"""Continuous batching on one replica, as SimPy processes on the engine.

A replica runs as many batch loops as it has pipeline stages (at most ``MAX_IN_FLIGHT``), so that
different batches occupy different stages at once (the engine's FIFO lanes serialise them per
stage). Each loop admits what
waits for the replica up to ``max_batch`` sequences; an iteration is either a prefill of the newly
admitted requests (their first token) or one decode step of every running request (prefill first,
as vLLM does). Per-step costs are the engine's: ``pipeline_pass`` books every stage's lockstep task
and every pipeline send.

HexGen's runtime (``static=True``; HexGen, arXiv 2311.11514, and its repo Relaxed-System-Lab/HexGen)
has no continuous batching: a loop admits a batch only when its previous one has finished, and the
batch runs to completion. Batches in different loops still overlap stage by stage (stage k works on
batch n+1 while stage k+1 works on batch n). ``admit`` may refuse a request when it is taken from
the queue (HexGen's simulator drops a request that would miss its deadline); ``on_drop`` records it.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from hetsim.models.spec import ModelSpec
from hetsim.serving.workload import Request
from hetsim.sim.engine import Engine
from hetsim.strategies.hexgen import HexGenPlan, Replica
from hetsim.strategies.pipeline import pipeline_pass

MAX_IN_FLIGHT = 8  # batches in flight per replica at most (one per stage); KV is reserved for all
PROMPT_BUCKET = 16  # batched prefill length rounds up to this (bounds the op-cost cache)
KV_BUCKET = 32  # decode context rounds up to this


def in_flight(replica: Replica) -> int:
    return batches_in_flight(len(replica.stages))


def batches_in_flight(stages: int) -> int:
    """Batches a pipeline of ``stages`` stages keeps in flight (one per stage, at most MAX_IN_FLIGHT)."""
    return min(stages, MAX_IN_FLIGHT)


def bucket(x: float, size: int) -> int:
    return max(size, math.ceil(x / size) * size)


@dataclass
class Running:
    request: Request
    generated: int = 0


@dataclass
class ReplicaServer:
    index: int
    replica: Replica
    plan: HexGenPlan
    model: ModelSpec
    on_first: Callable[[Request, float], None]
    on_done: Callable[[Request, float], None]
    static: bool = False  # HexGen: a loop admits a batch only when empty (no continuous batching)
    # admit(request, now, busy loops): False drops the request unserved
    admit: Callable[[Request, float, int], bool] | None = None
    on_drop: Callable[[Request, float], None] | None = None
    queue: deque[Request] = field(default_factory=deque)
    waiting_loops: list = field(default_factory=list)
    outstanding: int = 0  # queued + running
    busy_loops: int = 0  # loops with a batch running

    @property
    def loops(self) -> int:
        return in_flight(self.replica)

    def submit(self, engine: Engine, request: Request) -> None:
        self.queue.append(request)
        self.outstanding += 1
        if self.waiting_loops:
            self.waiting_loops.pop(0).succeed()

    def start(self, engine: Engine) -> None:
        for _ in range(self.loops):
            engine.env.process(self._loop(engine))

    def _step(self, engine: Engine, phase, batch: int, seq: int, kv: int):
        yield from pipeline_pass(
            engine,
            self.replica.stages,
            self.model,
            phase,
            batch,
            seq,
            kv,
            self.plan.weight_dtype,
            self.plan.kv_dtype,
        )

    def _loop(self, engine: Engine):
        running: list[Running] = []
        while True:
            if not running and not self.queue:
                wake = engine.env.event()
                self.waiting_loops.append(wake)
                yield wake
                continue
            new: list[Running] = []
            while (
                self.queue and len(running) + len(new) < self.plan.max_batch and not (self.static and running)
            ):
                req = self.queue.popleft()
                if self.admit is not None and not self.admit(req, engine.env.now, self.busy_loops):
                    self.outstanding -= 1
                    if self.on_drop is not None:
                        self.on_drop(req, engine.env.now)
                    continue
                new.append(Running(req))
            if not running and not new:
                continue
            if not running:
                self.busy_loops += 1
            if new:
                seq = bucket(sum(r.request.prompt_len for r in new) / len(new), PROMPT_BUCKET)
                yield from self._step(engine, "prefill", len(new), seq, seq)
                for r in new:
                    r.generated = 1
                    self.on_first(r.request, engine.env.now)
                running += new
            else:
                ctx = sum(r.request.prompt_len + r.generated for r in running) / len(running)
                yield from self._step(engine, "decode", len(running), 1, bucket(ctx, KV_BUCKET))
                for r in running:
                    r.generated += 1
            still = []
            for r in running:
                if r.generated >= r.request.output_len:
                    self.outstanding -= 1
                    self.on_done(r.request, engine.env.now)
                else:
                    still.append(r)
            running = still
            if not running:
                self.busy_loops -= 1
