"""The modelling layer: preprocessing, the model zoo, fitting, bundles, and the forecasting
core (rolling forecasts, metrics, Diebold-Mariano, the trading backtest) that every stage uses.

Imports from the data layer and below; never from stages, mlops or the CLI.
"""
