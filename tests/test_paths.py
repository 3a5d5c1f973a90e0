"""``hetsim.hardware.paths``: networkx's bidirectional Dijkstra without networkx, the same paths (ties
included) on random graphs and on every shipped rig."""

from __future__ import annotations

import itertools

import networkx as nx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hetsim.hardware import NoRouteError, list_rigs, load_rig
from hetsim.hardware.paths import Adjacency, add_edge, fastest_path

NODES = [f"n{i}" for i in range(7)]
# few distinct weights: equal-length paths (ties) are common, where a port that breaks ties
# differently from networkx would pick another path
edges = st.lists(
    st.tuples(st.sampled_from(NODES), st.sampled_from(NODES), st.sampled_from([0.5, 1.0, 1.0, 2.0, 3.0])),
    max_size=16,
)


def _both(links: list[tuple[str, str, float]]) -> tuple[Adjacency, nx.Graph]:
    """The two graphs built as ``Rig`` builds them: a pair's edge replaced only by a faster link."""
    adj: Adjacency = {}
    g = nx.Graph()
    for k, (a, b, w) in enumerate(links):
        if not (g.has_edge(a, b) and g[a][b]["weight"] <= w):
            g.add_edge(a, b, link=f"l{k}", weight=w)
        if not (b in adj.get(a, ()) and adj[a][b][1] <= w):
            add_edge(adj, a, b, f"l{k}", w)
    return adj, g


@settings(max_examples=300, deadline=None)
@given(edges, st.sampled_from(NODES), st.sampled_from(NODES))
def test_the_same_path_as_networkx(links, src, dst):
    adj, g = _both(links)
    try:
        want = nx.shortest_path(g, src, dst, weight="weight")
    except (nx.NetworkXNoPath, nx.NodeNotFound):
        want = None
    got = fastest_path(adj, src, dst)
    assert got == want
    if got is not None:  # the same links along it
        assert [adj[u][v][0] for u, v in itertools.pairwise(got)] == [
            g[u][v]["link"] for u, v in itertools.pairwise(want)
        ]


@pytest.mark.parametrize("name", list_rigs())
def test_every_rig_routes_as_networkx_would(name):
    rig = load_rig(name)
    g = rig.graph
    nodes = sorted(g.nodes)
    ends = nodes[:: max(1, len(nodes) // 20)]  # ~20 endpoints spread over the rig
    for src, dst in itertools.permutations(ends, 2):
        try:
            path = nx.shortest_path(g, src, dst, weight="weight")
        except nx.NetworkXNoPath:
            with pytest.raises(NoRouteError):
                rig.route(src, dst)
            continue
        want = [g[u][v]["link"] for u, v in itertools.pairwise(path)]
        assert [h.link for h in rig.route(src, dst).hops] == want
