"""FlexGen's policy search: a linear program over the 9 placement fractions per (gbs, nb).

The cost model is FlexGen's (Sheng et al., ICML 2023, arXiv 2303.06865) with the released runtime's
overlap structure (flex_opt.py in FMInference/FlexLLMGen), but every constant is derived from the rig
(link bandwidths, disk rates, op costs of the same ops the engine runs): none of FlexGen's fitted T4
constants (its released cost_model.py) is used. For one GPU batch size gbs, nb batches, and the
flags (CPU attention, compressed KV), time is linear in the fractions:

- per scheduling slot (attention, MLP; the last MLP, the embedding and the output layer once per
  token, each beside the next layer's weight load as the release pairs them: ``_positions``) the
  released loop costs
  max(w + c, p) + (nb - 1) max(c, p), with w = the next layer's weight load (sub-step 0 only),
  c = one batch's H2D cache/hidden loads, p = one batch's compute on the issuing thread (GPU ops,
  plus the KV gather and CPU attention when attention runs on the CPU). That is exactly the max of
  four linear forms, so it is an epigraph constraint; the D2H, disk-read and disk-write lanes give
  one more lower bound each. A batch's KV store (q) is issued in the next position (``store_cache(k -
  1)`` after ``compute_layer(k)``, flex_opt.py), whose barrier waits for it: the slot's first
  sub-step holds the previous slot's last store, the others one of its own, so with stores the slot
  is max(w + c, p, q_prev) + (nb - 1) max(c, p, q), nine forms. With CPU attention the disk share
  of the KV is read by the copy threads beside the thread (``store_cache``/``load_cache`` through
  ``submit_copy``, waited for at ``sync()``): its reads are more options of each sub-step's max
  (``_Slot.kr``, ``_disk_reads``), crossed with the others. With GPU attention the decode's KV load
  from the CPU is a host memcpy then its DMA (``_kv_load``); load_cache(k + 1) puts batches 1..nb-1's
  in the attention slot's first nb - 1 sub-steps and the next layer's first batch's in the MLP
  slot's last, so such a slot has a last sub-step of its own (``_Slot.cl``, ``pl``), and its first
  sub-step's memcpy runs beside the weight DMA, slowed by it on host DRAM (``_Slot.c0``, ``m0``):
  first + (nb - 2) middle + last, every option of each crossed (``_kv_forms``). Its disk share is
  read by the copy threads on the disk lane once K's CPU half is pinned and hopped over the link
  when it lands (general_copy's ``submit_copy``): the link carries the hop, and a loading sub-step
  is at least K's memcpy then the reads then V's hop (``_Slot.dk0``, ``dkm``, ``dkl``), the first
  also the next layer's weights' read then the reads then V's hop (``dw0``), each disk bound with
  its copies' latencies (``_latency``). K and V are
  two (memcpy, DMA) pairs, V pinned while K's DMA runs: the load waits for the later of K's
  memcpy then both DMAs and both memcpys then V's DMA, one form as both scale with cc (a 4-bit
  tensor is two such pairs and two reads, its data then its scales: ``copy_parts``);
- a weight tensor on disk goes the same way (``_weight_loads``): read by the copy threads on the
  disk lane, hopped over the link when it lands, after the position's other copies; w carries
  the hops on the link, and the first sub-step lasts at least the layer's copies tensor by tensor,
  each read then its hop beside the next read (``_weight_relay``, ``_Slot.wr``), and a loading first
  sub-step's KV hops after that chain (``_then_kv_hops``); a 4-bit part's conversion before its hop is
  slowed on host DRAM by the reads in flight beside it (``_converted``);
- memory (GPU, CPU, disk) is ``flexgen_policy.memory_plan``, linear in the fractions;
- the weight fractions are spread evenly over every layer's bytes (embedding and output included:
  init_weight_list places each layer by the same percentages); at a plan's own placement, where
  whole tensors give each block its own share, the loads are the plan's bytes (``placed``).

The LP minimises the block time; an optimum that splits a GPU-attention cache between the CPU and the
disk is timed again with V's pin slowed by K's disk read (``_second_pass``).
Candidates are ranked by time per sequence, and the best few are confirmed in the engine with the
runtime's per-tensor ("released") placement.
"""

from __future__ import annotations

import heapq
import itertools
import math
import time
from array import array
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from functools import lru_cache, partial
from typing import Any

from ortools.linear_solver import pywraplp

from hetsim.hardware.rig import ReadLog, Rig, reading, replay
from hetsim.models.spec import ModelSpec, Op
from hetsim.planner.ranking import Estimator, Evaluate, evaluator
from hetsim.sim.bandwidth import host_dram_bw, overlap_delay
from hetsim.sim.engine import rig_cost
from hetsim.sim.memory import usable_bytes
from hetsim.sim.run import fits
from hetsim.strategies.base import get_strategy
from hetsim.strategies.flexgen import endpoints
from hetsim.strategies.flexgen_ops import (
    KV_CONVERT,
    PACKED_RELAY,
    PLAIN_RELAY,
    host_copy_op,
    kv_gather_op,
    packed_unrelay_cost,
    substep_ops,
)
from hetsim.strategies.flexgen_policy import (
    COPY_RELAY_BYTES,
    FlexGenPlan,
    Fractions,
    ReleasedStep,
    Shape,
    ShapeMemory,
    copy_parts,
    fractions,
    gpu_weight_bytes,
    kv_token_bytes,
    layer_disk_copy_kinds,
    layer_weight_split,
    memory_at,
    memory_plan,
    packed_parts,
    released_steps,
    shape_memory,
    shape_of,
)
from hetsim.workload import Step, Workload

Split = tuple[tuple[float, float, float], ...]  # (GPU, CPU, disk) weight bytes of each scheduling layer
# each scheduling layer's disk copies, in order: (bytes, a 4-bit tensor's packed data?)
Copies = tuple[tuple[tuple[float, bool], ...], ...]
VARS = ("wg", "wc", "wd", "cg", "cc", "cd", "hg", "hc", "hd")
GBS_CHOICES = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)
NB_CHOICES = (1, 2, 3, 4, 6, 8, 10, 12, 16, 20, 24, 32)
CONFIRM = 3  # LP candidates confirmed in the engine
CONFIRM_WITHIN = 1.15  # ... if the LP puts them within 15 % of its best
TIE_BREAK = 1e-6  # of the compute time, per fraction a tier slower: orders the LP's ties (_tie_break)


@dataclass(frozen=True)
class Flags:
    cpu_attention: bool
    compress_cache: bool
    cache_tier: str = ""  # compressed KV cannot be split: "g", "c" or "d"
    compress_weight: bool = False  # 4-bit weights: only when the user asks (--dtype int4)
    pin_weight: bool = True  # --pin-weight 0: the CPU weights pageable, pinned per load (_weight_pin)


@dataclass(frozen=True)
class LpSolution:
    gbs: int
    nb: int
    flags: Flags
    x: dict[str, float]
    block_time_s: float  # LP estimate for one block of gbs * nb sequences
    time_per_seq_s: float  # whole workload time / batch, with ceil(batch / bls) blocks


@dataclass
class SearchOutcome:
    plan: FlexGenPlan | None
    candidates: list[LpSolution] = field(default_factory=list)
    lp_solved: int = 0
    seconds: float = 0.0
    throughput: float = float("nan")


# ---- hardware numbers, from the rig -------------------------------------------------------------
@dataclass(frozen=True)
class Links:
    pin: float  # CPU -> GPU, pinned host memory (bytes/s)
    page: float  # CPU -> GPU, pageable host memory
    d2g: float  # disk -> GPU (through the host)
    g2d: float  # GPU -> disk
    out_pin: float  # GPU -> CPU, into pinned host memory
    out_page: float  # GPU -> CPU, into pageable host memory
    d2c: float = math.inf  # disk -> CPU (CPU attention's memmap read)
    c2d: float = math.inf  # CPU -> disk (CPU attention's new K/V)
    # a packed part's conversion before its hop (``packed_unrelay_op``): seconds per packed byte and
    # its per-op overhead, the host's own (the copy thread's work on host DRAM)
    unpack: float = 0.0
    unpack_lat: float = 0.0
    # ... and its delay per second beside a disk read landing in the relay, a plain part's and a packed
    # part's (``overlap_delay``: the reads are booked on host DRAM before the position's conversions)
    unpack_slow: tuple[float, float] = (0.0, 0.0)


def links(rig: Rig, gpu: str, cpu: str, disk: str) -> Links:
    """``_links`` of the rig's ``(gpu, cpu, disk)``, worked out once per rig object (a search asks per
    cost model, ~430 times): each time with what working it out read of the rig's links, told again
    (``Rig.reading``: a sweep's remembered answers), as ``pipeline_costs`` caches per rig."""
    entry = _LINKS.get(id(rig))
    if entry is None or entry[0] is not rig:
        if len(_LINKS) >= 16:
            _LINKS.clear()
        entry = _LINKS[id(rig)] = (rig, {})
    hit = entry[1].get((gpu, cpu, disk))
    if hit is None:
        with reading() as log:
            hit = entry[1][gpu, cpu, disk] = _links(rig, gpu, cpu, disk), log
    else:
        replay(hit[1])
    return hit[0]


# rigs are not hashable: by the rig object's id, the entry keeping the rig alive (its id not reused)
_LINKS: dict[int, tuple[Rig, dict[tuple[str, str, str], tuple[Links, ReadLog]]]] = {}


def _links(rig: Rig, gpu: str, cpu: str, disk: str) -> Links:
    route, back = rig.route(cpu, gpu), rig.route(gpu, cpu)
    if disk:  # each a copy's rate as the engine books it (``Rig.copy_bw``)
        d2g, g2d = rig.copy_bw(disk, gpu), rig.copy_bw(gpu, disk)
        d2c, c2d = rig.copy_bw(disk, cpu), rig.copy_bw(cpu, disk)
    else:  # no disk: its fractions are bounded to 0, so no disk terms at all
        d2g = g2d = d2c = c2d = math.inf
    unpack = packed_unrelay_cost(rig.devices[cpu], 1.0, d2c if disk else None)  # per packed byte read
    dram, pace = host_dram_bw(rig, cpu), unpack.dram_pace
    # a read's bytes on host DRAM: its page-cache write and the relay's (a plain part's memcpy, a packed
    # part's conversion by value), booked before the conversions as the engine's reads are
    plain, packed = (
        overlap_delay(dram, d2c * (1.0 + k), pace) if disk else 0.0 for k in (PLAIN_RELAY, PACKED_RELAY)
    )
    return Links(
        route.bw,
        route.pageable_bw,
        d2g,
        g2d,
        back.bw,
        back.pageable_bw,
        d2c,
        c2d,
        unpack.time_s - unpack.overhead_s,
        unpack.overhead_s,
        (plain, packed),
    )


def _t(rig: Rig, device: str, ops: tuple[Op, ...]) -> float:
    return _cost(rig, device, ops).time_s if ops else 0.0


# ``block_cost`` of ops on a rig's device, from the engine's memo: the LPs of one (gbs, flags) differ in
# nb, which no op depends on, so a search asks for each op block ~10 times, mostly the same tuple objects
# (``substep_ops``' cached ones), found by identity; the engines that run its plans find them there too
_cost = rig_cost


# ---- the LP -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Slot:
    """Linear forms of one scheduling slot: var -> coefficient, plus a constant."""

    w: dict[str, float]
    c: dict[str, float]
    p: dict[str, float]
    d2h: dict[str, float]
    dread: dict[str, float]
    dwrite: dict[str, float]
    # one batch's KV store on the store stream, this slot's and the slot before's (it runs in this
    # slot's first sub-step); empty when nothing is stored
    q: dict[str, float] = field(default_factory=dict)
    q_prev: dict[str, float] = field(default_factory=dict)
    # the issuing thread's first sub-step where it differs from p (the others'): the serial CPU work
    # the weight load of sub-step 0 runs beside (CPU attention's KV gather is issued one position
    # ahead, flex_opt.py, and the DMA slows it on the shared host DRAM); empty = p
    p0: dict[str, float] = field(default_factory=dict)
    # CPU attention's disk share of the KV, read by the copy threads beside the issuing thread and
    # waited for at each sub-step's barrier (flexgen.py: _Runner._gather): more lower bounds of a
    # sub-step, each other sub-step's (spread as the gathers are) and the first's; empty = none.
    # kr: K's read, issued once K's CPU half is converted; vr: V's, once the whole gather is;
    # dr0: the disk lane, first the next layer's weights, then the KV
    kr: dict[str, float] = field(default_factory=dict)
    vr: dict[str, float] = field(default_factory=dict)
    kr0: dict[str, float] = field(default_factory=dict)
    vr0: dict[str, float] = field(default_factory=dict)
    dr0: dict[str, float] = field(default_factory=dict)
    # GPU-attention decode's unpinned KV load (``_kv_load``): c0, the first sub-step's loads on the
    # link alone (after the weights), and m0, its loads with the KV's host memcpy slowed by the
    # weight DMA beside it on host DRAM (empty = the first sub-step's loads are w + c); cl and pl,
    # the last sub-step's loads and thread where they differ from c and p (empty = c, p)
    c0: dict[str, float] = field(default_factory=dict)
    m0: dict[str, float] = field(default_factory=dict)
    cl: dict[str, float] = field(default_factory=dict)
    pl: dict[str, float] = field(default_factory=dict)
    # ... and its disk share's bound (``_kv_load``) where a sub-step loads one, K's memcpy then the
    # reads then V's hop, in the first, middle and last sub-steps (empty = no disk share). In the
    # first the reads may wait for the next layer's weights' read instead (``dw0``)
    dk0: dict[str, float] = field(default_factory=dict)
    dkm: dict[str, float] = field(default_factory=dict)
    dkl: dict[str, float] = field(default_factory=dict)
    # the next layer's weights' disk share, read by the copy threads on the disk lane and hopped
    # over the link when it lands, after the position's other copies (``_weight_loads``): the
    # first sub-step lasts at least its copies' reads and hops, tensor by tensor (``_weight_relay``;
    # w carries the hops on the link); empty = no disk
    wr: dict[str, float] = field(default_factory=dict)
    # ... and the first sub-step's disk lane: the weights' read, then the KV's reads (issued after
    # it), then V's hop (with weights on disk: OPT-13B 4 x 5 15/50/35, all the KV on disk, LP vs
    # engine -4.5 % without it, -1.0 % with; 12 rows at nb >= 3)
    dw0: dict[str, float] = field(default_factory=dict)


_SLOT_FIELDS = tuple(f.name for f in fields(_Slot))
_SLOT_FIELD_SET = frozenset(_SLOT_FIELDS)


def _with(slot: _Slot, **changes: dict[str, float]) -> _Slot:
    """``dataclasses.replace(slot, **changes)`` without its per-field checks or the frozen
    ``__init__``'s 24 ``object.__setattr__`` (every field of ``_Slot`` is an init field, none has a
    ``__post_init__``): the slot's ``__dict__`` copied, in field order, then the changes (~1.0 us a
    slot, through ``__init__`` ~3.6 us); a cost model makes ~10, a search ~3,600."""
    if not changes.keys() <= _SLOT_FIELD_SET:
        raise TypeError(f"_Slot has no field {sorted(changes.keys() - _SLOT_FIELD_SET)}")
    new = object.__new__(_Slot)
    new.__dict__.update(vars(slot))
    new.__dict__.update(changes)
    return new


def _slots(
    rig: Rig,
    model: ModelSpec,
    wl: Workload,
    gbs: int,
    nb: int,
    fl: Flags,
    lk: Links,
    ends: tuple[str, str, str],
    placed: Split | None = None,
    placed_copies: Copies = (),
    kv_at: dict[str, float] | None = None,
    pin_at: dict[str, float] | None = None,
) -> list[tuple[float, _Slot]]:
    """(multiplicity, slot) for prefill and mean decode, attention and MLP slots; the weights loaded
    as ``_weight_form`` charges them (``placed``: a plan's per-tensor split; ``kv_at``: its KV
    fractions, where ``_beside`` takes the thread's delay and ``_kv_load`` V's pin's; ``pin_at``: KV
    fractions where ``_kv_load`` alone takes it, the search's second pass, ``_second_pass``)."""
    gpu, cpu, disk = ends
    lat = rig.route(disk, cpu).latency_s if disk else 0.0  # each disk copy's
    hop_lat = rig.route(cpu, gpu).latency_s if disk else 0.0  # ... and each hop's
    s, n, h = wl.prompt_len, wl.gen_len, model.hidden
    home = wl.kv_slots  # the token slots a 4-bit cache at home is decompressed over (Workload.kv_slots)
    dram = host_dram_bw(rig, cpu)
    cw = fl.compress_weight
    split = _split_cache(model, cw)  # the weights all off the GPU; compress_cache does not enter

    def load(per_byte: dict[str, float], j: int) -> dict[str, float]:
        return _weight_form(per_byte, split[j][1], None if placed is None else placed[j])

    kv_tok = kv_token_bytes(model, fl.compress_cache)
    w_link = _weight_loads(lk, disk)
    copies = _full_copies(model, cw) if placed is None else placed_copies
    lats = None if placed is None else (lat, hop_lat)  # the placed relays' own (_weight_relay)

    def flows(j: int) -> tuple[tuple[float, float], ...] | None:
        """At a plan's placement, scheduling layer ``j``'s weight copies beside the thread (``_beside``):
        (seconds, delay per second beside it) of its DMA and of its disk share's read."""
        if placed is None:
            return None
        _, c_bytes, d_bytes = placed[j]
        return (c_bytes / lk.pin, dram_d[0]), (d_bytes / lk.d2c if disk else 0.0, dram_d[1])

    def hops_late(j: int, t_post: float) -> dict[str, float]:
        """At a plan's placement, a CPU-attention sub-step's tail: scheduling layer ``j``'s disk copies
        hop over the link once the thread's copy back to the GPU is through (booked after the
        position's copies: flexgen.py, ``_via_host``), so the sub-step lasts at least the thread but
        its last kernels (``t_post``), then the hops (OPT-6.7B 32 x 1 4-bit 15/45/40, the KV 0/95/5,
        1024 + 8: LP -2.0 % below the engine without, -0.5 % with). The same over a 4-bit cache at
        home: mixed-lab Llama-2-7B 16 x 2 4-bit 20/0/80, 256 + 32, -4.6 % without, -0.2 % with."""
        if not disk or kv_at is None:
            return {}
        late = _hops_after(lk, copies[j], hop_lat) - t_post
        return {"const": late} if late > 0.0 else {}

    kv_parts = tuple(zip(copy_parts(True), packed_parts(True), strict=True))
    kv_then: tuple[tuple[float, bool], ...] = ()

    def _relay_then(wr: dict[str, float], j: int, then: tuple[tuple[float, bool], ...]) -> dict[str, float]:
        """``wr``, scheduling layer ``j``'s placed relay chain, with ``then`` read after its copies."""
        return _weight_relay(lk, copies[j], lats, then) if wr and then else wr

    def kv_disk(dk: dict[str, float], p: dict[str, float]) -> dict[str, float]:
        """A loading sub-step's disk bound, K's memcpy then the reads then V's hop (``_Slot.dk0``,
        ``dkm``, ``dkl``), with its copies' latencies: K's read, V's read, V's hop."""
        return _latency(dk, 2 * lat + hop_lat, p)

    def weights_then_kv(dk: dict[str, float], p: dict[str, float], j: int) -> dict[str, float]:
        """The first sub-step's disk lane (``_Slot.dw0``): layer ``j``'s weights' read, then the KV's
        reads, then V's hop, with one read's latency and the hop's."""
        return _latency(_plus(load({"wd": 1.0 / lk.d2c}, j), {"cd": dk["cd"]}, 1.0), lat + hop_lat, p)

    out = []
    kv_mean = s + max(1, n // 2)
    for phase, seq, kv_len, mult in (("prefill", s, s, 1.0), ("decode", 1, kv_mean, float(n - 1))):
        pair: list[_Slot] = []
        step = Step(phase, 1 if phase == "decode" else 0, seq, kv_len)
        hid = gbs * seq * h * 2.0
        hid_load = {"hc": hid / lk.pin, "hd": hid / lk.d2g}
        gather: dict[str, float] = {}  # CPU attention's KV gather of one batch (issued a position ahead)
        gather_read = 0.0  # ... and its disk share, read by the copy threads beside the thread
        slow: dict[str, float] = {}  # seconds of delay per byte of weights loaded beside the thread
        dram_d = (0.0, 0.0)  # ... and per second of the DMA, of the disk read (``overlap_delay``)
        ahead: tuple[dict[str, float], ...] = ()  # the next layer's first batch's KV load (_kv_load)
        store_w: dict[str, float] = {}  # one batch's KV store on the disk-write lane
        for kind, j_next, share in _positions(len(split), model.layers):
            w_j = _wd_per_byte(lk, copies[j_next], w_link) if disk else w_link
            hop = {"wd": w_j["wd"]}  # the weights' disk share's link hop, after the position's copies
            w = load(w_j, j_next)
            wr = _weight_relay(lk, copies[j_next], lats) if disk else {}
            # load_hidden(k + 1): the embedding loads token ids (none), but in its last sub-step the
            # next layer's first batch's input, left out (a lower bound); it stores k - 1's output
            embed = kind == "embed"
            c = {} if embed else dict(hid_load)
            stores = nb - 1.0 if embed else float(nb)  # its k = 0 stores the output layer's: ids
            d2h = {"hc": stores * hid / lk.out_pin, "hd": stores * hid / lk.g2d}
            dread = {**load({"wd": 1.0 / lk.d2g}, j_next), "hd": nb * hid / lk.d2g}
            dwrite = {"hd": nb * hid / lk.g2d}
            p: dict[str, float] = {}
            p0: dict[str, float] = {}
            q: dict[str, float] = {}
            reads: dict[str, dict[str, float]] = {}
            kvf: dict[str, dict[str, float]] = {}  # _Slot's c0, m0, cl, pl
            if kind != "attention":  # an MLP or the embedding: no KV of its own
                o = substep_ops(model, kind, phase, gbs, seq, kv_len, False, 1.0, cw, False)
                p["const"] = _t(rig, gpu, o.gpu_pre)
                # load_cache(k + 1) at k = nb - 1 is the next layer's first batch's: an attention's
                # after an MLP or the embedding, none after the last MLP (the output layer is next)
                feeds = j_next == 1
                if ahead and feeds:
                    link, memcpy, pinned, disk_read, slow_kv, dk = ahead
                    dread = _plus(dread, disk_read, 1.0)
                    if nb == 1:  # in the first sub-step, beside the weight DMA
                        kvf = {"c0": _plus(c, link, 1.0), "m0": _plus(_plus(c, link, 1.0), pinned, 1.0)}
                        kvf["m0"] = _plus(
                            _plus(kvf["m0"], load(slow_kv, j_next), 1.0), load(hop, j_next), 1.0
                        )
                        c, p = _plus(kvf["c0"], pinned, 1.0), _plus(p, memcpy, 1.0)
                        if disk:
                            kvf["dk0"], kvf["dw0"] = kv_disk(dk, p), weights_then_kv(dk, p, j_next)
                            wr = _then_kv_hops(_relay_then(wr, j_next, kv_then), link)
                    else:  # in the last
                        kvf = {"cl": _plus(_plus(c, link, 1.0), pinned, 1.0), "pl": _plus(p, memcpy, 1.0)}
                        if disk:
                            kvf["dkl"] = kv_disk(dk, p)
                if gather and feeds:  # the next layer's first batch's gather: this slot's last sub-step
                    first = _plus({}, gather, _gather_shares(nb, True)[0])
                    beside = _beside(load(slow, j_next), flows(j_next), first, {}, {}, kv_at)
                    if disk:
                        w_read = load({"wd": 1.0 / lk.d2c}, j_next)
                        reads = _disk_reads(p, gather, gather_read, beside, w_read, lat, nb, last=True)
                    p0, p = _gather_into(p, gather, nb, last=True, slow=beside)
                    dread["cd"] = dread.get("cd", 0.0) + gather_read
            elif phase == "prefill" or not fl.cpu_attention:
                # a compressed cache on the GPU is decompressed whole each step (substep_ops)
                off = 0.0 if fl.compress_cache and fl.cache_tier == "g" else 1.0
                o = substep_ops(
                    model, "attention", phase, gbs, seq, kv_len, False, off, cw, fl.compress_cache, home
                )
                p["const"] = _t(rig, gpu, o.gpu_pre)
                new_kv = gbs * seq * kv_tok
                # a prefill's slab through the copy threads' relay, a decode token's direct (flexgen.py)
                store = lk.out_page if phase == "prefill" else lk.out_pin
                # the disk share through the copy threads' relay: its hop to the CPU, then its write
                # (flexgen.py: _via_host), one after the other
                q = {"cc": new_kv / store, "cd": new_kv / lk.out_pin + new_kv / lk.c2d}
                store_w = {"cd": new_kv / lk.c2d}
                if phase == "decode":
                    # a 4-bit KV on disk (whole: cd = 1) is read after a placed layer's disk weights,
                    # beside their conversions (``_weight_relay``'s ``then``): K's parts, then V's
                    kv_then = (
                        tuple((gbs * step.kv_len * kv_tok * b / 2, k) for b, k in kv_parts) * 2
                        if disk and lats is not None and fl.compress_cache and fl.cache_tier == "d"
                        else ()
                    )
                    ahead = _kv_load(
                        rig,
                        model,
                        gbs,
                        step.kv_len,
                        kv_tok,
                        lk,
                        cpu,
                        dram,
                        fl.compress_cache,
                        pin_at if kv_at is None else kv_at,
                        lat,
                        hop_lat,
                    )
                    if nb > 1:  # sub-steps 0..nb-2 load this layer's batches 1..nb-1; the last none
                        link, memcpy, pinned, disk_read, slow_kv, dk = ahead
                        dread = _plus(dread, disk_read, nb - 1.0)
                        kvf = {"cl": dict(c), "pl": dict(p)}
                        kvf["c0"] = _plus(c, link, 1.0)
                        c, p = _plus(kvf["c0"], pinned, 1.0), _plus(p, memcpy, 1.0)
                        kvf["m0"] = _plus(_plus(c, load(slow_kv, j_next), 1.0), load(hop, j_next), 1.0)
                        if disk:
                            kvf["dk0"] = kvf["dkm"] = kv_disk(dk, p)
                            kvf["dw0"] = weights_then_kv(dk, p, j_next)
                            wr = _then_kv_hops(_relay_then(wr, j_next, kv_then), link)
            elif fl.compress_cache:  # decode with CPU attention over a 4-bit cache at home on the CPU
                # (candidate_flags: tier "c"): no load (smart_copy returns the home tensor); the thread
                # runs the GPU's kernels, the copy to the CPU, the decompression of the whole cache into
                # the fp32 workspace and the attention there (flexgen_ops.substep_ops), the copy back;
                # the new 4-bit K and V are stored as GPU attention's are (flexgen.py: store_cache)
                o = substep_ops(model, "attention", phase, gbs, seq, kv_len, True, 1.0, cw, True, home)
                small = o.to_cpu_bytes / lk.out_pin + o.to_gpu_bytes / lk.page
                t_cpu_att = _t(rig, cpu, o.cpu)
                p.update(const=_t(rig, gpu, o.gpu_pre + o.gpu_post) + small, cc=t_cpu_att)
                q = {"cc": gbs * kv_tok / lk.out_pin}
                # the weight DMA issued at the position's start slows the CPU work on host DRAM, as for
                # the uncompressed attention below (``_beside``), with no gather before it
                dram_d, slow = _weight_slow(dram, lk, _host_pace(rig, cpu, o.cpu), copies[j_next])
                before = {"const": _t(rig, gpu, o.gpu_pre) + o.to_cpu_bytes / lk.out_pin}
                beside = _beside(load(slow, j_next), flows(j_next), {}, {"cc": t_cpu_att}, before, kv_at)
                p0, p = _gather_into(p, {}, nb, last=False, slow=beside)
                p0 = _plus(p0, hops_late(j_next, _t(rig, gpu, o.gpu_post)), 1.0)
            else:  # decode with CPU attention, split cg (GPU) / cc + cd (CPU)
                o = substep_ops(model, "attention", phase, gbs, seq, kv_len, True, 1.0, cw, False)
                og = substep_ops(model, "attention", phase, gbs, seq, kv_len, True, 0.0, cw, False)
                small = o.to_cpu_bytes / lk.out_pin + o.to_gpu_bytes / lk.page
                t_fixed = _t(rig, gpu, o.gpu_pre + o.gpu_post)
                t_pre, t_post = _t(rig, gpu, o.gpu_pre), _t(rig, gpu, o.gpu_post)
                t_gpu_att = _t(rig, gpu, og.gpu_pre) - _t(rig, gpu, o.gpu_pre)
                t_cpu_att = _t(rig, cpu, o.cpu)
                t_gather = _t(rig, cpu, (kv_gather_op(model, gbs, kv_len - 1, 1.0),))
                kvb = gbs * (kv_len - 1) * kv_tok
                # The thread converts the CPU share to fp32; the disk share goes to the copy threads,
                # which read and convert it beside the thread, K's once K's CPU share is converted,
                # V's after V's, and the barrier waits for them (flexgen.py: _Runner._gather). The
                # gather of batch k + 1 is issued in position k (load_cache before compute_layer,
                # flex_opt.py), so it runs in this slot's sub-steps but the last, and the next
                # layer's first batch's in the MLP slot's last.
                p.update(const=t_fixed + small, cg=t_gpu_att, cc=t_cpu_att, cd=t_cpu_att)
                gather = {"cc": t_gather}
                gather_read = kvb / lk.d2c
                # host DRAM is shared (the engine's timeline, first come, first served): the weight
                # DMA issued at the position's start slows the thread's gather and CPU attention
                cap = _host_pace(rig, cpu, (kv_gather_op(model, gbs, kv_len - 1, 1.0), *o.cpu))
                dram_d, slow = _weight_slow(dram, lk, cap, copies[j_next])
                wslow, beside_w = load(slow, j_next), flows(j_next)
                first = _plus({}, gather, _gather_shares(nb, False)[0])
                own = gather
                if disk:
                    w_read = load({"wd": 1.0 / lk.d2c}, j_next)
                    # V's read waits for the whole gather: its delay alone
                    gslow = _beside(wslow, beside_w, first, {}, {}, kv_at)
                    reads = _disk_reads(p, gather, gather_read, gslow, w_read, lat, nb, last=False)
                    # the reads take their share of host DRAM from the CPU work issued after them (V's
                    # gather and the attention), which they overlap here (the MLP's gather: assumed not):
                    # the page-cache write and the copy thread's fp32 conversion beside it (KV_CONVERT)
                    read_dram = lk.d2c * (1.0 + KV_CONVERT)
                    own = {**gather, "cd": gather_read * overlap_delay(dram, read_dram, cap)}
                # the thread's work before the attention: the GPU's kernels, the copy to the CPU
                before = {"const": t_pre + o.to_cpu_bytes / lk.out_pin, "cg": t_gpu_att}
                beside = _beside(wslow, beside_w, first, {"cc": t_cpu_att, "cd": t_cpu_att}, before, kv_at)
                p0, p = _gather_into(p, own, nb, last=False, slow=beside)
                p0 = _plus(p0, hops_late(j_next, t_post), 1.0)  # the next layer's disk share's hops
                dread["cd"] = (nb - 1) * gather_read
                store_w = {"cd": gbs * kv_tok / lk.c2d}  # the new K/V went to the CPU with q
            # the hidden copies on the default stream hold the batch's kernels (flexgen.py); the
            # embedding's, its stores alone, spread over its sub-steps
            own_hid = stores / nb * hid / lk.out_pin if embed else hid / lk.pin + hid / lk.out_pin
            for form in (p, p0, kvf.get("pl", {})):
                if form or form is p:
                    form["hc"] = form.get("hc", 0.0) + own_hid
            wr = _latency(wr, lat + hop_lat, p) if wr and lats is None else wr
            slot = _Slot(w, c, p, d2h, dread, dwrite, q, p0=p0, wr=wr, **reads, **kvf)
            if not fl.pin_weight:
                slot = _relayed(
                    slot, _weight_pin(rig, cpu, split[j_next][1], None if placed is None else placed[j_next])
                )
            pair.append((kind, share, slot))
        att = pair[0][2]  # an MLP's first sub-step holds the attention's last KV store; the attention
        for kind, share, slot in pair:  # follows an MLP or the embedding, neither stores KV
            before = att.q if kind == "mlp" else {}
            lane = dict(slot.d2h)  # the D2H lane: hidden stores, (nb - 1) own KV stores, the one before
            for v, k in (*((v, (nb - 1) * k) for v, k in slot.q.items()), *before.items()):
                lane[v] = lane.get(v, 0.0) + k
            # ... and the disk-write lane: store_cache(k - 1) runs in the next position, so the
            # attention's last batch's KV is written in the MLP's first sub-step (at nb 1, all of it;
            # charged to both slots before: CPU attention, the KV on disk, OPT-6.7B 32 x 1 256 + 2
            # +15.6 % above the engine)
            own = store_w if kind == "attention" else {}
            writes = _plus(_plus(slot.dwrite, own, nb - 1.0), store_w if kind == "mlp" else {}, 1.0)
            out.append((mult * share, _with(slot, d2h=lane, dwrite=writes, q_prev=dict(before))))
    return out


def _host_pace(rig: Rig, cpu: str, ops: tuple[Op, ...]) -> float:
    """The host-DRAM bytes per second CPU work ``ops`` draws (what ``overlap_delay`` shares with a copy)."""
    return _cost(rig, cpu, ops).dram_pace


def _weight_slow(
    dram: float, lk: Links, cap: float, copies: tuple[tuple[float, bool], ...] = ()
) -> tuple[tuple[float, float], dict[str, float]]:
    """The delay per second of the weight DMA and of the disk read beside CPU work drawing ``cap`` of
    host DRAM, and per byte of weights: pinned ones DMA'd at the link's rate, disk ones written into
    the relay at the disk's rate (their hops, booked when the reads land after the position's other
    copies, take host DRAM after the thread's work: _via_host). Each read's bytes are copied into
    the relay as they land (``PLAIN_RELAY`` more bytes of host DRAM beside each read byte), a
    layer's packed parts (``copies``, its disk copies) converted (``PACKED_RELAY``): the read's delay
    is its bytes' mean (``_read_delay``). (The KV memcpy's delay beside the weights' read in
    ``_kv_load`` keeps the bare read: with the relay's bytes there the LP went +0.6 % above the engine
    on a 4-bit plan.)"""
    dram_d = overlap_delay(dram, lk.pin, cap), _read_delay(dram, lk, cap, copies)
    return dram_d, {"wc": dram_d[0] / lk.pin, "wd": dram_d[1] / lk.d2c}


def _read_delay(dram: float, lk: Links, cap: float, copies: Iterable[tuple[float, bool]]) -> float:
    """The delay per second of a disk read through the copy threads' relay beside CPU work drawing
    ``cap`` of host DRAM: each byte's page-cache write and the relay's bytes (``PLAIN_RELAY``, a packed
    part's ``PACKED_RELAY``), the mean over ``copies`` (bytes, packed?) by their bytes."""
    copies = tuple(copies)
    whole = sum(b for b, _ in copies)
    packed = sum(b for b, k in copies if k) / whole if whole else 0.0
    read = overlap_delay(dram, lk.d2c * (1.0 + PLAIN_RELAY), cap)
    if packed:
        read += packed * (overlap_delay(dram, lk.d2c * (1.0 + PACKED_RELAY), cap) - read)
    return read


def _positions(n_sched: int, layers: int) -> tuple[tuple[str, int, float], ...]:
    """The slots ``_slots`` builds, (kernels, the scheduling layer whose weights load beside them,
    share of a decoder layer's multiplicity): the released loop loads layer j + 1's weights while
    layer j computes (flex_opt.py: load_weight(i, j + 1, k) at k == 0), so an attention block loads
    an MLP's, an MLP the next attention's, the last MLP the output layer's and the embedding the
    first attention's (the output layer, ``_other_slots``, the next token's embedding). Per token
    the bytes are each layer's once, as before, but each load sits beside the kernels the release
    runs it with (the embedding's big tables beside the last MLP's, not beside its own tiny
    kernels: the LP was above the engine in prefill, +1.2 % on OPT-6.7B 32 x 1 512 + 2, half the
    weights on disk)."""
    return (
        ("attention", 2, 1.0),
        *((("mlp", 1, (layers - 1) / layers),) if layers > 1 else ()),
        ("mlp", n_sched - 1, 1.0 / layers),
        ("embed", 1, 1.0 / layers),
    )


def _kv_load(
    rig: Rig,
    model: ModelSpec,
    gbs: int,
    kv_len: int,
    kv_tok: float,
    lk: Links,
    cpu: str,
    dram: float,
    compressed: bool = False,
    at: dict[str, float] | None = None,
    lat: float = 0.0,
    hop_lat: float = 0.0,
) -> tuple[dict[str, float], ...]:
    """One batch's GPU-attention KV load from the CPU and the disk: (its link time, its host memcpy,
    the part of it the load waits for, its disk read, the memcpy's delay per weight byte loaded
    beside it, the disk share's bound). The CPU share is unpinned: general_copy pins it in the
    issuing thread (a host memcpy, pytorch_backend.py:843-849) and DMAs what it pinned, K then V
    (flex_opt.py:359-368), so the thread takes the whole memcpy and the load K's pin then both DMAs,
    or both pins then V's DMA, whichever is longer (``pinned``). In the
    first sub-step the memcpy shares host DRAM with the next layer's weight DMA issued just before
    it (flex_opt.py:1048-1049) and ends later by ``bandwidth.overlap_delay`` per second of DMA (exact
    when the memcpy outlasts the DMA; a shorter one is under the weights' own option). ``at``: a
    plan's KV fractions, where V's pin is also slowed by K's disk read beside it (tangent forms).
    ``lat``: each disk read's latency, in the timeline a packed part's conversion runs beside;
    ``hop_lat``: each hop's."""
    kvb = gbs * kv_len * kv_tok  # the kv_len slots load_cache path 0 copies
    copied = _pin_ops(kvb)
    cap = _host_pace(rig, cpu, copied)
    pin = overlap_delay(dram, lk.pin, cap) / lk.pin
    # a disk weight's read beside it (its hop follows the KV's DMAs on the link, so not the memcpy;
    # with it: OPT-6.7B 32 x 1 0/50/50, the KV on the CPU, 1024 + 32, LP +1.08 % above the engine)
    slow = {"wc": pin, "wd": overlap_delay(dram, lk.d2c, cap) / lk.d2c}
    # the disk share: read by the copy threads into their pinned relay on the disk lane (the slot's
    # dread), then copied over the link (copy_worker_func, :896-902): at the pinned rate, but a 4-bit
    # tensor's packed data from a pageable temporary (flexgen.py: ``_via_host``'s ``packed``)
    parts = copy_parts(compressed)
    packed = packed_parts(compressed)
    hops = [_hop_s(lk, kvb * b, k) for b, k in zip(parts, packed, strict=True)]  # each part's, K's and V's
    link = {"cc": kvb / lk.pin, "cd": sum(hops)}
    memcpy = _t(rig, cpu, copied)
    # K, then V, each pinned then DMA'd (FlexGen's _mixed_load): V's half is pinned while K's DMA
    # runs, so the load's last DMA ends at the later of K's pin then both DMAs and both pins then
    # V's DMA; both are cc times a constant, so their max is one form (``pinned``: what the load
    # waits for besides its DMAs).
    # V's pin runs beside K's DMA on host DRAM and ends later by ``overlap_delay`` per second of it
    # (the whole pin slowed when the DMA outlasts it); the thread takes that too.
    # A 4-bit tensor is two (pin, DMA) pairs, its data then its scales (``copy_parts``): the
    # load then waits for the latest of each piece's pins so far then its DMAs from there on, and
    # K's DMA has run through K's scales' pin before V's pin starts (so less of it is beside V's)
    d, half_dma = overlap_delay(dram, lk.pin, cap), kvb / (2 * lk.pin)
    beside = max(0.0, half_dma - memcpy / 2 * sum(parts[1:]))
    v_late = min(memcpy / 2 * d / (1.0 - d), d * beside) if d < 1.0 else d * beside
    pieces = (*parts, *parts)  # K's, then V's
    # each piece's pins so far then its DMAs on; the last, every pin (V's slowed) then its DMA
    waits = [memcpy / 2 * sum(pieces[: i + 1]) - half_dma * sum(pieces[:i]) for i in range(len(pieces) - 1)]
    waits.append(memcpy + v_late - half_dma * sum(pieces[:-1]))
    pinned, thread = {"cc": max(waits)}, {"cc": memcpy + v_late}
    if at is not None and at.get("cc", 0.0) > 0.0 and at.get("cd", 0.0) > 0.0:
        # K's disk share is read from when K's CPU half is pinned, beside V's pin, and its page-cache
        # write and the relay's memcpy (``_read_delay``, a weight read's) slow the pin on host DRAM
        # too: V's pin then ends by both copies (``_slowed_end``), and V's DMA after it may end the
        # load. Not one form in cc and cd (the read may end within the pin or outlast it): at a plan's
        # placement its tangent, exact there (as ``_beside``); the LP's own fractions leave it out.
        # (hexgen-homogeneous Llama-2-70B 96 x 32, the KV 0/53/47: LP -1.25 % under the engine without,
        # +0.12 % with; the LP's own fractions there are as before, so its search may favour disk KV)
        read_d = _read_delay(dram, lk, cap, zip(parts, packed, strict=True))
        ahead = memcpy / 2 * sum(parts[1:])  # K's later parts' pins, before V's: the copies run on

        def v_pin(x: dict[str, float]) -> float:
            """V's pins' delay at the KV fractions ``x``."""
            cc, cd = x.get("cc", 0.0), x.get("cd", 0.0)
            flows = ((beside * cc, d), (max(0.0, kvb * cd / (2 * lk.d2c) - ahead * cc), read_d))
            work = memcpy / 2 * cc
            return _slowed_end(tuple(sorted(f for f in flows if f[0] > 0.0)), 0.0, work) - work

        def last(x: dict[str, float]) -> float:
            """What the load waits for besides its DMAs: the latest of ``waits``, V's with its delay."""
            cc = x.get("cc", 0.0)
            return max(max(waits[:-1]) * cc, (memcpy - half_dma * sum(pieces[:-1])) * cc + v_pin(x))

        pinned = _tangent(last, at)
        thread = _plus(_tangent(v_pin, at), {"cc": memcpy}, 1.0)
    # the disk reads: K's once K's CPU half is pinned, V's behind it on the disk lane (and after V's
    # pin: a second form, left out as it binds only where cc x memcpy > cd x read, i.e. little
    # disk share, and then misses by at most (cc x memcpy - cd x read) / 2); V's last copy's hop
    # ends the load: a 4-bit tensor is its data then its scales (``copy_parts``), each read and
    # hopped on its own, so only the scales' hop need follow the last read (V's data hop runs on the
    # link while they are read, or, slower than their read, ends before their hop starts). The
    # reads' latencies are added by the caller (``_latency``)
    last_read = kvb * parts[-1] / (2 * lk.d2c) if len(parts) > 1 else 0.0
    # the reads on the disk lane, K's parts then V's, each (its bytes' start, its end, packed?), each
    # its latency then its bytes: only a 4-bit cache has packed parts, and it lies whole on one tier
    # (cd 0 or 1), so its chain at cd = 1, latencies in, is exact wherever it binds (the caller's
    # ``_latency`` adds two reads' and a hop's; each chain's own are in its term, below)
    secs = [kvb * b / (2 * lk.d2c) for b in (*parts, *parts)]
    ends = list(itertools.accumulate(lat + t for t in secs))
    reads = list(zip([e - t for e, t in zip(ends, secs, strict=True)], ends, (*packed, *packed), strict=True))

    def unpacked(i: int) -> float:
        """The i-th read's packed part's conversion (``_unpack_s``, its overhead with the latencies)
        from when it lands, beside the reads after it (``_converted``); none for a plain part."""
        if not reads[i][2]:
            return 0.0
        return _converted(lk, ends[i], _unpack_s(lk, secs[i] * lk.d2c, False), reads) - ends[i]

    # V's packed data is converted once read, then hops
    n = len(parts)
    unpack = unpacked(n)
    v_rest = unpack + sum(hops[:-1]) / 2 + (n - 1) * hop_lat  # V's parts but the last: converted, hopped
    tail = max(last_read + (lat if n > 1 else 0.0), v_rest) + hops[-1] / 2 + hop_lat
    # ... or, where the hops are slower than the reads, K's first read (and its conversion), then
    # every hop one after another on the link: the link's own sum has no wait for the first read (a
    # 4-bit cache at hexgen-homogeneous's 16 GB/s against the 10 GB/s pageable hop: Llama-2-13B
    # 16 x 4, the weights on the CPU, 512 + 16, LP -5.1 % under the engine without, -1.5 % with).
    # Both chains scale with cd alike, so their max is one form. Each has its own copies' latencies
    # (``ends``: each read's; a hop's each): the reads' chain every read's but the last's, the hops'
    # chain one read's and all 2n hops'. The caller adds two reads' and a hop's (``kv_disk``), so the
    # rest is in the term: exact at cd = 1 (a 4-bit cache lies whole on one tier), off by (1 - cd)
    # of it at a split cache. (hexgen-homogeneous Llama-2-7B 4 x 1, 4-bit weights 80/20, the 4-bit
    # KV on disk, 1024 + 16: the hops' chain 2.87 ms a decode layer with the reads' chain's latencies,
    # the engine's trace 2.81 (a read, the conversion, four hops); the plan +1.09 % over the engine)
    reads_chain = ends[n * 2 - 2] + tail if n > 1 else ends[-1] + tail
    first = ends[0] + unpacked(0) + sum(hops) + 2 * n * hop_lat
    dk = {"cc": memcpy / 2, "cd": max(reads_chain, first) - (2 * lat + hop_lat)}
    return link, thread, pinned, {"cd": kvb / lk.d2c}, slow, dk


def _latency(form: dict[str, float], lat: float, p: dict[str, float]) -> dict[str, float]:
    """A disk bound with its copies' latencies (the engine's ``latency + bytes / rate`` per copy):
    exact where the bound's disk share is not zero; where it is, the bound without its reads is
    under the thread's (``p``: the same memcpy, then the kernels) as long as the latency is no
    longer than the kernels, so the constant is capped there (a bound still, short of the latency
    only where the kernels are shorter than it)."""
    return _plus(form, {"const": min(lat, p.get("const", 0.0))}, 1.0)


def _gather_into(
    p: dict[str, float], gather: dict[str, float], nb: int, *, last: bool, slow: dict[str, float]
) -> tuple[dict[str, float], dict[str, float]]:
    """(first sub-step, each other sub-step) of a slot whose thread also runs KV gathers: the
    attention slot's sub-steps 0..nb-2 (``last`` False) or the MLP slot's last (``last`` True) each
    gather one batch; the others' share is spread evenly over them (their time is summed). The
    next layer's weight load, issued at the position's start, delays the first sub-step's CPU work
    by ``slow`` (per weight fraction, ``bandwidth.overlap_delay``) when there is CPU work."""

    first_gathers, rest = _gather_shares(nb, last)
    p0 = _plus(p, gather, first_gathers)
    if first_gathers or not last:  # CPU work in the first sub-step
        p0 = _plus(p0, slow, 1.0)
    return p0, _plus(p, gather, rest)


def _beside(
    slow: dict[str, float],
    flows: tuple[tuple[float, float], ...] | None,
    gather: dict[str, float],
    att: dict[str, float],
    gap: dict[str, float],
    at: dict[str, float] | None,
) -> dict[str, float]:
    """The delay the next layer's weight copies, issued at the position's start, cause the first
    sub-step's CPU work on host DRAM (``_gather_into``'s ``slow``). The LP's own fractions (``at``
    None) take ``slow``: ``overlap_delay`` x each copy's seconds, the delay of work that outlasts the
    copies. The true delay is less where the work ends first or starts late, no linear form. At a
    plan's placement (``at``, its KV fractions) the copies are constants (``flows``: each one's
    seconds and delay per second beside it, the DMA's and the disk read's), and the delay is worked
    out as the engine's timeline books it: the thread's gather (``gather``, seconds per KV fraction)
    from the start, then ``gap`` (the GPU's kernels and the copy to the CPU before the attention),
    then the CPU attention (``att``), each slowed while a copy lasts (both copies' delays summed, a
    bound of their joint one); the form is its tangent there (exact at the plan, the LP's time at
    the runtime's placement). Off the plan (``_repinned``'s LP, where the KV moves) it is no bound
    either way: the delay is not concave in the fractions (the GPU's kernels move the attention's
    start; synthetic flows: the tangent 0.65 s where the delay is 1.42 s), so a twin's own placed
    time is worked out at its own KV (``_confirmable``'s cache keys on it). Before, the
    copies' whole delay beside short work: 4-bit weights, CPU attention, OPT-6.7B 8 x 1 50/50
    256 + 32, LP +5.7 % / +3.2 % above the engine with the KV on the GPU / the CPU."""
    if at is None or flows is None:
        return slow
    flows = tuple(sorted((t, d) for t, d in flows if t > 0.0 and d > 0.0))
    if not flows:
        return {}
    end = partial(_slowed_end, flows)

    def lin(form: dict[str, float], x: dict[str, float]) -> float:
        return form.get("const", 0.0) + sum(k * x.get(v, 0.0) for v, k in form.items() if v != "const")

    def delay(x: dict[str, float]) -> float:
        g, a = lin(gather, x), lin(att, x)
        t = end(0.0, g)
        return t - g + end(t + lin(gap, x), a) - (t + lin(gap, x)) - a

    return _tangent(delay, at)


def _slowed_end(flows: tuple[tuple[float, float], ...], t: float, work: float) -> float:
    """When ``work`` seconds of CPU work issued at ``t`` end, slowed while copies last on host DRAM
    (``flows``: each copy's end and delay per second beside it, by end; their delays summed, a bound of
    their joint one, exact where the work may draw all of host DRAM)."""
    if work <= 0.0:  # none (the attention with the KV on the GPU): no 0 / 0 where a copy takes all
        return t
    spans, rates, before = [], [], -math.inf  # between two ends, the copies not yet ended slow it together
    for stop, _ in flows:
        spans.append((before, stop, len(rates)))
        rates.append(max(0.0, 1.0 - sum(d for s, d in flows if s > before)))
        before = stop
    return _paced_end(t, work, spans, rates)


def _tangent(fn: Callable[[dict[str, float]], float], at: dict[str, float]) -> dict[str, float]:
    """``fn``'s tangent form at the KV fractions ``at`` (forward differences): exact at a plan."""
    here, h = fn(at), 1e-6
    form = {v: (fn({**at, v: at.get(v, 0.0) + h}) - here) / h for v in ("cg", "cc", "cd")}
    form = {v: k for v, k in form.items() if k}
    form["const"] = here - sum(k * at.get(v, 0.0) for v, k in form.items())
    return form


def _plus(form: dict[str, float], extra: dict[str, float], k: float) -> dict[str, float]:
    out = dict(form)
    for v, c in extra.items():
        out[v] = out.get(v, 0.0) + k * c
    return out


def _gather_shares(nb: int, last: bool) -> tuple[float, float]:
    """(gathers in the first sub-step, gathers in each other one) of a slot: see ``_gather_into``."""
    first = (1.0 if nb == 1 else 0.0) if last else (1.0 if nb > 1 else 0.0)
    rest = (1.0 / (nb - 1) if last else (nb - 2) / (nb - 1)) if nb > 1 else 0.0
    return first, rest


def _disk_reads(
    p: dict[str, float],
    gather: dict[str, float],
    read: float,
    slow: dict[str, float],
    w_read: dict[str, float],
    lat: float,
    nb: int,
    *,
    last: bool,
) -> dict[str, dict[str, float]]:
    """``_Slot``'s read bounds (kr, vr, kr0, vr0, dr0) of a slot whose sub-steps gather a batch's KV
    (split as ``_gather_into`` splits the gathers), ``read`` seconds per unit of ``cd`` for the disk
    share, read half for K and half for V by the copy threads beside the thread. A gathering
    sub-step lasts at least K's CPU half of the gather then both reads, and at least the whole
    gather then V's read, each copy with the route's latency ``lat`` (the engine's lane is first in,
    first out: V's waits for K's); the first sub-step's disk lane reads the next layer's weights
    first (``w_read``: their read's form, ``_weight_form``). Each other sub-step's bound is spread
    as the gathers are, the thread's own work (``p``, before the gathers) standing in the sub-steps
    that do not gather."""
    first, rest = _gather_shares(nb, last)
    k_read = _plus({"const": 2 * lat, "cd": read}, gather, 0.5)  # K's half of the gather, both reads
    v_read = _plus({"const": lat, "cd": read / 2}, gather, 1.0)  # the whole gather, then V's read
    out: dict[str, dict[str, float]] = {}
    if nb > 1:
        for name, form in (("kr", k_read), ("vr", v_read)):
            out[name] = _plus(_plus({}, p, 1.0 - rest), form, rest)
    if first:
        out["kr0"] = k_read
        out["vr0"] = _plus(v_read, slow, 1.0)
        out["dr0"] = _plus({"const": 2 * lat, "cd": read}, w_read, 1.0)
    return out


def _weight_loads(lk: Links, disk: str) -> dict[str, float]:
    """Seconds per weight byte of a layer's load on the link. A weight tensor on the CPU is DMA'd
    from pinned memory; one on the disk goes to the copy threads (general_copy's ``submit_copy``,
    pytorch_backend.py:831-833), which read it into their pinned relay and copy it over the link
    when it lands (copy_worker_func, :896-902): the link carries its hop after the position's other
    copies (the read then the hops: ``_weight_relay``)."""
    return {"wc": 1.0 / lk.pin, "wd": 1.0 / lk.pin if disk else 0.0}


def _weight_relay(
    lk: Links,
    sizes: tuple[tuple[float, bool], ...],
    lats: tuple[float, float] | None,
    then: tuple[tuple[float, bool], ...] = (),
) -> dict[str, float]:
    """A layer's disk share as the copy threads move it, tensor by tensor (``layer_disk_copies``):
    the load lasts at least its reads, one after another on the disk lane, each copy's hop over the
    link once its read has landed and the hop before it has ended (``_Slot.wr``). ``sizes``: the
    copies at a plan's placement, each read and hop with its latency (``lats``: a constant, the
    engine's chain), or (``lats`` None) every tensor whole, which the LP's even spread scales by
    ``wd`` (copies all scaled alike span alike); the caller adds one read's and one hop's latency
    (``_latency``: how many tensors a fraction puts on disk is no linear form). ``then``: the reads
    queued after the layer's on the disk lane (a 4-bit KV's, load_cache after load_weight), which
    land beside its conversions too."""
    lat, hop_lat = lats or (0.0, 0.0)
    reads: list[tuple[float, float, bool]] = []  # built at the first packed part (most layers have none)
    t_read = t_hop = t_unpack = 0.0
    for b, packed in sizes:
        t_read += lat + b / lk.d2c
        ready = t_read
        if packed:  # its conversion first, once read and after the one before it (the copy threads'
            # conversions share the host's cores: ``Engine.book_beside``), beside the hop before it
            # and the reads after it (``_converted``)
            if not reads:  # the reads on the disk lane, one after another: (start, end, packed?)
                lane = (*sizes, *then)
                ends = itertools.accumulate(lat + c / lk.d2c for c, _ in lane)
                reads = [(end - c / lk.d2c, end, k) for end, (c, k) in zip(ends, lane, strict=True)]
            unpack = _unpack_s(lk, b, lats is not None)
            ready = t_unpack = _converted(lk, max(t_unpack, t_read), unpack, reads)
        t_hop = max(t_hop, ready) + hop_lat + _hop_s(lk, b, packed)
    return {"wd": t_hop} if lats is None else {"const": t_hop}


def _then_kv_hops(wr: dict[str, float], link: dict[str, float]) -> dict[str, float]:
    """A first sub-step's weights' relay chain (``_Slot.wr``) then the KV's disk share's hops (``link``'s
    "cd", ``_kv_load``): the KV's reads queue behind the weights' on the disk lane (load_weight before
    load_cache, flex_opt.py), so its hops follow the weights' on the link (hexgen-homogeneous OPT-6.7B
    16 x 4, 4-bit weights 30/35/35, a 4-bit KV on disk, 256 + 16: the weights' read, conversion and
    hops, then the KV's four hops, 9.3 ms of the engine's first sub-step; the LP, the chains apart,
    -7.1 % under the engine). Nothing where no weights are on disk."""
    return _plus(wr, {"cd": link.get("cd", 0.0)}, 1.0) if wr else wr


def _weight_form(
    per_byte: dict[str, float], full: float, placed: tuple[float, float, float] | None
) -> dict[str, float]:
    """A linear form of a scheduling layer's weight load: ``per_byte`` seconds per byte of its weights
    on the CPU ("wc") or the disk ("wd"). The LP spreads each fraction evenly over the layer's
    ``full`` bytes; at a plan's placement (``placed``: the layer's (GPU, CPU, disk) bytes by the
    released per-tensor rule, which puts whole tensors and so gives an attention block, an MLP
    block and the embedding tables each their own share) it is a constant."""
    if placed is None:
        return {v: k * full for v, k in per_byte.items()}
    _, cpu, disk = placed
    return {"const": per_byte.get("wc", 0.0) * cpu + per_byte.get("wd", 0.0) * disk}


def _other_slots(
    rig: Rig,
    model: ModelSpec,
    wl: Workload,
    gbs: int,
    nb: int,
    lk: Links,
    ends: tuple[str, str, str],
    fl: Flags,
    placed: Split | None,
    placed_copies: Copies = (),
) -> list[tuple[float, _Slot]]:
    """The output layer's slots, once per token (multiplicity over the layer count, which the
    objective multiplies back): the next token's embedding loads beside its kernels (flex_opt.py:
    load_weight(i, j + 1, k) with j + 1 past the last layer is layer 0 of token i + 1; the first
    token's, the loop's prologue, stands in for the last token's, which loads none), its weights
    taking the fractions as every layer's do (init_weight_list places each layer's tensors by the
    same percentages). Its input is a hidden state as a decoder layer's. The embedding's own slot
    is ``_slots``' (it loads the first attention's weights and the first batch's KV)."""
    cw = fl.compress_weight
    split = _split_cache(model, cw)
    gpu, cpu, disk = ends
    w_link = _weight_loads(lk, disk)
    copies = _full_copies(model, cw) if placed is None else placed_copies
    lats = (rig.route(disk, cpu).latency_s, rig.route(cpu, gpu).latency_s) if disk else (0.0, 0.0)
    at = None if placed is None else placed[0]  # the embedding's weights
    ld = _weight_form(_wd_per_byte(lk, copies[0], w_link) if disk else w_link, split[0][1], at)
    dread = _weight_form({"wd": 1.0 / lk.d2g}, split[0][1], at)
    out = []
    for phase, seq, mult in (("prefill", wl.prompt_len, 1.0), ("decode", 1, float(wl.gen_len - 1))):
        hid = gbs * seq * model.hidden * 2.0
        o = substep_ops(model, "output", phase, gbs, seq, wl.prompt_len, False, 1.0, cw, False)
        p = {"const": _t(rig, gpu, o.gpu_pre), "hc": hid / lk.pin}  # waits for its input's load
        c = {"hc": hid / lk.pin, "hd": hid / lk.d2g}
        wr = _weight_relay(lk, copies[0], None if placed is None else lats) if disk else {}
        wr = _latency(wr, sum(lats), p) if wr and placed is None else wr
        slot = _Slot(ld, c, p, {}, dread, {}, wr=wr)
        if not fl.pin_weight:
            slot = _relayed(slot, _weight_pin(rig, cpu, split[0][1], at))
        out.append((mult / model.layers, slot))
    return out


def _weight_pin(
    rig: Rig, cpu: str, full: float, placed: tuple[float, float, float] | None
) -> dict[str, float]:
    """With ``--pin-weight 0``, the issuing thread's ``pin_memory()`` of a layer's CPU weights before
    their DMA: the engine's relay (``flexgen._Runner._relay``), one ``host_copy_op`` of the layer's CPU
    bytes, timed by the same op cost. The LP's even spread scales the whole layer's copy by ``wc``
    (the op is linear in its bytes but for its fixed overhead); at a plan's placement, its own bytes."""
    if placed is None:
        return {"wc": _t(rig, cpu, _pin_ops(full))}
    return {"const": _t(rig, cpu, _pin_ops(placed[1]))} if placed[1] > 0 else {}


@lru_cache(maxsize=1024)
def _pin_ops(nbytes: float) -> tuple[Op, ...]:
    """``(host_copy_op(nbytes),)``, the same tuple each time: ``_cost`` finds it by identity."""
    return (host_copy_op(nbytes),)


def _relayed(slot: _Slot, pin: dict[str, float]) -> _Slot:
    """``slot`` with its next layer's weights relayed (``_weight_pin``): the thread copies them to
    pinned memory before all else in the first sub-step (its gather, kernels and KV pins wait), and
    their DMA starts when the copy ends."""
    first = {f: _plus(getattr(slot, f), pin, 1.0) for f in ("m0", "dk0", "kr0", "vr0") if getattr(slot, f)}
    return _with(slot, w=_plus(slot.w, pin, 1.0), p0=_plus(slot.p0 or slot.p, pin, 1.0), **first)


# ``_memory``'s result: the LP's memory rows, (coefficients in GB, right-hand side in GB) each, and the
# fractions' bounds
MemoryRows = tuple[tuple[tuple[dict[str, float], float], ...], dict[str, tuple[float, float]]]


@dataclass(frozen=True)
class CostModel:
    """The LP's data for one (gbs, nb, flags): memory rows and the slots' linear forms."""

    gbs: int
    nb: int
    flags: Flags
    memory: tuple[tuple[dict[str, float], float], ...]  # (coefficients in GB, right-hand side in GB)
    slots: tuple[tuple[float, _Slot], ...]
    layers: int
    bounds: dict[str, tuple[float, float]]
    # each slot's ``_slot_forms``, worked out once: the layout, the lower bounds, the LP and
    # ``cost_at`` all read them (a search asks ~10 times per model); ``replace`` works them out again
    forms: tuple[list[tuple[tuple[float, dict[str, float]], ...]], ...] = field(
        init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "forms", tuple(_slot_forms(s, self.nb) for _, s in self.slots))


def cost_model(
    rig: Rig,
    model: ModelSpec,
    wl: Workload,
    gbs: int,
    nb: int,
    fl: Flags,
    ends: tuple[str, str, str],
    gpu_budget: float | None = None,
    placed: FlexGenPlan | None = None,
    memory: MemoryRows | None = None,
    pinned: Sequence[tuple[float, _Slot]] | None = None,
    pin_at: dict[str, float] | None = None,
) -> CostModel:
    """The LP of one (gbs, nb, flags); with ``placed``, its weight loads at that plan's per-tensor
    placement (constants: its fractions are then pinned, ``released_time_per_seq``, ``_repinned``).
    ``memory``: its ``_memory``, where already worked out. ``pinned``: for an unplaced ``--pin-weight
    0`` model, its pinned twin's unplaced ``CostModel.slots`` less the tie-break, which it relays
    (``_relayed_slots``) instead of working them out again. ``pin_at``: an unplaced model's KV fractions
    where V's pin takes K's disk read as its tangent there (``_second_pass``)."""
    gpu, cpu, disk = ends
    split = None if placed is None else layer_weight_split(model, placed)
    placed_copies = () if placed is None else layer_disk_copy_kinds(model, placed)
    kv_at = None
    if placed is not None:
        f = fractions(model, placed)
        kv_at = {"cg": f.cg, "cc": f.cc, "cd": f.cd}
    lk = links(rig, gpu, cpu, disk)
    rows, bounds = memory if memory is not None else _memory(rig, model, wl, gbs, nb, fl, ends, gpu_budget)
    if pinned is not None and placed is None and not fl.pin_weight and pin_at is None:
        slots = tuple(_relayed_slots(pinned, rig, model, fl, cpu))
    else:
        slots = (
            *_slots(rig, model, wl, gbs, nb, fl, lk, ends, split, placed_copies, kv_at, pin_at),
            *_other_slots(rig, model, wl, gbs, nb, lk, ends, fl, split, placed_copies),
        )
    return CostModel(gbs, nb, fl, rows, (*slots, _tie_break(slots, model.layers)), model.layers, bounds)


def _relayed_slots(
    pinned: Sequence[tuple[float, _Slot]], rig: Rig, model: ModelSpec, fl: Flags, cpu: str
) -> list[tuple[float, _Slot]]:
    """An unplaced ``--pin-weight 0`` model's slots from its pinned twin's (``cost_model``'s ``pinned``),
    as ``_slots`` and ``_other_slots`` relay them: ``pin_weight`` reaches nothing else in either, and
    ``_relayed`` touches only a slot's first sub-step (``w``, ``p0``, ``m0``, ``dk0``, ``kr0``, ``vr0``),
    none of what ``_slots``' lanes pass reads or writes after it (``d2h``, ``dwrite``, ``q``,
    ``q_prev``), so relaying after that pass gives the same slots. ``_slots``' come first, a slot per
    ``_positions`` entry and phase (prefill, decode), each relaying its position's next layer; then
    ``_other_slots``' (each phase's), relaying the next token's embedding."""
    split = _split_cache(model, fl.compress_weight)
    nexts = [j for _ in range(2) for _, j, _ in _positions(len(split), model.layers)] + [0, 0]
    return [
        (m, _relayed(slot, _weight_pin(rig, cpu, split[j][1], None)))
        for (m, slot), j in zip(pinned, nexts, strict=True)
    ]


def _memory(
    rig: Rig,
    model: ModelSpec,
    wl: Workload,
    gbs: int,
    nb: int,
    fl: Flags,
    ends: tuple[str, str, str],
    gpu_budget: float | None = None,
) -> MemoryRows:
    """``cost_model``'s memory rows and the fractions' bounds: all ``_weights_bound`` needs of it
    besides the weights' form, ~1/4 of its time."""
    gpu, cpu, disk = ends
    bounds = {v: (0.0, 1.0) for v in VARS}
    bounds["hd"] = (0.0, 0.0)  # the released runtime never puts activations on disk
    if not disk:
        bounds["wd"] = bounds["cd"] = (0.0, 0.0)
    if fl.compress_cache:  # compressed KV cannot be split across tiers
        for t in "gcd":
            v = 1.0 if t == fl.cache_tier else 0.0
            bounds["c" + t] = (v, v)
    # Memory: evaluate the shared formulas at unit vectors (they are linear in the fractions).
    whole = _whole_weights(model, fl.compress_weight)
    flags = (fl.cpu_attention, fl.compress_cache, fl.compress_weight)
    # a compressed cache lies wholly on its flags' tier (exact copies, ``kv_load_copies``); an
    # uncompressed one's fractions are solved for: its copies counted as for a split cache ("")
    shape = Shape(
        gbs, nb, wl.prompt_len, wl.kv_slots, *flags, fl.pin_weight, fl.cache_tier if fl.compress_cache else ""
    )
    terms = shape_memory(model, shape)
    base = _mem(terms, shape, {}, whole)
    cap_gpu = rig.devices[gpu].mem_bytes
    caps = {
        "gpu": usable_bytes(cap_gpu, gpu_budget),
        "cpu": rig.devices[cpu].mem_bytes,
        "disk": rig.disks[disk].capacity_bytes if disk else 0.0,
    }
    unit = {v: _mem(terms, shape, {v: 1.0}, whole) for v in VARS}  # once for the three tiers
    rows = []
    for tier, cap in caps.items():  # in GB: keeps the LP well scaled
        coefs = {v: (unit[v][tier] - base[tier]) / 1e9 for v in VARS}
        rows.append(({v: c for v, c in coefs.items() if c}, (cap - base[tier]) / 1e9))
    return tuple(rows), bounds


def _tie_break(slots: tuple[tuple[float, _Slot], ...], layers: int) -> tuple[float, _Slot]:
    """A slot of no time but ``TIE_BREAK`` of the block's compute per fraction one tier slower (CPU
    1, disk 2): where the LP's time is flat (a load hidden under compute, a KV share whose tier does
    not bind), GLOP would return any vertex, and one that puts a sliver of the weights or the KV on
    a slower tier than it need is a plan the per-tensor placement and the engine run slower (a
    99.9 % weight share is 87 % of whole tensors: hexgen-homogeneous llama2-7b 663 -> 617 tok/s).
    It only orders equal times: the engine still judges the confirmed plans."""
    compute = sum(m * layers * s.p.get("const", 0.0) for m, s in slots)
    eps = TIE_BREAK * compute
    lane = {f"{kind}{tier}": k * eps for kind in "wch" for tier, k in (("c", 1.0), ("d", 2.0))}
    return 1.0 / layers, _Slot({}, {}, {}, lane, {}, {})


def cost_at(cm: CostModel, x: dict[str, float]) -> float | None:
    """Block time at a given placement (plain Python); None when it breaks a constraint."""
    for v, (lo, hi) in cm.bounds.items():
        if not lo - 1e-9 <= x[v] <= hi + 1e-9:
            return None
    for tier in "wch":
        if abs(sum(x[tier + t] for t in "gcd") - 1.0) > 1e-9:
            return None
    for coefs, rhs in cm.memory:
        if sum(c * x[v] for v, c in coefs.items()) > rhs + 1e-9:
            return None
    return _time_at(cm, x)


def _time_at(cm: CostModel, x: dict[str, float]) -> float:
    """``cost_at`` without its checks: the block time of ``cm``'s slots at ``x``."""

    def lin(form: dict[str, float]) -> float:
        return form.get("const", 0.0) + sum(c * x[v] for v, c in form.items() if v != "const")

    total = 0.0
    for (mult, _), forms in zip(cm.slots, cm.forms, strict=True):
        t = max(sum(k * lin(f) for k, f in parts) for parts in forms)
        total += mult * cm.layers * t
    return total


def _slot_forms(slot: _Slot, nb: int) -> list[tuple[tuple[float, dict[str, float]], ...]]:
    """Every lower bound of one slot's time, each a sum ``(k, form)`` of linear forms: the slot's time
    is their max. ``build_lp`` writes each as a row (in this order) and ``cost_at`` evaluates them, so
    the LP and the cost at a placement are one model. The overlap forms max(w + c, p0) + (nb - 1)
    max(c, p) as sums; the KV stores' (``_Slot.q``); CPU attention's disk reads (``_Slot.kr``) with
    every other option; or, for a GPU-attention KV load, ``_kv_forms``; then the three lanes."""
    lanes = [((1.0, lane),) for lane in (slot.d2h, slot.dread, slot.dwrite)]
    if slot.c0 or slot.cl:  # a GPU-attention KV load: its own first and last sub-steps
        return [*_kv_forms(slot, nb), *lanes]
    nbf = float(nb)
    p0 = slot.p0 or slot.p
    forms = [
        ((1.0, slot.w), (nbf, slot.c)),
        ((1.0, slot.w), (1.0, slot.c), (nbf - 1, slot.p)),
        ((1.0, p0), (nbf - 1, slot.c)),
        ((1.0, p0), (nbf - 1, slot.p)) if slot.p0 else ((nbf, slot.p),),
    ]
    # the KV stores' sub-step forms (_Slot.q); a slot stores in its sub-steps (q) or its first holds
    # the store before (q_prev), not both: an empty option is left out, as every form is >= 0 and
    # so under a sibling (c, p)
    if slot.q_prev:
        forms += [((1.0, slot.q_prev), (nbf - 1, rest)) for rest in (slot.c, slot.p, slot.q) if rest]
    if slot.q:
        forms += [((1.0, slot.w), (1.0, slot.c), (nbf - 1, slot.q)), ((1.0, p0), (nbf - 1, slot.q))]
    if slot.kr or slot.kr0:  # CPU attention's disk reads (_Slot.kr): with every other option
        firsts = [
            ((1.0, slot.w), (1.0, slot.c)),
            ((1.0, p0),),
            *([((1.0, slot.q_prev),)] if slot.q_prev else []),
        ]
        others = [slot.c, slot.p, *([slot.q] if slot.q else [])]
        reads = [f for f in (slot.kr, slot.vr) if f]
        forms += [(*a, (nbf - 1, b)) for a in firsts for b in reads]
        forms += [
            ((1.0, f), (nbf - 1, b)) for f in (slot.kr0, slot.vr0, slot.dr0) if f for b in (*others, *reads)
        ]
    if slot.wr:  # the weights' disk read then hop (_Slot.wr), with every other option (one at nb 1)
        others = [slot.c, slot.p, slot.q, slot.kr, slot.vr] if nb > 1 else [{}]
        forms += [((1.0, slot.wr), (nbf - 1, b)) for b in others if b or nb == 1]
    return forms + lanes


def _kv_forms(slot: _Slot, nb: int) -> list[tuple[tuple[float, dict[str, float]], ...]]:
    """The sub-step forms of a slot with a GPU-attention KV load (``_Slot.c0``, ``cl``): every option
    of the first sub-step (the weights then the loads on the link, the loads through the slowed
    memcpy, the thread, the store before) plus nb - 2 of a middle one's (loads, thread, store) plus
    the last's, each a sum ``(k, form)``: the max of the sub-steps' maxes, as linear forms. An empty
    store (``q``, ``q_prev``) is left out (under the thread's option, as in ``_slot_forms``)."""
    firsts: list[tuple[tuple[float, dict[str, float]], ...]] = [((1.0, slot.w), (1.0, slot.c0 or slot.c))]
    if slot.m0:
        firsts.append(((1.0, slot.m0),))
    firsts.append(((1.0, slot.p0 or slot.p),))
    if slot.q_prev:
        firsts.append(((1.0, slot.q_prev),))
    if slot.dk0:
        firsts.append(((1.0, slot.dk0),))
    if slot.wr:
        firsts.append(((1.0, slot.wr),))
    if slot.dw0:
        firsts.append(((1.0, slot.dw0),))
    if nb == 1:
        return firsts
    mids = [slot.c, slot.p, *([slot.q] if slot.q else []), *([slot.dkm] if slot.dkm else [])]
    mids = mids if nb > 2 else [{}]
    lasts = [
        slot.cl or slot.c,
        slot.pl or slot.p,
        *([slot.q] if slot.q else []),
        *([slot.dkl] if slot.dkl else []),
    ]
    return [(*f, (nb - 2.0, m), (1.0, last)) for f in firsts for m in mids for last in lasts]


def _row_terms(parts: tuple[tuple[float, dict[str, float]], ...]) -> tuple[float, dict[str, float]]:
    """``t >= sum(k * lin(form) for k, form in parts)`` as one row's constant and coefficients (after
    t's 1.0), summed in the order (and with the skipped zero multipliers) of OR-Tools' natural API
    (``LinearExpr.GetCoeffs``: t, then each form's terms, each coefficient ``(-1.0 * k) * coef``), so
    the model GLOP receives is the same, bit for bit, as ``solver.Add(t >= ...)`` builds (~30,000
    rows a search; ``tests/test_flexgen_lp_build.py``)."""
    coeffs: dict[str, float] = {}
    offset = 0.0
    for k, form in parts:
        m = -1.0 * k
        if not m:
            continue
        for v, coef in form.items():
            cm = m * coef
            if v == "const":
                offset += cm
            elif cm:
                coeffs[v] = coeffs.get(v, 0.0) + cm
    return offset, coeffs


_INF = pywraplp.Solver.infinity()


def build_lp(cm: CostModel) -> tuple[pywraplp.Solver, dict[str, pywraplp.Variable]]:
    """GLOP's model of ``cm``: the 9 fractions, the tier sums, the memory rows, one epigraph variable
    per slot (its ``_slot_forms`` as rows), the layers' summed time as the objective, in that order.

    Built as one ``MPModelProto`` (OR-Tools' linear_solver.proto) that ``Solver.LoadModelFromProto``
    loads in one call: MPSolver makes from it the same variables, rows and coefficients, in the same
    order, as the ~140,000 calls of the Python API a search made before (most of build_lp's time).
    The proto has no names (the loader drops them; GLOP does not read them)."""
    from ortools.linear_solver import linear_solver_pb2 as pb  # ~0.03 s: at the first LP

    # each variable and row made in place (``add``): making messages, then the model of copies of
    # them, took twice as long (~10 us a row, ~120 rows an LP)
    proto = pb.MPModelProto()
    var, row = proto.variable.add, proto.constraint.add
    index = {v: i for i, v in enumerate(cm.bounds)}
    for lo, hi in cm.bounds.values():
        var(lower_bound=lo, upper_bound=hi)
    for tier in "wch":
        row(
            lower_bound=1.0,
            upper_bound=1.0,
            var_index=[index[tier + t] for t in "gcd"],
            coefficient=[1.0] * 3,
        )
    for coefs, rhs in cm.memory:
        if not coefs:  # the natural API's ``0 <= rhs``: an empty row, infeasible when rhs < 0
            lo = 0.0 if rhs >= 0 else 1.0
            row(lower_bound=lo, upper_bound=lo)
            continue
        kept = {v: c for v, c in coefs.items() if c}
        row(lower_bound=-_INF, upper_bound=rhs, var_index=[index[v] for v in kept], coefficient=kept.values())
    t = len(cm.bounds)
    column = index.__getitem__
    # an epigraph variable's and its rows' upper bounds are left unset: the proto's default, +inf
    # (linear_solver.proto), what the loader reads (~0.3 us a row less); the lists set after the row
    # is made (~0.5 us less than as its arguments)
    for (mult, _), forms in zip(cm.slots, cm.forms, strict=True):
        var(lower_bound=0.0, objective_coefficient=mult * cm.layers)
        for parts in forms:
            offset, coeffs = _row_terms(parts)
            r = row(lower_bound=0.0 - offset)
            r.var_index.extend([t, *map(column, coeffs)])
            r.coefficient.extend([1.0, *coeffs.values()])
        t += 1
    solver = pywraplp.Solver.CreateSolver("GLOP")
    if solver.LoadModelFromProto(proto):  # refused (a NaN or infinite number): call by call
        solver = _load_by_calls(proto)
    return solver, dict(zip(cm.bounds, solver.variables(), strict=False))


def _load_by_calls(proto) -> pywraplp.Solver:
    """``proto`` through the API's calls, as ``MPSolver::LoadModelFromProto`` makes them but without
    its check of the numbers (which the API never made: GLOP judges the model, as before)."""
    solver = pywraplp.Solver.CreateSolver("GLOP")
    xs = [solver.NumVar(v.lower_bound, v.upper_bound, "") for v in proto.variable]
    for c in proto.constraint:
        row = solver.Constraint(c.lower_bound, c.upper_bound, "")
        for i, k in zip(c.var_index, c.coefficient, strict=True):
            row.SetCoefficient(xs[i], k)
    goal = solver.Objective()
    goal.SetMinimization()
    for x, v in zip(xs, proto.variable, strict=True):
        if v.objective_coefficient:
            goal.SetCoefficient(x, v.objective_coefficient)
    return solver


def solve_lp(
    rig: Rig,
    model: ModelSpec,
    wl: Workload,
    gbs: int,
    nb: int,
    fl: Flags,
    ends: tuple[str, str, str],
    gpu_budget: float | None = None,
) -> LpSolution | None:
    """Minimise the block time over the 9 fractions; None when no placement fits in memory."""
    return _solve(rig, model, wl, gbs, nb, fl, ends, gpu_budget)[0]


def _solve(
    rig: Rig,
    model: ModelSpec,
    wl: Workload,
    gbs: int,
    nb: int,
    fl: Flags,
    ends: tuple[str, str, str],
    gpu_budget: float | None = None,
    memory: tuple | None = None,
) -> tuple[LpSolution | None, bool]:
    """``solve_lp``'s answer and whether its optimum leaves the host-memory row free (``_host_free``).
    ``memory``: its ``_memory``, where already worked out."""
    cm = cost_model(rig, model, wl, gbs, nb, fl, ends, gpu_budget, memory=memory)
    return _solution(cm, wl, _remake(rig, model, wl, fl, ends, gpu_budget, cm))


def _remake(
    rig: Rig,
    model: ModelSpec,
    wl: Workload,
    fl: Flags,
    ends: tuple[str, str, str],
    budget: float | None,
    cm: CostModel,
) -> Callable[[dict[str, float]], CostModel]:
    """``cm`` made again with V's pin's tangent at given KV fractions (``_second_pass``)."""
    memory = cm.memory, cm.bounds
    return lambda at: cost_model(rig, model, wl, cm.gbs, cm.nb, fl, ends, budget, memory=memory, pin_at=at)


def _second_pass(
    cm: CostModel, optimum: tuple[float, tuple[tuple[str, float], ...]], remake: Callable[..., CostModel]
) -> tuple[float, tuple[tuple[str, float], ...]]:
    """An LP optimum with V's pin slowed by K's disk read (``_kv_load``) where it splits an
    uncompressed GPU-attention cache between the CPU and the disk: that delay is no linear form in
    cc and cd (the read may end within the pin or outlast it), so the LP leaves it out and its
    optimum's time is low there (hexgen-homogeneous Llama-2-70B 96 x 32, the KV 0/53/47: 1.3 %). The
    optimum is timed again with the delay's tangent at its own fractions (exact there), so the search
    ranks it with the delay. The LP is not solved again with that tangent: a re-solve lowered the LP's
    time of 57 / 84 re-timed optima by up to 2.4 % by moving the split (hexgen-homogeneous Llama-2-70B
    / OPT-30B 512 + 32), but its LP-vs-engine on 300 seeded optima was no closer (median -0.58 % both)
    and it cost those searches +60-76 % of CPU (this re-timing: +5-37 %). The time is at least the
    LP's objective (the delay is >= 0; equal up to an ulp of rounding where the delay vanishes, well
    inside the bounds' 1e-3 slack), so the search's lower bounds, taken from its duals, still hold;
    ``_host_free``'s proof that an unpinned twin cannot beat its pinned one is of those objectives,
    with these times a heuristic."""
    x = dict(optimum[1])
    fl = cm.flags
    if fl.cpu_attention or fl.compress_cache or not (x["cc"] > 1e-9 and x["cd"] > 1e-9):
        return optimum
    return _time_at(remake({v: x[v] for v in ("cg", "cc", "cd")}), x), optimum[1]


def _solution(
    cm: CostModel, wl: Workload, remake: Callable[..., CostModel] | None = None
) -> tuple[LpSolution | None, bool]:
    """``_solve``'s answer for its cost model ``cm`` (``remake``: ``_second_pass``'s, where wanted)."""
    optimum, duals = _solved(cm)
    if optimum is None:
        return None, False
    value, x = optimum if remake is None else _second_pass(cm, optimum, remake)
    block = value
    blocks = math.ceil(wl.batch / (cm.gbs * cm.nb))
    return LpSolution(cm.gbs, cm.nb, cm.flags, dict(x), block, block * blocks / wl.batch), _host_free(duals)


# ---- --pin-weight 0: which unpinned twins can win ---------------------------------------------------------
_HOST_ROW = 3 + 1  # build_lp's rows: the 3 tier sums, then cost_model's memory rows (gpu, cpu, disk)


def _host_free(duals: Sequence[float]) -> bool:
    """Whether an LP optimum's host-memory row has multiplier 0 (GLOP gives exactly 0.0 to a row with
    slack; a binding row with multiplier 0 qualifies too): the optimum needs no help from that row.

    Then its ``--pin-weight 0`` twin (same gbs, nb and other flags) cannot be faster (``_beats``), so
    the search need not solve it. The twin's LP differs from the pinned one only (a) in the host row
    (memory_plan's ``cpu`` terms: pageable weights and their relay blocks instead of pinned ones; the
    GPU and disk rows, the bounds and the tier sums are the same: ``Shape.pin_weight`` reaches only
    ``cpu``) and (b) in its slots, where ``_relayed`` adds the relay's ``_weight_pin`` form (>= 0:
    ``{"wc": copy time}``) to ``w``, ``p0`` (``p`` where there was none: ``(1, p + pin), (nb - 1, p)``
    replaces ``(nb, p)``), ``m0``, ``dk0``, ``kr0``, ``vr0`` where present, so each of ``_slot_forms``'
    rows, term by term, is >= the pinned row at every point and the unpinned time (their max, summed
    with the same weights; ``_tie_break`` reads ``p``, unchanged) is >= the pinned time pointwise. If
    the pinned optimum x* leaves the host row's multiplier 0, the same multipliers prove x* optimal
    with the host row dropped (KKT; the LP is convex), so pinned time >= f_p(x*) on the region the
    other rows allow, which holds the unpinned LP's feasible set; with f_u >= f_p there, the twin's
    optimum is >= f_p(x*). ``tests/test_flexgen_twins.py`` checks it on random problems."""
    return len(duals) > _HOST_ROW and duals[_HOST_ROW] == 0.0


def _beats(sol: LpSolution, twin: LpSolution | None) -> bool:
    """Whether an unpinned ``sol`` is a candidate: its pinned twin does not fit, or is slower by more
    than GLOP's precision (an unpinned twin at most as fast as its pinned one adds nothing: the pinned
    one is ranked, and the relay only costs). ``_host_free``: where the twin's host row is free, never."""
    return twin is None or sol.time_per_seq_s < twin.time_per_seq_s * (1.0 - 1e-9)


def _ruled_out(
    sol: LpSolution | None, twin: tuple[LpSolution | None, bool] | None, runs: Callable[[LpSolution], bool]
) -> bool:
    """Whether a ``--pin-weight 0`` LP is ruled out by its pinned ``twin`` (solution, ``_host_free``):
    left unsolved (``sol`` None) where the twin's host row is free, not offered where it does not beat
    the twin (``_beats``); either only where the twin's own placement runs (``runs``: ``_runs``, asked
    last: it costs a placement and a fit)."""
    if twin is None or twin[0] is None:
        return False
    return (twin[1] if sol is None else not _beats(sol, twin[0])) and runs(twin[0])


# GLOP's optima by the LP itself: half the LPs of a sweep's FlexGen points are ones another point (a
# rig differing where this LP does not look) already solved. The key is every number ``build_lp``
# reads, in its order; equal keys build the same model (a coefficient 0.0 == -0.0 or 2 == 2.0 gives
# GLOP the same row: zeros are skipped, coefficients passed as floats), and GLOP is deterministic.
# A compare's LPs seldom repeat (35 of 4,253 over the 13 cases and the 60-case differential, 26 of them
# in one case) and the key costs ~0.09 ms an LP (~0.017 CPU s of the headline's FlexGen search), so
# optima are remembered only in a process that asks (``remember_optima``: a sweep's points).
_OPTIMA: dict[tuple, tuple] | None = None  # key -> (optimum or None, duals): ``_solved``; None: not kept
_OPTIMA_MAX = 16384


def remember_optima() -> None:
    """From now on in this process, ``_solved`` remembers GLOP's optima by the LP itself."""
    global _OPTIMA
    if _OPTIMA is None:
        _OPTIMA = {}


def _lp_key(cm: CostModel) -> tuple:
    return (
        cm.nb,
        cm.layers,
        tuple(cm.bounds.items()),
        tuple((tuple(coefs.items()), rhs) for coefs, rhs in cm.memory),
        # every field of every slot, so a form added to _Slot is in the key without anyone remembering
        tuple((mult, *(tuple(getattr(s, name).items()) for name in _SLOT_FIELDS)) for mult, s in cm.slots),
    )


def _optimum(cm: CostModel) -> tuple[float, tuple[tuple[str, float], ...]] | None:
    """The LP's objective value and fractions at its optimum; None when it is infeasible."""
    return _solved(cm)[0]


def _solved(cm: CostModel) -> tuple[tuple[float, tuple[tuple[str, float], ...]] | None, array]:
    """``_optimum`` and the rows' dual values there (empty when infeasible), in ``build_lp``'s order:
    ``_lower_bound``'s multipliers."""
    memo = _OPTIMA
    if memo is not None:
        key = _lp_key(cm)
        hit = memo.get(key)
        if hit is not None:
            return hit
    from ortools.linear_solver.linear_solver_pb2 import MPSolutionResponse

    solver, x = build_lp(cm)
    if solver.Solve() != pywraplp.Solver.OPTIMAL:
        out: tuple = None, array("d")
    else:
        response = MPSolutionResponse()
        solver.FillSolutionResponseProto(response)
        optimum = solver.Objective().Value(), tuple((v, x[v].solution_value()) for v in VARS)
        out = optimum, array("d", response.dual_value)
    if memo is not None:
        if len(memo) >= _OPTIMA_MAX:
            memo.clear()
        memo[key] = out
    return out


@lru_cache(maxsize=64)
def _full_copies(model: ModelSpec, compressed_weights: bool) -> Copies:
    """Every layer's tensors as the copy threads move them, all on disk (``_weight_relay``)."""
    plan = FlexGenPlan(wg=0.0, wc=0.0, compress_weight=compressed_weights, placement="continuous")
    return layer_disk_copy_kinds(model, plan)


def _hop_s(lk: Links, nbytes: float, packed: bool) -> float:
    """One disk copy's hop over the link: from the pinned relay, or, a 4-bit tensor's packed data,
    from the pageable temporary its conversion makes (flexgen.py: ``_via_host``)."""
    return nbytes / (lk.page if packed else lk.pin)


def _unpack_s(lk: Links, nbytes: float, whole: bool = True) -> float:
    """A packed part's conversion into its pageable temporary before its hop (``packed_unrelay_op``,
    flexgen.py: ``_via_host``), with its overhead where the copy is ``whole`` (not a share that a
    fraction scales)."""
    return nbytes * lk.unpack + (lk.unpack_lat if whole else 0.0)


def _converted(lk: Links, start: float, work: float, reads: Iterable[tuple[float, float, bool]]) -> float:
    """When a packed part's conversion of ``work`` seconds, issued at ``start``, ends beside the disk
    reads the copy threads have in flight (``reads``: each one's start, end and packed?): the engine
    books the position's reads on host DRAM before its conversions (``_Booked.book_hops``), so each
    read slows the conversion by ``Links.unpack_slow`` per second beside it (``overlap_delay``). A
    chain whose reads all scale with one fraction is that fraction times its unit chain's (one form).
    (hexgen-homogeneous OPT-13B 32 x 6, a 4-bit KV on disk, 1024 + 32: K's data 3.08 ms alone, 4.90 ms
    in the engine beside K's scales' and V's data's reads; the LP was 5.9 % under the engine.)"""
    slow = lk.unpack_slow
    return _paced_end(start, work, sorted(reads), (1.0 - slow[0], 1.0 - slow[1]))


def _paced_end(
    t: float, work: float, spans: Iterable[tuple[float, float, int]], rates: Sequence[float]
) -> float:
    """When ``work`` seconds of CPU work issued at ``t`` end, at full rate but at ``rates[i]`` of it
    within each span (``spans``: (start, stop, i), by start): the walk of both ``_converted`` (beside
    the disk reads) and ``_slowed_end`` (beside the copies)."""
    for r0, r1, i in spans:
        if work <= 0.0:
            break
        if r1 <= t:
            continue
        if r0 > t:  # full rate until the span starts
            step = min(work, r0 - t)
            t, work = t + step, work - step
            if work <= 0.0:
                break
        rate = rates[i]
        if rate * (r1 - t) >= work:
            return t + work / rate
        work -= rate * (r1 - t)
        t = r1
    return t + work


def _hops_after(lk: Links, copies: tuple[tuple[float, bool], ...], hop_lat: float) -> float:
    """A layer's disk copies' hops once the thread's CPU work is through, their reads landed: the
    engine books each packed part's conversion on host DRAM after the CPU work booked before it
    (first come, first served), so the conversions run then, one after another (each takes the
    DRAM's rate), and each hop follows its conversion and the hop before it."""
    t = ready = 0.0
    for b, k in copies:
        if k:
            ready += _unpack_s(lk, b)
        t = max(t, ready) + hop_lat + _hop_s(lk, b, k)
    return t


def _wd_per_byte(
    lk: Links, copies: tuple[tuple[float, bool], ...], w_link: dict[str, float]
) -> dict[str, float]:
    """``w_link`` with a layer's disk share at its copies' mean hop seconds per byte (the pinned rate's
    where none is packed data: ``_weight_loads``)."""
    if not any(k for _, k in copies):
        return w_link
    return {**w_link, "wd": sum(_hop_s(lk, b, k) for b, k in copies) / sum(b for b, _ in copies)}


@lru_cache(maxsize=64)
def _split_cache(model: ModelSpec, compressed_weights: bool) -> tuple[tuple[float, float, float], ...]:
    plan = FlexGenPlan(wg=0.0, wc=100.0, compress_weight=compressed_weights, placement="continuous")
    return layer_weight_split(model, plan)


@lru_cache(maxsize=64)
def _host_cache(model: ModelSpec, compressed_weights: bool) -> tuple[float, float, float]:
    """The weights all on the CPU: their host memory pinned, unpinned, and the unpinned relay's
    (``flexgen_policy._host_allocations``), which the LP scales by ``wc``."""
    f = fractions(model, FlexGenPlan(wg=0.0, wc=100.0, compress_weight=compressed_weights))
    return f.w_cpu_pinned, f.w_cpu_unpinned, f.w_cpu_relay


Whole = tuple[float, float, tuple[float, float, float], float]  # ``_whole_weights``


@lru_cache(maxsize=64)
def _whole_weights(model: ModelSpec, compressed_weights: bool) -> Whole:
    """What ``_mem`` scales by the fractions: the weights' bytes, the largest layer's, the host memory
    of them all on the CPU (``_host_cache``), the temporaries of them all on disk (``_disk_temps``)."""
    split = _split_cache(model, compressed_weights)
    return (
        sum(s[1] for s in split),
        max(s[1] for s in split),
        _host_cache(model, compressed_weights),
        _disk_temps(model, compressed_weights),
    )


def _mem(
    terms: ShapeMemory,
    shape: Shape,
    x: dict[str, float],
    whole: Whole,
) -> dict[str, float]:
    g = x.get
    wtot, wmax, host, temps = whole
    wc = g("wc", 0.0)
    values = {
        "w_gpu": g("wg", 0.0) * wtot,
        "w_cpu": wc * wtot,
        "w_disk": g("wd", 0.0) * wtot,
        "w_off_gpu_max": (wc + g("wd", 0.0)) * wmax,
        "w_cpu_pinned": wc * host[0],
        "w_cpu_unpinned": wc * host[1],
        "w_cpu_relay": wc * host[2],
        "cg": g("cg", 0.0),
        "cc": g("cc", 0.0),
        "cd": g("cd", 0.0),
        "hg": g("hg", 0.0),
        "hc": g("hc", 0.0),
        "hd": g("hd", 0.0),
        "w_packed_temps": g("wd", 0.0) * temps,
    }
    # built as ``_with`` builds slots, without the frozen ``__init__``'s 14 ``object.__setattr__``
    # (~4.8 -> ~0.7 us; ``_memory`` builds 10 per (gbs, nb, flags), ~5,600 a search)
    f = object.__new__(Fractions)
    f.__dict__.update(values)
    return {tier: sum(tags.values()) for tier, tags in memory_at(terms, shape, f).items()}


@lru_cache(maxsize=64)
def _disk_temps(model: ModelSpec, compressed_weights: bool) -> float:
    """The weights all on disk: the packed parts' pageable temporaries of a layer's load
    (``flexgen_policy.packed_temporaries``), which the LP scales by ``wd``."""
    return fractions(model, FlexGenPlan(wg=0.0, wc=0.0, compress_weight=compressed_weights)).w_packed_temps


# ---- turning an LP point into a runnable policy ---------------------------------------------------------
def to_plan(
    sol: LpSolution, model: ModelSpec, gpu: str, budget: float | None, *, nearest_disk: bool = True
) -> FlexGenPlan:
    """Percentages for the runtime: activations on one tier, the rest rounded down to whole percent,
    and the weight GPU percent lowered until the per-tensor placement puts no more on the GPU than the
    LP did (the released midpoint rule is a step function). ``nearest_disk=False``: the KV's disk share
    is what rounding the others down leaves (never less than the LP's)."""
    x = sol.x
    pct = {v: math.floor(100 * x[v] + 1e-6) for v in VARS}
    cc = min(100 - pct["cg"], pct["cc"] + (0 if x["cd"] > 1e-6 else 100 - pct["cg"] - pct["cc"]))
    if nearest_disk:
        # the disk share to the nearest percent and the rest to the CPU, not the remainder of the
        # others' rounding: with CPU attention the reads run beside the thread, so the LP takes
        # slivers of disk that would become 1-2 %; under 1 % none, as each disk copy's fixed cost
        # (the route's latency, 100 us on flexgen-t4) is no linear term (OPT-6.7B 64 x 1 at 14 GB:
        # 1 % on disk runs 0.25 % slower in the engine, the LP has it 0.06 % faster). With GPU
        # attention too: two floors' remainder on the slowest tier is a percent of the KV off the
        # LP's balance of CPU and disk reads (llama2-70b hexgen-homogeneous 96 x 32, LP 0.09/52.99/
        # 46.92: 0/52/48 runs 48.14 tok/s, 0/53/47 48.35, and the LP's placed time agrees)
        cc = 100 - pct["cg"] - (round(100 * x["cd"]) if x["cd"] >= 0.01 else 0)
    hg = 100.0 if x["hg"] >= x["hc"] else 0.0
    plan = FlexGenPlan(
        gpu_batch_size=sol.gbs,
        num_gpu_batches=sol.nb,
        wg=pct["wg"],
        wc=min(100 - pct["wg"], pct["wc"] + (0 if x["wd"] > 1e-6 else 100 - pct["wg"] - pct["wc"])),
        cg=pct["cg"],
        cc=cc,
        hg=hg,
        hc=100.0 - hg,
        cpu_attention=sol.flags.cpu_attention,
        compress_cache=sol.flags.compress_cache,
        compress_weight=sol.flags.compress_weight,
        pin_weight=sol.flags.pin_weight,
        gpu=gpu,
        gpu_mem_budget=budget,
    )
    allowed = x["wg"] * sum(s[1] for s in _split_cache(model, sol.flags.compress_weight)) * (1 + 1e-9)
    while plan.wg > 0 and gpu_weight_bytes(model, plan) > allowed:
        plan = replace(plan, wg=plan.wg - 1, wc=plan.wc + 1)
    return plan


def candidate_flags(
    disk: bool, allow_lossy: bool = False, wl: Workload | None = None, unpinned: tuple[bool, ...] = ()
) -> list[Flags]:
    """Attention on the CPU or the GPU, with FlexGen's 4-bit compression of the weights and of the KV
    cache (on one tier) each as the user says: asked for (--dtype int4, --kv-dtype int4), fixed off
    (--dtype fp16, --kv-dtype fp16), or, when not named, chosen by the search only under
    --allow-compression (``allow_lossy``): compression changes the model's outputs. Then, for the
    weight formats in ``unpinned`` (``unpinned_formats``), each of those again with ``--pin-weight 0``
    (lossless), after all the pinned ones (so ties keep the pinned)."""
    wd = wl.weight_dtype if wl is not None else None
    kv = wl.kv_dtype if wl is not None else None
    weights = [True] if wd == "int4" else ([False, True] if wd is None and allow_lossy else [False])
    tiers = "gcd" if disk else "gc"
    out = []
    for cw in weights:
        lossless = [Flags(True, False, compress_weight=cw), Flags(False, False, compress_weight=cw)]
        compressed = [Flags(False, True, t, compress_weight=cw) for t in tiers]
        # CPU attention over a compressed cache, which FlexGen 0.1.8 runs (flexgen_ops.substep_ops)
        # with the cache at home on the CPU; on the GPU or the disk each step would first copy it there
        # (the engine runs such a plan; the search does not try it)
        compressed.append(Flags(True, True, "c", compress_weight=cw))
        if kv == "int4":
            out += compressed
        elif kv is not None or not allow_lossy:
            out += lossless
        else:
            out += [*lossless, *compressed]
    return out + [replace(fl, pin_weight=False) for fl in out if fl.compress_weight in unpinned]


def _unpinned(
    rig: Rig, model: ModelSpec, ends: tuple[str, str, str], given: tuple[bool, ...] | None
) -> tuple[bool, ...]:
    return unpinned_formats(rig, model, ends[1]) if given is None else given


def unpinned_formats(rig: Rig, model: ModelSpec, cpu: str) -> tuple[bool, ...]:
    """The weight formats (compressed or not) whose search also tries ``--pin-weight 0``: those whose
    weights, all pinned on the CPU (``pinned_bytes`` per tensor), and the copy threads' relays fill
    the host's memory, so that the pinning binds every plan's CPU weight share. Elsewhere pinned
    weights take no memory a plan needs for itself unless the KV cache or the activations fill the
    host (not tried: a second LP per candidate, the search's CPU time twice over)."""
    cap = rig.devices[cpu].mem_bytes
    return tuple(cw for cw in (False, True) if _host_cache(model, cw)[0] + COPY_RELAY_BYTES > cap)


def lp_candidates(
    rig: Rig,
    model: ModelSpec,
    wl: Workload,
    ends: tuple[str, str, str],
    budget: float | None = None,
    allow_lossy: bool = False,
    unpinned: tuple[bool, ...] | None = None,
) -> tuple[list[LpSolution], int]:
    """Every feasible (gbs, nb, flags) LP optimum, best time per sequence first; a ``--pin-weight 0``
    one only where it beats its pinned twin (``_beats``; not solved where that twin's host row is free,
    ``_host_free``)."""
    sols, solved = [], 0
    runs = partial(_runs, rig=rig, model=model, wl=wl, ends=ends, budget=budget)
    for gbs in GBS_CHOICES:
        if gbs > wl.batch:
            break
        any_fit = False
        for nb in NB_CHOICES:
            if gbs * nb > wl.batch:
                break
            twins: dict[Flags, tuple[LpSolution | None, bool]] = {}  # the pinned flags come first
            for fl in candidate_flags(bool(ends[2]), allow_lossy, wl, _unpinned(rig, model, ends, unpinned)):
                twin = None if fl.pin_weight else twins[_twin(fl)]
                if _ruled_out(None, twin, runs):
                    continue  # the pinned twin's host row is free: this one cannot beat it
                sol, free = _solve(rig, model, wl, gbs, nb, fl, ends, budget)
                solved += 1
                if fl.pin_weight:
                    twins[fl] = sol, free
                if sol is not None:
                    any_fit = True
                    if not _ruled_out(sol, twin, runs):
                        sols.append(sol)
        if not any_fit:
            break  # larger GPU batches only need more memory
    sols.sort(key=lambda s: (s.time_per_seq_s, -s.gbs, -s.nb))
    return sols, solved


def lp_candidates_free(
    rig: Rig,
    model: ModelSpec,
    wl: Workload,
    ends: tuple[str, str, str],
    budget: float | None = None,
    allow_lossy: bool = False,
    unpinned: tuple[bool, ...] | None = None,
) -> tuple[list[LpSolution], int]:
    """FlexGen's own search with the batch free (its released cost_model.py ``solve``): for each GPU
    batch size and flags, the number of GPU batches grows until the block no longer fits or the
    time per sequence stops falling; the block is the batch (``wl.batch`` is ignored). Larger GPU
    batch sizes stop once not even one GPU batch fits. A ``--pin-weight 0`` chain goes on by its own
    times but offers only the LPs that beat their pinned twin (``_beats``)."""
    sols, solved = [], 0
    for gbs in GBS_CHOICES:
        any_fit = False
        for fl in candidate_flags(bool(ends[2]), allow_lossy, wl, _unpinned(rig, model, ends, unpinned)):
            prev = math.inf
            for nb in NB_CHOICES:
                w = replace(wl, batch=gbs * nb)
                sol = solve_lp(rig, model, w, gbs, nb, fl, ends, budget)
                solved += 1
                if sol is None:
                    break  # more GPU batches only need more memory
                twin = None if fl.pin_weight else _solve(rig, model, w, gbs, nb, _twin(fl), ends, budget)
                if not _ruled_out(
                    sol, twin, partial(_runs, rig=rig, model=model, wl=w, ends=ends, budget=budget)
                ):
                    sols.append(sol)
                any_fit = True
                if sol.time_per_seq_s > prev:
                    break
                prev = sol.time_per_seq_s
        if not any_fit:
            break
    sols.sort(key=lambda s: (s.time_per_seq_s, -s.gbs, -s.nb))
    return sols, solved


# ---- the free-batch search's LPs, only those that can matter ------------------------------------------
# A candidate's LP is left unsolved while a lower bound of its time, less this share, is above the
# time of the next candidate in the ranking: GLOP's optimum meets its rows to ~1e-9, far inside it.
_BOUND_SLACK = 1e-3


@dataclass
class _Chain:
    """One (gbs, flags) of ``lp_candidates_free``'s loop: nb grows through ``NB_CHOICES`` until an LP
    is infeasible or its time per sequence rises."""

    level: int  # the index of gbs in GBS_CHOICES
    order: int  # the flags' index in candidate_flags
    gbs: int
    flags: Flags
    i: int = 0  # the next member: NB_CHOICES[i]
    prev: float = math.inf
    ended: bool = False
    models: dict[int, tuple[CostModel, tuple[int, ...]]] = field(default_factory=dict)  # member -> LP, layout
    memory: dict[int, tuple] = field(default_factory=dict)  # member -> its ``_memory``, not yet built
    # member -> (a lower bound of its time per sequence, how far in gbs levels its duals' LP was)
    bounds: dict[int, tuple[float, int]] = field(default_factory=dict)
    low: float | None = None  # the least of the unsolved members' bounds (None: not known)


@dataclass
class _Memo:
    """What ``lp_candidates_lazy`` learns that a second pass over other flags can use."""

    # (layout, pinned flags) -> gbs level -> duals (``solved``)
    duals: dict[tuple, dict[int, array]] = field(default_factory=dict)
    # (gbs, nb, pinned flags) -> the solution (None: infeasible) and ``_host_free``
    twins: dict[tuple[int, int, Flags], tuple[LpSolution | None, bool]] = field(default_factory=dict)
    # (gbs, nb, pinned flags) -> a bound of its time per sequence from multipliers that leave the
    # host row out: it bounds the --pin-weight 0 twin too (``_host_free``'s argument)
    bounds: dict[tuple[int, int, Flags], float] = field(default_factory=dict)
    # (gbs, nb, flags, workload, budget) -> a member's ``_memory`` (its rows and bounds), worked out
    # once a search: for its bound, its cost model, its pinned twin's LP (``twin``), and
    # ``_confirmable``'s placed models of its optimum (``_Placings.memory``; ``_memory`` does not read a
    # placement): 625 -> 558 calls on the headline, ~8 ms
    memory: dict[tuple, tuple] = field(default_factory=dict)
    # (gbs, nb, pinned flags, workload) -> its unplaced cost model's slots less the tie-break, which the
    # --pin-weight 0 member of the same key relays (``cost_model``'s ``pinned``) rather than working
    # them out again: 91 of the headline's 417 ``_slots``, ~25 ms
    slots: dict[tuple, tuple] = field(default_factory=dict)


def lp_candidates_lazy(
    rig: Rig,
    model: ModelSpec,
    wl: Workload,
    ends: tuple[str, str, str],
    budget: float | None = None,
    allow_lossy: bool = False,
    unpinned: tuple[bool, ...] | None = None,
    only_unpinned: bool = False,
    memo: _Memo | None = None,
    given: Iterable[LpSolution] = (),
) -> Iterator[LpSolution]:
    """``lp_candidates_free``'s candidates in its order (time per sequence, larger gbs then nb first,
    then its loop's order), each yielded once no LP left unsolved could come before it: an LP is
    solved only when ``_lower_bound`` cannot put it after the best candidate known, or when the
    loop's own rules (a chain goes on while its time falls; a larger gbs is tried only if a smaller
    one fitted) need its answer. A consumer that stops early (``_confirmable``, at its cut-off) leaves
    the LPs it would never look at unsolved; one that reads all gets ``lp_candidates_free``'s list.
    ``only_unpinned``: the ``--pin-weight 0`` chains alone (a second pass whose pinned chains the first
    pass already ranked and confirmed). An unpinned LP is offered only where it beats its pinned twin
    (``lp_candidates_free``), and is left unsolved (bound +inf) where that twin's host row is known free
    (``_host_free``). ``memo``: what a first pass learnt (duals, twins), for the second. ``given``:
    another search's candidates, in its order, merged into this one's (at equal keys, first): a second
    pass's ranking holds the first's, which bound it from the start."""
    flags = candidate_flags(bool(ends[2]), allow_lossy, wl, _unpinned(rig, model, ends, unpinned))
    if only_unpinned:
        flags = [fl for fl in flags if not fl.pin_weight]
    chains = [_Chain(j, k, gbs, fl) for j, gbs in enumerate(GBS_CHOICES) for k, fl in enumerate(flags)]
    memo = _Memo() if memo is None else memo
    fit: list[bool | None] = [None] * len(GBS_CHOICES)  # some flags' first LP fits at this gbs
    # the duals last solved, by the LP's row layout and flags (a --pin-weight 0 chain and its pinned
    # twin's share: any multipliers bound, ``_lower_bound``), then by gbs: the nearest LP's serve
    solved = memo.duals
    twins = memo.twins

    placed: dict[tuple[int, int, Flags], bool] = {}  # a pinned twin's ``_runs``, by key

    def runs(key: tuple[int, int, Flags]) -> bool:
        got = placed.get(key)
        if got is None:
            got = placed[key] = _runs(
                twins[key][0], rig, model, replace(wl, batch=key[0] * key[1]), ends, budget
            )
        return got

    def twin(c: _Chain, i: int) -> tuple[LpSolution | None, bool]:
        """Member i's pinned twin: its solution (None: infeasible) and ``_host_free``."""
        key = c.gbs, NB_CHOICES[i], _twin(c.flags)
        if key not in twins:
            nb = NB_CHOICES[i]
            w = replace(wl, batch=c.gbs * nb)
            rows = memo.memory.get((c.gbs, nb, key[2], w, budget))  # its bound's, where it had one
            cm = cost_model(rig, model, w, c.gbs, nb, key[2], ends, budget, memory=rows)
            memo.slots[c.gbs, nb, key[2], w] = cm.slots[:-1]
            twins[key] = _solution(cm, w, _remake(rig, model, w, key[2], ends, budget, cm))
        return twins[key]

    ready: list[tuple] = []  # solved candidates: (the sort key, the loop's order, the solution)
    others, seq = iter(given), itertools.count()

    def take() -> None:
        """The next given candidate into ``ready`` (one at a time: they come sorted)."""
        sol = next(others, None)
        if sol is not None:
            key = (sol.time_per_seq_s, -sol.gbs, -sol.nb)
            heapq.heappush(ready, (key, (GBS_CHOICES.index(sol.gbs), -1, next(seq)), sol))

    weights: dict[Flags, dict[str, float]] = {}  # flags -> ``_weights_form`` (one for all members)

    def memory_of(c: _Chain, i: int) -> tuple:
        got = c.memory.get(i)
        if got is None:
            nb = NB_CHOICES[i]
            key = c.gbs, nb, c.flags, replace(wl, batch=c.gbs * nb), budget
            got = memo.memory.get(key)
            if got is None:
                got = memo.memory[key] = _memory(rig, model, key[3], c.gbs, nb, c.flags, ends, budget)
            c.memory[i] = got
        return got

    def member(c: _Chain, i: int) -> tuple[CostModel, tuple[int, ...]]:
        got = c.models.get(i)
        if got is None:
            nb = NB_CHOICES[i]
            w = replace(wl, batch=c.gbs * nb)
            key = c.gbs, nb, c.flags, w, budget
            mem = c.memory.pop(i, None) or memo.memory.get(key)
            pinned = None if c.flags.pin_weight else memo.slots.get((c.gbs, nb, _twin(c.flags), w))
            cm = cost_model(rig, model, w, c.gbs, nb, c.flags, ends, budget, memory=mem, pinned=pinned)
            got = c.models[i] = cm, _layout(cm)
            memo.memory[key] = cm.memory, cm.bounds
            if c.flags.pin_weight:
                memo.slots[c.gbs, nb, c.flags, w] = cm.slots[:-1]
            if c.flags not in weights:
                weights[c.flags] = _weights_form(cm)
        return got

    def bound(c: _Chain, i: int, refine: bool) -> float:
        """A lower bound of member i's time per sequence, from the duals of the LP laid out alike
        nearest in gbs when first asked (with ``refine``: nearer ones since), and at least its
        ``_weights_bound``; that alone (its LP not built) until refined; -inf while none."""
        old = c.bounds.get(i)
        if old is not None and not refine:
            return old[0]
        key = c.gbs, NB_CHOICES[i], _twin(c.flags)
        if not c.flags.pin_weight:
            if _ruled_out(None, twins.get(key), lambda _s: runs(key)):
                c.bounds[i] = math.inf, 0  # never offered (``_host_free``)
                return math.inf
            if old is None and key in memo.bounds:  # its pinned twin's, without building its LP
                c.bounds[i] = memo.bounds[key], len(GBS_CHOICES)
                return memo.bounds[key]
        if old is None and not refine and i not in c.models and c.flags in weights:
            # its memory rows alone: most members are never refined (ruled out by this bound)
            b = _weights_bound(weights[c.flags], memory_of(c, i)) / (c.gbs * NB_CHOICES[i])
            c.bounds[i] = b, len(GBS_CHOICES)  # any duals are nearer
            return b
        cm, layout = member(c, i)
        near = solved.get((layout, _twin(c.flags)))
        if not near:
            return -math.inf if old is None else old[0]
        j = min(near, key=lambda j: abs(j - c.level))
        if old is not None and old[1] <= abs(j - c.level):
            return old[0]  # no nearer duals than the ones it came from
        fresh = _lower_bound(cm, near[j]) / (c.gbs * NB_CHOICES[i])
        if c.flags.pin_weight and _host_free(near[j]):  # this one (not ``old``) bounds the twin too
            memo.bounds[key] = max(fresh, memo.bounds.get(key, -math.inf))
        b = fresh if old is None else max(fresh, old[0])  # both hold
        c.bounds[i] = b, abs(j - c.level)
        return b

    def low(c: _Chain, refine: bool = False, cap: float = math.inf) -> float:
        """The least lower bound of the chain's members not solved yet (any of them may exist);
        ``refine``: the least taken again from nearer duals until it no longer moves or passes
        ``cap`` (refining only raises it)."""
        rest = range(c.i, len(NB_CHOICES))
        if c.low is None:
            c.low = min(bound(c, i, False) for i in rest)
        while refine and not c.low > cap:
            i = min(rest, key=lambda i: bound(c, i, False))
            before = c.bounds.get(i)
            bound(c, i, True)
            refine = c.bounds.get(i) != before
            c.low = min(bound(c, i, False) for i in rest)
        return c.low

    def unknown_twin(c: _Chain) -> bool:
        """Before an unpinned chain's LP is solved: the pinned twins of the member to solve and of
        the one whose bound makes it next, where not known, solved first (each may rule its member
        out, ``_host_free``, and so spare this LP and those up to it); whether any was."""
        lowest = min(range(c.i, len(NB_CHOICES)), key=lambda i: bound(c, i, False))
        asked = [i for i in {c.i, lowest} if (c.gbs, NB_CHOICES[i], _twin(c.flags)) not in twins]
        for i in asked:
            twin(c, i)
            c.bounds.pop(i, None)
        c.low = None if asked else c.low
        return bool(asked)

    def implied(c: _Chain, lower: list[int]) -> bool:
        """Whether the first LP of ``c`` fitting proves that of its flags at each gbs level in
        ``lower`` fits (``_dominated``), so that level's first LPs need not be solved to learn it."""
        cm = member(c, 0)[0]
        for j in lower:
            o = chains[j * len(flags) + c.order]
            if o.i != 0 or not _dominated(member(o, 0)[0], cm):
                return False
        return True

    def advance(c: _Chain) -> None:
        i = c.i
        cm, layout = member(c, i)
        optimum, duals = _solved(cm)
        c.models.pop(i)
        c.i += 1
        c.low = None
        if i == 0 and optimum is not None:
            fit[c.level] = True
        if optimum is None:
            if c.flags.pin_weight:
                twins[c.gbs, NB_CHOICES[i], c.flags] = None, False
            c.ended = True
            if i == 0 and all(o.ended and o.i == 1 for o in chains if o.level == c.level):
                fit[c.level] = fit[c.level] or False
            return
        solved.setdefault((layout, _twin(c.flags)), {})[c.level] = duals
        nb = NB_CHOICES[i]
        block, x = _second_pass(
            cm, optimum, _remake(rig, model, replace(wl, batch=c.gbs * nb), c.flags, ends, budget, cm)
        )
        sol = LpSolution(c.gbs, nb, c.flags, dict(x), block, block / (c.gbs * nb))
        if c.flags.pin_weight:
            twins[c.gbs, nb, c.flags] = sol, _host_free(duals)
        key = c.gbs, nb, _twin(c.flags)
        if c.flags.pin_weight or not _ruled_out(sol, twin(c, i), lambda _s: runs(key)):
            heapq.heappush(ready, ((sol.time_per_seq_s, -c.gbs, -nb), (c.level, c.order, i), sol))
        c.ended = sol.time_per_seq_s > c.prev or c.i == len(NB_CHOICES)
        c.prev = sol.time_per_seq_s

    take()
    while True:
        last = next((j for j, f in enumerate(fit) if f is False), len(fit) - 1)  # no larger gbs exists
        head = ready[0][0][0] if ready else math.inf
        blocking, least = None, math.inf
        cap = head / (1.0 - _BOUND_SLACK)
        for c in chains:
            if c.ended or c.level > last:
                continue
            if low(c) <= cap:  # might come next: with the nearest duals now?
                b = low(c, refine=True, cap=cap)
                if b <= cap and b < least:
                    blocking, least = c, b
        if blocking is None:
            if not ready:
                return
            _, (_, order, _), sol = heapq.heappop(ready)
            if order < 0:
                take()
            yield sol
            continue
        lower = [j for j in range(blocking.level) if fit[j] is None]
        if lower and blocking.i == 0 and implied(blocking, lower):
            # its gbs exists if its first LP fits: that proves the smaller ones' fit (``_dominated``)
            if not blocking.flags.pin_weight and unknown_twin(blocking):
                continue
            advance(blocking)
            if blocking.prev < math.inf:  # it fitted
                for j in lower:
                    fit[j] = True
            continue
        for j in range(blocking.level):  # does its gbs exist? the first LPs of smaller ones, in order
            while fit[j] is None:
                advance(next(c for c in chains if c.level == j and not c.ended and c.i == 0))
            if not fit[j]:
                break
        else:
            if not blocking.flags.pin_weight and unknown_twin(blocking):
                continue
            advance(blocking)


def _dominated(small: CostModel, large: CostModel) -> bool:
    """Whether every point that fits ``large``'s memory fits ``small``'s: the same bounds (>= 0, as
    every fraction's are), and each memory row of ``small`` has no larger coefficient and no smaller
    right-hand side (for x >= 0: a_s x <= a_l x <= b_l <= b_s). Then ``large`` feasible implies
    ``small`` feasible. A smaller gbs at the same nb and flags is so (``memory_plan``: the weights do not
    depend on the batch, every other term grows with it; ``tests/test_flexgen_lp_fit.py``); the search
    checks it rather than assume it. Each comparison must hold, not merely fail to be refuted: a NaN
    (unordered) proves nothing."""
    if small.bounds != large.bounds or len(small.memory) != len(large.memory):
        return False
    for (cs, bs), (cl, bl) in zip(small.memory, large.memory, strict=True):
        if not bs >= bl or not all(cs.get(v, 0.0) <= cl.get(v, 0.0) for v in cs.keys() | cl.keys()):
            return False
    return all(lo >= 0.0 for lo, _ in large.bounds.values())


def _runnable(
    sol: LpSolution,
    plan: FlexGenPlan,
    rig: Rig,
    model: ModelSpec,
    ends: tuple[str, str, str],
    budget: float | None,
    workload_of: Callable[[FlexGenPlan], Workload],
) -> FlexGenPlan | None:
    """The runtime's placement of ``sol`` (``plan``, its ``to_plan``) where it fits in memory, else
    the disk share rounded up (the nearest percent can leave the CPU more KV than the LP gave it,
    past a full host memory) where that fits; then, where the LP split the activations between the
    GPU and the CPU, both again with them on the other tier (the runtime keeps them on one,
    ``to_plan`` takes the LP's larger share: with more GPU memory the LP's share can pass a half
    while the whole of them still does not fit, and the plan with them on the CPU was lost,
    OPT-30B on flexgen-t4 48 x 3 at 8.5 GB: 7.5429 -> 7.5198 tok/s from 8 GB); None where none does."""
    strategy = get_strategy("flexgen")
    nearest, disk_up = plan, to_plan(sol, model, ends[0], budget, nearest_disk=False)
    tiers = (nearest, disk_up)
    if 1e-6 < sol.x["hg"] < 1 - 1e-6:
        tiers += tuple(replace(q, hg=100.0 - q.hg, hc=q.hg) for q in tiers)
    return next((q for q in dict.fromkeys(tiers) if fits(strategy, q, rig, model, workload_of(q))), None)


def _runs(
    sol: LpSolution,
    rig: Rig,
    model: ModelSpec,
    wl: Workload,
    ends: tuple[str, str, str],
    budget: float | None,
) -> bool:
    """Whether a pinned LP optimum's runtime placement fits (``_runnable``), as it must to rule out its
    ``--pin-weight 0`` twin (``_host_free``, ``_beats``): pinned weights rounded per tensor can take an
    LP point past the host its fractions fit, and such a pinned twin rules out nothing, as if
    infeasible (flexgen-t4 OPT-175B 4-bit 512 + 32 at batch 64: the pinned twin 18.07 s a sequence by
    its LP, not runnable; ruling by it dropped the unpinned 19.15 s plan, 1.4254 -> 1.2816 tok/s)."""
    return (
        _runnable(sol, to_plan(sol, model, ends[0], budget), rig, model, ends, budget, lambda _p: wl)
        is not None
    )


@lru_cache(maxsize=64)  # the lazy search asks ~9,000 times a search, of a few flags
def _twin(fl: Flags) -> Flags:
    """The pinned flags a ``--pin-weight 0`` LP differs from only by its pinning (``_host_free``)."""
    return replace(fl, pin_weight=True)


def _layout(cm: CostModel) -> tuple[int, ...]:
    """The rows' layout of ``cm``'s LP (memory rows, each slot's row count): LPs laid out alike
    share the meaning of each row."""
    return (len(cm.memory), *map(len, cm.forms))


def _lower_bound(cm: CostModel, duals: Sequence[float]) -> float:
    """A lower bound of ``cm``'s LP optimum from multipliers of its rows (weak duality), here the
    duals of another LP with the same row layout. Any y >= 0 on a slot's rows with sum(y) <= the
    slot's weight c (its t >= 0), and any l >= 0 on the memory rows (a x <= b), give, at every
    feasible point, objective = sum c t >= sum y (row's form) >= sum y (row's form) + sum l (a x - b),
    a linear function of the fractions whose minimum over their bounds and tier sums is the bound.
    The multipliers are clamped and scaled so, whatever GLOP returned; the tier rows are the simplex."""
    nm = len(cm.memory)
    weights: dict[int, list] = {}  # id(form) -> [form, summed multiplier]
    r = 3 + nm  # build_lp's rows: the tier sums, the memory rows, then each slot's forms
    for (mult, _), forms in zip(cm.slots, cm.forms, strict=True):
        # max(0.0, y) without the call: y where y > 0, else 0.0 (a NaN, -0.0 too)
        ys = [y if y > 0.0 else 0.0 for y in duals[r : r + len(forms)]]
        r += len(forms)
        cap, total = mult * cm.layers, sum(ys)
        scale = cap / total if total > cap else 1.0
        # the rows with a multiplier alone (most have none: 0.0 * scale adds nothing)
        for y, parts in itertools.compress(zip(ys, forms, strict=True), ys):
            ys_ = y * scale
            if ys_:
                for k, form in parts:
                    w = weights.get(id(form))
                    if w is None:
                        w = weights[id(form)] = [form, 0.0]
                    w[1] += ys_ * k
    lin = dict.fromkeys(VARS, 0.0)
    lin["const"] = 0.0
    for form, w in weights.values():
        for v, c in form.items():
            lin[v] += w * c
    for (coefs, rhs), d in zip(cm.memory, duals[3 : 3 + nm], strict=True):
        lam = max(0.0, -d)  # GLOP's dual of a binding <= row of a minimisation is <= 0
        if lam:
            lin["const"] -= lam * rhs
            for v, c in coefs.items():
                lin[v] += lam * c
    return _least(lin, cm.bounds)


def _least(lin: dict[str, float], bounds: dict[str, tuple[float, float]]) -> float:
    """The minimum of the linear form ``lin`` (every var and "const" a key) over the fractions'
    ``bounds`` and tier sums; +inf where they admit no placement, -inf for a NaN (it bounds nothing)."""
    total = lin["const"]
    for tier in "wch":  # the fractions of one tier sum to 1 within their bounds: cheapest first
        names = [tier + t for t in "gcd"]
        left = 1.0 - sum(bounds[v][0] for v in names)
        if left < 0.0 or sum(bounds[v][1] for v in names) < 1.0:
            return math.inf  # no placement at all
        total += sum(lin[v] * bounds[v][0] for v in names)
        for v in sorted(names, key=lin.__getitem__):
            share = min(left, bounds[v][1] - bounds[v][0])
            total += share * lin[v]
            left -= share
    return total if total == total else -math.inf  # a NaN bounds nothing


def _weights_form(cm: CostModel) -> dict[str, float]:
    """The block's time loading weights alone: sum over slots of multiplicity x layers x ``w``. Every
    slot lasts at least its ``w`` (its first form: ``w`` plus loads and sub-steps, each >= 0), so this
    at any point is <= the LP's objective there. ``w`` is the next layer's weight load (``_slots``,
    ``_other_slots``: per byte of the layer's weights, plus the relay under --pin-weight 0), and the
    multiplicities the phases' positions: neither depends on gbs or nb, so one model serves every
    member of its flags in a search (``tests/test_flexgen_weights_bound.py``)."""
    lin = dict.fromkeys(VARS, 0.0)
    lin["const"] = 0.0
    for mult, slot in cm.slots:
        for v, c in slot.w.items():
            lin[v] += mult * cm.layers * c
    return lin


def _weights_bound(
    form: dict[str, float],
    memory: MemoryRows,
) -> float:
    """A lower bound of an LP's optimum from its ``_memory`` alone: the least of ``_weights_form`` over
    the fractions' bounds and tier sums with the GPU row (the first) priced in (weak duality: for any
    multiplier l >= 0, form(x) >= form(x) + l (a x - b) where a x <= b), at the best l, one where
    two fractions of a tier trade places (the bound is concave, piecewise linear in l)."""
    rows, bounds = memory
    coefs, rhs = rows[0]

    def priced(lam: float) -> float:
        lin = {v: k + lam * coefs.get(v, 0.0) for v, k in form.items()}
        lin["const"] -= lam * rhs
        return _least(lin, bounds)

    turns = {0.0}
    for tier in "wch":
        names = [tier + t for t in "gcd"]
        for a, b in itertools.combinations(names, 2):
            da = coefs.get(a, 0.0) - coefs.get(b, 0.0)
            if da:
                lam = (form[b] - form[a]) / da
                if lam > 0.0:
                    turns.add(lam)
    return max(map(priced, sorted(turns)))


def search_free(
    rig: Rig,
    model: ModelSpec,
    wl: Workload,
    objective: str,
    evaluate_at: Callable[[Workload], Evaluate] | None = None,
    *,
    allow_lossy: bool = False,
) -> tuple[FlexGenPlan, int] | None:
    """The best policy and the batch (one block, gbs x nb) it runs, for a free batch: LP optima
    ranked by time per sequence, the best few confirmed in the engine at their own batch."""
    if evaluate_at is None:
        strategy = get_strategy("flexgen")
        evaluate_at = lambda w: evaluator(strategy, rig, model, w)  # noqa: E731
    ends = endpoints(rig)
    best, best_rate = None, 0.0
    memo, read, judged = _Memo(), [], set()
    placings = _Placings(memory=memo.memory)
    formats = unpinned_formats(rig, model, ends[1])
    first = _recorded(lp_candidates_lazy(rig, model, wl, ends, None, allow_lossy, formats, memo=memo), read)
    for second in (False, True):
        if second:  # --pin-weight 0 for the other weight formats too, where the first's plan fills the host
            others = tuple(f for f in (False, True) if f not in formats)
            if best is None or not others or not _host_bound(rig, model, wl, best[0], ends[1]):
                break
            # the first pass's ranking (read again, then on) with these formats' unpinned chains in it
            given = itertools.chain(list(read), first)
            sols = lp_candidates_lazy(
                rig, model, wl, ends, None, allow_lossy, others, only_unpinned=True, memo=memo, given=given
            )
        else:
            sols = first
        workload_of = lambda p: replace(wl, batch=p.block_size)  # noqa: E731
        for plan in _confirmable(sols, model, ends, None, workload_of, rig, placings):
            if plan in judged:
                continue  # the first pass judged it against a best that has only risen since
            judged.add(plan)
            w = replace(wl, batch=plan.block_size)
            evaluate = evaluate_at(w)
            if best is not None and _beaten(evaluate, plan, w.batch * w.gen_len / best_rate):
                continue  # no faster than the best: its rate at most best_rate, and ties keep the first
            result = evaluate(plan)
            if result.feasible and result.throughput_tok_s > best_rate:
                best, best_rate = (plan, plan.block_size), result.throughput_tok_s
    return best


def _recorded(sols: Iterator[LpSolution], read: list[LpSolution]) -> Iterator[LpSolution]:
    """``sols``, each appended to ``read`` as it is read (a second pass reads them again)."""
    for sol in sols:
        read.append(sol)
        yield sol


# A pinned plan held by host memory (``_host_bound``: this full, or with a disk share) may have been
# held back by its pinned weights' rounding (``pinned_bytes``): the search is then run again with
# ``--pin-weight 0`` tried too (``search_free``, ``search_policy``). to_plan's whole percents leave a
# host-bound optimum ~1-3 % below capacity. Which twins that pass solves is exact (``_host_free``);
# whether it runs at all is this gate: without it the headline (llama2-70b, mixed-lab, 512 + 32)
# runs the pass too, 61 more LPs (~0.4 CPU s) for the same plan (session 14).
HOST_BOUND = 0.95


def _host_bound(rig: Rig, model: ModelSpec, wl: Workload, plan: FlexGenPlan, cpu: str) -> bool:
    """Whether ``plan`` (pinned weights, some on the CPU) is held by host memory: it puts weights or KV
    on the disk, the slowest tier (the LP does only where the CPU is full), or fills ``HOST_BOUND`` of
    the host (OPT-175B 4-bit, 512 + 32: the pinned 64 x 2, 60 % of the weights on the CPU, at 92 %)."""
    f = fractions(model, plan)
    if not plan.pin_weight or f.w_cpu <= 0:
        return False
    if f.w_disk > 0 or plan.cd > 0:
        return True
    used = sum(memory_plan(model, shape_of(plan, wl), fractions(model, plan))["cpu"].values())
    return used >= HOST_BOUND * rig.devices[cpu].mem_bytes


def _beaten(evaluate: Evaluate, plan: FlexGenPlan, e2e_s: float) -> bool:
    """Whether ``evaluate(plan)``'s ``e2e_s`` is sure to be at least ``e2e_s``: the estimate's floor
    says so (the confirmed plans of a search lie within a few percent of each other; the floor of the
    released loop's run is within ~1 % of it: headline, 4 of 5 runs spared)."""
    return isinstance(evaluate, Estimator) and evaluate.floor(plan) >= e2e_s


def _placed_fractions(model: ModelSpec, plan: FlexGenPlan) -> dict[str, float]:
    """The LP's nine fractions at the placement the runtime really makes of ``plan`` (weights: the
    shares of the weight bytes its per-tensor placement puts on each tier)."""
    f = fractions(model, plan)
    wt = sum(s[1] for s in _split_cache(model, plan.compress_weight))
    wg, wc = f.w_gpu / wt, f.w_cpu / wt
    return {
        "wg": wg,
        "wc": wc,
        "wd": 1.0 - wg - wc,
        "cg": f.cg,
        "cc": f.cc,
        "cd": f.cd,
        "hg": f.hg,
        "hc": f.hc,
        "hd": f.hd,
    }


def released_time_per_seq(
    sol: LpSolution,
    plan: FlexGenPlan,
    rig: Rig,
    model: ModelSpec,
    wl: Workload,
    ends: tuple[str, str, str],
    budget: float | None,
    cm: CostModel | None = None,
) -> float | None:
    """The LP's time per sequence at the placement the runtime really makes of ``plan`` (whole
    percents, whole tensors by the midpoint rule, whole sequences of KV), or None where that breaks
    a row of the LP. The LP optimum is continuous and the released placement a step function, so an
    optimum's own time can be optimistic by 5-10 % (OPT-6.7B: gbs 24 x 1, 38.2 -> 35.8 tok/s).
    ``cm``: the cost model at ``plan``'s placement, when the caller already built it."""
    x = _placed_fractions(model, plan)
    if cm is None:
        cm = cost_model(rig, model, wl, sol.gbs, sol.nb, sol.flags, ends, budget, plan)
    block = cost_at(cm, x)
    return None if block is None else block * math.ceil(wl.batch / plan.block_size) / wl.batch


def _repinned(
    sol: LpSolution,
    plan: FlexGenPlan,
    rig: Rig,
    model: ModelSpec,
    wl: Workload,
    ends: tuple[str, str, str],
    budget: float | None,
    cm: CostModel | None = None,
) -> tuple[LpSolution, FlexGenPlan] | None:
    """The LP again with the weights pinned where the runtime really puts them (whole tensors by the
    released midpoint rule put less on the GPU than the LP's even spread): the KV cache and the
    activations take the GPU memory the placement left. None when the weights already sit where
    the LP put them. ``cm``: as for ``released_time_per_seq``."""
    placed = _placed_fractions(model, plan)
    if abs(placed["wg"] - sol.x["wg"]) < 1e-6:
        return None
    if cm is None:
        cm = cost_model(rig, model, wl, sol.gbs, sol.nb, sol.flags, ends, budget, plan)
    pins = {v: (placed[v], placed[v]) for v in ("wg", "wc", "wd")}
    cm = replace(cm, bounds={v: pins.get(v, b) for v, b in cm.bounds.items()})
    optimum = _optimum(cm)
    if optimum is None:
        return None
    block, x = optimum
    again = replace(
        sol, x=dict(x), block_time_s=block, time_per_seq_s=block * sol.time_per_seq_s / sol.block_time_s
    )
    return again, replace(to_plan(again, model, ends[0], budget), wg=plan.wg, wc=plan.wc)


def _stepped_up(model: ModelSpec, plan: FlexGenPlan) -> FlexGenPlan | None:
    """``plan`` with the weights' GPU percent raised to the next whole percent at which the per-tensor
    placement puts more on the GPU (a CPU tensor back on it), or None where none does. ``to_plan``
    lowers the percent to the step at or below the LP's GPU share; this is the step above it, where
    the KV and the activations give up GPU memory instead (``_repinned`` re-solves them there)."""
    g = fractions(model, plan).w_gpu
    up = plan
    while up.wc >= 1:
        up = replace(up, wg=up.wg + 1, wc=up.wc - 1)
        if fractions(model, up).w_gpu > g:
            return up
    return None


# GPU sets of the released weight placements nearest an LP optimum (``_near_steps``): on 52 problems
# (benchmarks/flexgen_lp_gap.py) 4 moved the same plans as 2, at +17 % of their search CPU against +6 %
STEPS = 2
ROOM_CHECKS = 32  # ... of at most this many whose room in memory is checked (Mixtral has 529)
# ... for an optimum under the best placed time by this share: a smaller gain is inside the LP's own
# error against the engine (100 hexgen-homogeneous plans: -2.9..+1.1 %, median +0.02 %)
NEAR_GAIN = 0.01
SAME_SHARE = 1e-3  # GPU shares of the weights this close are one to ``_near_steps``


def _near_steps(
    sol: LpSolution,
    plan: FlexGenPlan,
    model: ModelSpec,
    memory: MemoryRows,
    disk: bool,
) -> list[FlexGenPlan]:
    """Released weight placements other than ``plan``'s (``released_steps``) near the LP's optimum: in
    each of the ``STEPS`` GPU sets whose share is nearest the optimum's, of the steps whose weights
    alone leave room in every memory row of the LP (``_room``), the one with the CPU share nearest
    below the optimum's and the one nearest above (the LP's CPU share can lie between two steps,
    whole tensors of every layer apart; its value is convex in where the weights are pinned, so the
    best lies beside it). Where the LP put no weights on the disk, no step that does (a sliver on disk
    is near by shares, but each disk copy pays the route's latency, no linear term); GPU sets within
    ``SAME_SHARE`` of one taken (a vector or two apart) are not tried again."""
    x = sol.x
    sets: dict[int, list[ReleasedStep]] = {}
    for st in released_steps(model, plan, disk and x["wd"] >= 1e-6):
        sets.setdefault(st.gpu_set, []).append(st)
    out: list[FlexGenPlan] = []
    shares: list[float] = []
    checks = 0
    for group in sorted(sets.values(), key=lambda g: (abs(g[0].gpu - x["wg"]), g[0].gpu_set)):
        if len(shares) >= STEPS or checks >= ROOM_CHECKS:
            break
        if any(abs(group[0].gpu - g) < SAME_SHARE for g in shares):
            continue
        taken = False
        for side in (True, False):  # CPU share below the optimum's, then above
            for st in sorted(
                (st for st in group if (st.cpu <= x["wc"]) == side),
                key=lambda st: (abs(st.cpu - x["wc"]), st.plan.wg, st.plan.wc),
            ):
                checks += 1
                if _room(memory, _placed_fractions(model, st.plan)):
                    out.append(st.plan)
                    taken = True
                    break
                if checks >= ROOM_CHECKS:
                    break
        if taken:
            shares.append(group[0].gpu)
    return out


def _at_step(model: ModelSpec, plan: FlexGenPlan, sol: LpSolution) -> bool:
    """Whether ``plan``'s per-tensor placement puts on the GPU and the CPU the shares the LP did."""
    placed = _placed_fractions(model, plan)
    return all(abs(placed[v] - sol.x[v]) < 1e-6 for v in ("wg", "wc"))


def _room(
    memory: MemoryRows,
    weights: dict[str, float],
) -> bool:
    """Whether every memory row can hold ``weights``' fractions (wg, wc, wd) for some KV and activation
    fractions within their bounds: a necessary condition (each row on its own, at the cheapest tier
    the bounds allow the rest of each class)."""
    rows, bounds = memory
    for coefs, rhs in rows:
        need = sum(coefs.get(v, 0.0) * weights[v] for v in ("wg", "wc", "wd"))
        for group in (("cg", "cc", "cd"), ("hg", "hc", "hd")):
            low = sum(bounds[v][0] for v in group)
            need += sum(coefs.get(v, 0.0) * bounds[v][0] for v in group)
            free = [coefs.get(v, 0.0) for v in group if bounds[v][1] > bounds[v][0]]
            if free and low < 1.0:
                need += (1.0 - low) * min(free)
        if need > rhs + 1e-9:
            return False
    return True


@dataclass
class _Placings:
    """What ``_confirmable`` works out for each LP optimum it reads (its runtime placement, that
    placement's times, its ``_repinned`` plan, their fits) and its placed cost models, kept for a second
    ``_confirmable`` over the same search (same rig, model, ends, budget and ``workload_of``) reading
    the same optima again: ``search_free``'s second pass reads the first pass's ranking (the same
    ``LpSolution`` objects) before its own. Each answer is a function of the optimum alone, so reading
    it here gives what working it out again would."""

    done: dict[tuple[int, str], tuple[LpSolution, object]] = field(default_factory=dict)
    models: dict[tuple, CostModel] = field(default_factory=dict)
    # the search's members' ``_memory`` by (gbs, nb, flags, workload, budget) (``_Memo.memory``, same
    # rig, model and ends): a placed model's rows and bounds are its unplaced member's
    memory: Mapping[tuple, tuple] = field(default_factory=dict)

    def once(self, sol: LpSolution, stage: str, work: Callable[..., Any], *args: Any) -> Any:
        """``work(*args)`` for ``sol`` at ``stage``, worked out the first time only (keyed by the
        object, which the entry keeps alive, so its id is not reused)."""
        got = self.done.get((id(sol), stage))
        if got is None:
            got = self.done[id(sol), stage] = sol, work(*args)
        return got[1]


def _confirmable(
    sols: Iterable[LpSolution],
    model: ModelSpec,
    ends: tuple[str, str, str],
    budget: float | None,
    workload_of: Callable[[FlexGenPlan], Workload],
    rig: Rig,
    placings: _Placings | None = None,
) -> list[FlexGenPlan]:
    """The plans worth confirming in the engine: the runtime's placement of the LP optima that fit in
    memory (rounding to whole percent and the per-tensor rule can push a full LP point past a
    capacity; those are skipped, cheaply, after a CPU-attention plan's disk share is tried rounded
    up as well). Two rankings each give at most ``CONFIRM``, within ``CONFIRM_WITHIN`` of their
    best: the LP's time at the placement the runtime makes
    (``released_time_per_seq``), then the LP optimum's own time; the engine judges their union, so
    no plan the optimum's ranking would confirm is dropped. Optima past ``CONFIRM_WITHIN`` of the
    best placed time are not placed at all, once the optimum's ranking has its plans (best 3). For
    the placed ranking that cut-off is a heuristic: it takes a placed time to be no lower than its
    optimum, usual but no theorem (the placed cost model, per-tensor weights, is not the LP's:
    mixtral-8x7b on mixed-lab 256+16 has a placed time 0.4 % below its optimum, a repinned one
    0.8 %; llama2-13b 128+64 a repinned one 2 %). Reading every candidate instead gave the same
    plans on every problem checked (24 rigs' and models' headlines, free and fixed batch; 80 random).
    Each optimum's ``_repinned`` plan joins the placed ranking when its placed time is lower (the KV
    given the GPU memory whole tensors left: OPT-6.7B 512 at 14 GB 33.77 -> 34.38 tok/s), and so does
    its ``_repinned`` plan at the weights' step above (``_stepped_up``), where the optimum lies between
    two steps and its own time is under the best placed time so far (hexgen-homogeneous Llama-2-13B
    8 x 4, 512 + 32: 7.77 -> 6.43 s in the engine).
    ``placings``: a first ``_confirmable``'s work, where this one reads the same optima again."""
    strategy = get_strategy("flexgen")
    memo = _Placings() if placings is None else placings
    models, once = memo.models, memo.once

    def placed_model(sol: LpSolution, plan: FlexGenPlan, wl: Workload) -> CostModel:
        # a plan enters the cost model only through its weights' per-tensor split and, with CPU
        # attention, its KV fractions (``_beside``): without, a plan and its _repinned twin (the
        # same weight percents) share one
        kv = (plan.cg, plan.cc) if sol.flags.cpu_attention else ()
        key = (sol.gbs, sol.nb, sol.flags, wl, layer_weight_split(model, plan), kv)
        cm = models.get(key)
        if cm is None:
            rows = memo.memory.get((sol.gbs, sol.nb, sol.flags, wl, budget))
            cm = cost_model(rig, model, wl, sol.gbs, sol.nb, sol.flags, ends, budget, plan, memory=rows)
            models[key] = cm
        return cm

    def timed(
        sol: LpSolution, plan: FlexGenPlan, wl: Workload, repin: bool = True
    ) -> tuple[float | None, tuple[LpSolution, FlexGenPlan] | None]:
        """``plan``'s placed time and (``repin``, where it has one) its ``_repinned`` plan."""
        cm = placed_model(sol, plan, wl)
        t = released_time_per_seq(sol, plan, rig, model, wl, ends, budget, cm)
        again = _repinned(sol, plan, rig, model, wl, ends, budget, cm) if repin and t is not None else None
        return t, again

    def lifted(sol: LpSolution, plan: FlexGenPlan, wl: Workload) -> tuple[LpSolution, FlexGenPlan] | None:
        """The ``_repinned`` plan at the weights' step above ``plan``'s (``_stepped_up``), where the
        LP's optimum lies between the two (to_plan's step lost some of its GPU share; at a step, all
        weights on the CPU say, it would move tensors the LP kept off)."""
        if _placed_fractions(model, plan)["wg"] >= sol.x["wg"] - 1e-6:
            return None
        up = _stepped_up(model, plan)
        return (
            None
            if up is None
            else _repinned(sol, up, rig, model, wl, ends, budget, placed_model(sol, up, wl))
        )

    def near(sol: LpSolution, plan: FlexGenPlan, wl: Workload) -> list[tuple[LpSolution, FlexGenPlan]]:
        """The ``_repinned`` plans at the released weight placements beside the LP's optimum
        (``_near_steps``)."""
        rows = memo.memory.get((sol.gbs, sol.nb, sol.flags, wl, budget))
        if rows is None:
            rows = _memory(rig, model, wl, sol.gbs, sol.nb, sol.flags, ends, budget)
        out = []
        for q in _near_steps(sol, plan, model, rows, bool(ends[2])):
            again = _repinned(sol, q, rig, model, wl, ends, budget, placed_model(sol, q, wl))
            if again is not None:
                out.append(again)
        return out

    seen: set[FlexGenPlan] = set()
    placed: list[tuple[float, FlexGenPlan]] = []
    by_lp: list[tuple[float, FlexGenPlan]] = []
    pending: list[tuple[LpSolution, FlexGenPlan, Workload]] = []  # optima between steps, for ``near``
    best = math.inf
    for sol in sols:
        if sol.time_per_seq_s > best * CONFIRM_WITHIN and (
            len(by_lp) >= CONFIRM or sol.time_per_seq_s > by_lp[0][0] * CONFIRM_WITHIN
        ):  # (best is finite only once by_lp has a plan) the optimum's ranking may still want it
            break
        plan = once(sol, "plan", to_plan, sol, model, ends[0], budget)
        if plan in seen:
            continue
        wl = workload_of(plan)
        run = once(sol, "runnable", _runnable, sol, plan, rig, model, ends, budget, workload_of)
        t, again, up = math.inf, None, None
        if run is not None and run not in seen:
            seen.add(run)
            by_lp.append((sol.time_per_seq_s, run))
            t, again = once(sol, "timed", timed, sol, run, wl)
            if t is None:
                continue
            placed.append((t, run))
            best = min(best, t)
            # the step above can beat the best placed time only where the optimum's own time does (a
            # placed time is taken to be no lower than its optimum, as for the cut-off above): not
            # working it out for the rest keeps the search's CPU (the headline: 2 of 38 optima read)
            up = once(sol, "lifted", lifted, sol, run, wl) if sol.time_per_seq_s < best else None
        elif run is not None:
            continue
        if run is None or not _at_step(model, run, sol):
            pending.append((sol, plan, wl))
        for stage, (fit, timing) in ((again, ("fits", "again")), (up, ("fits_up", "again_up"))):
            if (
                stage is None
                or stage[1] in seen
                or not once(sol, fit, fits, strategy, stage[1], rig, model, wl)
            ):
                continue
            seen.add(stage[1])
            t2 = once(sol, timing, timed, *stage, wl, False)[0]
            if t2 is not None and t2 < t * (1 - 1e-9):  # ties would only cost engine runs
                placed.append((t2, stage[1]))
                best = min(best, t2)
    # then the other placements near each optimum read that lies between steps (at one, every weight
    # on the CPU say, they would move tensors the LP kept off: 0.00003-0.03 % faster in the engine) or
    # whose own placement does not fit, where the optimum beats the best placed time by ``NEAR_GAIN``:
    # a step joins where it beats that time, its LP's time (the KV unrounded, taken to be no higher)
    # first, each re-solve ~2-5 ms (the headline: none of 38 optima read)
    for sol, plan, wl in pending:
        if sol.time_per_seq_s >= best * (1 - NEAR_GAIN):
            continue
        for i, stage in enumerate(once(sol, "near", near, sol, plan, wl)):
            if (
                stage[0].time_per_seq_s >= best
                or stage[1] in seen
                or not once(sol, f"fits_near{i}", fits, strategy, stage[1], rig, model, wl)
            ):
                continue
            seen.add(stage[1])
            t2 = once(sol, f"again_near{i}", timed, *stage, wl, False)[0]
            if t2 is not None and t2 < best * (1 - 1e-9):
                placed.append((t2, stage[1]))
                best = t2
    placed.sort(key=lambda r: r[0])  # stable: equal times keep the LP's order
    out: list[FlexGenPlan] = []
    for ranking in (placed, by_lp):
        top = ranking[0][0] if ranking else 0.0
        out += [p for t, p in ranking[:CONFIRM] if t <= top * CONFIRM_WITHIN and p not in out]
    return out


def search_policy(
    rig: Rig,
    model: ModelSpec,
    wl: Workload,
    objective: str = "throughput",
    budget: float | None = None,
    evaluate: Evaluate | None = None,
    allow_lossy: bool = False,
    unpinned: tuple[bool, ...] | None = None,
) -> SearchOutcome:
    """LP over (gbs, nb, flags), then the best few confirmed in the engine (released placement).

    All objectives rank by the simulated end-to-end time of the workload: for a fixed offline batch
    throughput, latency (e2e) and cost per token are all monotone in it. ``evaluate`` confirms a
    plan (by default FlexGen's own estimate in the engine).
    """
    if evaluate is None:
        evaluate = evaluator(get_strategy("flexgen"), rig, model, wl)
    t0 = time.perf_counter()
    ends = endpoints(rig)
    sols, solved = lp_candidates(rig, model, wl, ends, budget, allow_lossy, unpinned)
    best, best_e2e = None, math.inf
    for plan in _confirmable(sols, model, ends, budget, lambda _p: wl, rig):
        if best is not None and _beaten(evaluate, plan, best_e2e):
            continue  # ties keep the first
        result = evaluate(plan)
        if result.feasible and result.e2e_s < best_e2e:
            best, best_e2e = plan, result.e2e_s
    if unpinned is None and best is not None and _host_bound(rig, model, wl, best, ends[1]):
        again = search_policy(rig, model, wl, objective, budget, evaluate, allow_lossy, (False, True))
        if again.plan is not None and again.throughput > wl.batch * wl.gen_len / best_e2e:
            again.seconds = time.perf_counter() - t0
            return again
    out = SearchOutcome(best, sols[:CONFIRM], solved, time.perf_counter() - t0)
    if best is not None:
        out.throughput = wl.batch * wl.gen_len / best_e2e
    return out


def search(
    rig: Rig,
    model: ModelSpec,
    wl: Workload,
    objective: str,
    evaluate: Evaluate | None = None,
    *,
    allow_lossy: bool = False,
) -> FlexGenPlan | None:
    """The planner's entry point: the confirmed best policy, or None when nothing fits."""
    return search_policy(rig, model, wl, objective, evaluate=evaluate, allow_lossy=allow_lossy).plan
