"""Experiment sweeps: a YAML grid of (model, rig, strategy, workload, knobs) points, run on a local
process pool or a Dask cluster, stored as Parquet keyed by each point's hash, and plotted.
Entry points: ``hetsim.sweep.api.run_sweep`` and the ``hetsim sweep`` command (``hetsim.sweep.cli``).
"""
