"""TFDS builders that turn the shipped files into real TFDS datasets, offline.

Each builder only reads files under `t5jax/assets/`; `prepare.py` runs it once per data dir.
Bump a builder's VERSION whenever what it generates changes, so stale caches are not reused.
"""

import csv
import json
from typing import Iterator

import numpy as np
import tensorflow_datasets as tfds

from t5jax.data import assets

_TEXT = tfds.features.Text()


class _ShippedBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Shared plumbing: features and split names are class constants."""

  VERSION = tfds.core.Version("1.0.0")
  FEATURES: dict = {}
  SPLITS: tuple[str, ...] = ("train", "validation")
  DESCRIPTION = ""

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=self.DESCRIPTION,
        features=tfds.features.FeaturesDict(self.FEATURES))

  def _split_generators(self, dl_manager):
    del dl_manager  # Everything is read from the shipped assets.
    return {split: self._generate_examples(split) for split in self.SPLITS}

  def _generate_examples(self, split: str) -> Iterator[tuple[str, dict]]:
    raise NotImplementedError


def _read_lines(relative: str) -> list[str]:
  with assets.open_text(relative) as f:
    return [line.rstrip("\r\n") for line in f]


def _read_tsv(relative: str) -> list[list[str]]:
  # QUOTE_NONE: GLUE sentences contain bare quote characters that are part of the text.
  with assets.open_text(relative) as f:
    return list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))


def _read_jsonl(relative: str) -> list[dict]:
  with assets.open_text(relative) as f:
    return [json.loads(line) for line in f if line.strip()]


class T5jaxMulti30k(_ShippedBuilder):
  """Multi30k task 1: aligned English, German and French image captions."""

  DESCRIPTION = "Multi30k task 1 (raw), en/de/fr; validation = val, test = test_2016_flickr."
  FEATURES = {"en": _TEXT, "de": _TEXT, "fr": _TEXT}
  SPLITS = ("train", "validation", "test")
  _FILES = {"train": "train", "validation": "val", "test": "test_2016_flickr"}

  def _generate_examples(self, split):
    stem = self._FILES[split]
    columns = {lang: _read_lines(f"multi30k/{stem}.{lang}.gz") for lang in ("en", "de", "fr")}
    sizes = {lang: len(lines) for lang, lines in columns.items()}
    if len(set(sizes.values())) != 1:
      raise ValueError(f"multi30k/{stem}.*.gz are not aligned: line counts {sizes}")
    for i, (en, de, fr) in enumerate(zip(columns["en"], columns["de"], columns["fr"])):
      yield f"{stem}:{i}", {"en": en, "de": de, "fr": fr}


class T5jaxGlueCola(_ShippedBuilder):
  """GLUE CoLA; validation is in-domain + out-of-domain dev (= GLUE dev, 1,043 rows)."""

  DESCRIPTION = "CoLA official release; label 1 = acceptable."
  FEATURES = {
      "sentence": _TEXT,
      "label": tfds.features.ClassLabel(names=["unacceptable", "acceptable"]),
      "idx": tfds.features.Scalar(np.int32),
  }
  _FILES = {
      "train": ["in_domain_train.tsv.gz"],
      "validation": ["in_domain_dev.tsv.gz", "out_of_domain_dev.tsv.gz"],
  }

  def _generate_examples(self, split):
    idx = 0
    for name in self._FILES[split]:
      for row in _read_tsv(f"glue/cola/{name}"):
        _, label, _, sentence = row  # No header: source, label, original mark, sentence.
        yield f"{name}:{idx}", {"sentence": sentence, "label": int(label), "idx": idx}
        idx += 1


class T5jaxGlueSst2(_ShippedBuilder):
  """GLUE SST-2; train = train.tsv + dev.tsv (= GLUE train), validation = test.tsv (= GLUE dev)."""

  DESCRIPTION = "SST-2 in GLUE format; label 1 = positive."
  FEATURES = {
      "sentence": _TEXT,
      "label": tfds.features.ClassLabel(names=["negative", "positive"]),
      "idx": tfds.features.Scalar(np.int32),
  }
  _FILES = {"train": ["train.tsv.gz", "dev.tsv.gz"], "validation": ["test.tsv.gz"]}

  def _generate_examples(self, split):
    idx = 0
    for name in self._FILES[split]:
      for sentence, label in _read_tsv(f"glue/sst2/{name}")[1:]:  # Skip the header.
        yield f"{name}:{idx}", {"sentence": sentence, "label": int(label), "idx": idx}
        idx += 1


class T5jaxGlueRte(_ShippedBuilder):
  """GLUE RTE; train = train.tsv + val.tsv (= GLUE train), validation = dev.tsv (= GLUE dev)."""

  DESCRIPTION = "RTE as redistributed by GLUE."
  FEATURES = {
      "sentence1": _TEXT,
      "sentence2": _TEXT,
      "label": tfds.features.ClassLabel(names=["entailment", "not_entailment"]),
      "idx": tfds.features.Scalar(np.int32),
  }
  _FILES = {"train": ["train.tsv.gz", "val.tsv.gz"], "validation": ["dev.tsv.gz"]}

  def _generate_examples(self, split):
    for name in self._FILES[split]:
      for row in _read_tsv(f"glue/rte/{name}"):
        if row[0] == "index":  # train.tsv and dev.tsv have a header, val.tsv does not.
          continue
        idx, sentence1, sentence2, label = row
        yield f"{name}:{idx}", {
            "sentence1": sentence1, "sentence2": sentence2, "label": label, "idx": int(idx)}


class T5jaxScitldr(_ShippedBuilder):
  """SciTLDR-A: abstract -> TLDRs (one in train, several in validation/test)."""

  DESCRIPTION = "SciTLDR-A; source is the abstract's sentences joined by spaces."
  FEATURES = {
      "source": _TEXT,
      "target": tfds.features.Sequence(_TEXT),
      "paper_id": _TEXT,
      "title": _TEXT,
  }
  SPLITS = ("train", "validation", "test")
  _FILES = {"train": "train", "validation": "dev", "test": "test"}

  def _generate_examples(self, split):
    for i, row in enumerate(_read_jsonl(f"scitldr/{self._FILES[split]}.jsonl.gz")):
      yield f"{split}:{i}", {
          "source": " ".join(row["source"]),
          "target": row["target"],
          "paper_id": row["paper_id"],
          "title": row.get("title") or "",
      }


def _dialogsum_rows(split: str) -> list[dict]:
  # The DialogSum train file is not shipped: its dev set is our train, its test set our validation.
  name = {"train": "dev", "validation": "test"}[split]
  return _read_jsonl(f"dialogsum/dialogsum.{name}.jsonl.gz")


class T5jaxDialogsum(_ShippedBuilder):
  """DialogSum; train = the dev file (1 summary each), validation = the test file (3 summaries)."""

  DESCRIPTION = "DialogSum dev (as train) and test (as validation)."
  FEATURES = {
      "fname": _TEXT,
      "dialogue": _TEXT,
      "summaries": tfds.features.Sequence(_TEXT),
      "topic": _TEXT,
  }

  def _generate_examples(self, split):
    for row in _dialogsum_rows(split):
      summaries = [row[k] for k in ("summary", "summary1", "summary2", "summary3") if k in row]
      topic = row.get("topic") or row.get("topic1") or ""
      yield row["fname"], {
          "fname": row["fname"], "dialogue": row["dialogue"], "summaries": summaries,
          "topic": topic}


class T5jaxDialogsumNextTurn(_ShippedBuilder):
  """Next-turn prediction pairs cut from the DialogSum dialogues: every turn after the first."""

  DESCRIPTION = "For each DialogSum dialogue and turn i >= 1: history = turns[:i], next_turn = turns[i]."
  FEATURES = {
      "fname": _TEXT,
      "history": tfds.features.Sequence(_TEXT),
      "next_turn": _TEXT,
  }

  def _generate_examples(self, split):
    for row in _dialogsum_rows(split):
      turns = [t.strip() for t in row["dialogue"].split("\n") if t.strip()]
      for i in range(1, len(turns)):
        yield f"{row['fname']}:{i}", {
            "fname": row["fname"], "history": turns[:i], "next_turn": turns[i]}


class T5jaxXquadEn(_ShippedBuilder):
  """XQuAD English (SQuAD v1.1 format), split by article: 39 train, 9 validation articles."""

  DESCRIPTION = "XQuAD en; train = articles 0-38 (991 questions), validation = 39-47 (199)."
  FEATURES = {
      "id": _TEXT,
      "title": _TEXT,
      "context": _TEXT,
      "question": _TEXT,
      "answers": tfds.features.Sequence(_TEXT),
  }
  NUM_TRAIN_ARTICLES = 39

  def _generate_examples(self, split):
    with assets.open_text("xquad/xquad.en.json.gz") as f:
      articles = json.load(f)["data"]
    if split == "train":
      articles = articles[:self.NUM_TRAIN_ARTICLES]
    else:
      articles = articles[self.NUM_TRAIN_ARTICLES:]
    for article in articles:
      for paragraph in article["paragraphs"]:
        for qa in paragraph["qas"]:
          yield qa["id"], {
              "id": qa["id"],
              "title": article["title"],
              "context": paragraph["context"],
              "question": qa["question"],
              "answers": [a["text"] for a in qa["answers"]],
          }


def _wikitext_documents(relative: str) -> Iterator[str]:
  # One paragraph per line; "= Heading =" lines and blank lines are not prose.
  for line in _read_lines(relative):
    line = line.strip()
    if line and not (line.startswith("=") and line.endswith("=")):
      yield line


def _shakespeare_documents(relative: str) -> Iterator[str]:
  # Speeches are separated by blank lines; keep each speech (speaker + lines) as one document.
  with assets.open_text(relative) as f:
    for block in f.read().split("\n\n"):
      if block.strip():
        yield block.strip()


class T5jaxText(_ShippedBuilder):
  """Plain text for span corruption: WikiText-2 paragraphs and Tiny Shakespeare speeches.

  Every 20th document of each source is held out as validation.
  """

  DESCRIPTION = "WikiText-2 (valid+test files, tokenized) paragraphs and Tiny Shakespeare speeches."
  FEATURES = {"text": _TEXT, "source": _TEXT}
  HOLDOUT_EVERY = 20

  def _generate_examples(self, split):
    sources = {
        "wikitext2": [d for f in ("valid", "test")
                      for d in _wikitext_documents(f"text/wikitext2/{f}.txt.gz")],
        "tinyshakespeare": list(_shakespeare_documents("text/tinyshakespeare/input.txt.gz")),
    }
    for source, documents in sources.items():
      for i, text in enumerate(documents):
        if (i % self.HOLDOUT_EVERY == 0) == (split == "validation"):
          yield f"{source}:{i}", {"text": text, "source": source}


BUILDERS: dict[str, type[_ShippedBuilder]] = {
    cls.name: cls
    for cls in (T5jaxMulti30k, T5jaxGlueCola, T5jaxGlueSst2, T5jaxGlueRte, T5jaxScitldr,
                T5jaxDialogsum, T5jaxDialogsumNextTurn, T5jaxXquadEn, T5jaxText)
}
