"""FlexGen's copies and kernels as the released code makes them (FMInference/FlexGen 0.1.8:
flex_opt.py, pytorch_backend.py, compression.py), one effect per test, with numbers."""

from __future__ import annotations

import pytest

from hetsim.hardware.loader import load_rig
from hetsim.models import get_model
from hetsim.strategies.flexgen import _Runner
from hetsim.strategies.flexgen_ops import GROUP_SCALE, INDEX_BYTES, _quant, kv_token_bytes, substep_ops
from hetsim.strategies.flexgen_policy import FlexGenPlan
from hetsim.workload import Step, Workload

FOURBIT = FlexGenPlan(64, 8, 0, 100, 0, 100, 0, 100, cpu_attention=False, compress_cache=True, gpu="n0.gpu0")
CPU_ATT = FlexGenPlan(48, 3, 20, 80, 0, 100, 0, 100, cpu_attention=True, gpu="n0.gpu0")


class Recorder:
    """Stands in for the engine: records what a runner piece books."""

    def __init__(self):
        self.copies: list[tuple[str, float, bool]] = []
        self.ops: list[tuple[str, tuple]] = []

    def transfer(self, src, dst, nbytes, *, pinned=True, label="copy", after=None):
        self.copies.append((label, nbytes, pinned))
        return 0.0

    def compute(self, device, ops, *, label=None):
        self.ops.append((label, ops if isinstance(ops, tuple) else (ops,)))
        return 0.0


def drain(gen) -> None:
    for _ in gen or ():
        pass


@pytest.fixture(scope="module")
def opt30b():
    return load_rig("flexgen-t4"), get_model("opt-30b")


def test_compressed_cache_load_copies_every_slot_up_to_the_new_token(opt30b):
    """load_cache path 0 copies prompt_len + i token slots at decode step i (the new token's slot
    included); OPT-30B, gbs 64, step 5 after a 512-token prompt: 64 x 517 x 8064 B = 266.8 MB, pinned
    by the issuing thread first. CPU attention's gather (path 1) copies the 516 cached tokens."""
    rig, model = opt30b
    step = Step("decode", 5, 1, 517)
    rec = Recorder()
    r = _Runner(FOURBIT, rig, model, Workload(512, 512, 32))
    _, relay = r.load_cache(rec, step, 1, 64)
    drain(relay)
    tok = kv_token_bytes(model, True)
    assert tok == pytest.approx(2 * 7168 * (0.5 + 4 / 64))  # 8064 B: nibbles plus a (scale, min) pair per 64
    assert rec.copies == [("load_cache", pytest.approx(64 * 517 * tok), True)]
    assert rec.ops[0][1][0].act_in_bytes == pytest.approx(64 * 517 * tok)  # pin_memory's host copy
    rec = Recorder()
    r = _Runner(CPU_ATT, rig, model, Workload(144, 512, 32))
    drain(r.load_cache(rec, step, 1, 48)[1])
    (_, (gather,)) = rec.ops[0]
    assert gather.flops == pytest.approx(48 * 516 * 2 * 7168)


def test_decompression_runs_over_all_loaded_slots(opt30b):
    """mha_gen decompresses the whole loaded buffer (kv_len slots): 13 B + 2 scale reads of 1/32 B per
    element over 64 x 517 x 14336 elements."""
    _, model = opt30b
    o = substep_ops(model, "attention", "decode", 64, 1, 517, False, 1.0, False, True)
    deq = [x for x in o.gpu_pre if x.name.startswith("dequant_kv")]
    assert len(deq) == 12
    elems = 64 * 517 * 2 * 7168
    assert sum(x.mem_bytes for x in deq) == pytest.approx(elems * (13.0 + 2 * GROUP_SCALE))


def test_compression_launches_the_thirteen_ops_of_compression_py():
    """compress(): min and max (values and int64 indices), mx - mn, B / (mx - mn) as reciprocal and
    multiply, data - mn, mul_, clamp_, round_, to(uint8), shift, or, cat: 13 kernels per tensor."""
    ops = _quant("compress_kv", 1e6, 2)
    assert len(ops) == 26
    per = 5e5
    mins = [o for o in ops if o.name.endswith("group_min")]
    assert mins[0].act_out_bytes == pytest.approx(per * (GROUP_SCALE + INDEX_BYTES))
    assert pytest.approx(8 / 64) == INDEX_BYTES
