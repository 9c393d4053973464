"""The Hadamard paper's analyses as tools: attention-output statistics, fitting functions, layer and module
ablations, shared adapters. Each works on any supported encoder and classification task and writes its tables and
figures (Markdown, JSON, PNG) into a folder.

    from pelt import analysis
    analysis.analyze_attention_norms("runs/rte-full/adapter", "out/rte", data_dir="glue_data")   # Fig. 1
    analysis.analyze_fitting("runs/rte-full/adapter", "out/rte", data_dir="glue_data")           # Fig. 2
"""

from pelt.analysis.ablation import (
    MODULE_SETS,
    AblationRun,
    ablation_study,
    encoder_depth,
    hadamard_variant,
    layer_ablation,
    module_ablation,
    read_reference,
    run_ablation,
    write_layer_report,
    write_module_report,
)
from pelt.analysis.attention import analyze_attention_norms, analyze_fitting, model_with_fitted_maps
from pelt.analysis.capture import attention_norm_statistics, capture_sublayer_outputs, encoder_batches
from pelt.analysis.fitting import FIT_FUNCTIONS, fit_errors, fit_map
from pelt.analysis.reference import finetuned_reference, load_reference_pair
from pelt.analysis.shared import adapter_similarity, analyze_shared, train_shared_adapter, write_similarity_report

__all__ = [
    "FIT_FUNCTIONS", "MODULE_SETS", "AblationRun", "ablation_study", "adapter_similarity", "analyze_attention_norms",
    "analyze_fitting", "analyze_shared", "attention_norm_statistics", "capture_sublayer_outputs", "encoder_batches",
    "encoder_depth", "finetuned_reference", "fit_errors", "fit_map", "hadamard_variant", "layer_ablation",
    "load_reference_pair", "model_with_fitted_maps", "module_ablation", "read_reference", "run_ablation",
    "train_shared_adapter", "write_layer_report", "write_module_report", "write_similarity_report",
]
