"""The README's bring-your-own-data snippets run as written, on small files of the names
they use, and the examples' --data picks the matching source."""

import pickle
import re
from pathlib import Path

import numpy as np
import pytest

import flops_fit as ff
from flops_fit.data import HFText, TextCorpus, TokenFile, write_token_file
from flops_fit.task import check_task
from driver_side import load_example

ROOT = Path(__file__).resolve().parents[1]
SECTION = "## Bring your own data"
SEQ_LEN = 128  # the snippets' seq_len


def snippets() -> list:
    text = (ROOT / "README.md").read_text()
    start = text.index(SECTION)
    end = text.index("\n## ", start + len(SECTION))
    return re.findall(r"```python\n(.*?)```", text[start:end], flags=re.S)


def _write_text_files(folder: Path, n: int = 12):
    folder.mkdir(parents=True)
    for i in range(n):
        (folder / f"doc{i:02d}.txt").write_text(f"document {i}: " + "the quick brown fox jumps. " * 40)


def _images(n: int, seed: int = 0) -> list:
    from PIL import Image
    rng = np.random.default_rng(seed)
    return [Image.fromarray((rng.random((40, 40, 3)) * 255).astype(np.uint8)) for _ in range(n)]


@pytest.fixture
def data_folder(tmp_path, monkeypatch):
    """A folder holding every path the README snippets name; the working directory."""
    datasets = pytest.importorskip("datasets")
    pytest.importorskip("PIL")
    _write_text_files(tmp_path / "my_corpus")
    rng = np.random.default_rng(0)
    write_token_file(tmp_path / "my_tokens" / "train.bin", rng.integers(0, 1000, 20_000))
    write_token_file(tmp_path / "my_tokens" / "val.bin", rng.integers(0, 1000, 2_000))
    docs = ["a line of text number %d. " % i * 30 for i in range(40)]
    datasets.DatasetDict({
        "train": datasets.Dataset.from_dict({"text": docs[:32]}),
        "validation": datasets.Dataset.from_dict({"text": docs[32:]}),
    }).save_to_disk(str(tmp_path / "my_hf_text"))
    datasets.Dataset.from_dict({"input_ids": [rng.integers(0, 5000, 300).tolist() for _ in range(60)]}).save_to_disk(
        str(tmp_path / "my_hf_tokens"))
    for c, name in enumerate(["cat", "dog"]):
        (tmp_path / "my_images" / name).mkdir(parents=True)
        for i, im in enumerate(_images(5, seed=c)):
            im.save(tmp_path / "my_images" / name / f"{i}.png")
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["cat", "dog"])})
    datasets.DatasetDict({"train": datasets.Dataset.from_dict(
        {"image": _images(10), "label": [i % 2 for i in range(10)]}, features=features)}).save_to_disk(
        str(tmp_path / "my_hf_images"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))  # token caches land in ~/.cache: keep them here
    return tmp_path


def test_readme_has_a_snippet_per_source():
    code = "\n".join(snippets())
    for source in ("TextCorpus(", "TokenFile(", "HFText(", "ImageFolder(", "HFImages("):
        assert source in code, f"README's '{SECTION}' has no {source} snippet"


@pytest.mark.parametrize("index", range(len(snippets())))
def test_readme_data_snippet_runs(data_folder, index):
    namespace: dict = {}
    exec(compile(snippets()[index], f"README.md snippet {index}", "exec"), namespace)
    factories = {k: v for k, v in namespace.items() if callable(v) and hasattr(v, "describe")
                 and not isinstance(v, type)}
    assert factories, "the snippet defines no data source"
    for name, factory in factories.items():
        factory = pickle.loads(pickle.dumps(factory))  # as Ray ships it to a worker
        train, val = factory()
        assert len(train) > 0 and len(val) > 0, name
        sample = train[0]
        if isinstance(factory, (TextCorpus, TokenFile, HFText)):
            assert sample.shape == (SEQ_LEN + 1,) and int(sample.max()) < factory.vocab_size, name
        else:
            image, label = sample
            assert image.shape == (3, 32, 32) and 0 <= int(label) < factory.num_classes == 2, name
        assert factory.describe()
    if "task" in namespace:  # the full task passes the pre-flight probe that run_sweep makes
        task = namespace["task"]
        plan = ff.plan_sweep(task, [1e9], sizes=[1, 2])
        with pytest.warns(UserWarning) as said:  # 10 images: said, not hidden
            check_task(task, plan)
        assert any("repeat the data" in str(w.message) for w in said)


def test_hf_text_reads_text_and_token_columns(data_folder):
    text = HFText("my_hf_text/", seq_len=16)
    train, val = text()
    first = "a line of text number 0. ".encode()
    assert bytes(train.tokens[:len(first)].tolist()) == first and text.vocab_size == 256
    assert train.num_tokens == sum(len(("a line of text number %d. " % i * 30).encode()) + 1 for i in range(32))
    tokens = HFText("my_hf_tokens/", column="input_ids", seq_len=16)
    train, val = tokens()
    assert train.num_tokens + val.num_tokens == 60 * 300 and val.num_tokens == 6 * 300  # every 10th row
    assert tokens.vocab_size == max(int(train.tokens.max()), int(val.tokens.max())) + 1


def test_hf_text_vocab_size_builds_no_token_cache(data_folder):
    """The examples ask for vocab_size on the driver: it must not tokenize the dataset there."""
    import datasets

    cache = data_folder / "cache"
    assert HFText("my_hf_text/", cache_dir=cache).vocab_size == 256
    ids = HFText("my_hf_tokens/", column="input_ids", cache_dir=cache)
    expected = max(max(row) for row in datasets.load_from_disk("my_hf_tokens")["input_ids"]) + 1
    assert ids.vocab_size == expected
    assert not cache.exists()


def test_hf_errors_name_the_fix(data_folder):
    from flops_fit.vision import HFImages
    with pytest.raises(ValueError, match="set column="):
        HFText("my_hf_text/", column="body")()
    with pytest.raises(ValueError, match="set train_split="):
        HFText("my_hf_text/", val_split="test")()
    with pytest.raises(FileNotFoundError, match="save_to_disk"):
        HFText("missing/")
    with pytest.raises(ValueError, match="set image_column="):
        HFImages("my_hf_images/", image_column="img")
    with pytest.raises(ValueError, match="set split="):
        HFImages("my_hf_images/", split="test")


def test_examples_pick_the_source_from_the_data_path(data_folder, monkeypatch):
    from flops_fit.vision import HFImages, ImageFolder
    sweep, images = load_example("sweep"), load_example("images")
    kinds = {path: type(sweep.make_data([path], 64)) for path in ("my_corpus", "my_tokens", "my_hf_text")}
    assert kinds == {"my_corpus": TextCorpus, "my_tokens": TokenFile, "my_hf_text": HFText}
    for path, kind in (("my_images", ImageFolder), ("my_hf_images", HFImages)):
        args = images.parse_args(["--data", path, "--image-size", "16", "--patch-size", "4"])
        assert isinstance(images.make_data(args), kind)
        assert images.make_task(args).model_fn(1).config.num_classes == 2


def test_readme_fitting_snippet_runs(tmp_path, monkeypatch, capsys):
    """The "In Python" snippet of the fitting section, on a synthetic sweep written as the
    files it names: every call works and returns what its comment says."""
    from conftest import synthetic_sweep

    text = (ROOT / "README.md").read_text()
    start = text.index("## Fitting results you already have")
    code = re.findall(r"```python\n(.*?)```", text[start:text.index("\n## ", start + 1)], flags=re.S)[0]
    sweep = synthetic_sweep()
    sweep.to_csv(tmp_path / "results.csv", index=False)
    sweep.assign(run=range(len(sweep))).to_csv(tmp_path / "runs.csv", index=False)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "README.md fitting snippet", "exec"), namespace)
    laws = namespace["laws"]
    assert "| isoflop |" in capsys.readouterr().out  # the markdown table was printed
    assert list(laws.predictions.columns[:2]) == ["approach", "flops"] and "tokens_per_param" in laws.predictions
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == sorted(f"{n}.png" for n in laws.plot())
