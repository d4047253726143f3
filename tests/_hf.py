"""Small Hugging Face models built from a config, with tokenizers trained on the embedded
corpus by the `tokenizers` library, saved to a folder as save_pretrained writes it."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SPECIAL = {"bert": ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"),
           "roberta": ("<pad>", "<unk>", "<s>", "</s>", "<mask>")}


def _texts(n: int = 3000) -> list[str]:
    from storage import load_embedded

    return [r["text"] for r in load_embedded(n, seed=11).records]


def _wordpiece():
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    pad, unk, cls, sep, mask = SPECIAL["bert"]
    tok = Tokenizer(models.WordPiece(unk_token=unk))
    tok.normalizer = normalizers.BertNormalizer(lowercase=False)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(_texts(), trainers.WordPieceTrainer(vocab_size=600,
                                                                special_tokens=list(SPECIAL["bert"])))
    tok.post_processor = processors.TemplateProcessing(
        single=f"{cls} $A {sep}", special_tokens=[(cls, tok.token_to_id(cls)),
                                                  (sep, tok.token_to_id(sep))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token=unk, pad_token=pad,
                                   cls_token=cls, sep_token=sep, mask_token=mask)


def _bpe():
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    pad, unk, cls, sep, mask = SPECIAL["roberta"]
    tok = Tokenizer(models.BPE(unk_token=unk))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator(_texts(), trainers.BpeTrainer(vocab_size=600,
                                                          special_tokens=list(SPECIAL["roberta"]),
                                                          initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.post_processor = processors.TemplateProcessing(
        single=f"{cls} $A {sep}", special_tokens=[(cls, tok.token_to_id(cls)),
                                                  (sep, tok.token_to_id(sep))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token=unk, pad_token=pad,
                                   bos_token=cls, eos_token=sep, cls_token=cls, sep_token=sep,
                                   mask_token=mask)


def build_model_folder(kind: str, folder: Path) -> Path:
    """A tiny ``kind`` model (bert, roberta or distilbert) and its tokenizer in ``folder``."""
    import torch
    import transformers as tf

    torch.manual_seed(0)
    tokenizer = _bpe() if kind == "roberta" else _wordpiece()
    size = {"vocab_size": len(tokenizer), "pad_token_id": tokenizer.pad_token_id}
    if kind == "bert":
        model = tf.BertForSequenceClassification(tf.BertConfig(
            hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64,
            max_position_embeddings=80, **size))
    elif kind == "roberta":
        model = tf.RobertaForSequenceClassification(tf.RobertaConfig(
            hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64,
            max_position_embeddings=80, bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id, **size))
    else:
        model = tf.DistilBertForSequenceClassification(tf.DistilBertConfig(
            dim=32, n_layers=3, n_heads=2, hidden_dim=64, max_position_embeddings=80, **size))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
