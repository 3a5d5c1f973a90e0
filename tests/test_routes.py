"""Rig routes without networkx: the same paths networkx's Dijkstra picks, ties included."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hetsim.hardware.loader import list_rigs, load_rig
from hetsim.hardware.rig import shortest_path

nx = pytest.importorskip("networkx")

NODES = [f"v{i}" for i in range(7)]
# small integer weights: many equal-length paths, so tie-breaking is exercised
edges = st.lists(
    st.tuples(st.sampled_from(NODES), st.sampled_from(NODES), st.integers(1, 3)).filter(
        lambda e: e[0] != e[1]
    ),
    max_size=16,
)


def _both(edge_list: list[tuple[str, str, int]]) -> tuple[dict, object]:
    """``Rig.adjacency``'s map and the networkx graph hetsim built before, from one link list."""
    adj: dict[str, dict[str, tuple[float, str]]] = {}
    g = nx.Graph()
    for i, (a, b, w) in enumerate(edge_list):
        old = adj.get(a, {}).get(b)
        if old is None or old[0] > w:
            adj.setdefault(a, {})[b] = (float(w), f"l{i}")
            adj.setdefault(b, {})[a] = (float(w), f"l{i}")
        if not (g.has_edge(a, b) and g[a][b]["weight"] <= w):
            g.add_edge(a, b, link=f"l{i}", weight=float(w))
    return adj, g


@settings(max_examples=300, deadline=None)
@given(edges, st.sampled_from(NODES), st.sampled_from(NODES))
def test_shortest_path_is_networkx_path(edge_list, src, dst):
    adj, g = _both(edge_list)
    try:
        expected = nx.shortest_path(g, src, dst, weight="weight")
    except (nx.NetworkXNoPath, nx.NodeNotFound):
        expected = None
    assert shortest_path(adj, src, dst) == expected


@pytest.mark.parametrize("name", list_rigs())
def test_every_shipped_rig_routes_as_networkx_did(name):
    rig = load_rig(name)
    g = nx.Graph()
    for link in rig.links.values():
        weight = link.latency_s + 1e6 / link.bw
        if not (g.has_edge(link.a, link.b) and g[link.a][link.b]["weight"] <= weight):
            g.add_edge(link.a, link.b, link=link.name, weight=weight)
    ends = sorted(rig.adjacency)[:40]
    for src in ends:
        for dst in ends:
            if src == dst:
                continue
            try:
                path = nx.shortest_path(g, src, dst, weight="weight")
            except nx.NetworkXNoPath:
                path = None
            assert shortest_path(rig.adjacency, src, dst) == path
