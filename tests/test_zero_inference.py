"""DeepSpeed ZeRO-Inference and Accelerate as their early-2023 releases run on one GPU: what each
fetch copies, where, in what order, and what stays on the GPU (DeepSpeed 0.8.0 runtime/zero/,
Accelerate 0.16.0 hooks.py; see the strategies' docstrings for file:line)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from hetsim.costs.op_cost import op_cost
from hetsim.hardware.loader import load_rig
from hetsim.models import get_model
from hetsim.models.memory import largest_leaf_bytes
from hetsim.models.registry import list_models
from hetsim.sim.run import simulate
from hetsim.strategies.base import get_strategy
from hetsim.strategies.deepspeed import MAX_LIVE, PERSISTENCE_THRESHOLD, fetches, gather_op
from hetsim.workload import Workload

H, F, V, POS, L = 7168, 28672, 50272, 2050, 48  # OPT-30B (config.json)
TABLE = V * H


@pytest.fixture(scope="module")
def opt30b():
    return get_model("opt-30b")


def test_zero3_fetches_the_matrices_and_keeps_biases_and_norms(opt30b):
    """Default persistence threshold 1e5 elements: per layer q, k, v, out, fc1, fc2 cross PCIe; the
    biases and LayerNorms (the largest, fc1's bias, 28672) stay on the GPU; the tied token table
    is fetched again for the head (29.6e9 elements between its uses > the 1e9 reuse distance)."""
    f = fetches(opt30b)
    layer = (H * H,) * 4 + (F * H, H * F)
    assert f.leaves == ((TABLE,), (POS * H,), *([(n,) for n in layer] * L), (TABLE,))
    assert f.persistent == L * (4 * H + F + H + 4 * H) + 2 * H
    assert max(n for leaf in f.leaves for n in leaf) >= PERSISTENCE_THRESHOLD > F
    assert sum(f.block_bytes()) == 2 * (2 * TABLE + POS * H + L * 12 * H * H)
    assert f.kept == 0


def test_a_small_tied_model_keeps_its_table_between_its_two_uses():
    """Under 1e9 elements between the token lookup and the head, ZeRO-3 does not release the table."""
    small = replace(get_model("opt-6.7b"), layers=2)
    f = fetches(small)
    assert f.kept == small.vocab * small.hidden
    assert f.block_bytes()[-1] == 0.0  # nothing fetched for the head


@pytest.mark.parametrize("layers", [2, 4])
def test_a_kept_tied_table_counts_once_and_inside_the_live_cap(layers):
    """The kept table is one fetched tensor that stays live: it counts against
    stage3_max_live_parameters (the coordinator's __n_available_params falls only on release) and
    is on the GPU once. With 2 layers (617e6 elements fetched) the peak is every fetched element and
    one call's landing copy, at most; with 4 (1.02e9) the cap, the table inside it, plus one call."""
    small = replace(get_model("opt-6.7b"), layers=layers)
    f = fetches(small)
    assert f.kept == small.vocab * small.hidden
    fetched = sum(f.block_bytes()) / 2
    biggest_call = max(sum(n for _, n in call) for _, call in f._walk(True)[0])
    live = (f.peak_bytes(True) - f.persistent * 2) / 2
    assert live <= min(fetched, MAX_LIVE) + biggest_call


def test_allgather_copies_every_fetched_byte_once_on_the_gpu_twice_when_coalesced(opt30b):
    """World size 1 still gathers into a second buffer: one GPU copy per byte for a lone tensor. On
    OPT-30B every call holds one tensor but the first prefetch (the position table, 14.7e6 elements,
    is under the 5e7 bucket, so q_proj of layer 0 joins it), whose bytes are copied twice."""
    f = fetches(opt30b)
    fetched = sum(f.block_bytes())
    assert sum(f.gather_bytes(True)) == fetched + 2 * (POS * H + H * H)
    small = fetches(get_model("opt-6.7b"))  # 4096^2 = 16.8e6 per attention matrix: calls coalesce
    assert sum(small.block_bytes()) < sum(small.gather_bytes(True)) < 2 * sum(small.block_bytes())


def test_gpu_weight_peak_is_the_live_parameter_cap_plus_one_call_in_flight(opt30b):
    """Every hooked module prefetches, so the lookahead fills stage3_max_live_parameters (1e9
    elements); the peak is the cap, plus the call that crosses it and its landing copy. Without
    prefetch, the first fetch of the token table (landing + gathered) is the peak."""
    for model in (opt30b, get_model("opt-6.7b"), get_model("llama2-7b")):
        f = fetches(model)
        biggest = max(n for leaf in f.leaves for n in leaf)
        live = (f.peak_bytes(True) - f.persistent * 2) / 2
        assert MAX_LIVE <= live <= MAX_LIVE + 2 * max(biggest, 50_000_000)
    f = fetches(opt30b)
    assert f.peak_bytes(False) == 2 * (2 * TABLE) + f.persistent * 2
    assert f.peak_bytes(True) > 2 * (2 * TABLE) + f.persistent * 2


def test_deepspeed_decode_step_is_the_host_copy_chain():
    """Copy-bound decode (OPT-30B, batch 4, T4): the host blocks on each copy (12.89 GiB/s pinned)
    and issues the next at once; the all-gathers' GPU copies (~0.48 s a step) run on another stream
    beside the copies and hide, as does compute. Without prefetch (no trace yet) each copy waits for
    the previous gather (the side stream's wait) but never for compute (GPU-side ``wait_stream``, no
    host sync on release): copies plus gathers a decode step, and the compute-bound prefill hides
    them as it does with prefetch."""
    rig, model = load_rig("flexgen-t4"), get_model("opt-30b")
    s = get_strategy("deepspeed")
    wl = Workload(4, 512, 32)
    plan = replace(s.default_plan(rig, model, wl), batch_per_pass=4)
    f = fetches(model)
    gpu = rig.devices["n0.gpu0"]
    copies = sum(b / (12.89 * 2**30) + 10e-6 for b in f.block_bytes())
    gathers = sum(op_cost(gpu, gather_op(n, 0)).time_s for n in f.gather_bytes(False))
    assert gathers > 0.4
    steady = simulate(s, plan, rig, model, wl)
    assert steady.tpot_s == pytest.approx(copies, rel=0.005)
    no_trace = simulate(s, replace(plan, prefetch=False), rig, model, wl)
    assert no_trace.tpot_s == pytest.approx(copies + gathers, rel=0.005)
    assert steady.ttft_s > copies + gathers  # prefill: compute-bound on the T4
    assert no_trace.ttft_s == pytest.approx(steady.ttft_s, rel=0.005)


def test_deepspeed_footprint_reserves_the_fetch_peak(opt30b):
    rig = load_rig("flexgen-t4")
    s = get_strategy("deepspeed")
    wl = Workload(4, 512, 32)
    plan = s.default_plan(rig, opt30b, wl)
    fp = s.footprint(plan, rig, opt30b, wl)
    assert fp[plan.gpu]["weight_buffers"] == fetches(opt30b).peak_bytes(True)
    pageable = s.footprint(replace(plan, pinned=False), rig, opt30b, wl)
    assert pageable[plan.cpu]["weights"] == 2 * (TABLE + POS * H + L * (12 * H * H + 13 * H) + 2 * H)


def test_deepspeed_pins_each_partition_as_torch_rounds_it(opt30b):
    """``offload_param.pin_memory``: each parameter's CPU partition is ``.pin_memory()``-ed on its own
    (partition_parameters.py:1099-1106), a power-of-two block of torch's caching host allocator: per
    OPT-30B layer q, k, v, out (102.8 MB) take 128 MiB each, fc1 and fc2 (411 MB) 512 MiB each, the 9
    vectors of 7168 16 KiB each and fc1's bias (28672) 64 KiB; the tied table (721 MB) 1 GiB, the
    positions (29.4 MB) 32 MiB, the final norm 2 x 16 KiB: 78.43 GB, not the 59.95 GB of fp16 weights."""
    rig = load_rig("flexgen-t4")
    s = get_strategy("deepspeed")
    wl = Workload(4, 512, 32)
    plan = s.default_plan(rig, opt30b, wl)
    assert plan.pinned
    mib, kib = 2**20, 2**10
    layer = 4 * 128 * mib + 2 * 512 * mib + 9 * 16 * kib + 64 * kib
    expected = 1024 * mib + 32 * mib + L * layer + 2 * 16 * kib
    assert s.footprint(plan, rig, opt30b, wl)[plan.cpu]["weights"] == expected
    assert expected == pytest.approx(78.427e9, rel=1e-4)


def test_accelerate_stages_one_leaf_module_not_a_layer(opt30b):
    """Accelerate's hooks copy a leaf module in and drop it after it runs: the GPU holds fc1 (weight
    and bias), 0.41 GB on OPT-30B, not the 1.23 GB layer."""
    assert largest_leaf_bytes(opt30b) == 2 * (F * H + F)
    rig = load_rig("flexgen-t4")
    s = get_strategy("accelerate")
    wl = Workload(8, 512, 32)
    plan = replace(s.default_plan(rig, opt30b, wl), gpu_layers=0, cpu_layers=L, disk_layers=0)
    assert s.footprint(plan, rig, opt30b, wl)[plan.gpu]["staging"] == 2 * (F * H + F)
    llama = get_model("llama2-7b")  # a gated MLP: the largest leaf is one projection
    assert largest_leaf_bytes(llama) == 2 * llama.hidden * llama.intermediate


@pytest.mark.parametrize("name", ["opt-6.7b", "opt-30b", "llama2-7b", "llama2-70b", "llama3-8b", "qwen-72b"])
def test_every_weight_is_fetched_or_kept_once_a_forward(name):
    """Fetched plus persistent elements are the model's parameters, the tied table counted again when
    it is refetched for the head (gated MLPs' three projections, GQA's narrower k and v included)."""
    from hetsim.models.spec import DTYPES
    from hetsim.models.weights import weight_bytes

    for model in (get_model(name), replace(get_model(name), layers=1)):  # 1 layer: a tied table is kept
        f = fetches(model)
        refetched = model.vocab * model.token_dim * 2 if model.tied_embeddings and not f.kept else 0
        fetched = sum(f.block_bytes()) + f.persistent * 2
        assert fetched - refetched == pytest.approx(weight_bytes(model, DTYPES["fp16"]), rel=1e-12)


def test_deepspeed_offloads_to_nvme_when_the_weights_exceed_host_memory():
    """OPT-175B (350 GB fp16) on the 208 GB T4 VM runs only with ZeRO-Infinity's
    ``offload_param.device: nvme``: every fetched tensor (>= 1 MiB) on the disk, read by libaio into
    5 pinned swap buffers as large as the largest tensor (the 618e6-element token table), then copied
    to the GPU. The disk and the link take turns (one read ahead, issued after the blocking copy of
    the tensor before: coordinator.py:329-332, :458-481, partition_parameters.py:846), so a
    copy-bound decode step is the fetched bytes over the disk's read rate (2 GB/s) plus over the
    pinned link's (13.8 GB/s), the tied table read twice: 200.5 s, not the disk's 175.2 s alone.
    OPT-30B fits host memory: cpu."""
    rig, model = load_rig("flexgen-t4"), get_model("opt-175b")
    s = get_strategy("deepspeed")
    wl = Workload(1, 512, 32)
    plan = s.default_plan(rig, model, wl)
    assert (plan.offload, plan.disk) == ("nvme", "n0.disk0")
    assert s.default_plan(rig, get_model("opt-30b"), wl).offload == "cpu"
    fp = s.footprint(plan, rig, model, wl)
    h, v = model.hidden, model.vocab
    fetched = sum(fetches(model).block_bytes())
    assert fp["n0.disk0"]["weights"] == pytest.approx(fetched - 2 * v * h)  # one file for the tied table
    # one pinned torch.empty of 5 buffers (6.18 GB), a power-of-two block: 8 GiB
    assert 2**32 < 5 * (v * h + 1) * 2 < 2**33 == fp[plan.cpu]["swap_buffers"]
    assert sum(fp[plan.cpu].values()) < rig.devices[plan.cpu].mem_bytes
    r = simulate(s, plan, rig, model, wl)
    assert r.feasible, r.reason
    disk = rig.disks["n0.disk0"]
    link = rig.route(plan.cpu, plan.gpu).bw
    assert r.tpot_s == pytest.approx(fetched / disk.read_bw + fetched / link, rel=0.01)
    assert r.peak_mem_bytes.get("n0.disk0", fp["n0.disk0"]["weights"]) <= disk.capacity_bytes


def test_nvme_stores_a_kept_tied_table_once_when_the_head_fetches_other_tensors():
    """OPT-350m: its tied table is kept between its two uses (under 1e9 elements apart), but the head's
    block still fetches project_out (512 x 1024 elements, 1 MiB, swappable). Only a refetched table is
    a second fetch of one file; a kept one was counted once already, so nothing is taken off the disk."""
    import json
    from pathlib import Path

    from hetsim.models.hf_config import spec_from_hf_dict
    from hetsim.strategies.deepspeed import MIN_AIO_BYTES, swapped_bytes

    cfg = Path(__file__).parent / "data" / "hf-configs" / "OPT-350m" / "config.json"
    model = spec_from_hf_dict(json.loads(cfg.read_text()))
    f = fetches(model)
    assert model.tied_embeddings and f.kept and f.block_bytes()[-1] > 0
    stored, _ = swapped_bytes(model)
    assert stored == sum(f.block_bytes(MIN_AIO_BYTES))


@pytest.mark.parametrize("name", list_models())
def test_host_partitions_are_the_weights_and_pinning_at_most_doubles_them(name):
    """Every parameter tensor once (a tied table once): pageable, the host holds exactly the fp16
    weights; pinned, each partition's power-of-two block is at least it and under twice it; with nvme
    only tensors under 1 MiB stay on the host."""
    from hetsim.models.spec import DTYPES
    from hetsim.models.weights import weight_bytes
    from hetsim.strategies.deepspeed import MIN_AIO_BYTES, host_bytes, partitions

    model = get_model(name)
    pageable = host_bytes(model, False, False)
    assert pageable == pytest.approx(weight_bytes(model, DTYPES["fp16"]), rel=1e-12)
    assert pageable <= host_bytes(model, True, False) < 2 * pageable
    small = sum(2 * n for n in partitions(model) if 2 * n < MIN_AIO_BYTES)
    assert host_bytes(model, False, True) == small <= host_bytes(model, True, True) < 2 * small + 1


@pytest.mark.parametrize("rig_name", ["a100-80g-measured", "mixed-lab"])
def test_deepspeed_unpins_when_the_weights_fit_the_host_but_their_pinned_blocks_do_not(rig_name):
    """OPT-175B's 349 GB of fp16 weights fit these hosts (550 GB without a disk, 512 GB with NVMe);
    pinned in power-of-two blocks they take 621 GB, which ``cudaHostAlloc`` cannot give. A user turns
    ``pin_memory`` off (DeepSpeed's default) and keeps the weights in host memory, as the plan ran
    before the pinned ledger; NVMe stays for weights that do not fit the host at all."""
    from hetsim.strategies.deepspeed import host_bytes

    rig, model = load_rig(rig_name), get_model("opt-175b")
    s = get_strategy("deepspeed")
    wl = Workload(4, 512, 32)
    plan = s.default_plan(rig, model, wl)
    mem = rig.devices[plan.cpu].mem_bytes
    assert host_bytes(model, False, False) < mem < host_bytes(model, True, False)
    assert (plan.offload, plan.pinned, plan.batch_per_pass) == ("cpu", False, 4)
    assert s.fits(plan, rig, model, wl)
    assert simulate(s, plan, rig, model, wl).feasible
