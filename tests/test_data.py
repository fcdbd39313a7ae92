import numpy as np
import pytest
from tiny import write_corpus

from silos.data import load_corpus, split_corpus
from silos.settings import CorpusSpec


def test_split_is_disjoint_and_seeded():
    a = split_corpus(100, n_public=40, n_private=30, n_query=20, seed=3)
    b = split_corpus(100, n_public=40, n_private=30, n_query=20, seed=3)
    sets = [set(a.public), set(a.private), set(a.query)]
    assert [len(s) for s in sets] == [40, 30, 20]
    assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
    assert a.summary() == b.summary()
    assert a.summary() != split_corpus(100, n_public=40, n_private=30, n_query=20,
                                       seed=4).summary()
    with pytest.raises(ValueError):
        split_corpus(10, n_public=5, n_private=5, n_query=5, seed=0)


def test_public_parts_hold_out_a_disjoint_share():
    spec = CorpusSpec(name="x", holdout=0.25, seed=1)
    fit, val = spec.public_parts(np.arange(100, 180))
    assert len(val) == 20 and len(fit) == 60 and not set(fit) & set(val)
    assert set(fit) | set(val) == set(range(100, 180))


def test_csv_corpus_loads_with_label_names(tmp_path):
    corpus = load_corpus(str(write_corpus(tmp_path / "c.csv", 50)))
    assert len(corpus) == 50 and corpus.label_names == ["politics", "sport", "tech"]
    assert corpus.labels.min() >= 0 and corpus.labels.max() <= 2


def test_missing_csv_and_column_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_corpus(str(tmp_path / "absent.csv"))
    path = write_corpus(tmp_path / "c.csv", 10)
    with pytest.raises(ValueError, match="no column 'topic'"):
        load_corpus(str(path), label_column="topic")


def test_silo_config_typos_are_refused():
    from conf import load_config
    from silos.settings import SiloSettings

    with pytest.raises(KeyError, match="modle"):
        SiloSettings.from_config(load_config(["silos.bob.modle=x"]), "bob")
    with pytest.raises(ValueError, match="role"):
        SiloSettings.from_config(load_config(["silos.bob.role=boss"]), "bob")
    with pytest.raises(KeyError, match="unknown silo"):
        SiloSettings.from_config(load_config(), "mallory")


def test_ood_queries_need_another_corpus():
    from silos.runtime import load_ood_texts

    assert load_ood_texts(CorpusSpec(name="x")) == ()
    with pytest.raises(ValueError, match=r"needs dataset\.ood"):
        load_ood_texts(CorpusSpec(name="x", n_ood=5))
    with pytest.raises(ValueError, match=r"needs dataset\.ood"):
        load_ood_texts(CorpusSpec(name="x", ood="x", n_ood=5))


def test_held_out_classes_map_to_ood():
    from silos.ood import OOD_LABEL, class_map

    kept, remap = class_map(["a", "b", "c"], ("b",))
    assert kept == ["a", "c"] and remap.tolist() == [0, OOD_LABEL, 1]
    with pytest.raises(ValueError, match="not classes"):
        class_map(["a", "b", "c"], ("z",))
    with pytest.raises(ValueError, match="two classes"):
        class_map(["a", "b"], ("b",))
