"""Model shapes (registry, Hugging Face config.json) and the ops of one forward step."""

from hetsim.models.hf_config import load_hf_config
from hetsim.models.layer_ops import decoder_layer_ops, embedding_op, lm_head_ops, step_ops
from hetsim.models.registry import get_model, list_models
from hetsim.models.spec import (
    BF16,
    DTYPES,
    FP16,
    FP32,
    INT4,
    INT8,
    DType,
    ModelSpec,
    Op,
    OpKind,
    WeightTensor,
)
from hetsim.models.weights import (
    active_param_count,
    embedding_bytes,
    kv_bytes_per_token,
    layer_weight_bytes,
    layer_weight_tensors,
    lm_head_bytes,
    module_weight_bytes,
    param_count,
    weight_bytes,
)

__all__ = [
    "BF16",
    "DTYPES",
    "FP16",
    "FP32",
    "INT4",
    "INT8",
    "DType",
    "ModelSpec",
    "Op",
    "OpKind",
    "WeightTensor",
    "active_param_count",
    "decoder_layer_ops",
    "embedding_bytes",
    "embedding_op",
    "get_model",
    "kv_bytes_per_token",
    "layer_weight_bytes",
    "layer_weight_tensors",
    "list_models",
    "lm_head_bytes",
    "lm_head_ops",
    "load_hf_config",
    "module_weight_bytes",
    "param_count",
    "step_ops",
    "weight_bytes",
]
