"""hetsim: a discrete-event simulator and planner for LLM inference on heterogeneous hardware."""

__version__ = "0.1.0"
