"""
main.log (llm.c's log lines, which the run directory's log() writes) as dev/vislog.py parses and plots it.
"""

import pytest

import train_gpt2 as tg
from tests.helpers import read_log, trainer_args


def test_log_lines_parse(run_dir, capsys):
    assert tg.main(trainer_args(run_dir, run_dir / "out", "-x", "12")) == 0
    lines = read_log(run_dir / "out").splitlines()
    train = [line for line in lines if " trl:" in line]
    val = [line for line in lines if " tel:" in line]
    assert len(train) == 12 and [line.split()[0] for line in val] == ["s:0", "s:5", "s:10", "s:12"]
    for line in train:
        step, loss, lr, norm = line.split()
        assert step.startswith("s:") and loss.startswith("trl:") and lr.startswith("lr:") and norm.startswith("norm:")
        float(loss[4:]), float(lr[3:]), float(norm[5:])
    from dev import vislog
    train_losses, val_losses, evals = vislog.parse_log(str(run_dir / "out" / "main.log"))
    assert sorted(train_losses) == list(range(12)) and sorted(val_losses) == [0, 5, 10, 12] and evals == {}
    pytest.importorskip("matplotlib")
    assert vislog.main([str(run_dir / "out" / "main.log"), "-o", str(run_dir / "loss.png")]) == 0
    assert (run_dir / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_vislog_plots_eval_accuracy_beside_the_losses(tmp_path, capsys):
    """llm.c's eval lines (`s:STEP eval:ACC`, HellaSwag's accuracy) make a third panel; a log without them, two."""
    from dev import vislog
    with_evals, losses_only = tmp_path / "evals" / "main.log", tmp_path / "losses" / "main.log"
    for path in (with_evals, losses_only):
        path.parent.mkdir()
    with_evals.write_text("s:0 tel:4.5000\ns:0 eval:0.2955\ns:0 trl:4.6000 lr:0.000100 norm:1.50\n"
                          "s:1 trl:4.4000 lr:0.000100 norm:1.40\ns:2 tel:4.2000\ns:2 eval:0.3120\n"
                          "s:2 eval:0.3100\n")  # a later line wins, as after a resume
    losses_only.write_text("s:0 tel:4.5000\ns:0 trl:4.6000 lr:0.000100 norm:1.50\n")
    assert vislog.parse_log(str(with_evals)) == ({0: 4.6, 1: 4.4}, {0: 4.5, 2: 4.2}, {0: 0.2955, 2: 0.31})
    assert vislog.parse_log(str(losses_only)) == ({0: 4.6}, {0: 4.5}, {})
    (tmp_path / "bad.log").write_text("s:0 eval:0.3\ns:1 evl:0.3\n")
    with pytest.raises(ValueError, match="bad.log:2: not a main.log line"):
        vislog.parse_log(str(tmp_path / "bad.log"))
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    figures = []
    save = plt.Figure.savefig

    def keep(figure, *args, **kwargs):  # the panels' titles, before the PNG
        figures.append([ax.get_title() for ax in figure.axes])
        return save(figure, *args, **kwargs)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(plt.Figure, "savefig", keep)
        assert vislog.main([str(losses_only), "-o", str(tmp_path / "two.png")]) == 0
        assert vislog.main([str(with_evals), str(losses_only), "-o", str(tmp_path / "three.png")]) == 0
    assert figures == [["train loss", "val loss"], ["train loss", "val loss", "eval accuracy (HellaSwag)"]]
    for name in ("two.png", "three.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "evals: best eval accuracy 0.3100, at step 2" in capsys.readouterr().out
