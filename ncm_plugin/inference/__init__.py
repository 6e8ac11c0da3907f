"""Applying a trained model to new data: sphere layout, votes, reading inputs and writing predictions."""
