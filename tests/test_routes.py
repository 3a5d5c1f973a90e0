"""Routes are found without networkx, as networkx's ``shortest_path`` finds them (ties included)."""

from __future__ import annotations

import itertools

import networkx as nx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hetsim.hardware.loader import list_rigs, load_rig
from hetsim.hardware.rig import NoRouteError, _shortest_path


def _nx_path(g: nx.Graph, src: str, dst: str) -> list[str] | None:
    try:
        return nx.shortest_path(g, src, dst, weight="weight")
    except (nx.NetworkXNoPath, nx.NodeNotFound):
        return None


@pytest.mark.parametrize("name", list_rigs())
def test_every_shipped_rig_routes_every_pair_as_networkx_does(name):
    rig = load_rig(name)
    g = rig.graph
    endpoints = [*rig.devices, *rig.disks, "nowhere"]
    for src, dst in itertools.product(endpoints, repeat=2):
        want = _nx_path(g, src, dst)
        assert _shortest_path(rig._adjacency, src, dst) == want, (src, dst)
        if src == dst:  # the empty route, whatever the graph holds
            assert rig.route(src, dst).hops == ()
        elif want is None:
            with pytest.raises(NoRouteError):
                rig.route(src, dst)
        else:
            hops = rig.route(src, dst).hops
            assert [h.link for h in hops] == [g[u][v]["link"] for u, v in itertools.pairwise(want)]


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 6), st.integers(0, 6), st.sampled_from([1.0, 2.0, 3.0, 0.5])),
        max_size=18,
    ),
    st.integers(0, 6),
    st.integers(0, 6),
)
def test_ties_are_broken_as_networkx_breaks_them(edges, src, dst):
    """Small graphs with many equal-weight paths (and parallel edges: the lighter kept)."""
    g = nx.Graph()
    for i, (a, b, w) in enumerate(edges):
        u, v = f"n{a}", f"n{b}"
        if g.has_edge(u, v) and g[u][v]["weight"] <= w:
            continue
        g.add_edge(u, v, link=f"l{i}", weight=w)
    adj = {u: {v: (d["weight"], d["link"]) for v, d in nbrs.items()} for u, nbrs in g.adj.items()}
    assert _shortest_path(adj, f"n{src}", f"n{dst}") == _nx_path(g, f"n{src}", f"n{dst}")
