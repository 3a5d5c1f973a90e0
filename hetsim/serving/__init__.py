"""Online serving: a request stream dispatched over replicas, continuous batching, SLO metrics."""
