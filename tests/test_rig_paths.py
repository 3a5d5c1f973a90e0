"""Routes without networkx (``hetsim.hardware.paths``): ``nx.shortest_path``'s paths, ties included."""

from __future__ import annotations

import subprocess
import sys
from itertools import pairwise

import networkx as nx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hetsim.api import load_rig
from hetsim.hardware.paths import NoPath, adjacency, shortest_path

NODES = [f"n{i}" for i in range(7)]
# few distinct weights, so that equal-length paths (ties) are common
EDGES = st.lists(
    st.tuples(st.sampled_from(NODES), st.sampled_from(NODES), st.sampled_from([0.5, 1.0, 1.5, 2.0, 3.0])),
    max_size=18,
)


def _nx_graph(edges: list[tuple[str, str, float, str]]) -> nx.Graph:
    """The graph ``Rig`` built for networkx before (a lighter parallel link replacing a heavier one)."""
    g = nx.Graph()
    for a, b, weight, name in edges:
        if g.has_edge(a, b) and g[a][b]["weight"] <= weight:
            continue
        g.add_edge(a, b, link=name, weight=weight)
    return g


@settings(max_examples=300, deadline=None)
@given(EDGES, st.sampled_from(NODES), st.sampled_from(NODES))
def test_the_same_path_as_networkx(raw, src, dst):
    edges = [(a, b, w, f"l{i}") for i, (a, b, w) in enumerate(raw)]
    g, adj = _nx_graph(edges), adjacency(edges)
    try:
        want = nx.shortest_path(g, src, dst, weight="weight")
    except (nx.NetworkXNoPath, nx.NodeNotFound):
        with pytest.raises(NoPath):
            shortest_path(adj, src, dst)
        return
    got = shortest_path(adj, src, dst)
    assert got == want
    # the same links along it, too
    assert [adj[u][v][1] for u, v in pairwise(got)] == [g[u][v]["link"] for u, v in pairwise(want)]


def test_a_tie_goes_as_networkx_breaks_it():
    # a -> d two ways of equal weight: networkx's bidirectional search meets through b
    edges = [("a", "b", 1.0, "ab"), ("a", "c", 1.0, "ac"), ("b", "d", 1.0, "bd"), ("c", "d", 1.0, "cd")]
    assert shortest_path(adjacency(edges), "a", "d") == nx.shortest_path(_nx_graph(edges), "a", "d", "weight")


@pytest.mark.parametrize("rig_name", ["mixed-lab", "hexgen-full-budget", "ktransformers-2s"])
def test_every_route_of_a_rig_matches_networkx(rig_name):
    rig = load_rig(rig_name)
    ends = [*rig.devices, *rig.disks]
    for src in ends:
        for dst in ends:
            if src == dst:
                continue
            path = nx.shortest_path(rig.graph, src, dst, weight="weight")
            want = [rig.graph[u][v]["link"] for u, v in pairwise(path)]
            assert [h.link for h in rig.route(src, dst).hops] == want


def test_routing_imports_no_networkx():
    """A search worker routes copies: it no longer pays networkx's import (~0.09 CPU s)."""
    code = (
        "import sys\n"
        "from hetsim.api import load_rig\n"
        "rig = load_rig('mixed-lab')\n"
        "ends = [*rig.devices, *rig.disks]\n"
        "n = sum(len(rig.route(a, b).hops) for a in ends for b in ends)\n"
        "print(n > 0, 'networkx' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["True", "False"]
