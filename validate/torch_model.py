"""A real decoder (llama- or OPT-style) built in torch from a ``ModelSpec``, with random weights.

The architecture follows ``hetsim.models.layer_ops`` op for op (norm1, q/k/v, attention, out_proj,
residual, norm2, MLP, residual; final norm and LM head on the last token only), so the measured
time and the simulated time describe the same work. Weights can be tensor-parallel shards
(``rank`` of ``world``) exactly as ``hetsim.models.sharding.shard`` splits them: heads and the
MLP inner dimension split, q/k/v/gate/up/lm_head column-parallel, out_proj/down column-split on
their input (row-parallel) with the partial sums all-reduced, norms and the embedding replicated.
Greedy token choice per rank on its vocabulary slice, then an all-gather of (value, id) pairs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from hetsim.models.spec import ModelSpec

AllReduce = Callable[[torch.Tensor], None]
TopGather = Callable[[torch.Tensor], torch.Tensor]  # (b, 2) local (value, id) -> (world, b, 2)
# (layer, module name, x, weight, bias) -> x @ weight + bias; the LM head is layer ``spec.layers``
Linear = Callable[[int, str, torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]
Attend = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor, slice, int], torch.Tensor]

INIT_SCALE = 0.02  # small uniform weights keep activations finite without denormals
# Weights of at least this many elements repeat one random pool (``_tiled``): drawing 7B values from
# one CPU generator took over a minute per model (~10-45 ns each), longer than the runs it times.
TILE_FROM = 2**24
POOL = 2**24 + 1  # odd: rows of power-of-two widths start at shifted pool offsets


def _tiled(pool: torch.Tensor, shape: tuple[int, ...], start: int, device: torch.device) -> torch.Tensor:
    """A tensor of ``shape`` on ``device`` filled with ``pool`` repeated from offset ``start``."""
    out = torch.empty(shape, dtype=pool.dtype, device=device)
    flat, n, i = out.view(-1), out.numel(), 0
    while i < n:
        take = min(n - i, pool.numel() - start)
        flat[i : i + take].copy_(pool[start : start + take])
        i, start = i + take, 0
    return out


def _split(n: int, world: int, rank: int) -> tuple[int, int]:
    """[start, stop) of rank's share of n (the last ranks get the remainder one by one)."""
    base, extra = divmod(n, world)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


@dataclass
class LayerWeights:
    norm1: torch.Tensor
    norm1_b: torch.Tensor | None
    wq: torch.Tensor  # (hidden, heads_local * head_dim)
    wk: torch.Tensor
    wv: torch.Tensor
    bq: torch.Tensor | None
    bk: torch.Tensor | None
    bv: torch.Tensor | None
    wo: torch.Tensor  # (heads_local * head_dim, hidden)
    bo: torch.Tensor | None  # added once, after the all-reduce
    norm2: torch.Tensor
    norm2_b: torch.Tensor | None
    w1: torch.Tensor  # gate (gated) or fc1
    w3: torch.Tensor | None  # up (gated)
    b1: torch.Tensor | None
    w2: torch.Tensor  # down / fc2
    b2: torch.Tensor | None

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor], only: tuple[str, ...] = ()) -> LayerWeights:
        """A copy with ``fn`` applied to every tensor (or to the fields named in ``only``)."""
        return LayerWeights(**{
            k: fn(v) if v is not None and (not only or k in only) else v for k, v in vars(self).items()
        })  # fmt: skip


class TorchDecoder:
    """One rank's share of the model plus its KV cache; ``step`` runs one forward step."""

    def __init__(
        self,
        spec: ModelSpec,
        *,
        rank: int = 0,
        world: int = 1,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
        seed: int = 0,
        weight_device: str | torch.device | None = None,
    ):
        if spec.is_moe:
            raise ValueError("MoE models are not built by validate.torch_model")
        if spec.heads % world:
            raise ValueError(f"{spec.heads} heads do not split over {world} ranks")
        self.spec, self.rank, self.world = spec, rank, world
        self.dtype, self.device = dtype, torch.device(device)
        wdev = torch.device(weight_device) if weight_device is not None else self.device
        gen = torch.Generator(device="cpu").manual_seed(seed + 1000 * rank)
        hd, h = spec.head_dim, spec.hidden
        self.heads = spec.heads // world
        # KV heads split when they divide; otherwise every rank keeps all of them (shard()'s kv_share).
        self.kv_split = spec.kv_heads % world == 0
        self.kv_heads = spec.kv_heads // world if self.kv_split else spec.kv_heads
        i0, i1 = _split(spec.intermediate, world, rank)
        v0, v1 = _split(spec.vocab, world, rank)
        self.vocab_start = v0
        opt = spec.family == "opt"
        ln = spec.norm == "layernorm"

        pools: dict[torch.device, torch.Tensor] = {}

        def w(*shape: int) -> torch.Tensor:
            if torch.Size(shape).numel() >= TILE_FROM:
                if wdev not in pools:
                    pool = torch.empty(POOL, dtype=dtype).uniform_(-INIT_SCALE, INIT_SCALE, generator=gen)
                    pools[wdev] = pool.to(wdev)
                start = int(torch.randint(POOL, (1,), generator=gen))
                return _tiled(pools[wdev], shape, start, wdev)
            t = torch.empty(*shape, dtype=dtype)
            t.uniform_(-INIT_SCALE, INIT_SCALE, generator=gen)
            return t.to(wdev)

        def ones(n: int) -> torch.Tensor:
            return torch.ones(n, dtype=dtype, device=wdev)

        def maybe(flag: bool, n: int) -> torch.Tensor | None:
            return w(n) if flag else None

        self.embed = w(spec.vocab, h)
        self.pos = w(spec.learned_positions, h) if spec.learned_positions else None
        self.layers: list[LayerWeights] = []
        for _ in range(spec.layers):
            self.layers.append(
                LayerWeights(
                    norm1=ones(h),
                    norm1_b=maybe(ln, h),
                    wq=w(h, self.heads * hd),
                    wk=w(h, self.kv_heads * hd),
                    wv=w(h, self.kv_heads * hd),
                    bq=maybe(spec.qkv_bias, self.heads * hd),
                    bk=maybe(spec.qkv_bias, self.kv_heads * hd),
                    bv=maybe(spec.qkv_bias, self.kv_heads * hd),
                    wo=w(self.heads * hd, h),
                    bo=maybe(spec.linear_bias and rank == 0, h),
                    norm2=ones(h),
                    norm2_b=maybe(ln, h),
                    w1=w(h, i1 - i0),
                    w3=w(h, i1 - i0) if spec.gated_mlp else None,
                    b1=maybe(spec.linear_bias, i1 - i0),
                    w2=w(i1 - i0, h),
                    b2=maybe(spec.linear_bias and rank == 0, h),
                )
            )
        self.final_norm = ones(h)
        self.final_norm_b = maybe(ln, h)
        self.lm_head = (self.embed[v0:v1].t() if spec.tied_embeddings else w(h, v1 - v0)).to(wdev)
        self.opt = opt
        self.k_cache: torch.Tensor | None = None
        self.v_cache: torch.Tensor | None = None
        self.rope: tuple[torch.Tensor, torch.Tensor] | None = None

    # ---- helpers ------------------------------------------------------------------------------
    def shared_to(self, device: str | torch.device, *, lm_head: bool = True) -> None:
        """Move the tensors outside the layers (embedding, positions, final norm, LM head) to
        ``device``: what offloading runners keep on the GPU while layers live on the host."""
        names = ("embed", "pos", "final_norm", "final_norm_b") + (("lm_head",) if lm_head else ())
        for name in names:
            t = getattr(self, name)
            if t is not None:
                setattr(self, name, t.to(device))

    def weight_bytes(self) -> int:
        n = 0
        for lw in self.layers:
            n += sum(t.numel() * t.element_size() for t in vars(lw).values() if t is not None)
        return n

    def reset(self, batch: int, context: int) -> None:
        """Pre-allocate the KV cache for ``context`` tokens (what the simulator's footprint assumes)."""
        shape = (len(self.layers), batch, self.kv_heads, context, self.spec.head_dim)
        self.k_cache = torch.zeros(shape, dtype=self.dtype, device=self.device)
        self.v_cache = torch.zeros(shape, dtype=self.dtype, device=self.device)
        if not self.opt:
            hd = self.spec.head_dim
            inv = 1.0 / (10000.0 ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd))
            ang = torch.outer(torch.arange(context, dtype=torch.float32), inv)
            emb = torch.cat([ang, ang], dim=-1)
            self.rope = (emb.cos().to(self.device, self.dtype), emb.sin().to(self.device, self.dtype))

    def _norm(self, x: torch.Tensor, g: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        if self.spec.norm == "layernorm":
            return F.layer_norm(x, (x.shape[-1],), g, b)
        return F.rms_norm(x, (x.shape[-1],), g, 1e-6)

    def _rotate(self, x: torch.Tensor, start: int) -> torch.Tensor:
        assert self.rope is not None
        cos, sin = self.rope
        s = x.shape[2]
        c, si = cos[start : start + s], sin[start : start + s]
        half = x.shape[-1] // 2
        rot = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
        return x * c + rot * si

    @staticmethod
    def _linear(x: torch.Tensor, wt: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        return torch.addmm(b, x, wt) if b is not None else x @ wt

    # ---- one forward step, in pieces that offloading runners can re-order -------------------------
    def embed_tokens(self, ids: torch.Tensor, start: int) -> torch.Tensor:
        """(batch, seq) token ids at positions ``start..`` -> (batch * seq, hidden) on the device."""
        b, s = ids.shape
        x = self.embed[ids].to(self.device)
        if self.pos is not None:  # OPT's learned positions are offset by 2 rows
            x = x + self.pos[2 + start : 2 + start + s].to(self.device)
        return x.reshape(b * s, self.spec.hidden)

    def layer(
        self,
        i: int,
        lw: LayerWeights,
        x: torch.Tensor,
        b: int,
        start: int,
        *,
        rows: slice = slice(None),
        allreduce: AllReduce | None = None,
        linear: Linear | None = None,
        attend: Attend | None = None,
    ) -> torch.Tensor:
        """Decoder layer ``i`` on ``x`` ((b * seq, hidden)) for the sequences ``rows`` of the KV cache.

        ``linear(i, name, x, weight, bias)`` replaces the plain matmul of each linear module (HeteGen
        splits them); ``attend(i, q, k, v, rows, start)`` replaces attention over the KV cache.
        """
        assert self.k_cache is not None and self.v_cache is not None, "call reset() first"
        hd = self.spec.head_dim
        s = x.shape[0] // b

        def lin(name: str, t: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
            return linear(i, name, t, w, bias) if linear is not None else self._linear(t, w, bias)

        h = self._norm(x, lw.norm1, lw.norm1_b)
        q = lin("q_proj", h, lw.wq, lw.bq).view(b, s, self.heads, hd).transpose(1, 2)
        k = lin("k_proj", h, lw.wk, lw.bk).view(b, s, self.kv_heads, hd).transpose(1, 2)
        v = lin("v_proj", h, lw.wv, lw.bv).view(b, s, self.kv_heads, hd).transpose(1, 2)
        if not self.opt:
            q, k = self._rotate(q, start), self._rotate(k, start)
        att = (attend or self.attend)(i, q, k, v, rows, start)
        o = lin("out_proj", att.transpose(1, 2).reshape(b * s, self.heads * hd), lw.wo, None)
        if allreduce is not None:
            allreduce(o)
        if lw.bo is not None:
            o = o + lw.bo
        x = x + o
        h = self._norm(x, lw.norm2, lw.norm2_b)
        if lw.w3 is not None:
            a = F.silu(lin("gate_proj", h, lw.w1, None)) * lin("up_proj", h, lw.w3, None)
            d = lin("down_proj", a, lw.w2, None)
        else:
            d = lin("fc2", F.relu(lin("fc1", h, lw.w1, lw.b1)), lw.w2, None)
        if allreduce is not None:
            allreduce(d)
        if lw.b2 is not None:
            d = d + lw.b2
        return x + d

    def attend(
        self, i: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rows: slice, start: int
    ) -> torch.Tensor:
        """Append k and v to layer ``i``'s cache (sequences ``rows``) and attend over the cache."""
        assert self.k_cache is not None and self.v_cache is not None
        end = start + q.shape[2]
        self.k_cache[i, rows, :, start:end] = k.to(self.k_cache.device)
        self.v_cache[i, rows, :, start:end] = v.to(self.v_cache.device)
        keys = self.k_cache[i, rows, :, :end].to(q.device)
        vals = self.v_cache[i, rows, :, :end].to(q.device)
        causal = q.shape[2] > 1 and start == 0
        return F.scaled_dot_product_attention(
            q, keys, vals, is_causal=causal, enable_gqa=self.kv_heads != self.heads
        )

    def next_token(
        self,
        x: torch.Tensor,
        b: int,
        gather: TopGather | None = None,
        linear: Linear | None = None,
    ) -> torch.Tensor:
        """Final norm and LM head on each sequence's last position, then the greedy token."""
        last = x.view(b, -1, self.spec.hidden)[:, -1]
        normed = self._norm(last, self.final_norm, self.final_norm_b)
        head = self.spec.layers
        logits = linear(head, "lm_head", normed, self.lm_head, None) if linear else normed @ self.lm_head
        val, idx = logits.float().max(dim=-1)
        if gather is None:
            return idx + self.vocab_start
        pairs = torch.stack([val, (idx + self.vocab_start).float()], dim=-1).cpu()  # (b, 2)
        every = gather(pairs)  # (world, b, 2)
        best = every[..., 0].argmax(dim=0)
        return every[best, torch.arange(b), 1].long()

    def step(
        self,
        ids: torch.Tensor,
        start: int,
        allreduce: AllReduce | None = None,
        gather: TopGather | None = None,
        fetch: Callable[[int], LayerWeights] | None = None,
        linear: Linear | None = None,
    ) -> torch.Tensor:
        """Tokens ``ids`` (batch, seq) at positions ``start..``; returns the next token per sequence.

        ``fetch(i)`` supplies layer i's weights when they live elsewhere (offloading runners);
        ``linear`` replaces the linear modules' matmuls (see ``layer``).
        """
        b = ids.shape[0]
        x = self.embed_tokens(ids, start)
        for i, own in enumerate(self.layers):
            lw = fetch(i) if fetch is not None else own
            x = self.layer(i, lw, x, b, start, allreduce=allreduce, linear=linear)
        return self.next_token(x, b, gather, linear)
