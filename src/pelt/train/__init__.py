from pelt.train.formulations import Formulation, formulation_for
from pelt.train.trainer import TrainConfig, evaluate_model, train_model

__all__ = ["Formulation", "TrainConfig", "evaluate_model", "formulation_for", "train_model"]
