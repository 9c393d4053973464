from pelt.train.trainer import TrainConfig, evaluate_classifier, tokenize, train_classifier

__all__ = ["TrainConfig", "evaluate_classifier", "tokenize", "train_classifier"]
