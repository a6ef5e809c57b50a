"""The seed's ``kallos_models.architectures`` names.

The model zoo lives in :mod:`kallos_models.modelling.zoo`.
"""

from kallos_models.modelling.zoo import create_model, get_spec, list_models, model_names

__all__ = ["create_model", "get_spec", "list_models", "model_names"]
