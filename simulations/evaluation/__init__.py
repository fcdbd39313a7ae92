"""The paper's evaluation, one experiment per module; ``python -m simulations.evaluate`` runs them."""
