"""The coordinator: a Flower ServerApp whose strategy drives discover → prepare → align → serve."""
