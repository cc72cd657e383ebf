"""``vae_study compare`` and the paper files (tables.tex, tables.csv, PDF/SVG figures), on
study folders made by hand (no training), and one slow test over two tiny real studies."""

from __future__ import annotations

import csv
import math
import re
import shutil
import statistics
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import yaml

from study_factory import tiny_study, write_members
from vae_study import metrics as M
from vae_study.cli import main
from vae_study.config.study import study_from_dict
from vae_study.config.yaml_file import write_yaml
from vae_study.records import results as R
from vae_study.records.configurations import AGGREGATED
from vae_study.records.folder import load_folder
from vae_study.records.layout import COMPLETED, FAILED, StudyLayout
from vae_study.records.replicates import CONFIG_KEY, REPLICATE_KEY, read_configs, write_configs
from vae_study.report import comparison_figure, figure_files, paper, rd_plane
from vae_study.report.comparison import compare
from vae_study.report.comparison_html import png_size
from vae_study.report.comparison_tables import shared_differences
from vae_study.report.page import build_report
from vae_study.report.paired import t_quantile

REPO = Path(__file__).resolve().parents[1]
KS = (1, 5)
SEEDS = 3


def _member_metrics(quantity: str, k: int, r: int, shift: float) -> dict:
    """Plausible test numbers of seed r at K=k, with a seed effect shared across studies
    (so pairing by seed matters) and ``shift`` added to the distortion."""
    rate = 20.0 + 3.0 * k + 0.7 * r
    dist = 80.0 - 1.5 * k + 1.3 * r + shift + 0.1 * r * r * (k == 5) * (shift != 0)
    bound = M.bound_key("test", quantity)
    return {
        M.TEST_RATE: rate,
        M.TEST_DISTORTION: dist,
        M.TEST_NEG_ELBO: rate + dist,
        bound: rate + dist - 2.0 - 0.5 * k,
        M.bound_key("val", quantity): rate + dist - 2.5 - 0.5 * k + 0.05 * r,
        M.TEST_BOUND_GAP: 2.0 + 0.5 * k,
        M.TEST_NLL_EXAMPLES: 100,
        M.TEST_ACTIVE_UNITS: 2,
    }


def make_study(
    tmp: Path,
    name: str,
    *,
    objective: str = "elbo",
    binarize: str = "dynamic",
    shift: float = 0.0,
    eval_k: int = 8,
    failed: tuple[int, int] | None = None,
    confirm: bool = False,
) -> Path:
    """A replicated study folder over train.k in {1, 5}, 3 seeds each (results.csv and
    configs.csv as a study writes them), optionally its confirmation of K=5 with 3 fresh
    seeds; ``failed`` = (config, replicate) marks one member diverged."""
    (tmp / "data").mkdir(exist_ok=True)
    raw = {
        "name": name,
        "output": {"dir": str(tmp / "runs")},
        "data": {"root": str(tmp / "data"), "binarize": binarize, "val_size": 50},
        "model": {"hidden": [32], "latent_dim": 2},
        "train": {"epochs": 1, "objective": objective, "device": "cpu"},
        "eval": {"k": eval_k, "surgery_examples": 60},
        "search": {
            "algorithm": "grid",
            "num_trials": len(KS),
            "replicates": SEEDS,
            "space": {"train.k": {"choice": list(KS)}},
            **({"confirm": {"top": 1, "replicates": SEEDS}} if confirm else {}),
        },
    }
    study = study_from_dict(raw)
    layout = StudyLayout.of(tmp / "runs", name)
    layout.folder.mkdir(parents=True)
    write_yaml(layout.study_file, study.to_dict())
    quantity = study.base.quantity

    def members(stage_shift: float, configs: dict[int, int], bad=None) -> list[dict]:
        out = []
        for cid, k in configs.items():
            for r in range(SEEDS):
                status = FAILED if bad == (cid, r) else COMPLETED
                m = {CONFIG_KEY: cid, REPLICATE_KEY: r, "status": status, "train.k": k}
                if status == COMPLETED:
                    m.update(_member_metrics(quantity, k, r, shift + stage_shift))
                else:
                    m[R.ERROR_KEY] = "training diverged: the loss is nan at epoch 1, batch 3"
                out.append(m)
        return out

    def write(folder: Path, rows: list[dict], seed_offset: int) -> None:
        path = write_members(folder, rows, seed_offset=seed_offset)
        table = R.read_results(path).to_dict("records")
        write_configs(
            StudyLayout(folder).configs_file,
            table,
            param_keys=["train.k"],
            metrics=list(AGGREGATED),
            replicates=SEEDS,
        )

    write(layout.folder, members(0.0, {0: KS[0], 1: KS[1]}, failed), 0)
    if confirm:
        write(layout.confirm_dir, members(0.4, {1: KS[1]}), SEEDS)
    return layout.folder


@pytest.fixture
def figures(monkeypatch):
    """The figures the report draws, kept open to inspect (and still saved, PNG/PDF/SVG)."""
    kept = {}
    save = figure_files.save_figure

    def keep(fig, path):
        kept[path.name] = fig
        return save(fig, path)

    monkeypatch.setattr(figure_files, "save_figure", keep)
    return kept


def _configs(folder: Path) -> dict[str, dict]:
    frame = read_configs(StudyLayout(folder).configs_file)
    return {str(int(r[CONFIG_KEY])): r for r in frame.to_dict("records")}


def _by_label(ax, label: str):
    for c in ax.collections:
        if c.get_label() == label:
            return c
    raise AssertionError(f"no artist labelled {label!r}: {[c.get_label() for c in ax.collections]}")


def _errorbar(ax, label: str):
    for c in ax.containers:
        if c.get_label() == label:
            return c
    raise AssertionError(f"no error bars labelled {label!r}")


def test_each_studys_plotted_points_and_bars_are_its_configs_csv_means_and_errors(
    tmp_path, figures
):
    a = make_study(tmp_path, "vae", confirm=True)
    b = make_study(tmp_path, "iwae", objective="iwae", shift=-1.0)
    out = compare([a, b], tmp_path / "cmp")
    fig = figures["rate_distortion.png"]
    (ax,) = fig.axes  # one evaluation: one panel, shared axes
    for name, folder in (("vae", a), ("iwae", b)):
        want = _configs(folder)
        ids = sorted(want)
        points = _by_label(ax, f"{name}: configurations (mean test R, D)").get_offsets()
        expected = [[want[i][M.TEST_RATE], want[i][M.TEST_DISTORTION]] for i in ids]
        np.testing.assert_allclose(sorted(points.tolist()), sorted(expected))
        bars = _errorbar(ax, f"{name}: {rd_plane.RD_ERRORBAR_LABEL}")
        x_seg, y_seg = bars.lines[2]  # LineCollections: x error bars, then y error bars
        for seg in x_seg.get_segments():
            (x0, y), (x1, _) = seg
            (row,) = [w for w in want.values() if math.isclose(w[M.TEST_DISTORTION], y)]
            assert (x1 - x0) / 2 == pytest.approx(row[M.TEST_RATE + "_se"])
        for seg in y_seg.get_segments():
            (x, y0), (_, y1) = seg
            (row,) = [w for w in want.values() if math.isclose(w[M.TEST_RATE], x)]
            assert (y1 - y0) / 2 == pytest.approx(row[M.TEST_DISTORTION + "_se"])
    # Each point is labelled with its searched values, in its study's colour.
    texts = sorted(t.get_text() for t in ax.texts)
    assert texts == ["K=1", "K=1", "K=5", "K=5"]
    # The confirmed configuration of "vae" at its confirmation's means, not the search's.
    conf = _configs(StudyLayout(a).confirm_dir)["1"]
    hollow = _by_label(ax, "vae: confirmed (fresh seeds)").get_offsets().tolist()
    assert hollow == [pytest.approx([conf[M.TEST_RATE], conf[M.TEST_DISTORTION]])]
    with pytest.raises(AssertionError):
        _by_label(ax, "iwae: confirmed (fresh seeds)")  # it has no confirmation
    for suffix in (".png", ".pdf", ".svg"):
        assert (out / f"rate_distortion{suffix}").stat().st_size > 1000


def test_a_cross_entropy_study_against_an_nll_study_is_refused_with_one_line(
    tmp_path, capsys, figures
):
    nll = make_study(tmp_path, "binary")
    ce = make_study(tmp_path, "grey", binarize="none")
    out = tmp_path / "cmp"
    assert main(["compare", str(nll), str(ce), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert "binary" in err[0] and "grey" in err[0]
    assert "test NLL vs test cross-entropy bound" in err[0]
    assert "--allow-different-evaluation" in err[0]
    assert not out.exists()  # refused before a file is written

    assert (
        main(["compare", str(nll), str(ce), "--out", str(out), "--allow-different-evaluation"]) == 0
    )
    fig = figures["rate_distortion.png"]
    assert len(fig.axes) == 2  # one panel per evaluation: never an NLL and a CE on one axis
    for ax, own, other in zip(fig.axes, ("binary", "grey"), ("grey", "binary"), strict=True):
        labels = {c.get_label() for c in ax.collections}
        assert any(lb.startswith(f"{own}:") for lb in labels)
        assert not any(lb.startswith(f"{other}:") for lb in labels)
        assert "evaluated differently" in ax.get_title()
        assert "test NLL vs" in ax.get_title() or "cross-entropy bound vs" in ax.get_title()
    page = (out / "index.html").read_text()
    assert "not evaluated alike" in page
    assert shared_differences(_studies(nll, ce)) == []  # never paired across evaluations


def _studies(*folders):
    from vae_study.report.comparable import Study

    return [
        Study(
            load_folder(f).study.name,
            load_folder(f),
            comparison_figure.StudyStyle("x", "#000000", "o"),
        )
        for f in folders
    ]


def test_other_eval_k_is_refused_and_naming_the_difference(tmp_path, capsys):
    a = make_study(tmp_path, "k8")
    b = make_study(tmp_path, "k16", eval_k=16)
    assert main(["compare", str(a), str(b), "--out", str(tmp_path / "cmp")]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "eval.k 8 vs 16" in line and "k8" in line and "k16" in line


def _hand_difference(quantity_key: str, k: int, shift_b: float) -> tuple[float, float, float]:
    """mean, se and the 95% half-width of b - a at K=k over the 3 seeds, by hand."""
    d = [
        _member_metrics("nll", k, r, shift_b)[quantity_key]
        - _member_metrics("nll", k, r, 0.0)[quantity_key]
        for r in range(SEEDS)
    ]
    mean = statistics.fmean(d)
    se = statistics.stdev(d) / math.sqrt(len(d))
    return mean, se, 4.302652729911275 * se


def test_the_paired_differences_at_shared_configurations_equal_a_hand_computation(tmp_path):
    a = make_study(tmp_path, "vae")
    b = make_study(tmp_path, "iwae", objective="iwae", shift=-1.0, failed=(0, 2))
    out = compare([a, b], tmp_path / "cmp")
    diffs = shared_differences(_studies(a, b))
    # K=1 of "iwae" lost a seed: no mean, so no pair there; K=5 pairs 3 seeds.
    assert {d.setting for d in diffs} == {"train.k=5"}
    assert t_quantile(0.975, 2) == pytest.approx(4.302652729911275)
    for d in diffs:
        assert (d.a, d.b, d.contrast.n) == ("vae", "iwae", SEEDS)
        mean, se, half = _hand_difference(d.metric, 5, -1.0)
        assert d.contrast.mean == pytest.approx(mean)
        assert d.contrast.se == pytest.approx(se)
        assert (d.contrast.low, d.contrast.high) == pytest.approx((mean - half, mean + half))
    nll = next(d for d in diffs if d.metric == M.TEST_NLL)
    assert nll.contrast.se > 0  # the seeds' differences vary: a real s.e., not 0
    page = (out / "index.html").read_text()
    assert f"{nll.contrast.mean:.4g} ± {nll.contrast.se:.3g}" in page
    tex = (out / paper.TEX_FILE).read_text()
    assert f"{nll.contrast.mean:.4g} $\\pm$ {nll.contrast.se:.3g}" in tex


def _tex_rows(tex: str, label: str) -> list[list[str]]:
    """The body rows of the table labelled ``label`` in tables.tex, cells stripped."""
    block = tex.split(f"\\label{{{label}}}", 1)[1].split("\\end{tabular}", 1)[0]
    body = block.split("\\midrule", 1)[1].split("\\bottomrule", 1)[0]
    return [
        [c.strip() for c in line.rstrip("\\ ").split(" & ")] for line in body.strip().splitlines()
    ]


def _check_tex_structure(tex: str) -> None:
    """What pdflatex would reject in a booktabs table: unbalanced environments or braces,
    rows with another number of cells than the heading, a bare special character."""
    assert tex.count("\\begin{table}") == tex.count("\\end{table}") > 0
    assert tex.count("\\begin{tabular}") == tex.count("\\end{tabular}")
    for block in tex.split("\\begin{tabular}")[1:]:
        cols = re.match(r"\{([lrc]+)\}", block).group(1)
        body = block.split("\\end{tabular}")[0]
        for line in body.splitlines()[1:]:
            if line.endswith("\\\\"):
                cells = re.split(r"(?<!\\)&", line)
                assert len(cells) == len(cols), line
    body = tex.split("\n", 2)[2]  # after the two comment lines
    text = re.sub(r"\\[a-zA-Z]+|\\.", "", body)
    assert text.count("{") == text.count("}")
    assert text.count("$") % 2 == 0
    prose = re.sub(r"\$[^$]*\$", "", re.sub(r"\\.", "", body))  # outside math, escapes gone
    for bad in ("_", "#", "%", "^", "&" * 0 or "~"):
        assert bad not in prose, bad


def test_tables_tex_and_csv_match_configs_csv_with_no_mean_for_a_failed_configuration(tmp_path):
    a = make_study(tmp_path, "vae", failed=(0, 1), confirm=True)
    b = make_study(tmp_path, "iwae", objective="iwae", shift=-1.0)
    out = compare([a, b], tmp_path / "cmp")
    tex = (out / paper.TEX_FILE).read_text()
    _check_tex_structure(tex)
    with open(out / paper.CSV_FILE, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 + 1 + 2  # one per configuration: vae's 2 and its confirmed, iwae's 2
    for i, (name, folder) in enumerate((("vae", a), ("iwae", b))):
        want = _configs(folder)
        tex_rows = {r[0]: r for r in _tex_rows(tex, f"tab:study-{i + 1}") if r[1] == "search"}
        for cid, w in want.items():
            (got,) = [
                r
                for r in rows
                if (r["study"], r["stage"], r["configuration"]) == (name, "search", cid)
            ]
            assert got["quantity"] == "nll" and got["metric"] == M.TEST_NLL
            assert got["n"] == str(int(w["n_finished"])) and got["n_replicates"] == "3"
            assert got["train.k"] == str(int(w["train.k"]))
            if w["status"] == COMPLETED:
                assert float(got["mean"]) == pytest.approx(w[M.TEST_NLL])
                assert float(got["se"]) == pytest.approx(w[M.TEST_NLL + "_se"])
                assert float(got["rate_mean"]) == pytest.approx(w[M.TEST_RATE])
                assert float(got["distortion_se"]) == pytest.approx(w[M.TEST_DISTORTION + "_se"])
                cell = f"{w[M.TEST_NLL]:.5g} $\\pm$ {w[M.TEST_NLL + '_se']:.3g}"
                assert tex_rows[cid][4] == cell
            else:  # the failed configuration: 2 of 3 seeds, and no mean anywhere
                assert (name, cid, w["status"]) == ("vae", "0", FAILED)
                assert got["mean"] == got["se"] == got["rate_mean"] == ""
                assert tex_rows[cid][4:8] == ["", "", "", ""]
                assert tex_rows[cid][-1] == "2 of 3"
    assert "test NLL" in tex and "nats per example" in tex
    head = tex.split("\\label{tab:compare-headline}", 1)[0].rsplit("\\caption", 1)[1]
    assert "nats per example" in head
    # The headline: vae's confirmed configuration (its confirmation's numbers), iwae's
    # search selection, said to be optimistic.
    conf = _configs(StudyLayout(a).confirm_dir)["1"]
    vae_row, iwae_row = _tex_rows(tex, "tab:compare-headline")
    assert vae_row[0] == "vae" and vae_row[2].startswith("confirmed")
    assert vae_row[4] == f"{conf[M.TEST_NLL]:.5g} $\\pm$ {conf[M.TEST_NLL + '_se']:.3g}"
    assert "optimistic" in iwae_row[2]


def test_tables_tex_compiles_with_pdflatex(tmp_path):
    if shutil.which("pdflatex") is None:
        pytest.skip("no pdflatex on this machine (tables.tex is checked by the parser test)")
    a = make_study(tmp_path, "vae_1", failed=(1, 0), confirm=True)  # _ must be escaped
    b = make_study(tmp_path, "iwae", objective="iwae", shift=-1.0)
    out = compare([a, b], tmp_path / "cmp")
    report = build_report(a, tmp_path / "report")
    for folder in (out, report):
        _check_tex_structure((folder / paper.TEX_FILE).read_text())
        doc = folder / "doc.tex"
        doc.write_text(
            "\\documentclass{article}\\usepackage[T1]{fontenc}\\usepackage{booktabs}"
            "\\usepackage[margin=1cm,landscape]{geometry}"
            "\\begin{document}\\input{tables.tex}\\end{document}\n"
        )
        run = subprocess.run(
            ["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "doc.tex"],
            cwd=folder,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert run.returncode == 0, run.stdout[-2000:]
        assert (folder / "doc.pdf").stat().st_size > 1000


def _embedded_truetype(pdf: Path) -> list[str]:
    """The fonts of a PDF's pages that are embedded TrueType (Type 42) programs."""
    from pypdf import PdfReader

    names = []
    for page in PdfReader(pdf).pages:
        fonts = page["/Resources"].get("/Font", {})
        for ref in fonts.values():
            font = ref.get_object()
            desc = font.get("/FontDescriptor")
            if font.get("/Subtype") == "/Type0":
                desc = font["/DescendantFonts"][0].get_object().get("/FontDescriptor")
            assert desc is not None and "/FontFile2" in desc.get_object(), font
            names.append(str(font.get("/BaseFont")))
    return names


def test_every_figure_is_also_a_vector_pdf_that_opens_with_its_fonts_embedded_and_an_svg(
    tmp_path,
):
    import pypdfium2 as pdfium

    a = make_study(tmp_path, "vae", confirm=True)
    b = make_study(tmp_path, "iwae", objective="iwae", shift=-1.0)
    out = compare([a, b], tmp_path / "cmp")
    report = build_report(a, tmp_path / "report")
    pngs = sorted(report.glob("*.png")) + [out / "rate_distortion.png"]
    names = {p.name for p in pngs}
    assert {"rate_distortion.png", "knobs.png"} <= names
    for png in pngs:
        pdf, svg = png.with_suffix(".pdf"), png.with_suffix(".svg")
        doc = pdfium.PdfDocument(pdf)
        image = doc[0].render(scale=1).to_pil()
        assert image.width > 100 and image.height > 100
        lo, hi = image.convert("L").getextrema()
        assert hi - lo > 100  # drawn, not blank
        assert _embedded_truetype(pdf), pdf  # text, in embedded TrueType fonts
        root = ET.parse(svg).getroot()
        assert root.tag.endswith("svg")
        assert not list(root.iter("{http://www.w3.org/2000/svg}text"))  # glyphs as paths
        if shutil.which("pdftoppm"):
            run = subprocess.run(
                ["pdftoppm", "-png", "-r", "30", str(pdf), str(tmp_path / "page")],
                capture_output=True,
            )
            assert run.returncode == 0, run.stderr
    page = (report / "index.html").read_text()
    assert 'href="rate_distortion.pdf"' in page and 'href="rate_distortion.svg"' in page
    assert (report / paper.TEX_FILE).is_file() and (report / paper.CSV_FILE).is_file()
    w, h = png_size(out / "rate_distortion.png")
    assert f'width="{w}" height="{h}"' in (out / "index.html").read_text()


def test_the_output_folder_must_be_a_comparisons_own(tmp_path, capsys):
    a = make_study(tmp_path, "vae")
    b = make_study(tmp_path, "iwae", objective="iwae")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("my thesis")
    assert main(["compare", str(a), str(b), "--out", str(mine)]) == 2
    assert "thesis.tex" in capsys.readouterr().err
    assert (mine / "thesis.tex").read_text() == "my thesis"
    assert main(["compare", str(a), str(b), "--out", str(a / "cmp")]) == 2
    assert "study folder" in capsys.readouterr().err
    assert main(["compare", str(a), str(a), "--out", str(tmp_path / "c")]) == 2
    assert "twice" in capsys.readouterr().err
    assert main(["compare", str(a), "--out", str(tmp_path / "c")]) == 2
    assert main(["compare", str(a), str(b), "--out", str(tmp_path / "c")]) == 0
    assert (
        main(["compare", str(b), str(a), "--out", str(tmp_path / "c")]) == 0
    )  # its own: rewritten


def test_compare_from_python_is_the_commands(tmp_path):
    import vae_study

    a = make_study(tmp_path, "vae")
    b = make_study(tmp_path, "iwae", objective="iwae")
    out = vae_study.compare([a, b], tmp_path / "cmp")
    assert (out / "index.html").is_file()
    assert '<span class="study"' in (out / "index.html").read_text()


def test_headless_chromium_shows_every_studys_curve(tmp_path):
    """scripts/screenshot_compare.py: the page, shot in headless Chromium, holds pixels of
    every study's colour that the figure adds; a page whose figure lost a study fails."""
    script = REPO / "scripts" / "screenshot_compare.py"
    a = make_study(tmp_path, "vae", confirm=True)
    b = make_study(tmp_path, "iwae", objective="iwae", shift=-1.0)
    out = compare([a, b], tmp_path / "cmp")
    run = subprocess.run(
        [sys.executable, str(script), str(out), "--png", str(tmp_path / "shot.png")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if run.returncode == 2 and "no headless browser" in run.stderr:
        pytest.skip("no Chromium on this machine")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "vae" in run.stdout and "iwae" in run.stdout
    # The same page with a figure that draws only the first study: the check must fail.
    from PIL import Image

    with Image.open(out / "rate_distortion.png") as im:
        blank = Image.new("RGB", im.size, "white")
    blank.save(out / "rate_distortion.png")
    run = subprocess.run(
        [sys.executable, str(script), str(out)], capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 1, run.stdout + run.stderr
    assert "2 problems" in run.stdout + run.stderr


@pytest.mark.slow
@pytest.mark.usefixtures("shared_ray")
def test_two_tiny_real_studies_compare_through_the_command_line(tmp_path):
    """Two real studies (Ray, Optuna, training on tiny data), VAE and IWAE over K in {1, 2}
    with 2 seeds, then ``python -m vae_study compare`` in a process of its own."""
    folders = []
    for objective in ("elbo", "iwae"):
        raw = tiny_study(
            tmp_path,
            name=f"tiny_{objective}",
            **{
                "train.objective": objective,
                "train.epochs": 1,
                "search.algorithm": "grid",
                "search.num_trials": 2,
                "search.replicates": 2,
                "search.space": {"train.k": {"choice": [1, 2]}},
            },
        )
        path = tmp_path / f"{objective}.yaml"
        path.write_text(yaml.safe_dump(raw))
        assert main(["run", str(path), "--no-report"]) == 0
        folders.append(tmp_path / "runs" / f"tiny_{objective}")
    out = tmp_path / "cmp"
    run = subprocess.run(
        [sys.executable, "-m", "vae_study", "compare", *map(str, folders), "--out", str(out)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr
    for name in ("index.html", "rate_distortion.png", "rate_distortion.pdf", "tables.tex"):
        assert (out / name).stat().st_size > 0, name
    with open(out / paper.CSV_FILE, newline="") as f:
        rows = list(csv.DictReader(f))
    assert {(r["study"], r["train.k"], r["status"]) for r in rows} == {
        (s, k, COMPLETED) for s in ("tiny_elbo", "tiny_iwae") for k in ("1", "2")
    }
    # The paired difference at K=2, by hand from the two results.csv files.
    tables = [R.read_results(StudyLayout(f).results_file) for f in folders]
    by_seed = [
        {int(r["seed"]): r[M.TEST_NLL] for r in t.to_dict("records") if int(r["train.k"]) == 2}
        for t in tables
    ]
    d = [by_seed[1][s] - by_seed[0][s] for s in sorted(by_seed[0])]
    diffs = {(x.setting, x.metric): x.contrast for x in shared_differences(_studies(*folders))}
    got = diffs[("train.k=2", M.TEST_NLL)]
    assert got.n == 2 and got.mean == pytest.approx(statistics.fmean(d))
    assert f"{got.mean:.4g} ± {got.se:.3g}" in (out / "index.html").read_text()


def test_the_shipped_comparison_pair_differs_only_in_the_objective_and_name():
    a = yaml.safe_load((REPO / "studies" / "compare_vae.yaml").read_text())
    b = yaml.safe_load((REPO / "studies" / "compare_iwae.yaml").read_text())
    assert (a["train"].pop("objective"), b["train"].pop("objective")) == ("elbo", "iwae")
    assert (a.pop("name"), b.pop("name")) == ("compare_vae", "compare_iwae")
    assert a == b
    assert a["search"]["replicates"] >= 3 and a["search"]["space"] == {
        "train.k": {"choice": [1, 5]}
    }
    assert a["data"]["binarize"] == "dynamic"
