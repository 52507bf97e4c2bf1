"""The seed's training strategies, run side by side: ``python -m fusedopt demo``.

The seed's model (a hidden layer of 128 ReLU units, 10 outputs, cross-entropy) learns
scikit-learn's handwritten digits. Every strategy starts from the same weights; the forward
and backward passes are NumPy (or torch autograd with ``framework="torch"``) and every
update goes through fusedopt's kernels. Needs ``pip install "fusedopt[demo]"``
(scikit-learn for the data, matplotlib for the plots).
"""

from fusedopt.demo.strategies import STRATEGIES, Strategy
from fusedopt.demo.train import DemoResult, StrategyResult, run

__all__ = ["STRATEGIES", "DemoResult", "Strategy", "StrategyResult", "run"]
