"""FlexGen's policy: where weights, KV cache and activations live, and what that costs in memory.

The plan mirrors the released runtime's flags (FlexGen, arXiv 2303.06865): ``--percent wg wc cg
cc hg hc`` (disk gets the remainder), ``--gpu-batch-size``, ``--num-gpu-batches``,
``--cpu-cache-compute``, ``--compress-weight``, ``--compress-cache``, ``--pin-weight`` and
``--overlap``. Weights are placed per tensor by the midpoint rule in "released" mode (a step
function of the percentages), or per byte in "continuous" mode (the ideal the LP assumes).

Memory is linear in the fractions (for continuous placement), so the LP planner reads its
memory constraints off ``memory_plan`` by evaluating it at unit vectors: one formula for both.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Literal, TypeVar

from hetsim.costs.pinned import pinned_bytes
from hetsim.errors import InputError
from hetsim.models.spec import FLEXGEN_INT4 as INT4  # FlexGen's group-64 4-bit format
from hetsim.models.spec import FP16, DType, ModelSpec
from hetsim.models.weights import layer_weight_tensors, vector_bytes
from hetsim.workload import Workload

Placement = Literal["released", "continuous"]
OverlapMode = Literal["released", "paper-ideal"]

# FlexGen's copy threads: every run starts 4 (the disk device is always created, flex_opt.py:1194-1195;
# pytorch_backend.py:624-646), each pinning a relay of 2**30 fp16 elements, 2 GiB (:882), for its disk
# copies and the prefill's KV stores into the unpinned cache.
COPY_THREADS = 4
COPY_RELAY_BYTES = COPY_THREADS * pinned_bytes(2**30 * 2)
_R = TypeVar("_R")


@dataclass(frozen=True)
class FlexGenPlan:
    gpu_batch_size: int = 48
    num_gpu_batches: int = 3
    # Percentages (0-100) on GPU and CPU; disk gets the remainder.
    wg: float = 20.0
    wc: float = 80.0
    cg: float = 0.0
    cc: float = 100.0
    hg: float = 0.0
    hc: float = 100.0
    cpu_attention: bool = True  # --cpu-cache-compute
    compress_weight: bool = False
    compress_cache: bool = False
    pin_weight: bool = True
    overlap: bool = True
    overlap_mode: OverlapMode = "released"  # "paper-ideal": one barrier per layer, perfect overlap
    placement: Placement = "released"
    gpu_mem_budget: float | None = None  # bytes; caps the GPU memory the policy may use
    gpu: str = ""  # the GPU to run on ("" = the rig's first GPU)

    @property
    def block_size(self) -> int:
        return self.gpu_batch_size * self.num_gpu_batches

    @property
    def wd(self) -> float:
        return 100.0 - self.wg - self.wc

    @property
    def cd(self) -> float:
        return 100.0 - self.cg - self.cc

    @property
    def hd(self) -> float:
        return 100.0 - self.hg - self.hc

    @property
    def uses_cpu_attention(self) -> bool:
        """--cpu-cache-compute: decode attention on the CPU, with a compressed KV cache too. FlexGen
        0.1.8 keeps it on (SelfAttention.attention_compute, flex_opt.py:273-274): load_cache takes
        path 0 to the CPU's compressed device (:345-347) and mha_gen decompresses the cache into the
        host's fp32 workspace and attends there (pytorch_backend.py:403-423, compression.py:175-180)."""
        return self.cpu_attention

    @property
    def kv_home(self) -> str:
        """The KV cache's one tier ("g", "c" or "d"), or "" where it is split across tiers."""
        return whole_tier(self.cg, self.cc)


def whole_tier(g: float, c: float) -> str:
    """The one tier ("g", "c" or "d") a tensor class's GPU and CPU percents put it on whole, or "" where
    they split it. Exact: the release tests ``percent == 100`` (flex_opt.py's cache and activation
    homes) and its --percent takes whole percents, so a share of 1e-300 % (or 99.99999999999 %) is a
    split, as the engine runs it (a copy for the sliver), never rounded away in one place only."""
    if (g, c) == (100.0, 0.0):
        return "g"
    if (g, c) == (0.0, 100.0):
        return "c"
    return "d" if (g, c) == (0.0, 0.0) else ""


def validate(plan: FlexGenPlan) -> None:
    """The runtime's own constraints on a policy; bad ones are input errors."""
    if plan.gpu_batch_size < 1 or plan.num_gpu_batches < 1:
        raise InputError("gpu_batch_size and num_gpu_batches must be >= 1", field="gpu_batch_size")
    for tier, (g, c) in {"w": (plan.wg, plan.wc), "c": (plan.cg, plan.cc), "h": (plan.hg, plan.hc)}.items():
        if min(g, c) < 0 or g + c > 100.0 + 1e-9:
            raise InputError(f"{tier}g + {tier}c must lie in [0, 100], got {g} + {c}", field=f"{tier}g")
    if plan.placement != "released":
        return
    for tier, what in (("h", "activations"), ("c", "a compressed KV cache")):
        g, c = getattr(plan, f"{tier}g"), getattr(plan, f"{tier}c")
        if (tier == "h" or plan.compress_cache) and not whole_tier(g, c):
            raise InputError(
                f"{what} must sit whole on one tier, {tier}g and {tier}c each 0 or 100 (the runtime "
                f"cannot split them), got {g} and {c}",
                field=f"{tier}g" if g not in (0.0, 100.0) else f"{tier}c",
            )


def weight_dtype(plan: FlexGenPlan) -> DType:
    return INT4 if plan.compress_weight else FP16


def kv_dtype(plan: FlexGenPlan) -> DType:
    return INT4 if plan.compress_cache else FP16


# ---- weights per scheduling layer ------------------------------------------------------------------
@lru_cache(maxsize=64)
def embedding_tables(model: ModelSpec) -> dict[str, tuple[tuple[int, int], ...]]:
    """(rows, cols) of the matrices of the input and the output embedding layer, in runtime order.

    The release builds the token table (vocab, input_dim) for both layers (the output layer keeps its
    own copy as the LM head) and OPT's learned positions (s + 2, input_dim) (flex_opt.py:149-156,
    :213-222); its input_dim is the hidden size of every model it runs (opt_config.py: OPT-350m, whose
    table is narrower, raises NotImplementedError at :70-76). hetsim sizes them as the checkpoint
    does: the token table ``token_dim`` wide (``ModelSpec.token_dim``: OPT-350m's word_embed_proj_dim,
    512 against a hidden 1024), the positions hidden wide, and where the widths differ the projections
    between them (project_in (hidden, token_dim) after the tables, project_out (token_dim, hidden)
    before the head; nn.Linear weights are (out, in)), as ``models.weights`` counts them."""
    h, d = model.hidden, model.token_dim
    token = (model.vocab, d)
    embed = [token]
    if model.learned_positions:
        embed.append((model.learned_positions, h))
    output = [token]
    if d != h:
        embed.append((h, d))
        output.insert(0, (d, h))
    return {"input_embed": tuple(embed), "output_embed": tuple(output)}


@lru_cache(maxsize=64)
def scheduling_layer_tensors(model: ModelSpec) -> tuple[tuple[tuple[int, bool], ...], ...]:
    """(numel, is_matrix) of every tensor of each of the 2l + 2 scheduling layers, in runtime order.

    Input embedding (``embedding_tables``), then attention and MLP blocks of each decoder layer, then
    the output layer (the final LayerNorm, where the model has one, and ``embedding_tables``' head).
    Every decoder layer's attention (and MLP) block is one and the same tuple (``_each_layer``).
    """
    tables = embedding_tables(model)
    embed = [(r * c, True) for r, c in tables["input_embed"]]
    norm = (model.hidden, False)
    norms = ([norm, norm] if model.norm == "layernorm" else [norm]) if model.final_norm else []
    output = norms + [(r * c, True) for r, c in tables["output_embed"]]
    tensors = layer_weight_tensors(model)
    att = tuple((t.numel, t.is_matrix) for t in tensors if t.block == "attention")
    mlp = tuple((t.numel, t.is_matrix) for t in tensors if t.block == "mlp")
    layers: list[tuple[tuple[int, bool], ...]] = [tuple(embed)]
    for _ in range(model.layers):
        layers += [att, mlp]
    layers.append(tuple(output))
    return tuple(layers)


def _bytes(numel: int, is_matrix: bool, dtype: DType) -> float:
    return numel * (dtype.bytes_per_element if is_matrix else vector_bytes(dtype))


def copy_parts(compressed: bool) -> tuple[float, ...]:
    """The shares of a tensor's bytes that one general_copy moves as separate copies, in order: a
    4-bit tensor's packed data, then its group scales (general_copy_compressed, FlexGen 0.1.8
    compression.py:214-215: 8/9 and 1/9 of the bytes in its group-64 format); an fp16 one whole.
    A cache tensor and a weight matrix alike."""
    if not compressed:
        return (1.0,)
    data = INT4.bits / 8.0
    return data / INT4.bytes_per_element, 1.0 - data / INT4.bytes_per_element


def packed_parts(compressed: bool) -> tuple[bool, ...]:
    """For each of ``copy_parts``' copies, whether it is a 4-bit tensor's packed data (uint8), which the
    copy threads' fp16 relay converts, so that its hop to the GPU leaves from a pageable temporary
    (flexgen.py: ``_via_host``'s ``packed``); the scales (fp16) and an fp16 tensor are not."""
    return (True, False) if compressed else (False,)


def _disk_share(wg: float, wc: float) -> float:
    """The weights' disk fraction, 1 - wg - wc, none where that is the float residue of percents that
    sum to 100 (0.7 + 0.3 leaves 5.6e-17): else a continuous placement reads a phantom disk share,
    every tensor a copy of ~1e-8 bytes paying its read's and hop's latencies."""
    wd = 1.0 - wg - wc
    return wd if wd > 1e-12 else 0.0


def _tiers(numels: list[int], wg: float, wc: float) -> list[int]:
    """Each tensor's tier (0 GPU, 1 CPU, 2 disk) by the released rule: the tier whose interval holds
    the midpoint of its cumulative share, intervals ordered disk [0, wd), CPU [wd, wd + wc), GPU
    [wd + wc, 1] (flex_opt.py: init_weight_list; the share is computed on element counts, as the
    runtime does on sizes)."""
    wd = _disk_share(wg, wc)
    return [2 if mid < wd else (1 if mid < wd + wc else 0) for mid in _midpoint_shares(numels)]


def _midpoint_shares(numels: Sequence[int]) -> list[float]:
    """The midpoint of each tensor's cumulative share of the layer's elements, in order: what the
    released rule compares with the tiers' bounds (``_tiers``, ``_midpoints``)."""
    total, cum, out = float(sum(numels)), 0.0, []
    for n in numels:
        out.append((cum + n / 2) / total)
        cum += n
    return out


@lru_cache(maxsize=4096)
def _split(
    tensors: tuple[tuple[int, bool], ...], wg: float, wc: float, dtype: DType, placement: Placement
) -> tuple[float, float, float]:
    """(gpu, cpu, disk) bytes of one scheduling layer: each tensor whole on its tier (``_tiers``)."""
    sizes = [_bytes(n, m, dtype) for n, m in tensors]
    total = sum(sizes)
    if placement == "continuous":
        return wg * total, wc * total, _disk_share(wg, wc) * total
    out = [0.0, 0.0, 0.0]
    for tier, b in zip(_tiers([n for n, _ in tensors], wg, wc), sizes, strict=True):
        out[tier] += b
    return out[0], out[1], out[2]


@lru_cache(maxsize=4096)
def _disk_copies(
    tensors: tuple[tuple[int, bool], ...], wg: float, wc: float, dtype: DType, placement: Placement
) -> tuple[float, ...]:
    """The bytes of each copy of one scheduling layer's disk share, in runtime order: a tensor on
    disk is one copy, a 4-bit matrix two (``copy_parts``; vectors stay fp16); continuous, each
    tensor's disk fraction."""
    return tuple(b for b, _ in _disk_copy_kinds(tensors, wg, wc, dtype, placement))


@lru_cache(maxsize=4096)
def _disk_copy_kinds(
    tensors: tuple[tuple[int, bool], ...], wg: float, wc: float, dtype: DType, placement: Placement
) -> tuple[tuple[float, bool], ...]:
    """``_disk_copies`` with, for each copy, whether it is a 4-bit tensor's packed data (uint8), which
    the copy threads' fp16 relay converts (``layer_disk_packed``)."""
    if placement == "continuous":
        shares = [_disk_share(wg, wc)] * len(tensors)
    else:
        shares = [1.0 if t == 2 else 0.0 for t in _tiers([n for n, _ in tensors], wg, wc)]
    out: list[tuple[float, bool]] = []
    for (n, m), share in zip(tensors, shares, strict=True):
        if share > 0.0:
            b = _bytes(n, m, dtype) * share
            packed = m and dtype == INT4
            out += [(b * k, p) for k, p in zip(copy_parts(packed), packed_parts(packed), strict=True)]
    return tuple(out)


@lru_cache(maxsize=4096)
def _host_allocations(
    tensors: tuple[tuple[int, bool], ...], wg: float, wc: float, dtype: DType, placement: Placement
) -> tuple[float, float, tuple[tuple[float, int], ...]]:
    """What one scheduling layer's CPU share takes of host memory: (pinned, unpinned, relay), with
    ``--pin-weight 1`` every CPU tensor pinned, each part of a 4-bit matrix (its data, its scales:
    compression.py:45-46, ``copy_parts``) a pinned allocation of its own (``pinned_bytes``); with
    ``--pin-weight 0`` the matrices in pageable memory (exact bytes) and the vectors still pinned
    (init_weight_list pins every tensor of under two dimensions, flex_opt.py:104-106). ``relay``: the
    ``pin_memory()`` copies general_copy makes of the unpinned matrices on each load (pytorch_backend.py:
    845-850), as (pinned size, count) per size class. Continuous: the fraction ``wc`` of each tensor,
    as if it were the whole tensor's allocations scaled."""
    if placement == "continuous":
        on_cpu = [(n, m, wc) for n, m in tensors]
    else:
        tiers = _tiers([n for n, _ in tensors], wg, wc)
        on_cpu = [(n, m, 1.0) for (n, m), t in zip(tensors, tiers, strict=True) if t == 1]
    pinned = unpinned = 0.0
    relay: dict[float, int] = {}
    for n, m, share in on_cpu:
        b = _bytes(n, m, dtype)
        parts = [pinned_bytes(b * k) for k in copy_parts(m and dtype == INT4)]
        pinned += share * sum(parts)
        unpinned += share * (b if m else sum(parts))
        if m:
            for size in parts:
                relay[size] = relay.get(size, 0) + 1
    scale = wc if placement == "continuous" else 1.0
    return pinned, unpinned, tuple((size * scale, k) for size, k in sorted(relay.items()))


_Step = tuple[tuple[int, int], int, int, float, float]  # _step_percents': key, wg, wc, GPU and CPU share


@lru_cache(maxsize=64)
def _midpoints(model: ModelSpec) -> tuple[tuple[float, ...], tuple[tuple[float, int], ...]]:
    """The distinct midpoints of the model's tensors in their scheduling layers, sorted (``_tiers``'
    floats), and each tensor's midpoint with its elements over every layer holding it."""
    layers = scheduling_layer_tensors(model)
    count = {id(t): 0 for t in layers}
    for t in layers:
        count[id(t)] += 1
    mids: list[tuple[float, int]] = []
    for tensors in {id(t): t for t in layers}.values():
        numels = [n for n, _ in tensors]
        mids += ((m, n * count[id(tensors)]) for m, n in zip(_midpoint_shares(numels), numels, strict=True))
    return tuple(sorted({m for m, _ in mids})), tuple(mids)


def _placement_key(ordered: Sequence[float], wg: int, wc: int) -> tuple[int, int]:
    """The placement whole percents (wg, wc) make, as the numbers of midpoints below the disk bound and
    below the CPU bound: ``_tiers``' two comparisons, on the same floats, so two pairs place every
    tensor alike exactly when these agree."""
    wd = _disk_share(wg / 100.0, wc / 100.0)
    return bisect_left(ordered, wd), bisect_left(ordered, wd + wc / 100.0)


@lru_cache(maxsize=64)
def _step_percents(model: ModelSpec, disk: bool) -> tuple[_Step, ...]:
    """Each per-tensor placement the runtime's whole percents make (``disk``: those with a disk share
    too, else wg + wc = 100): its ``_placement_key``, the pair of percents that stands for it (the
    lowest GPU percent, then the highest CPU percent, that makes it: one pair a placement, so a search
    asks the same few of ``fractions`` again) and the shares of the weights' elements it puts on the
    GPU and on the CPU. Pair by pair, each through ``_placement_key`` (~5 ms for the 5151 pairs with a
    disk share, 0.1 ms for the 101 without; numpy's vectorised form cost its import, ~0.09 CPU s, in a
    compare's FlexGen worker, which loads it for nothing else)."""
    ordered, mids = _midpoints(model)
    pairs = ((g, c) for g in range(101) for c in (range(100 - g, -1, -1) if disk else (100 - g,)))
    first: dict[tuple[int, int], tuple[int, int]] = {}  # key -> its first pair, in the pairs' order
    for g, c in pairs:
        first.setdefault(_placement_key(ordered, g, c), (g, c))
    elements = float(sum(n for _, n in mids))
    bound = (*ordered, 2.0)  # past the last midpoint: nothing at or above it
    out = []
    for key, pair in first.items():
        a, b = bound[key[0]], bound[key[1]]
        gpu = sum(n for m, n in mids if m >= b)
        cpu = sum(n for m, n in mids if a <= m < b)
        out.append((key, *pair, gpu / elements, cpu / elements))
    return tuple(out)


def released_steps(model: ModelSpec, plan: FlexGenPlan, disk: bool) -> tuple[ReleasedStep, ...]:
    """``plan`` at each other per-tensor placement of the weights the runtime's whole percents can make
    (the midpoint rule's steps; ``disk``: with a disk share, else GPU and CPU only), each at the pair
    of percents ``_step_percents`` gives it. Llama-2-70B has 11 without a disk, OPT-66B 91 with one:
    the weights' GPU percent moves one tensor of every decoder layer at once, so the LP's optimum (an
    even spread) can lie far from every step."""
    own = _placement_key(_midpoints(model)[0], int(plan.wg), int(plan.wc))
    return tuple(
        ReleasedStep(replace(plan, wg=wg, wc=wc), gpu, cpu, key[1])
        for key, wg, wc, gpu, cpu in _step_percents(model, disk)
        if key != own
    )


@dataclass(frozen=True)
class ReleasedStep:
    """One of ``released_steps``: the plan, the shares of the weights' elements it puts on the GPU and
    on the CPU, and which GPU set it places (steps of one ``gpu_set`` differ in their CPU share only)."""

    plan: FlexGenPlan
    gpu: float
    cpu: float
    gpu_set: int


def scheduling_layer_tiers(model: ModelSpec, plan: FlexGenPlan) -> tuple[tuple[int, ...], ...]:
    """Each tensor's tier (0 GPU, 1 CPU, 2 disk) in each scheduling layer, in
    ``scheduling_layer_tensors``' order, by the released rule (``_tiers``): what a real run places
    (validate.offload's FlexGen runner). Released placement only: a continuous one splits tensors."""
    if plan.placement != "released":
        raise ValueError(f"tensors have no single tier under {plan.placement!r} placement")
    wg, wc, _, _ = _split_key(plan)
    return tuple(tuple(_tiers([n for n, _ in t], wg, wc)) for t in scheduling_layer_tensors(model))


def layer_weight_split(model: ModelSpec, plan: FlexGenPlan) -> tuple[tuple[float, float, float], ...]:
    """(gpu, cpu, disk) weight bytes of each scheduling layer under ``plan``."""
    return _layer_split(model, *_split_key(plan))


def gpu_weight_bytes(model: ModelSpec, plan: FlexGenPlan) -> float:
    """``fractions(model, plan).w_gpu`` (the same sum) without the CPU share's host memory and the disk
    share's temporaries, which ``_weight_totals`` works out too: ``to_plan`` lowers the GPU percent one
    at a time and reads only this."""
    return _gpu_total(model, *_split_key(plan))


@lru_cache(maxsize=1024)
def _gpu_total(model: ModelSpec, wg: float, wc: float, dtype: DType, placement: Placement) -> float:
    return sum(s[0] for s in _layer_split(model, wg, wc, dtype, placement))


def layer_disk_copies(model: ModelSpec, plan: FlexGenPlan) -> tuple[tuple[float, ...], ...]:
    """Each scheduling layer's disk share as FlexGen's copy threads move it: load_weight copies
    tensor by tensor (flex_opt.py: ``w.smart_copy`` per weight), and each disk tensor is a copy of
    its own on the threads' queue (pytorch_backend.py:831-833), read then hopped over the link
    (:896-902). The bytes of each copy, in order (``_disk_copies``)."""
    return tuple(_each_layer(_disk_copies, model, *_split_key(plan)))


def layer_disk_packed(model: ModelSpec, plan: FlexGenPlan) -> tuple[tuple[bool, ...], ...]:
    """For each of ``layer_disk_copies``' copies, whether it is a 4-bit matrix's packed data: through
    the copy threads' fp16 relay it hops to the GPU from a pageable temporary (flexgen.py:
    ``_via_host``'s ``packed``)."""
    return tuple(_each_layer(_disk_packed, model, *_split_key(plan)))


def layer_disk_copy_kinds(model: ModelSpec, plan: FlexGenPlan) -> tuple[tuple[tuple[float, bool], ...], ...]:
    """``layer_disk_copies`` and ``layer_disk_packed`` zipped, each copy (bytes, packed?), per layer:
    worked out once per placement (a FlexGen search's placed cost models ask ~70 times)."""
    return _layer_copy_kinds(model, *_split_key(plan))


@lru_cache(maxsize=1024)
def _layer_copy_kinds(
    model: ModelSpec, wg: float, wc: float, dtype: DType, placement: Placement
) -> tuple[tuple[tuple[float, bool], ...], ...]:
    return tuple(_each_layer(_disk_copy_kinds, model, wg, wc, dtype, placement))


def _disk_packed(
    tensors: tuple[tuple[int, bool], ...], wg: float, wc: float, dtype: DType, placement: Placement
) -> tuple[bool, ...]:
    return tuple(k for _, k in _disk_copy_kinds(tensors, wg, wc, dtype, placement))


def _split_key(plan: FlexGenPlan) -> tuple[float, float, DType, Placement]:
    """What of ``plan`` the weight split depends on (``_layer_split``'s and ``_weight_totals``' key)."""
    return plan.wg / 100.0, plan.wc / 100.0, weight_dtype(plan), plan.placement


def _each_layer(f: Callable[..., _R], model: ModelSpec, *key: object) -> list[_R]:
    """``[f(t, *key) for t in scheduling_layer_tensors(model)]``, ``f`` (a pure function of its
    arguments) called once per distinct layer: a decoder's 2l blocks are two tuples repeated (4 distinct
    of Llama-2-70B's 162), and each of ``f``'s cache look-ups hashes the layer's tensors and the dtype
    (~1 us apiece). The same values in the same order, so sums over them are the same to the bit."""
    done: dict[int, _R] = {}  # by id: every layer is held by the cached tuple while this runs
    out = []
    for t in scheduling_layer_tensors(model):
        if id(t) not in done:
            done[id(t)] = f(t, *key)
        out.append(done[id(t)])
    return out


@lru_cache(maxsize=1024)
def _layer_split(
    model: ModelSpec, wg: float, wc: float, dtype: DType, placement: Placement
) -> tuple[tuple[float, float, float], ...]:
    # one look-up for a model's 2l + 2 layers: a FlexGen search asks ~500 times (to_plan lowering
    # the GPU percent one at a time, footprints, placed cost models), for a few dozen placements
    return tuple(_each_layer(_split, model, wg, wc, dtype, placement))


def _layer_temporaries(
    tensors: tuple[tuple[int, bool], ...], wg: float, wc: float, dtype: DType, placement: Placement
) -> float:
    return packed_temporaries(_disk_copy_kinds(tensors, wg, wc, dtype, placement))


@lru_cache(maxsize=1024)
def _weight_totals(
    model: ModelSpec, wg: float, wc: float, dtype: DType, placement: Placement
) -> tuple[float, float, float, float, float, float, float, float]:
    """``layer_weight_split``'s (GPU, CPU, disk) totals and largest off-GPU layer, then the CPU share's
    host memory pinned, unpinned and its relay (``_host_allocations``), then the packed parts' pageable
    temporaries a layer's disk load can hold at once (``packed_temporaries``): a FlexGen search asks
    ~400 times (``to_plan`` lowering the GPU percent one at a time), for a few dozen placements."""
    split = _layer_split(model, wg, wc, dtype, placement)
    temps = max(_each_layer(_layer_temporaries, model, wg, wc, dtype, placement))
    host = _each_layer(_host_allocations, model, wg, wc, dtype, placement)
    # the relay's blocks stay cached (pinned_bytes): one layer's pins are in flight at a time (its DMAs
    # end at the position's barrier), so each size class holds the most any one layer pins of it
    classes: dict[float, int] = {}
    for _, _, relay in host:
        for size, k in relay:
            classes[size] = max(classes.get(size, 0), k)
    return (
        sum(s[0] for s in split),
        sum(s[1] for s in split),
        sum(s[2] for s in split),
        max(s[1] + s[2] for s in split),
        sum(h[0] for h in host),
        sum(h[1] for h in host),
        sum(size * k for size, k in classes.items()),
        temps,
    )


def packed_temporaries(copies: tuple[tuple[float, bool], ...]) -> float:
    """The pageable uint8 temporaries of packed parts (``_via_host``: the blocking copy from the fp16
    relay converts into one, held until its hop ends) that one load's ``copies`` ((bytes, packed) each)
    can hold at once: one per copy thread at most (``COPY_THREADS``), the largest ones, a bound (they
    are alive together only where hops queue behind the link)."""
    return sum(sorted((b for b, k in copies if k), reverse=True)[:COPY_THREADS])


# ---- memory -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Fractions:
    """Placement as fractions (0-1); weights as effective byte totals after the placement rule."""

    w_gpu: float  # weight bytes resident on the GPU (all scheduling layers)
    w_cpu: float
    w_disk: float
    w_off_gpu_max: float  # largest off-GPU share of one scheduling layer (the double buffer)
    # host memory of the CPU share as the runtime allocates it (``_host_allocations``): with
    # --pin-weight 1, with --pin-weight 0, and the latter's pin_memory() relay blocks
    w_cpu_pinned: float
    w_cpu_unpinned: float
    w_cpu_relay: float
    cg: float
    cc: float
    cd: float
    hg: float
    hc: float
    hd: float
    # the pageable temporaries of the packed parts one disk load can hold at once (``packed_temporaries``)
    w_packed_temps: float = 0.0


def fractions(model: ModelSpec, plan: FlexGenPlan) -> Fractions:
    w_gpu, w_cpu, w_disk, w_off_gpu_max, pinned, unpinned, relay, temps = _weight_totals(
        model, *_split_key(plan)
    )
    return Fractions(
        w_gpu=w_gpu,
        w_cpu=w_cpu,
        w_disk=w_disk,
        w_off_gpu_max=w_off_gpu_max,
        w_cpu_pinned=pinned,
        w_cpu_unpinned=unpinned,
        w_cpu_relay=relay,
        cg=plan.cg / 100,
        cc=plan.cc / 100,
        cd=plan.cd / 100,
        hg=plan.hg / 100,
        hc=plan.hc / 100,
        hd=plan.hd / 100,
        w_packed_temps=temps,
    )


@dataclass(frozen=True)
class Shape:
    """What the memory formulas need besides the fractions."""

    gbs: int
    nb: int
    prompt_len: int
    # the token slots per sequence the KV cache is allocated for (``Workload.kv_slots``: s + n - 1 of
    # the run, or of the run a head stands for)
    kv_slots: int
    cpu_attention: bool
    compress_cache: bool
    compress_weight: bool
    pin_weight: bool
    # the KV cache's one tier ("g", "c", "d"; ``FlexGenPlan.kv_home``), or "": split, or not known (the
    # LP's uncompressed cache, whose fractions it solves for): load_cache's copies counted as for a split
    kv_home: str = ""


def shape_of(plan: FlexGenPlan, workload: Workload) -> Shape:
    return Shape(
        plan.gpu_batch_size,
        plan.num_gpu_batches,
        workload.prompt_len,
        workload.kv_slots,
        plan.uses_cpu_attention,
        plan.compress_cache,
        plan.compress_weight,
        plan.pin_weight,
        plan.kv_home,
    )


@lru_cache(maxsize=64)
def _decompressed(model: ModelSpec) -> dict[str, tuple[float, ...]]:
    """With --compress-weight: the fp16 bytes of each matrix a layer function decompresses on the GPU,
    in its order. ``TorchCompressedDevice.decompress`` (compression.py:146-201) fills an fp16 tensor
    of whole groups (the rows padded to a multiple of INT4's 64, group_dim 0: flex_opt.py:1204-1205)
    and returns a view of it."""

    def fp16(rows: int, cols: int) -> float:
        return -(-rows // INT4.group_size) * INT4.group_size * cols * 2.0

    tensors = layer_weight_tensors(model)

    def block(name: str) -> tuple[float, ...]:
        return tuple(fp16(*t.shape) for t in tensors if t.block == name and t.is_matrix)

    tables = embedding_tables(model)
    return {
        "input_embed": tuple(fp16(*t) for t in tables["input_embed"]),
        "attention": block("attention"),
        "mlp": block("mlp"),
        "output_embed": tuple(fp16(*t) for t in tables["output_embed"]),
    }


def q_width(model: ModelSpec) -> int:
    """Width of one position's q, and of the attention's value before the output projection: heads x
    head_dim. The release computes head_dim = h // n_head (pytorch_backend.py:309, :380), so for OPT
    it is the hidden size; for models whose heads are not hidden / heads wide (Qwen3-30B-A3B,
    Qwen3-235B, DeepSeek-V3) it is not."""
    return model.heads * model.head_dim


def kv_width(model: ModelSpec) -> int:
    """Width of one position's K (or V) in one layer: kv_heads x head_dim (GQA's narrower K and V)."""
    return model.kv_heads * model.head_dim


def kv_token_bytes(model: ModelSpec, compressed: bool) -> float:
    """K and V of one token of one sequence in one layer, as the release stores them: fp16, or 4-bit
    data and an fp16 (scale, min) pair per group of 64 along head_dim, each head's row rounded up to
    whole groups (compression.py:33-49, :84-144; tools/flexgen_peak.py's ``kv_out_bytes``, exact)."""
    if not compressed:
        return 2 * kv_width(model) * FP16.bytes_per_element
    return 2 * model.kv_heads * _group_padded(model.head_dim) * INT4.bytes_per_element


def _group_padded(width: int) -> int:
    return -(-width // INT4.group_size) * INT4.group_size


def layer_peaks(
    model: ModelSpec,
    gbs: int,
    tokens: int,
    kv_len: int,
    cpu_attention: bool,
    compress_weight: bool = False,
    compress_cache: bool = False,
) -> dict[str, float]:
    """Peak GPU bytes each of FlexGen 0.1.8's layer functions holds live for one GPU batch of ``gbs``
    sequences, its input counted, weights and the KV cache it reads not: the prefill (``tokens`` = the
    prompt) or a decode step (``tokens`` = 1, ``kv_len`` keys). Measured by tools/flexgen_peak.py
    (tests/data/flexgen-peak-0.1.8.csv; every row exact, held-out shapes included):

    - ``mha`` (pytorch_backend.py:298-360): the input, its LayerNorm, q, k and v, then two fp16 score
      matrices at once (``torch.where``'s and ``F.softmax``'s), the bool (b, 1, s, s) mask, the causal
      mask and its index; or, at the output projection, one score matrix and four hidden-sized
      tensors besides the first five (the 2-byte -1e4 lives only with the first);
    - ``mha_gen`` (:362-480): per new token, ~5 hidden vectors and two score rows with attention on the
      GPU; with attention on the CPU its GPU part is ~7 hidden vectors (the host's part:
      ``memory_plan``'s CPU attention workspace); with ``compress_cache`` (GPU attention) it first
      decompresses the batch's K, then V, to fp16 (compression.py:146-201: an fp16 buffer of
      head_dim rounded up to the group, the 4-bit unpacking's uint8 temporary, then, where head_dim
      was rounded, a contiguous unpadded copy) and holds both through the attention (``*_cc`` rows;
      the prefill's ``mha`` compressing its K and V holds no more where head_dim is a whole number
      of groups, as for every shipped model; a rounded head_dim holds more, not modelled);
    - ``mlp`` (:569-583): the input, its LayerNorm and fc1's output, or fc1's and fc2's outputs;
    - the embeddings (:236-285): token and position embeddings and their sum; the LayerNorm and the
      logits of every position (the prefill's ``F.linear`` runs the LM head on all ``tokens``).

    With ``compress_weight`` each function first decompresses its matrices to fp16 and holds them for
    the call (measured, exact): the peak above plus those matrices, or, where the batch is small, the
    last decompression (the matrices so far, and the 4-bit unpacking's uint8 temporary, a quarter of
    the fp16 bytes, beside the layer's input).

    The forms are OPT's (the only model the release runs; no released FlexGen-style runtime for Llama
    is on PyPI: flexgen's newest is 0.1.8, OPT only, and no flexllmgen package exists, checked in
    session 14); for other models they are an extrapolation, not a measurement: the model's q, k and
    v widths (GQA's narrower K and V, never repeated to the query heads, as a grouped bmm would), a
    gated MLP holding gate and up (2 f-wide tensors: act and product in place; HF's eager Llama holds a
    third, ``hetsim.models.memory``), no rotary temporaries.
    """
    b, s, h, n = gbs, tokens, model.hidden, model.heads
    qkv = q_width(model) + 2 * kv_width(model)  # q, k, v of one position
    inner = model.intermediate * (2 if model.gated_mlp else 1)
    if s > 1:
        masks = b * s * s + s * s + 8 * s  # bool mask (b, 1, s, s), causal (1, 1, s, s), int64 index
        score = b * n * s * s * 2.0
        attention = max(
            b * s * (2 * h + qkv) * 2.0 + 2 * score + masks + 2, b * s * (4 * h + qkv) * 2.0 + score + masks
        )
    elif cpu_attention:
        # + q in fp32, the value back from the host (heads x head_dim wide)
        attention = 2 * b * h * 2.0 + b * qkv * 2.0 + b * q_width(model) * 4.0
    elif compress_cache:
        rows = b * kv_len * model.kv_heads
        full = rows * _group_padded(model.head_dim) * 2.0  # one decompressed K or V, padded
        kept = rows * model.head_dim * 2.0  # after unpadding (or the padded buffer itself)
        temp = max(full / 4, kept if kept != full else 0.0)  # the uint8 unpacking, the unpadding copy
        attention = b * (2 * h + qkv) * 2.0 + max(kept + full + temp, 2 * kept + 2 * b * n * kv_len * 2.0 + 2)
    else:
        attention = b * (2 * h + qkv) * 2.0 + 2 * b * n * kv_len * 2.0 + 2
    peaks = {
        "input_embed": b * s * h * 3 * 2.0 + b * s * 8.0,
        "attention": attention,
        "mlp": b * s * (2 * h + inner) * 2.0,
        "output_embed": b * s * (h + model.vocab) * 2.0 + b * 8.0,
    }
    if compress_weight:
        ids, x = b * s * 4.0, b * s * h * 2.0  # the layer's input, alive while it decompresses
        held_input = {"input_embed": ids, "attention": x, "mlp": x, "output_embed": x}
        for kind, matrices in _decompressed(model).items():
            held, moment = 0.0, 0.0
            for m in matrices:  # unpacking m: the uint8 temporary of its packed size, m / 4
                moment, held = max(moment, held + m + m / 4), held + m
            peaks[kind] = max(peaks[kind] + held, held_input[kind] + moment)
    return peaks


def kv_load_copies(shape: Shape) -> tuple[str, float, float]:
    """Where load_cache copies a GPU batch's KV to, and how many copies are live during decode attention
    and during the layer before it: ("gpu" or "cpu", attention's, the previous layer's); ("", 0, 0): none.

    Path 0 (flex_opt.py:359-369) copies the home K and V to the attention's device (its compressed one
    with --compress-cache), but ``smart_copy`` returns the home tensor itself where it already lives
    there (pytorch_backend.py:142-145): a cache wholly on the GPU read by GPU attention, or, compressed,
    wholly on the CPU read by CPU attention, is not copied; a split one is copied whole (its mixed
    tensor). Uncompressed CPU attention gathers into its fp32 workspace instead (path 1, counted there).
    The loop loads batch k + 1 before computing batch k (flex_opt.py:1045-1052; one GPU batch, the next
    layer: :1022-1024), wrapping to the next layer's first batch: a decode attention holds its own copy
    and the next batch's (one GPU batch: its own only, the next load being the MLP's), the layer before
    an attention (an MLP, the embedding) holds that attention's first batch's, the prefill none
    (load_cache returns at i == 0)."""
    if shape.cpu_attention and not shape.compress_cache:
        return "", 0.0, 0.0
    device, home = ("cpu", "c") if shape.cpu_attention else ("gpu", "g")
    if shape.kv_home == home:
        return "", 0.0, 0.0
    return device, (2.0 if shape.nb > 1 else 1.0), 1.0


def cpu_attention_host(model: ModelSpec, gbs: int, kv_len: int, compress_cache: bool) -> dict[str, float]:
    """CPU attention's host memory for a GPU batch attending over ``kv_len`` keys (tools/flexgen_peak.py's
    ``mha_gen_cpu`` rows, exact): the fp32 K and V workspace, made once, and mha_gen's temporaries.

    Uncompressed: one K and one V buffer of head_dim (pytorch_backend.py:196-214); at the softmax, q in
    fp32 and two fp32 score rows per query head (``torch.where``'s and ``F.softmax``'s). With
    --compress-cache the release allocates the compressed device's decompression workspace instead
    (compression.py:61-82): K and V in fp32 with head_dim rounded up to the group of 64, into which
    ``decompress`` unpacks the whole cache (:175-180) through a uint8 temporary of the packed size (the
    high nibbles, then the low: an eighth of one buffer); where head_dim was rounded it then copies the
    unpadded K, and V, out contiguous (:194-199), both held through the attention. Per KV head, as the
    release's per-head buffers of OPT (whose heads are its KV heads): a grouped runtime keeps K and V
    as stored (the traffic model's reading, ``flexgen_ops._cpu_attention``), not repeated to the query
    heads; the score rows are per query head either way."""
    rows = gbs * kv_len * model.kv_heads
    attend = gbs * q_width(model) * 4.0 + 2 * gbs * model.heads * kv_len * 4.0
    if not compress_cache:
        return {"attention_workspace": 2 * rows * model.head_dim * 4.0, "attention_temporaries": attend}
    padded = _group_padded(model.head_dim)
    unpack = rows * padded * INT4.bits / 8.0
    kept = rows * model.head_dim * 4.0 if padded != model.head_dim else 0.0
    return {
        "attention_workspace": 2 * rows * padded * 4.0,
        "attention_temporaries": max(kept + unpack, 2 * kept + attend),
    }


def memory_plan(model: ModelSpec, shape: Shape, f: Fractions) -> dict[str, dict[str, float]]:
    """Bytes per tier ("gpu", "cpu", "disk") and tag; every term is linear in the fractions.

    GPU: resident weights, KV and hidden states; the double-buffered next layer's weights; the
    working set of one GPU batch: the largest of the layer functions' measured peaks (``layer_peaks``;
    the prefill's attention holds two score matrices at once), each with what coexists with it: the
    prefill K and V awaiting their store, and load_cache's copies of a batch's KV where it makes them
    (``kv_load_copies``: fp16, or with --compress-cache 4-bit, decompressed inside ``mha_gen``). CPU:
    resident shares, plus with CPU attention its fp32 workspace and temporaries (``cpu_attention_host``;
    with attention and MLP as separate scheduling layers the runtime allocates one workspace), and a
    compressed cache's copies to the CPU where it is not at home there, plus the copy threads' pinned
    relays (``COPY_RELAY_BYTES``, with or without a disk share).
    The KV cache is pre-allocated for ``shape.kv_slots`` tokens, as the runtime does.
    """
    return memory_at(shape_memory(model, shape), shape, f)


def memory_at(t: ShapeMemory, shape: Shape, f: Fractions) -> dict[str, dict[str, float]]:
    """``memory_plan`` from ``shape``'s terms (``shape_memory``), where the caller reads many
    placements of one shape (the LP's unit vectors, ``flexgen_lp._memory``)."""
    gpu = {
        "weights": f.w_gpu,
        "weight_buffers": 2 * f.w_off_gpu_max,
        "kv_cache": f.cg * t.kv_total,
        "hidden": f.hg * t.hidden,
        "working": t.working,
    }
    # host memory as torch allocates it (``pinned_bytes``): the weights per tensor (``Fractions``), a
    # CPU hidden state one pinned allocation per GPU batch (pytorch_backend.py:184-190, pin_memory None
    # on the CPU); the KV cache is not pinned (:292-293)
    cpu = {
        "weights": f.w_cpu_pinned if shape.pin_weight else f.w_cpu_unpinned,
        "kv_cache": f.cc * t.kv_total,
        "hidden": f.hc * shape.nb * t.hidden_pinned,
    }
    if not shape.pin_weight and f.w_cpu_relay:
        cpu["weight_relay"] = f.w_cpu_relay
    cpu.update(t.attention_host)
    if t.kv_copies is not None:
        cpu["kv_copies"] = t.kv_copies
    cpu["copy_relays"] = COPY_RELAY_BYTES
    # the copy threads' pageable uint8 temporaries of packed parts bound for the GPU (``_via_host``): a
    # layer's 4-bit weights on disk, and a 4-bit cache on disk that GPU attention loads (K's and V's
    # data of one batch; with CPU attention it goes to the CPU, no relay); transient, at their peak
    if shape.compress_weight or shape.compress_cache:
        kv = zip(copy_parts(True), packed_parts(True), strict=True)
        copy = t.kv_copy
        kv_parts = () if shape.cpu_attention else tuple((copy * f.cd / 2 * k, p) for k, p in kv) * 2
        cpu["packed_temporaries"] = f.w_packed_temps + packed_temporaries(kv_parts)
    disk = {"weights": f.w_disk, "kv_cache": f.cd * t.kv_total, "hidden": f.hd * t.hidden}
    return {"gpu": gpu, "cpu": cpu, "disk": disk}


@dataclass(frozen=True)
class ShapeMemory:
    """``memory_plan``'s terms that depend on the shape alone, not on the fractions."""

    kv_total: float  # the whole KV cache's bytes
    hidden: float  # the block's hidden states
    working: float  # the GPU's working set: the largest layer peak, a batch's input and output
    hidden_pinned: float  # one GPU batch's CPU hidden state as a pinned allocation
    attention_host: tuple[tuple[str, float], ...]  # CPU attention's host workspace and temporaries
    kv_copies: float | None  # a compressed cache's pinned copies on the CPU, where it makes them
    kv_copy: float  # load_cache's copy of one batch's K and V, bytes


@lru_cache(maxsize=4096)
def shape_memory(model: ModelSpec, shape: Shape) -> ShapeMemory:
    """``memory_plan``'s shape terms, worked out once per shape: the LP reads ``memory_plan`` at 10
    points per (gbs, nb, flags) (``flexgen_lp._memory``), ~5,600 times a search."""
    h, s, slots = model.hidden, shape.prompt_len, shape.kv_slots
    bls, gbs = shape.gbs * shape.nb, shape.gbs
    kvb = kv_token_bytes(model, shape.compress_cache)
    kv_total = bls * slots * model.layers * kvb
    hidden = bls * s * h * 2.0
    prefill = layer_peaks(model, gbs, s, s, shape.cpu_attention, shape.compress_weight)
    decode = layer_peaks(
        model, gbs, 1, slots, shape.cpu_attention, shape.compress_weight, shape.compress_cache
    )
    # the prefill's new K and V of the batch before wait in cache_write_buf for their store, which the
    # loop issues after the next compute: the next batch's attention (flex_opt.py:1052-1053), or, one
    # GPU batch, this layer's MLP (:1025-1026); with --compress-cache mha returns them compressed
    # (pytorch_backend.py:358-360: 4-bit data and scales, tools/flexgen_peak.py's ``kv_out_bytes``)
    kv_pending = gbs * s * kv_token_bytes(model, shape.compress_cache)
    prefill["mlp"] += kv_pending
    if shape.nb > 1:
        prefill["attention"] += kv_pending
    # load_cache's copies of one batch's K and V, prompt_len + i slots (all of them at the last step)
    where, at_attention, before = kv_load_copies(shape)
    copy = gbs * slots * kvb
    on_gpu = copy if where == "gpu" else 0.0
    decode["attention"] += at_attention * on_gpu
    decode["mlp"] += before * on_gpu
    decode["input_embed"] += before * on_gpu
    # attention and MLP are separate layers in the released loop: their peaks do not coexist
    act_ws = max(*prefill.values(), *decode.values())
    hid_ws = 2 * gbs * s * h * 2.0  # a batch's input (loaded) and output (to be stored)
    host = cpu_attention_host(model, gbs, slots, shape.compress_cache) if shape.cpu_attention else {}
    # a CPU hidden state: one pinned allocation per GPU batch (see memory_plan)
    pinned_hidden = pinned_bytes(gbs * s * h * 2.0)
    kv_copies = None
    if where == "cpu":
        # a compressed copy made on the CPU is pinned (TorchDevice.allocate's default, pytorch_backend.py:
        # 180-183): K's and V's data and scales, each an allocation of its own (``copy_parts``)
        parts = sum(pinned_bytes(copy / 2 * k) for k in copy_parts(True))
        kv_copies = at_attention * 2 * parts
    return ShapeMemory(kv_total, hidden, act_ws + hid_ws, pinned_hidden, tuple(host.items()), kv_copies, copy)
