import json

import pytest
from tiny import topic_texts, write_corpus

from conf import load_config
from silos.alignment import public_parts
from silos.data import DataSource, load_corpus, read_table
from simulations.benchmark import OOD_NAME, benchmark_overrides, ood_texts, split_corpus


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
    fit, val = public_parts(80, holdout=0.25, seed=1)
    assert len(val) == 20 and len(fit) == 60 and not set(fit) & set(val)
    assert set(fit) | set(val) == set(range(80))
    assert (fit == public_parts(80, holdout=0.25, seed=1)[0]).all()
    with pytest.raises(ValueError, match="holdout"):
        public_parts(80, holdout=1.0, seed=1)


def test_csv_corpus_loads_with_label_names(tmp_path):
    corpus = load_corpus(str(write_corpus(tmp_path / "c.csv", 50)))
    assert len(corpus) == 50 and corpus.label_names == ["politics", "sport", "tech"]
    texts, labels = topic_texts(50)  # what write_corpus wrote, row by row
    assert corpus.texts == texts and [corpus.label_names[i] for i in corpus.labels] == labels


def test_missing_csv_and_column_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_corpus(str(tmp_path / "absent.csv"))
    path = write_corpus(tmp_path / "c.csv", 10)
    with pytest.raises(ValueError, match="no column 'topic'"):
        load_corpus(str(path), label_column="topic")


def test_every_source_format_reads_ids_texts_and_labels(tmp_path):
    rows = [{"id": "a7", "text": "one", "label": "x"}, {"id": "b2", "text": "two", "label": "y"},
            {"id": "c3", "text": "", "label": "x"}]
    jsonl = tmp_path / "q.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    queries = read_table(DataSource(str(jsonl), "text", "label", "id"), optional_labels=True,
                         drop_empty=False)
    assert queries.ids == ["a7", "b2", "c3"] and queries.labels == ["x", "y", "x"]
    assert queries.texts[2] == ""  # a querier's row without text still gets an answer
    # No label column: unlabelled; no id column: row numbers.
    bare = read_table(DataSource(str(jsonl), "text", "topic", "key"), optional_labels=True,
                      drop_empty=False)
    assert bare.labels is None and bare.ids == ["0", "1", "2"]
    with pytest.raises(ValueError, match="no column 'topic'"):
        read_table(DataSource(str(jsonl), "text", "topic"))
    txt = tmp_path / "q.txt"
    txt.write_text("first text\n\nthird text\n")
    lines = read_table(DataSource(str(txt), "text"))
    assert lines.texts == ["first text", "third text"] and lines.ids == ["1", "3"]
    csv = write_corpus(tmp_path / "c.csv", 12)
    table = read_table(DataSource(str(csv), "text", "label"))
    assert sorted(set(table.labels)) == load_corpus(str(csv)).label_names and len(table) == 12
    repeated = tmp_path / "r.jsonl"
    repeated.write_text("".join(json.dumps({"id": "1", "text": t}) + "\n" for t in "ab"))
    with pytest.raises(ValueError, match="repeats ids"):
        read_table(DataSource(str(repeated), "text", None, "id"))


def test_the_digest_changes_with_one_text_and_with_order(tmp_path):
    def digest(texts):
        path = tmp_path / "p.jsonl"
        path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
        return read_table(DataSource(str(path), "text")).digest

    base = digest(["alpha", "beta", "gamma"])
    assert base == digest(["alpha", "beta", "gamma"])
    assert base != digest(["alpha", "beta", "gamma!"])
    assert base != digest(["beta", "alpha", "gamma"])


def test_ood_queries_need_another_corpus(tmp_path):
    base = [f"dataset.name={write_corpus(tmp_path / 'c.csv', 30)}"]
    assert ood_texts(load_config(base)) == []
    with pytest.raises(ValueError, match=r"needs dataset\.ood"):
        ood_texts(load_config([*base, "dataset.n_ood=5"]))
    with pytest.raises(ValueError, match=r"needs dataset\.ood"):
        ood_texts(load_config([*base, f"dataset.ood={tmp_path / 'c.csv'}", "dataset.n_ood=5"]))


def test_the_preset_writes_three_disjoint_roles_and_held_out_classes_become_ood(tmp_path):
    corpus = write_corpus(tmp_path / "c.csv", 120)
    other = write_corpus(tmp_path / "other.csv", 40, seed=5)
    cfg = load_config([f"dataset.name={corpus}", "dataset.n_public=40", "dataset.n_private=40",
                       "dataset.n_query=30", "dataset.holdout_classes=[tech]",
                       f"dataset.ood={other}", "dataset.n_ood=10",
                       f"run.output_dir={tmp_path / 'out'}"])
    overrides = benchmark_overrides(cfg)
    named = load_config([f"dataset.name={corpus}", f"run.output_dir={tmp_path / 'out'}",
                         *overrides])
    public = read_table(DataSource(str(named.public.source), "text"))
    task = read_table(DataSource(str(named.silos.bob.tasks.c.source), "text", "label"))
    queries = read_table(DataSource(str(named.silos.alice.queries.source), "text", "label", "id"))
    assert named.silos.alice.task == "c" and named.silos.carol.tasks.c.source
    assert (len(public), len(queries)) == (40, 40)
    assert not set(public.texts) & set(task.texts) and "tech" not in task.labels
    assert "tech" in queries.labels and queries.labels.count(OOD_NAME) == 10
    assert benchmark_overrides(named) == []  # the config names its data: nothing written
    before = (tmp_path / "out" / "data" / "public.jsonl").stat().st_mtime_ns
    assert benchmark_overrides(cfg) == overrides  # a rerun rewrites nothing
    assert (tmp_path / "out" / "data" / "public.jsonl").stat().st_mtime_ns == before


def test_silo_config_typos_are_refused():
    from silos.settings import SiloSettings

    with pytest.raises(KeyError, match="modle"):
        SiloSettings.from_config(load_config(["silos.bob.modle=x"]), "bob")
    with pytest.raises(ValueError, match="role"):
        SiloSettings.from_config(load_config(["silos.bob.role=boss"]), "bob")
    with pytest.raises(KeyError, match="unknown silo"):
        SiloSettings.from_config(load_config(), "mallory")
    with pytest.raises(KeyError, match="tasks are a provider's"):
        SiloSettings.from_config(load_config(["silos.alice.tasks.x.source=y"]), "alice")
    with pytest.raises(KeyError, match="querier's"):
        SiloSettings.from_config(load_config(["silos.bob.task=x"]), "bob")
