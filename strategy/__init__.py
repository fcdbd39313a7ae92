"""The coordinator: a Flower ServerApp whose AlignmentCoordinator drives discover → pair → prepare →
align → serve."""
