"""What the coverings of the backbones batched by their stock batcher
(crops.py, scenes.py) share: the model's votes, the batcher, and a
weightless model when a DataLoader worker gets them (engine.py)."""
from ..training.batcher import NCMStockBatcher
from ..training.samplers import data_model
from .votes import vote_transform


class StockBatchedCovering:
    """Base of a covering whose batches the model's stock batcher collates
    (without NCM lists)."""

    def __init__(self, model, data, votes, seed):
        self.model, self.data, self.votes, self.seed = model, data, votes, seed
        self.transforms = {vote: vote_transform(model.cfg, vote, seed)
                           for vote in votes}
        self.batcher = NCMStockBatcher(model, ncm=False)

    def __getstate__(self):
        bare = data_model(self.model)
        return {**self.__dict__, 'model': bare,
                'batcher': NCMStockBatcher(bare, ncm=False)}
