"""Data sources: token windows, text corpora and token files, local and in object storage
(fixture s3_server), read the same from any working directory; the pre-flight check's
per-node probe (flops_fit/preflight.py) names what a node cannot open."""

import pickle
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from flops_fit.data import SEPARATOR, TextCorpus, TokenDataset, TokenFile, write_token_file


def make_corpus(root, n_files=20, size=400):
    root.mkdir()
    (root / "sub").mkdir()
    for i in range(n_files):
        where = root / "sub" if i % 2 else root
        (where / f"doc{i:02d}.txt").write_text(f"file {i}: " + "abcdefgh" * (size // 8))
    (root / "image.png").write_bytes(b"\x89PNG not text")  # skipped: not a text suffix
    return root


def test_token_dataset_windows_are_shifted_targets():
    ds = TokenDataset(np.arange(25, dtype=np.uint16), seq_len=8)
    assert len(ds) == 3  # (25 - 1) // 8
    assert ds[0].dtype == torch.int64
    assert ds[0].tolist() == list(range(0, 9))
    assert ds[2].tolist() == list(range(16, 25))  # last window uses the final token as target
    assert ds[-1].tolist() == ds[2].tolist()
    with pytest.raises(IndexError):
        ds[3]


def test_text_corpus_split_by_file_and_samples(tmp_path):
    root = make_corpus(tmp_path / "corpus")
    corpus = TextCorpus([root], seq_len=16, val_every=5, cache_dir=tmp_path / "cache")
    files = corpus.files()
    assert len(files) == 20 and all(f.suffix == ".txt" for f in files)
    train, val = corpus()
    sizes = [f.stat().st_size + 1 for f in files]  # + one separator per file
    val_idx = {4, 9, 14, 19}  # every 5th file in sorted order
    assert val.num_tokens == sum(s for i, s in enumerate(sizes) if i in val_idx)
    assert train.num_tokens == sum(s for i, s in enumerate(sizes) if i not in val_idx)
    # the validation stream is exactly the validation files' bytes, separated
    expected = b"".join(files[i].read_bytes() + bytes([SEPARATOR]) for i in sorted(val_idx))
    assert bytes(val.tokens.astype(np.uint8)) == expected
    x = train[1]
    assert x.shape == (17,)
    assert train.tokens[16:33].tolist() == x.tolist()  # window i starts at i * seq_len
    assert x[1:].tolist() == train.tokens[17:33].tolist()  # targets: inputs shifted by one
    assert corpus.vocab_size == train.vocab_size == 256 and corpus.tokens_per_sample == 16
    assert "20 files" in corpus.describe() and "4 files" in corpus.describe()


def test_text_corpus_deterministic_and_cached(tmp_path):
    root = make_corpus(tmp_path / "corpus")
    corpus = TextCorpus([root], seq_len=16, val_every=5, cache_dir=tmp_path / "cache")
    train1, val1 = corpus()
    (cache,) = (tmp_path / "cache").iterdir()
    stamps = {p.name: p.stat().st_mtime_ns for p in cache.iterdir()}
    time.sleep(0.01)
    train2, val2 = pickle.loads(pickle.dumps(corpus))()  # as on a worker
    assert {p.name: p.stat().st_mtime_ns for p in cache.iterdir()} == stamps  # not rebuilt
    assert np.array_equal(train1.tokens, train2.tokens) and np.array_equal(val1.tokens, val2.tokens)
    # a rebuild into a fresh cache gives the same bytes
    train3, _ = TextCorpus([root], seq_len=16, val_every=5, cache_dir=tmp_path / "other")()
    assert np.array_equal(train1.tokens, train3.tokens)
    # editing a file changes the cache key
    (root / "doc00.txt").write_text("changed")
    TextCorpus([root], seq_len=16, val_every=5, cache_dir=tmp_path / "cache")()
    assert len(list((tmp_path / "cache").iterdir())) == 2


def test_explicit_file_taken_whatever_extension(tmp_path):
    f = tmp_path / "data.log"
    f.write_text("x" * 100)
    g = tmp_path / "notes.dat"
    g.write_text("y" * 100)
    corpus = TextCorpus([f, g], seq_len=8, val_every=2, cache_dir=tmp_path / "c")
    train, val = corpus()
    assert train.num_tokens == val.num_tokens == 101


def test_text_corpus_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        TextCorpus([tmp_path / "nowhere"], cache_dir=tmp_path)()
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no non-empty text files"):
        TextCorpus([tmp_path / "empty"], cache_dir=tmp_path)()
    root = make_corpus(tmp_path / "corpus", n_files=4)
    with pytest.raises(ValueError, match="validation split.*lower val_every"):
        TextCorpus([root], val_every=10, cache_dir=tmp_path / "c")()
    with pytest.raises(ValueError, match="val_every"):
        TextCorpus([root], val_every=1)


def test_default_stdlib_corpus(tmp_path):
    start = time.perf_counter()
    train, val = TextCorpus(cache_dir=tmp_path)()
    elapsed = time.perf_counter() - start
    assert train.num_tokens > 1_000_000 and val.num_tokens > 100_000
    assert len(val) > 0 and train[0].max() < 256
    assert elapsed < 10, f"building the stdlib corpus took {elapsed:.1f} s"


def test_token_file_round_trip_and_val_fraction(tmp_path):
    tokens = np.arange(1000) % 500
    write_token_file(tmp_path / "train.bin", tokens)
    assert (tmp_path / "train.bin").stat().st_size == 2000
    src = TokenFile(tmp_path, seq_len=10, val_fraction=0.1)  # directory without val.bin
    train, val = pickle.loads(pickle.dumps(src))()
    assert (train.num_tokens, val.num_tokens) == (900, 100)
    assert np.array_equal(np.concatenate([train.tokens, val.tokens]), tokens)
    assert src.vocab_size == train.vocab_size == 500  # scanned: max id + 1
    assert "last 10%" in src.describe()
    assert train[3].tolist() == list(range(30, 41))


def test_token_file_with_val_file_and_given_vocab(tmp_path):
    write_token_file(tmp_path / "train.bin", np.arange(300))
    write_token_file(tmp_path / "val.bin", np.arange(50))
    train, val = TokenFile(tmp_path, seq_len=7, vocab_size=50257)()
    assert (train.num_tokens, val.num_tokens, val.vocab_size) == (300, 50, 50257)
    wide = write_token_file(tmp_path / "wide.bin", np.array([0, 70_000] * 40), dtype="uint32")
    assert TokenFile(wide, seq_len=4, dtype="uint32").vocab_size == 70_001


def test_token_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.bin"):
        TokenFile(tmp_path / "missing.bin")
    bad = tmp_path / "odd.bin"
    bad.write_bytes(b"\x01\x00\x02")
    with pytest.raises(ValueError, match="odd.bin.*truncated or not a uint16 token file"):
        TokenFile(bad)()
    with pytest.raises(ValueError, match="outside uint16"):
        write_token_file(tmp_path / "x.bin", [70_000])
    write_token_file(tmp_path / "small.bin", np.arange(100))
    with pytest.raises(ValueError, match="validation split.*raise val_fraction"):
        TokenFile(tmp_path / "small.bin", seq_len=10, val_fraction=0.05)()


def test_sources_given_relative_paths_read_the_same_data_from_another_working_directory(tmp_path, monkeypatch):
    # A source is built on the driver and read on Ray workers, whose working directory is a
    # folder of Ray's own: a relative path must mean what it meant where it was given.
    make_corpus(tmp_path / "docs")
    (tmp_path / "tokens").mkdir()
    write_token_file(tmp_path / "tokens" / "train.bin", np.arange(2000) % 300)
    monkeypatch.chdir(tmp_path)
    sources = [TextCorpus("docs", seq_len=16, cache_dir="cache"), TokenFile("tokens", seq_len=16)]
    expected = [[ds[0].tolist() for ds in source()] for source in sources]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    for source, want in zip(sources, expected):
        moved = pickle.loads(pickle.dumps(source))
        assert [ds[0].tolist() for ds in moved()] == want
    assert not (elsewhere / "cache").exists() and (tmp_path / "cache").is_dir()


# --- object storage (the s3_server fixture: moto's S3 at AWS_ENDPOINT_URL) -------------------
def upload(s3_server, bucket: str, root, prefix: str) -> str:
    """Every file under the local folder root, as objects under s3://bucket/prefix/."""
    uri = s3_server.bucket(bucket)
    client = s3_server.client()
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        client.upload_file(str(f), bucket, f"{prefix}/{f.relative_to(root).as_posix()}")
    return f"{uri}/{prefix}"


def test_token_file_in_s3_is_copied_once_per_cache_and_read_like_a_local_one(s3_server, tmp_path):
    local = tmp_path / "tokens"
    write_token_file(local / "train.bin", np.arange(3000) % 700)
    write_token_file(local / "val.bin", np.arange(400) % 650)
    uri = upload(s3_server, "data-token-file", local, "tok")
    cache = tmp_path / "cache"
    source = TokenFile(uri, seq_len=16, cache_dir=cache)  # a prefix holding train.bin and val.bin
    assert (source.train, source.val) == (f"{uri}/train.bin", f"{uri}/val.bin")
    assert not cache.exists()  # the constructor stats, it copies nothing
    source.check_readable()
    assert not cache.exists()
    train, val = pickle.loads(pickle.dumps(source))()  # as on a worker
    want_train, want_val = TokenFile(local, seq_len=16)()
    assert np.array_equal(train.tokens, want_train.tokens) and np.array_equal(val.tokens, want_val.tokens)
    assert isinstance(train.tokens, np.memmap) and Path(train.tokens.filename).is_relative_to(cache)
    assert source.vocab_size == 700
    copies = sorted((cache / "remote").iterdir())
    assert sorted(p.name.split("-", 1)[1] for p in copies) == ["train.bin", "val.bin"]
    stamps = [p.stat().st_mtime_ns for p in copies]
    source()  # reused, not copied again
    assert [p.stat().st_mtime_ns for p in sorted((cache / "remote").iterdir())] == stamps


def test_a_changed_object_is_copied_again_not_read_stale(s3_server, tmp_path):
    uri = s3_server.bucket("data-changed")
    client = s3_server.client()
    client.put_object(Bucket="data-changed", Key="train.bin", Body=(np.arange(500) % 90).astype("<u2").tobytes())
    source = TokenFile(f"{uri}/train.bin", seq_len=8, val_fraction=0.2, cache_dir=tmp_path)
    first, _ = source()
    assert first.tokens.max() == 89
    client.put_object(Bucket="data-changed", Key="train.bin", Body=(np.arange(600) % 40).astype("<u2").tobytes())
    second, _ = pickle.loads(pickle.dumps(source))()
    assert second.num_tokens == 480 and second.tokens.max() == 39
    assert len(list((tmp_path / "remote").iterdir())) == 2  # a new key; the old copy is left alone


def test_text_corpus_over_an_s3_prefix_matches_the_same_files_on_disk(s3_server, tmp_path):
    root = make_corpus(tmp_path / "corpus")
    (root / ".hidden").mkdir()
    (root / ".hidden" / "secret.txt").write_text("not corpus text " * 10)  # skipped, as os.walk skips it
    uri = upload(s3_server, "data-corpus", root, "docs")
    remote = TextCorpus([uri + "/"], seq_len=16, val_every=5, cache_dir=tmp_path / "cache-s3")
    assert remote.paths == [uri]
    files = remote.files()
    assert len(files) == 20 and all(str(f).startswith(f"{uri}/") for f in files)  # the .png is skipped
    local = TextCorpus([root], seq_len=16, val_every=5, cache_dir=tmp_path / "cache-local")
    for got, want in zip(remote(), local()):  # same files, same order: the same split and tokens
        assert np.array_equal(got.tokens, want.tokens)
    remote.check_readable()


def test_hf_dataset_saved_in_s3(s3_server, tmp_path):
    datasets = pytest.importorskip("datasets")
    rows = [f"row {i}: " + "lorem ipsum " * (i % 5 + 3) for i in range(40)]
    datasets.Dataset.from_dict({"text": rows}).save_to_disk(str(tmp_path / "hf"))
    uri = upload(s3_server, "data-hf", tmp_path / "hf", "ds")
    from flops_fit.data import HFText

    source = HFText(uri, seq_len=16, cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache").exists()
    source.check_readable()
    got = source()
    want = HFText(tmp_path / "hf", seq_len=16, cache_dir=tmp_path / "cache-local")()
    assert all(np.array_equal(g.tokens, w.tokens) for g, w in zip(got, want))
    with pytest.raises(FileNotFoundError, match=f"{uri}/nothing holds no"):
        HFText(f"{uri}/nothing")


def test_missing_objects_are_named_with_their_uri(s3_server, tmp_path):
    uri = s3_server.bucket("data-missing")
    with pytest.raises(FileNotFoundError, match=f"token file {uri}/nowhere does not exist"):
        TokenFile(f"{uri}/nowhere")
    with pytest.raises(FileNotFoundError, match=f"corpus path {uri}/no-prefix does not exist"):
        TextCorpus([f"{uri}/no-prefix"], cache_dir=tmp_path).files()
    s3_server.client().put_object(Bucket="data-missing", Key="t.bin", Body=bytes(400))
    source = TokenFile(f"{uri}/t.bin", cache_dir=tmp_path)
    s3_server.client().delete_object(Bucket="data-missing", Key="t.bin")  # gone before a worker reads it
    with pytest.raises(FileNotFoundError, match=f"{uri}/t.bin does not exist"):
        source.check_readable()
    with pytest.raises(FileNotFoundError, match=f"{uri}/t.bin does not exist"):
        source()
    with pytest.raises(ValueError, match="nosuch://x is not a URI pyarrow can open"):
        TokenFile("nosuch://x")


def test_check_readable_names_a_local_file_missing_on_this_node(tmp_path):
    write_token_file(tmp_path / "train.bin", np.arange(300))
    source = TokenFile(tmp_path, seq_len=8)
    source.check_readable()
    (tmp_path / "train.bin").unlink()  # as on a node that does not share the driver's disk
    with pytest.raises(FileNotFoundError, match=r"train.bin does not exist on this node; put the data on a shared"):
        source.check_readable()
    corpus = TextCorpus([tmp_path / "gone"], cache_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="gone does not exist; put the data on a shared mount"):
        corpus.check_readable()


# --- the pre-flight check's parts that need no cluster (flops_fit/preflight.py) ----------------
def test_node_type_is_the_node_group_label_else_the_resource_shape():
    from flops_fit.preflight import node_type

    shaped = {"Resources": {"CPU": 8.0, "GPU": 1.0, "memory": 3e10, "object_store_memory": 1e9,
                            "node:10.0.0.7": 1.0, "accelerator_type:A10G": 1.0}, "Labels": {}}
    other = {**shaped, "Resources": {**shaped["Resources"], "memory": 2.9e10, "node:10.0.0.8": 1.0}}
    assert node_type(shaped) == node_type(other) == "{CPU: 8, GPU: 1, accelerator_type:A10G: 1}"
    assert node_type({**shaped, "Resources": {"CPU": 4.0}}) != node_type(shaped)
    assert node_type({**shaped, "Labels": {"ray.io/node-group": "gpu-workers"}}) == "gpu-workers"


def test_open_data_returns_the_failure_as_data_for_the_drivers_error(tmp_path):
    import ray.cloudpickle

    from flops_fit.preflight import open_data
    from worker_side import tiny_task

    write_token_file(tmp_path / "train.bin", np.arange(4000) % 256)
    task = tiny_task(tmp_path)
    task = type(task)(**{**task.__dict__, "data": TokenFile(tmp_path, seq_len=32)})
    assert open_data(ray.cloudpickle.dumps(task)) is None
    (tmp_path / "train.bin").unlink()
    kind, message = open_data(ray.cloudpickle.dumps(task))
    assert kind == "FileNotFoundError" and f"{tmp_path / 'train.bin'} does not exist on this node" in message
