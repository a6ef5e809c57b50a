"""kallos_models: tune, train and evaluate Darts deep forecasters on crypto market data."""

from __future__ import annotations

__version__ = "0.1.0"
