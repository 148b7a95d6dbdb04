"""Models built from attnkit mechanisms: a decoder-only LM, an encoder and the Block Transformer.

    from attnkit.models import ModelConfig, DecoderLM
    cfg = ModelConfig(schedule="LLLF", mixers={"L": "nha", "F": "softmax"})
    lm = DecoderLM(cfg)
    lm.generate(prompt, 20)
"""
from .block_transformer import BlockTransformerLM
from .config import ModelConfig
from .encoder import Encoder
from .hymba import hymba_config
from .lm import DecoderLM
from .mixers import ParallelHeads
from .schedules import rope_nope_layers, swan_layers

__all__ = ["BlockTransformerLM", "ModelConfig", "DecoderLM", "Encoder", "ParallelHeads", "hymba_config", "rope_nope_layers", "swan_layers"]
