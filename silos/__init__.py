"""One silo: its encoder, data, fitted map or private head, and the Flower ClientApp that serves them."""
