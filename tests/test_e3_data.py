"""Experiment E3's data: the readers (easy-VQA, the generated relational set, VQA v2),
tokenisation and the answer rules.

Everything runs on tiny data made here: a few generated Sort-of-CLEVR images, a hand-made
easy-VQA folder and a hand-made VQA v2 folder (features and images).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from attentionrnn.engine.errors import UserError
from attentionrnn.experiments.e3.config import E3Config
from attentionrnn.experiments.e3.data import (
    CLEVR_COLOURS,
    Vocabulary,
    answer_type,
    generate_sort_of_clevr,
    normalize_answer,
    read_easy_vqa,
    read_vqa_v2,
    tokenize,
    vqa_accuracy,
)
from attentionrnn.experiments.e3.rundata import read_dataset


@pytest.fixture(autouse=True)
def _no_env(monkeypatch, tmp_path):
    monkeypatch.delenv("ATTENTIONRNN_VQA_DIR", raising=False)
    monkeypatch.setenv("ATTENTIONRNN_DATA_DIR", str(tmp_path / "cache"))


# ------------------------------------------------------------------------------------------
# text and metric


def test_tokenize_and_vocabulary():
    assert tokenize("What's the COLOR of the shape?!") == ["what's", "the", "color", "of", "the",
                                                           "shape"]  # fmt: skip
    vocab = Vocabulary.build(["is there a red shape?", "is there a circle?", "red red"])
    assert vocab.words[:2] == ["<pad>", "<unk>"]
    assert vocab.words[2] == "red"  # most frequent first
    ids, lengths = vocab.encode(["is there a red cat", "", "red " * 30], max_length=5)
    assert ids.shape == (3, 5) and lengths.tolist() == [5, 1, 5]
    assert ids[0, 4] == Vocabulary.UNK  # "cat" was not in the training questions
    assert ids[1].tolist() == [Vocabulary.UNK, 0, 0, 0, 0]  # empty: one unknown word, then pads
    assert Vocabulary.build(["a b b"], min_count=2).words == ["<pad>", "<unk>", "b"]


def test_vqa_accuracy_and_answer_types():
    humans = ["2", "two", "2", "Two", "3", "3", "2", "4", "4", "4"]
    assert vqa_accuracy("2", humans) == 1.0
    assert vqa_accuracy("3", humans) == pytest.approx(2 / 3)
    assert vqa_accuracy("two", humans) == pytest.approx(2 / 3)  # "two" and "Two"
    assert vqa_accuracy("five", humans) == 0.0
    assert normalize_answer("A Red, shape!") == "red shape"
    assert [answer_type(a) for a in ("Yes", "no", "3", "three", "circle")] == [
        "yes/no", "yes/no", "number", "number", "other"
    ]  # fmt: skip


# ------------------------------------------------------------------------------------------
# the generated relational set


def test_generated_set_is_deterministic_and_consistent():
    a = generate_sort_of_clevr(6, 2, seed=3, image_size=32, questions_per_image=8)
    b = generate_sort_of_clevr(6, 2, seed=3, image_size=32, questions_per_image=8)
    c = generate_sort_of_clevr(6, 2, seed=4, image_size=32, questions_per_image=8)
    assert np.array_equal(a.train.images, b.train.images) and a.train.questions == b.train.questions
    assert not np.array_equal(a.train.images, c.train.images)
    s = a.train
    assert len(s) == 48 and s.relational.sum() == 24 and s.boxes.shape == (48, 2, 4)
    assert set(s.qtypes) <= {"number", "other"}
    for q in range(len(s)):
        image = s.images[s.image_index[q]]
        colour = next(c for c in CLEVR_COLOURS if f" {c} object" in s.questions[q])
        x0, y0, x1, y1 = s.boxes[q, 0]
        patch = image[y0:y1, x0:x1].reshape(-1, 3)
        # the first box holds the object of the colour the question names
        assert (patch == CLEVR_COLOURS[colour]).all(1).any(), s.questions[q]
        if "left or on the right" in s.questions[q]:
            assert s.answers[q] == ("left" if (x0 + x1) / 2 < 16 else "right")
        if "nearest" in s.questions[q] or "farthest" in s.questions[q]:
            assert s.boxes[q, 1, 0] >= 0 and s.relational[q]
        if s.questions[q].startswith("how many"):
            assert s.qtypes[q] == "number" and 1 <= int(s.answers[q]) <= 6
    with pytest.raises(UserError, match="objects"):
        generate_sort_of_clevr(2, 1, objects=9)


# ------------------------------------------------------------------------------------------
# easy-VQA


def _easy_vqa_folder(root: Path) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 4), ("test", 2)):
        (root / split / "images").mkdir(parents=True)
        rows = []
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(
                root / split / "images" / f"{i}.png"
            )
            rows += [[f"what color is shape {i}?", "red", i], ["is there a circle?", "yes", i]]
        (root / split / "questions.json").write_text(json.dumps(rows))
    return root


def test_easy_vqa_reader(tmp_path):
    data = read_easy_vqa(_easy_vqa_folder(tmp_path / "ev"))
    assert data.train.images.shape == (4, 64, 64, 3) and len(data.train) == 8
    assert data.train.image_index.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert list(data.train.qtypes[:2]) == ["other", "yes/no"] and len(data.test) == 4
    (tmp_path / "ev" / "test" / "images" / "1.png").unlink()
    with pytest.raises(UserError, match="1.png"):
        read_easy_vqa(tmp_path / "ev")
    (tmp_path / "ev" / "train" / "questions.json").unlink()
    with pytest.raises(UserError, match="questions.json"):
        read_easy_vqa(tmp_path / "ev")
    with pytest.raises(UserError, match="no such folder"):
        read_easy_vqa(tmp_path / "nowhere")


def test_easy_vqa_from_the_installed_package(tmp_path):
    pytest.importorskip("easy_vqa")
    data = read_easy_vqa(cache_dir=tmp_path)
    assert (len(data.train), len(data.test)) == (38575, 9673)
    assert data.train.images.shape == (4000, 64, 64, 3)
    assert len(set(data.train.answers)) == 13
    cached = read_easy_vqa(cache_dir=tmp_path)  # from the .npz now
    assert cached.train.questions == data.train.questions
    assert np.array_equal(cached.test.images, data.test.images)


# ------------------------------------------------------------------------------------------
# VQA v2 from a folder


def _vqa2_folder(root: Path, with_features: bool = True) -> Path:
    from PIL import Image

    root.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for split, image_ids in (("train2014", [5, 9, 11]), ("val2014", [7, 3])):
        questions, annotations = [], []
        for image_id in image_ids:
            for j, (text, answers, kind) in enumerate([
                ("Is it a dog?", ["yes"] * 7 + ["no"] * 3, "yes/no"),
                ("How many cats?", ["2"] * 2 + ["3"] * 8, "number"),
                ("What color is the bus?", ["red"] * 10, "other"),
            ]):  # fmt: skip
                qid = image_id * 10 + j
                questions.append({"question_id": qid, "image_id": image_id, "question": text})
                annotations.append({
                    "question_id": qid, "image_id": image_id, "answer_type": kind,
                    "multiple_choice_answer": answers[-1] if kind == "number" else answers[0],
                    "answers": [{"answer": a, "answer_id": i + 1} for i, a in enumerate(answers)],
                })  # fmt: skip
        (root / f"v2_OpenEnded_mscoco_{split}_questions.json").write_text(
            json.dumps({"questions": questions})
        )
        (root / f"v2_mscoco_{split}_annotations.json").write_text(
            json.dumps({"annotations": annotations})
        )
        if with_features:
            np.savez(
                root / f"features_{split}.npz",
                image_ids=np.array(image_ids[::-1]),
                features=rng.normal(size=(len(image_ids), 5, 3, 3)).astype(np.float32),
            )
        else:
            (root / split).mkdir()
            for image_id in image_ids:
                img = rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)
                Image.fromarray(img).save(root / split / f"COCO_{split}_{image_id:012d}.jpg")
    return root


def test_vqa2_reader_features_and_images(tmp_path):
    data = read_vqa_v2(_vqa2_folder(tmp_path / "feat"))
    assert data.features and data.train.images.shape == (3, 5, 3, 3)
    assert len(data.train) == 9 and len(data.test) == 6
    assert list(data.train.qtypes[:3]) == ["yes/no", "number", "other"]
    assert data.train.answers[:3] == ["yes", "3", "red"] and len(data.train.human_answers[0]) == 10
    # features were stored in another order: each question still gets its own image's
    raw = np.load(tmp_path / "feat" / "features_train2014.npz")
    first = data.train.images[data.train.image_index[0]]  # image 5, the last row of the file
    assert np.array_equal(first, raw["features"][2])

    images = read_vqa_v2(_vqa2_folder(tmp_path / "img", with_features=False), image_size=32)
    assert not images.features and images.test.images.shape == (2, 32, 32, 3)


def test_vqa2_errors_name_what_is_missing(tmp_path):
    with pytest.raises(UserError, match="--vqa-dir"):
        read_vqa_v2(None)
    with pytest.raises(UserError, match="no such folder"):
        read_vqa_v2(tmp_path / "none")
    root = _vqa2_folder(tmp_path / "v")
    (root / "v2_mscoco_val2014_annotations.json").unlink()
    with pytest.raises(UserError, match="v2_mscoco_val2014_annotations.json"):
        read_vqa_v2(root)
    root = _vqa2_folder(tmp_path / "w")
    (root / "features_train2014.npz").unlink()
    with pytest.raises(UserError, match="features_train2014.npz.*train2014/"):
        read_vqa_v2(root)
    with pytest.raises(UserError, match="dataset must be one of"):
        read_dataset(E3Config(dataset="coco"))
