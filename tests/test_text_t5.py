"""Text encoders beyond MiniLM and precomputed text: a tiny randomly initialised T5 (built from a
config here, no weights needed) through `text.encoder=t5`, and captions encoded once by
`hpdm prepare` into the clip cache, read back by training instead of running the encoder."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch

from hpdm.config import ConfigError, load_config

pytestmark = pytest.mark.usefixtures("single_thread")

WORDS = ["<pad>", "</s>", "<unk>", "a", "yellow", "red", "star", "circle", "moves", "down", "up", "video"]


@pytest.fixture(scope="module")
def t5_folder(tmp_path_factory):
    """A 2-layer, 16-wide T5 encoder with a word-level tokenizer, saved as `save_pretrained` does."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast, T5Config, T5EncoderModel

    folder = tmp_path_factory.mktemp("t5")
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    )
    fast.save_pretrained(folder)
    torch.manual_seed(0)
    cfg = T5Config(vocab_size=len(WORDS), d_model=16, d_kv=4, d_ff=32, num_layers=2, num_heads=4)
    T5EncoderModel(cfg).save_pretrained(folder)
    return folder


def test_t5_encoder_gives_the_models_states_zero_padded(t5_folder):
    from transformers import T5EncoderModel

    from hpdm.text import T5TextEncoder, encode_prompts

    enc = T5TextEncoder.load(t5_folder)
    assert enc.width == 16 and not any(p.requires_grad for p in enc.parameters())
    prompts = ["a yellow star moves down", "red circle"]
    x = encode_prompts(prompts, max_length=8, encoder="t5", path=str(t5_folder))
    assert x.shape == (2, 8, 16)
    ref = T5EncoderModel.from_pretrained(str(t5_folder)).eval()
    with torch.no_grad():
        direct = ref(input_ids=torch.tensor([[3, 4, 6, 8, 9, 1]])).last_hidden_state[0]
    torch.testing.assert_close(x[0, :6], direct)  # 5 words and </s>
    assert x[0, 6:].abs().max() == 0 and x[1, 3:].abs().max() == 0 and x[1, :3].abs().min() > 0
    assert encode_prompts(["a " * 20], max_length=4, encoder="t5", path=str(t5_folder)).shape == (1, 4, 16)


def test_text_config_selects_the_encoder_and_checks_its_width(t5_folder):
    from hpdm.text import TextEncoderError, encode_text

    cfg = load_config(
        "tiny", ["model.text_dim=16", "text.encoder=t5", f"text.path={t5_folder}", "text.max_length=6"]
    )
    assert encode_text(cfg, ["a red star"]).shape == (1, 6, 16)
    cfg.model.text_dim = 384
    with pytest.raises(TextEncoderError, match="set model.text_dim=16"):
        encode_text(cfg, ["a red star"])
    with pytest.raises(ConfigError, match="needs text.path"):
        load_config("tiny", ["model.text_dim=16", "text.encoder=t5"])
    with pytest.raises(ConfigError, match="text.encoder"):
        load_config("tiny", ["text.encoder=clip"])
    with pytest.raises(TextEncoderError, match="save_pretrained"):
        encode_text(
            load_config("tiny", ["model.text_dim=16", "text.encoder=t5", "text.path=/nowhere"]), ["a"]
        )


def test_t5_without_transformers_says_how_to_install(monkeypatch, t5_folder):
    from hpdm.text import T5TextEncoder, TextEncoderError

    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(TextEncoderError, match=r'pip install "hpdm\[t5\]"'):
        T5TextEncoder.load(t5_folder)


def _captioned_cache(tmp_path, captions):
    from hpdm.data.cache import prepare_cache

    class Captioned(torch.utils.data.Dataset):
        def __len__(self):
            return len(captions)

        def __getitem__(self, i):
            video = torch.full((3, 4, 32, 32), i / len(captions) * 2 - 1)
            return {"video": video, "label": -1, "caption": captions[i], "index": i}

    return prepare_cache(Captioned(), tmp_path / "cache", progress=False)


def test_prepare_encodes_each_caption_once_and_training_reads_it(tmp_path, t5_folder, monkeypatch):
    from hpdm.data import build_dataset
    from hpdm.data.cache import TEXT_FILE, prepare_text
    from hpdm.text import encode_text
    from hpdm.train import Trainer

    captions = ["a red star moves up", "a yellow circle", "a red star moves up", ""] * 2
    cache = _captioned_cache(tmp_path, captions)
    over = ["model.text_dim=16", "model.num_classes=0", "text.encoder=t5", f"text.path={t5_folder}"]
    cfg = load_config("tiny", [*over, "data.dataset=cache", f"data.path={cache}", "text.max_length=8"])
    prepare_text(cache, cfg, progress=False)
    meta = json.loads((cache / TEXT_FILE).read_text())
    assert meta["captions"] == [
        "a red star moves up",
        "a video",
        "a yellow circle",
    ]  # distinct, "" reads "a video"
    assert meta["lengths"] == [6, 3, 4] and meta["clip_caption"] == [0, 2, 0, 1] * 2
    ds = build_dataset(cfg)
    batch = ds.get_batch([0, 1, 3])
    want = encode_text(cfg, ["a red star moves up", "a yellow circle", "a video"])
    torch.testing.assert_close(batch["text"], want, atol=2e-3, rtol=2e-3)  # stored as float16
    assert batch["text"][0, 6:].abs().max() == 0 and torch.equal(ds[1]["text"], batch["text"][1])

    # training takes the cached tokens: the encoder is never called
    def no_encoder(*a, **k):
        raise AssertionError("training ran the text encoder")

    monkeypatch.setattr("hpdm.text.encode_text", no_encoder)
    Trainer(load_config("tiny", [*over, "data.dataset=cache", f"data.path={cache}", "text.max_length=8",
                                 "train.steps=1", f"train.out_dir={tmp_path / 'run'}"]), progress=False).train()  # fmt: skip

    # another encoder setting: the cache's tokens are not used, and training says so
    with pytest.warns(UserWarning, match="encoded during training instead"):
        other = build_dataset(load_config("tiny", [*over, "data.dataset=cache", f"data.path={cache}"]))
    assert "text" not in other.get_batch([0])


def test_prepare_with_minilm(tmp_path):
    """The default encoder through `hpdm prepare` from the command line."""
    from hpdm.cli import main
    from hpdm.data.cache import TEXT_FILE, CachedDataset
    from hpdm.text import encode_prompts

    out = tmp_path / "cache"
    args = [
        "prepare",
        "tiny",
        "--out",
        str(out),
        "data.num_samples=3",
        "model.text_dim=384",
        "model.num_classes=0",
    ]
    assert main(args) == 0
    cfg = load_config("tiny", ["model.text_dim=384"])
    ds = CachedDataset(out, text=cfg.text)
    assert (out / TEXT_FILE).exists() and ds.get_batch([0, 1, 2])["text"].shape == (3, 32, 384)
    np.testing.assert_allclose(
        ds[2]["text"].numpy(), encode_prompts([ds.captions[2]])[0].numpy(), atol=2e-3, rtol=2e-3
    )
