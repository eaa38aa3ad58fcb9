"""Bad input on the command line and in the constructors it reaches: one line on stderr naming
the option, exit status 2, and no work done (issue 16, second pass).

The "no work" part is checked by replacing the experiment runners with functions that fail
the test if they are reached."""

from __future__ import annotations

import glob
import os

import numpy as np
import pytest
import torch

pytest.importorskip("typer")

from crfkit._validation import CRFTypeError, CRFValueError  # noqa: E402
from crfkit.cli import learn as learn_cli  # noqa: E402
from crfkit.cli.main import main  # noqa: E402
from crfkit.io.pfm import read_pfm, write_pfm  # noqa: E402
from crfkit.models import GraphMRF  # noqa: E402
from crfkit.models.pairwise import Potts, TruncatedLinear  # noqa: E402
from crfkit.training.config import Config, apply_overrides, load_config  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(capsys, args):
    """``crfkit ARGS`` in-process -> (exit status, stderr lines)."""
    with pytest.raises(SystemExit) as info:
        main(args)
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    return info.value.code, err


def _assert_one_line(code, err, *parts):
    assert code == 2, (code, err)
    assert len(err) == 1, err
    assert err[0].startswith("error: "), err
    for part in parts:
        assert part in err[0], (part, err[0])
    assert "Traceback" not in err[0]


@pytest.fixture
def no_work(monkeypatch):
    """Fail the test if an experiment starts."""

    def refuse(*args, **kwargs):
        raise AssertionError("the experiment started before its arguments were checked")

    for name in ("run_convergence", "run_blocksize", "run_scale", "run_segment"):
        monkeypatch.setattr(learn_cli, name, refuse)


# ---------------------------------------------------------------------------------- usage errors


@pytest.mark.parametrize(
    "args, parts",
    [
        (["stereo", "--threads", "abc", "--out", "x"], ["crfkit stereo", "'--threads'"]),
        (["stereo", "--iters", "2.5", "--out", "x"], ["'--iters'"]),
        (["nosuchcommand"], ["No such command", "nosuchcommand"]),
        (["stereo", "--no-such-option"], ["--no-such-option"]),
        (["learn", "convergence", "--blocks", "many"], ["crfkit learn convergence", "'--blocks'"]),
        (["segment", "predict"], ["crfkit segment predict", "checkpoint"]),
    ],
)
def test_usage_errors_are_one_line_naming_the_option(capsys, args, parts):
    code, err = _run(capsys, args)
    _assert_one_line(code, err, *parts)


def test_help_is_not_an_error(capsys):
    with pytest.raises(SystemExit) as info:
        main(["learn", "scale", "--help"])
    captured = capsys.readouterr()
    assert info.value.code == 0
    assert "--block-nodes" in captured.out and captured.err == ""


# ---------------------------------------------------------------------------------- learn


@pytest.mark.parametrize(
    "args, parts",
    [
        (["convergence", "--graph", "tree"], ["--graph", "'tree'"]),
        (["convergence", "--sizes", "abc"], ["--sizes", "'abc'"]),
        (["convergence", "--sizes", ""], ["--sizes"]),
        (["convergence", "--sizes", "0"], ["--sizes", ">= 1"]),
        (["convergence", "--sizes", "3", "--threads", "0"], ["--threads", "[1, 1024]", "got 0"]),
        (["segment", "--threads", "100000"], ["--threads", "[1, 1024]", "got 100000"]),
        (["segment", "--synthetic", "99999999999"], ["--synthetic", "<= 100000"]),
        (["convergence", "--sizes", "3", "--blocks", "0"], ["--blocks", ">= 1"]),
        (["convergence", "--sizes", "3", "--l2", "-1"], ["--l2", ">= 0"]),
        (["convergence", "--sizes", "3", "--seconds", "-1"], ["--seconds", ">= 0"]),
        (["convergence", "--sizes", "3", "--rtol", "nan"], ["--rtol", "nan"]),
        (["convergence", "--graph", "ba", "--sizes", "2"], ["--sizes >= 3", "got 2"]),
        (["blocksize", "--graph", "ba", "--size", "2"], ["--size >= 3", "got 2"]),
        (["blocksize", "--size", "0"], ["--size >= 1", "got 0"]),
        (["blocksize", "--blocks", "a,b"], ["--blocks", "'a,b'"]),
        (["blocksize", "--size", "4", "--lr-scale", "-1"], ["--lr-scale", "> 0", "-1"]),
        (["scale", "--block-nodes", "0"], ["--block-nodes", ">= 1"]),
        (["scale", "--steps", "0"], ["--steps", ">= 1"]),
        (["segment", "--method", "sgd"], ["--method", "'sgd'"]),
        (["segment", "--downsample", "0"], ["--downsample", ">= 1"]),
        (["segment", "--steps", "0"], ["--steps", ">= 1"]),
        (["segment", "--synthetic", "3"], ["--synthetic", "12", "got 3"]),
        (["segment", "--data", "no/such/folder"], ["--data", "no/such/folder"]),
    ],
)
def test_learn_refuses_bad_options_before_any_work(capsys, tmp_path, no_work, args, parts):
    code, err = _run(capsys, ["learn", *args, "--out", str(tmp_path / "out")])
    _assert_one_line(code, err, *parts)


@pytest.mark.parametrize("where", ["file", "under_file", "empty"])
@pytest.mark.parametrize("command", ["convergence", "scale", "segment"])
def test_learn_refuses_an_unusable_out_before_any_work(capsys, tmp_path, no_work, where, command):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    out = {"file": str(a_file), "under_file": str(a_file / "sub"), "empty": ""}[where]
    code, err = _run(capsys, ["learn", command, "--out", out])
    _assert_one_line(code, err, "--out")
    assert a_file.read_text() == "x"


def test_learn_creates_a_usable_out_and_leaves_no_probe(tmp_path, monkeypatch):
    seen = {}
    monkeypatch.setattr(learn_cli, "run_scale", lambda *a, **k: seen.setdefault("args", a))
    with pytest.raises(SystemExit) as info:
        main(["learn", "scale", "--sizes", "5", "--out", str(tmp_path / "new" / "folder")])
    assert info.value.code == 0
    assert seen["args"][1] == [5]
    assert os.listdir(tmp_path / "new" / "folder") == []


# ---------------------------------------------------------------------------------- segment


@pytest.mark.parametrize(
    "content, parts",
    [
        (b"\x84\x00garbage" * 10, ["torch cannot read"]),
        (b"", ["empty or truncated"]),
        ("tensor", ["'model' and 'config'"]),
        ("folder", ["a folder"]),
    ],
)
@pytest.mark.parametrize("command", ["eval", "predict"])
def test_segment_refuses_files_that_are_not_checkpoints(capsys, tmp_path, content, parts, command):
    path = tmp_path / "checkpoint.pt"
    if content == "tensor":
        torch.save(torch.zeros(2), path)
    elif content == "folder":
        path.mkdir()
    else:
        path.write_bytes(content)
    image = tmp_path / "img.png"
    image.write_bytes(b"")
    extra = [str(image), "--out", str(tmp_path / "preds")] if command == "predict" else []
    code, err = _run(capsys, ["segment", command, str(path), *extra])
    _assert_one_line(code, err, str(path), *parts)


def test_segment_predict_refuses_missing_images_and_an_out_file(capsys, tmp_path):
    code, err = _run(capsys, ["segment", "predict", "ckpt.pt", str(tmp_path / "none.png")])
    _assert_one_line(code, err, "none.png")
    image, out = tmp_path / "img.png", tmp_path / "out_file"
    image.write_bytes(b"")
    out.write_text("x")
    code, err = _run(capsys, ["segment", "predict", "ckpt.pt", str(image), "--out", str(out)])
    _assert_one_line(code, err, "--out", "existing file")


@pytest.mark.parametrize(
    "override, parts",
    [
        ("train.steps=-1", ["train.steps", ">= 1"]),
        ("train.batch_size=0", ["train.batch_size"]),
        ("optim.lr=-1", ["optim.lr", "> 0"]),
        ("optim.lr=nan", ["optim.lr", "nan"]),
        ("optim.momentum=1.5", ["optim.momentum", "[0, 1)"]),
        ("model.num_classes=1", ["model.num_classes", ">= 2"]),
        ("model.crf_gamma=-1", ["model.crf_gamma", ">= 0"]),
        ("model.backbone=vgg", ["model.backbone", "'vgg'"]),
        ("model.pairwise_form=dense", ["model.pairwise_form", "'dense'"]),
        ("model.output_stride=12", ["model.output_stride", "12"]),
        ("model.offsets=[[0,0]]", ["model.offsets", "(0, 0)"]),
        ("data.name=imagenet", ["data.name", "'imagenet'"]),
        ("data.crop_size=0", ["data.crop_size"]),
        ("data.shapes_size=100000000", ["data.shapes_size", "<= 4096"]),
        ("data.scale_min=2.0", ["data.scale_min <= data.scale_max"]),
        ("train.device=tpu", ["train.device", "'tpu'"]),
        ("train.amp_dtype=int8", ["train.amp_dtype", "'int8'"]),
    ],
)
def test_segment_train_refuses_out_of_range_config_before_any_work(capsys, tmp_path, override, parts):
    out = tmp_path / "run"
    code, err = _run(capsys, ["segment", "train", "--set", override, "--out", str(out)])
    _assert_one_line(code, err, *parts)
    assert not out.exists()
    with pytest.raises(CRFValueError, match=parts[0].split()[0].replace(".", r"\.")):
        apply_overrides(Config(), [override])


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(ROOT, "configs", "*.toml"))))
def test_shipped_configs_pass_validation(path):
    cfg = load_config(path)
    assert Config.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize(
    "content, parts",
    [(b"[model\n", ["invalid TOML"]), (b"\x84\xff\x00", ["UTF-8"]), ("folder", ["a folder"])],
)
def test_config_file_errors_name_the_file(tmp_path, content, parts):
    path = tmp_path / "cfg.toml"
    if content == "folder":
        path.mkdir()
    else:
        path.write_bytes(content)
    with pytest.raises((CRFValueError, FileNotFoundError)) as info:
        load_config(str(path))
    msg = str(info.value)
    assert str(path) in msg and "\n" not in msg
    for part in parts:
        assert part in msg


def test_overrides_must_be_a_list_of_strings():
    with pytest.raises(CRFTypeError, match="list of 'section.key=value' strings"):
        apply_overrides(Config(), "optim.lr=1")


# ---------------------------------------------------------------------------------- constructors


@pytest.mark.parametrize("weight", ["a", None, [1.0, 2.0], True, 1 + 2j])
def test_potts_refuses_a_weight_that_is_not_a_number_or_tensor(weight):
    with pytest.raises(CRFTypeError, match="expected weight to be a tensor or a real number"):
        Potts(weight)


@pytest.mark.parametrize("truncation", ["a", None, True, torch.tensor([1.0, 2.0]), 1 + 1j])
def test_truncated_linear_refuses_a_truncation_that_is_not_a_real_number(truncation):
    with pytest.raises(CRFTypeError, match="expected truncation to be a real number > 0"):
        TruncatedLinear(1.0, truncation)


def test_numpy_and_integer_weights_score_as_floats():
    """Accepted numeric types (numpy scalars, ints) give the closed-form truncated-linear score
    ``Σ unary - w · min(|a - c|, t)`` on every labelling."""
    edges = torch.tensor([[0, 1], [1, 2]])
    unary = torch.randn(3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for w, t in [(np.float32(2.0), np.int64(3)), (2, 3), (np.float64(2.0), 3.0), (2.0, 3)]:
        mrf = GraphMRF(unary, edges, TruncatedLinear(w, t))
        for x in torch.cartesian_prod(*[torch.arange(4)] * 3):
            a, b, c = (int(v) for v in x)
            ref = float(unary[0, a] + unary[1, b] + unary[2, c]) - 2.0 * (min(abs(a - b), 3) + min(abs(b - c), 3))
            assert float(mrf.score(x)) == pytest.approx(ref, abs=1e-12)


def test_read_pfm_refuses_a_path_that_is_not_a_path():
    with pytest.raises(CRFTypeError, match="expected path to be a file path"):
        read_pfm(None)


def test_write_pfm_names_the_path_asked_for(tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    with pytest.raises(CRFValueError, match="got a folder"):
        write_pfm(tmp_path, np.zeros((2, 2)))
    with pytest.raises(CRFValueError, match="under the file"):
        write_pfm(a_file / "x.pfm", np.zeros((2, 2)))
    assert a_file.read_text() == "x"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]  # no temporary file left


def test_crfkit_traceback_shows_the_exception(monkeypatch, tmp_path):
    monkeypatch.setenv("CRFKIT_TRACEBACK", "1")
    with pytest.raises(CRFValueError, match="--graph"):
        main(["learn", "scale", "--graph", "tree", "--out", str(tmp_path)])
