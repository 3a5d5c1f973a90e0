"""Rendering results for people and programs: rich tables, JSON documents, CSV."""

from hetsim.report.tables import (
    compare_document,
    fmt_bw,
    fmt_flops,
    fmt_money,
    fmt_peak,
    fmt_rate,
    model_dict,
    model_table,
    models_table,
    plan_summary_table,
    results_table,
    rig_tables,
    rigs_table,
)

__all__ = [
    "compare_document",
    "fmt_bw",
    "fmt_flops",
    "fmt_money",
    "fmt_peak",
    "fmt_rate",
    "model_dict",
    "model_table",
    "models_table",
    "plan_summary_table",
    "results_table",
    "rig_tables",
    "rigs_table",
]
