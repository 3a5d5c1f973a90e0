"""HexGen's genetic-algorithm scheduler, as a baseline beside CP-SAT (HexGen, arXiv 2311.11514,
§ scheduling; its repo Relaxed-System-Lab/HexGen, ``experimental/optimizer/genetic_algorithm.py``).

- An individual is a partition of the rig's GPUs into groups; each group becomes one replica.
- The first individual groups the GPUs by k-means on the communication matrix (route latency
  between every pair of GPUs); k is the elbow: the smallest k whose within-cluster sum of squares is
  at most ``ELBOW`` of k = 1's. The rest of the population are mutations of it.
- Mutations: move one GPU between groups, swap two GPUs, split a group in halves (machine order),
  merge two groups.
- Inner level (the released code's, not a DP): per machine and GPU type in a group, the largest TP
  degrees that fit, in machine order; layers in proportion to memory bandwidth, capped by memory
  (``balance_layers``). A group whose GPUs cannot hold the model is pruned (its GPUs stay idle).
- Fitness: SLO attainment at the given requests and deadlines (HexGen's objective), estimated
  without the engine (``hetsim.serving.estimate``); more replicas break ties, as the released code's
  1 / #groups does. (mu + lambda) selection with tournaments of 3; ``random.Random(seed)`` makes a
  run deterministic.

Deviations from the released code, for speed and because its constants are synthetic: a smaller
population and fewer generations by default, and this cost model rather than its fixed constants.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.cluster.vq import kmeans2

from hetsim.hardware.rig import Rig
from hetsim.models.sharding import tp_degrees
from hetsim.models.spec import ModelSpec
from hetsim.serving.batching import batches_in_flight
from hetsim.serving.estimate import TimesCache, estimate_attainment
from hetsim.serving.workload import Request
from hetsim.strategies.hexgen import HexGenPlan, Replica
from hetsim.strategies.pipeline import Stage, balance_layers
from hetsim.workload import Workload

ELBOW = 0.05  # k-means: stop adding clusters once the within-cluster spread is this share of k = 1's

Genome = tuple[tuple[str, ...], ...]  # groups of GPU names, each sorted; the groups sorted


@dataclass(frozen=True)
class GAResult:
    plan: HexGenPlan | None
    fitness: float  # estimated SLO attainment of the best individual
    evaluations: int
    seconds: float
    history: tuple[float, ...]  # best fitness after each generation


def canonical(groups: Sequence[Sequence[str]]) -> Genome:
    return tuple(sorted(tuple(sorted(g)) for g in groups if g))


def comm_matrix(rig: Rig, gpus: Sequence[str]) -> np.ndarray:
    """Route latency between every pair of GPUs (seconds; 0 on the diagonal)."""
    return np.array([[rig.route(a, b).latency_s if a != b else 0.0 for b in gpus] for a in gpus])


def kmeans_groups(rig: Rig, gpus: Sequence[str], seed: int, k_max: int = 8) -> Genome:
    """GPUs grouped by k-means on the rows of the communication matrix, k by the elbow rule."""
    data = comm_matrix(rig, gpus)
    scale = float(data.max()) or 1.0
    data = data / scale
    base = float(((data - data.mean(axis=0)) ** 2).sum())
    labels = np.zeros(len(gpus), dtype=int)
    for k in range(2, min(k_max, len(gpus)) + 1):
        if base <= 0:
            break
        centroids, lab = kmeans2(data, k, seed=seed, minit="++")
        spread = float(((data - centroids[lab]) ** 2).sum())
        labels = lab
        if spread <= ELBOW * base:
            break
    return canonical([[g for g, lab in zip(gpus, labels, strict=True) if lab == c] for c in set(labels)])


class HexGenGA:
    def __init__(
        self,
        rig: Rig,
        model: ModelSpec,
        requests: Sequence[Request],
        deadlines: Sequence[float] | np.ndarray,
        *,
        max_batch: int = 1,
        seed: int = 123,  # the released code's random.seed(123)
    ):
        self.rig, self.model, self.requests, self.deadlines = (
            rig,
            model,
            list(requests),
            np.asarray(deadlines),
        )
        self.max_batch, self.seed = max_batch, seed
        self.rng = random.Random(seed)
        self.gpus = [d for d, dev in rig.devices.items() if dev.kind == "gpu"]
        self._node_order = {n: i for i, n in enumerate(rig.nodes)}
        prompt = max(r.prompt_len for r in self.requests)
        output = max(r.output_len for r in self.requests)
        self.workload = Workload(batch=max_batch, prompt_len=prompt, gen_len=output)
        self._replica: dict[tuple[str, ...], Replica | None] = {}
        self._fitness: dict[Genome, tuple[float, int]] = {}
        self._times: TimesCache = {}  # per-replica times, shared by every individual's estimate

    # ---- inner level -----------------------------------------------------------------------------
    def replica(self, group: tuple[str, ...]) -> Replica | None:
        """The group's pipeline: per machine and GPU type the largest TP degrees, layers by
        bandwidth within memory; None when the group cannot hold the model (pruned)."""
        if group in self._replica:
            return self._replica[group]
        buckets: dict[tuple[int, str], list[str]] = {}
        for g in group:
            dev = self.rig.devices[g]
            buckets.setdefault((self._node_order[dev.node], dev.model), []).append(g)
        tp_groups: list[tuple[str, ...]] = []
        for key in sorted(buckets):
            left = sorted(buckets[key])
            while left:
                t = max(tp_degrees(self.model, len(left)))
                tp_groups.append(tuple(left[:t]))
                left = left[t:]
        rep = None
        if len(tp_groups) <= self.model.layers:
            # what a serving run allocates (``serve``): KV for every batch in flight, a batch's prompt
            w = self.workload
            layers = balance_layers(
                self.model,
                tp_groups,
                self.rig,
                kv_sequences=w.batch * batches_in_flight(len(tp_groups)),
                context=w.context_len,
                act_tokens=w.batch * w.prompt_len,
            )
            if layers is not None:
                rep = Replica(tuple(Stage(g, n) for g, n in zip(tp_groups, layers, strict=True)))
        self._replica[group] = rep
        return rep

    def plan(self, genome: Genome) -> HexGenPlan | None:
        reps = [r for r in (self.replica(g) for g in genome) if r is not None]
        return HexGenPlan(tuple(reps), max_batch=self.max_batch) if reps else None

    def fitness(self, genome: Genome) -> tuple[float, int]:
        if genome not in self._fitness:
            plan = self.plan(genome)
            if plan is None:
                self._fitness[genome] = (-1.0, 0)
            else:
                att = estimate_attainment(
                    plan, self.rig, self.model, self.requests, self.deadlines, times=self._times
                )
                self._fitness[genome] = (att, len(plan.replicas))
        return self._fitness[genome]

    # ---- mutations -------------------------------------------------------------------------------
    def mutate(self, genome: Genome) -> Genome:
        groups = [list(g) for g in genome]
        rng = self.rng
        op = rng.choices(("move", "swap", "split", "merge"), weights=(3, 3, 3, 1))[0]
        if op == "merge" and len(groups) >= 2:
            a, b = rng.sample(range(len(groups)), 2)
            groups[a] += groups[b]
            groups[b] = []
        elif op == "split":
            a = rng.randrange(len(groups))
            if len(groups[a]) >= 2:
                ordered = sorted(groups[a], key=lambda g: (self._node_order[self.rig.devices[g].node], g))
                half = len(ordered) // 2
                groups[a], extra = ordered[:half], ordered[half:]
                groups.append(extra)
        elif len(groups) >= 2:
            a, b = rng.sample(range(len(groups)), 2)
            if groups[a]:
                i = rng.randrange(len(groups[a]))
                if op == "move":
                    groups[b].append(groups[a].pop(i))
                elif groups[b]:
                    j = rng.randrange(len(groups[b]))
                    groups[a][i], groups[b][j] = groups[b][j], groups[a][i]
        return canonical(groups)

    # ---- the search ------------------------------------------------------------------------------
    def run(self, population: int = 8, generations: int = 12, offspring: int = 6) -> GAResult:
        start = time.perf_counter()
        first = kmeans_groups(self.rig, self.gpus, self.seed)
        pop = [first]
        while len(pop) < population:
            g = first
            for _ in range(self.rng.randint(1, 3)):
                g = self.mutate(g)
            pop.append(g)
        history = []
        for _ in range(generations):
            children = []
            for _ in range(offspring):
                parent = max(self.rng.sample(pop, min(3, len(pop))), key=lambda g: (self.fitness(g), g))
                children.append(self.mutate(parent))
            pool = list(dict.fromkeys(pop + children))
            pool.sort(key=lambda g: (self.fitness(g), g), reverse=True)
            pop = pool[:population]
            history.append(self.fitness(pop[0])[0])
        best = pop[0]
        return GAResult(
            self.plan(best),
            self.fitness(best)[0],
            len(self._fitness),
            time.perf_counter() - start,
            tuple(history),
        )


def search_ga(
    rig: Rig,
    model: ModelSpec,
    requests: Sequence[Request],
    deadlines: Sequence[float] | np.ndarray,
    *,
    max_batch: int = 1,
    seed: int = 123,
    population: int = 8,
    generations: int = 12,
    offspring: int = 6,
) -> GAResult:
    """HexGen's GA for ``requests`` with ``deadlines`` (see the module doc)."""
    ga = HexGenGA(rig, model, requests, deadlines, max_batch=max_batch, seed=seed)
    return ga.run(population, generations, offspring)
