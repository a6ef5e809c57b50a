"""MLflow experiment tracking and the model registry (the optional ``mlflow`` extra).

Observes stage results from outside: stages never import this package.
"""
