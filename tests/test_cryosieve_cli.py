"""`cryonb sieve-core` and `cryonb sieve` command lines: flags of the reference tools, outputs, errors,
RELION called as a subprocess with the reference's flags (with stand-in scripts), resumability."""
import json
import subprocess
import sys

import numpy as np
import pytest
import starfile

from cryonb.cli import main
from cryonb.methods import cryosieve as cs
from cryonb import synthetic


@pytest.fixture(scope="module")
def blob(tmp_path_factory):
    return synthetic.blob_dataset(tmp_path_factory.mktemp("cli"), n=120, D=32, apix=2.0, junk_fraction=0.2, noise_sigma=3.0, seed=21)


def test_sieve_core_cli_matches_function(blob, tmp_path, caplog):
    import logging
    argv = ["sieve-core", "--i", str(blob["star"]), "--o", str(tmp_path / "out.star"), "--volume", str(blob["map"]),
            "--volume", str(blob["map"]), "--mask", str(blob["mask"]), "--retention_ratio", "0.75", "--frequency", "20",
            "--device", "cpu", "--batch_size", "32"]
    lg = logging.getLogger("cryonb")                  # cryonb's loggers do not propagate to the root logger
    lg.addHandler(caplog.handler)
    try:
        assert main(argv) == 0
    finally:
        lg.removeHandler(caplog.handler)
    out = caplog.text
    assert "half-set 1: 60 particles, 45 kept" in out and "half-set 2: 60 particles, 45 kept" in out
    r = cs.sieve_core(blob["star"], tmp_path / "fn.star", [blob["map"]] * 2, 20.0, mask=blob["mask"], retention_ratio=0.75,
                      device="cpu", verbose=False)
    a = starfile.read(tmp_path / "out.star")["particles"]["rlnImageName"].tolist()
    b = starfile.read(tmp_path / "fn.star")["particles"]["rlnImageName"].tolist()
    assert a == b and len(a) == 90
    assert (tmp_path / "out_sieved.star").is_file()


def test_sieve_core_cli_errors(blob, tmp_path, capsys):
    assert main(["sieve-core", "--i", str(tmp_path / "missing.star"), "--o", str(tmp_path / "o.star"), "--volume", str(blob["map"]),
                 "--frequency", "20", "--device", "cpu"]) == 2
    assert "missing.star" in capsys.readouterr().err
    assert main(["sieve-core", "--i", str(blob["star"]), "--o", str(tmp_path / "o.star"), "--volume", str(blob["map"]),
                 "--frequency", "20", "--device", "cpu"]) == 2
    assert "one --volume per half-set" in capsys.readouterr().err
    # argparse: --frequency is required, as in the reference; exit 2 in the one message format
    assert main(["sieve-core", "--i", str(blob["star"]), "--o", "x.star", "--volume", str(blob["map"])]) == 2
    assert "cryonb sieve-core: error:" in capsys.readouterr().err
    # a half-map at another pixel size than the particles is refused, naming both
    from cryonb.io import read_map, write_map
    write_map(tmp_path / "1A.mrc", read_map(blob["map"])[0], 1.0)
    assert main(["sieve-core", "--i", str(blob["star"]), "--o", str(tmp_path / "o.star"), "--volume", str(tmp_path / "1A.mrc"),
                 "--volume", str(tmp_path / "1A.mrc"), "--frequency", "20", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "1A.mrc" in err and "pixel size 1 Å" in err and "2 Å" in err and not (tmp_path / "o.star").exists()


def test_console_script_help():
    r = subprocess.run([sys.executable, "-c", "import sys; from cryonb.cli import main; sys.exit(main(sys.argv[1:]))",
                        "sieve-core", "-h"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0
    for flag in ("--i", "--o", "--directory", "--angpix", "--volume", "--mask", "--retention_ratio", "--frequency", "--balance", "--num_gpus"):
        assert flag in r.stdout


FAKE_RECONSTRUCT = r'''
import json, sys, os, shutil
args = sys.argv[1:]
log = os.environ["FAKE_RELION_LOG"]
with open(log, "a") as f: f.write(json.dumps({"tool": "reconstruct", "argv": args, "cwd": os.getcwd()}) + "\n")
o = args[args.index("--o") + 1]
shutil.copy(os.environ["FAKE_RELION_MAP"], o)       # stands in for relion_reconstruct's half-map
'''

FAKE_POSTPROCESS = r'''
import json, sys, os
with open(os.environ["FAKE_RELION_LOG"], "a") as f: f.write(json.dumps({"tool": "postprocess", "argv": sys.argv[1:]}) + "\n")
'''


def test_sieve_driver_with_relion_commands(blob, tmp_path, monkeypatch):
    "RELION binaries are called with the reference's flags, in the particle directory; outputs and report follow."
    (tmp_path / "rec.py").write_text(FAKE_RECONSTRUCT); (tmp_path / "pp.py").write_text(FAKE_POSTPROCESS)
    log = tmp_path / "calls.jsonl"
    monkeypatch.setenv("FAKE_RELION_LOG", str(log)); monkeypatch.setenv("FAKE_RELION_MAP", str(blob["map"]))
    prefix = str(tmp_path / "run") + "/"
    argv = ["sieve", "--reconstruct_software", f"{sys.executable} {tmp_path / 'rec.py'}", "--postprocess_software",
            f"{sys.executable} {tmp_path / 'pp.py'}", "--i", str(blob["star"]), "--o", prefix, "--angpix", "2.0",
            "--mask", str(blob["mask"]), "--num_iters", "2", "--frequency_start", "40", "--frequency_end", "10",
            "--retention_ratio", "0.8", "--device", "cpu"]
    assert main(argv) == 0
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    rec = [c for c in calls if c["tool"] == "reconstruct"]
    assert len(rec) == 4 and len([c for c in calls if c["tool"] == "postprocess"]) == 2
    a = rec[0]["argv"]
    for flag, val in (("--angpix", "2.0"), ("--sym", "C1"), ("--ctf", "true")):
        assert a[a.index(flag) + 1] == val
    assert sorted(c["argv"][c["argv"].index("--subset") + 1] for c in rec[:2]) == ["1", "2"]
    assert all(c["cwd"] == str(blob["star"].parent) for c in rec)     # run where the image paths resolve
    p = [c for c in calls if c["tool"] == "postprocess"][0]["argv"]
    for flag in ("--mask", "--i", "--i2", "--o", "--angpix", "--auto_bfac", "--autob_lowres"):
        assert flag in p
    n = [len(starfile.read(prefix + f"_iter{i}.star")["particles"]) for i in range(3)]
    assert n == [120, 96, 76]          # round(0.8*60)=48 per half-set, then round(0.8*48)=round(38.4)=38
    st = json.loads((tmp_path / "run" / "_state.json").read_text())
    assert [r["frequency_A"] for r in st["iterations"]] == [40.0, 10.0]
    assert (tmp_path / "run" / "report.html").is_file()
    # rerun: everything finished, RELION is not called again
    assert main(argv) == 0
    assert len(log.read_text().splitlines()) == len(calls)


def test_sieve_driver_prefix_and_balance(blob, tmp_path):
    "A non-directory prefix (`run/job`), cryonb's own reconstruction + post-processing, seeded --balance."
    b = starfile.read(blob["star"], always_dict=True)
    b["particles"]["rlnRandomSubset"] = np.where(np.arange(120) < 70, 1, 2)
    starfile.write(b, tmp_path / "unbal.star", overwrite=True)
    import shutil; shutil.copy(blob["stack"], tmp_path / "particles.mrcs")
    for seed_dir in ("a", "b"):
        assert main(["sieve", "--i", str(tmp_path / "unbal.star"), "--o", str(tmp_path / seed_dir / "job"), "--mask", str(blob["mask"]),
                     "--num_iters", "1", "--frequency_start", "20", "--frequency_end", "20", "--balance", "--seed", "3",
                     "--postprocess", "--device", "cpu"]) == 0
    it0 = [starfile.read(tmp_path / s / "job_iter0.star")["particles"] for s in ("a", "b")]
    assert it0[0]["rlnImageName"].tolist() == it0[1]["rlnImageName"].tolist()          # seeded
    assert it0[0]["rlnRandomSubset"].value_counts().to_dict() == {1: 50, 2: 50}
    assert (tmp_path / "a" / "job_iter1.star").is_file() and (tmp_path / "a" / "job_report.html").is_file()
    assert (tmp_path / "a" / "job_postprocess_iter0" / "postprocess.mrc").is_file()
    assert len(starfile.read(tmp_path / "a" / "job_iter1.star")["particles"]) == 80


def test_sieve_cli_errors(blob, tmp_path, capsys):
    base = ["--i", str(blob["star"]), "--o", str(tmp_path / "r") + "/", "--num_iters", "1", "--device", "cpu"]
    assert main(["sieve", *base, "--sym", "D7"]) == 2
    assert "C1 only" in capsys.readouterr().err
    assert main(["sieve-core", "--i", str(blob["star"]), "--o", str(tmp_path / "o.star"), "--volume", str(blob["map"]),
                 "--volume", str(blob["map"]), "--frequency", "20", "--retention_ratio", "1.5", "--device", "cpu"]) == 2
    assert "retention_ratio" in capsys.readouterr().err


def test_sieve_resumes_bit_identically_after_kills(tmp_path):
    """`cryonb sieve` killed (SIGKILL) at 3 random moments of its run and restarted each time ends with
    the same files, byte for byte, as an uninterrupted run (state timings aside)."""
    import os, random, re, signal, time
    d = synthetic.blob_dataset(tmp_path / "data", n=40, D=16, apix=2.0, junk_fraction=0.2, noise_sigma=2.0, seed=5)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    def cmd(out):
        return [sys.executable, "-c", "import sys; from cryonb.cli import main; sys.exit(main(sys.argv[1:]))", "sieve",
                "--i", str(d["star"]), "--o", str(out) + "/", "--mask", str(d["mask"]), "--num_iters", "3",
                "--frequency_start", "16", "--frequency_end", "8", "--device", "cpu", "--batch_size", "16"]
    t0 = time.monotonic()
    subprocess.run([sys.executable, "-c", "import cryonb.cli, cryonb.commands.cryosieve"], env=env, check=True)
    startup = time.monotonic() - t0                              # interpreter + imports: nothing written yet
    t0 = time.monotonic()
    assert subprocess.run(cmd(tmp_path / "ref"), env=env, capture_output=True, timeout=300).returncode == 0
    work = max(time.monotonic() - t0 - startup, 0.5)
    rng = random.Random(17)
    out = tmp_path / "killed"
    kills, mid_run = 0, 0
    for frac in sorted(rng.uniform(0.05, 0.95) for _ in range(3)):   # 3 random moments of the working part
        p = subprocess.Popen(cmd(out), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(startup + frac * work)
        if p.poll() is None:
            p.send_signal(signal.SIGKILL); kills += 1
            mid_run += (out / "_state.json").is_file()
        p.wait()
    assert kills >= 1 and mid_run >= 1                           # at least one kill hit a run in progress
    assert subprocess.run(cmd(out), env=env, capture_output=True, timeout=300).returncode == 0
    ref = sorted(f.relative_to(tmp_path / "ref") for f in (tmp_path / "ref").rglob("*") if f.is_file())
    got = sorted(f.relative_to(out) for f in out.rglob("*") if f.is_file())
    assert got == ref                                            # no temporary file left behind
    for f in ref:
        if f.name.endswith(("_state.json", "report.html")): continue
        a, b = ((x / f).read_bytes() for x in (out, tmp_path / "ref"))
        if f.suffix == ".star":                                  # starfile stamps the writing time in its first line
            a, b = (re.sub(rb"^# Created by the starfile.*\n", b"", x) for x in (a, b))
        if f.suffix == ".mrc":                                   # mrcfile stamps the time in the header labels (bytes 224-1023)
            a, b = (x[:224] + x[1024:] for x in (a, b))
        assert a == b, f
    drop = lambda s: [{k: v for k, v in r.items() if k != "seconds"} for r in s["iterations"]]
    a, b = (json.loads(next(x.glob("*_state.json")).read_text()) for x in (tmp_path / "ref", out))
    assert drop(a) == drop(b) and len(a["iterations"]) == 3


def _bad_inputs(blob, d):
    "Bad inputs of `sieve-core` / `sieve`: (name, argv, text the message must contain)."
    from cryonb.io import read_map, write_map
    vol = read_map(blob["map"])[0]
    b = starfile.read(blob["star"], always_dict=True)
    nodef = dict(b); nodef["particles"] = b["particles"].drop(columns="rlnDefocusU")
    starfile.write(nodef, d / "nodefocus.star", overwrite=True)
    nanmap = np.array(vol, dtype=np.float32); nanmap[3, 4, 5] = np.nan
    write_map(d / "nan.mrc", nanmap, 2.0)
    write_map(d / "box24.mrc", np.zeros((24, 24, 24), np.float32), 2.0)
    (d / "notamap.mrc").write_bytes(b"not an MRC file" * 10)
    core = lambda star, *vols, extra=(): ["sieve-core", "--i", str(star), "--o", str(d / "out" / "o.star"),
                                          *sum([["--volume", str(v)] for v in vols], []), "--frequency", "20", "--device", "cpu", *extra]
    m = blob["map"]
    drv = ["sieve", "--i", str(blob["star"]), "--o", str(d / "out") + "/", "--num_iters", "1", "--device", "cpu"]
    return [
        ("missing star", core(d / "missing.star", m, m), "missing.star"),
        ("missing field", core(d / "nodefocus.star", m, m), "rlnDefocusU"),
        ("missing half-map", core(blob["star"], m, d / "nohalf.mrc"), "nohalf.mrc"),
        ("not an MRC", core(blob["star"], m, d / "notamap.mrc"), "notamap.mrc"),
        ("NaN voxels", core(blob["star"], m, d / "nan.mrc"), "nan.mrc"),
        ("box mismatch", core(blob["star"], m, d / "box24.mrc"), "box24.mrc"),
        ("mask box mismatch", core(blob["star"], m, m, extra=["--mask", str(d / "box24.mrc")]), "box24.mrc"),
        ("one map for two half-sets", core(blob["star"], m), "particles.star"),
        ("frequency 0", core(blob["star"], m, m) + ["--frequency", "0"], "--frequency"),
        ("retention ratio 0", core(blob["star"], m, m) + ["--retention_ratio", "0"], "--retention_ratio"),
        ("batch size 0", core(blob["star"], m, m) + ["--batch_size", "0"], "--batch_size"),
        ("sieve: symmetry without RELION", drv + ["--sym", "D7"], "C1 only"),
        ("sieve: missing mask", drv + ["--mask", str(d / "nomask.mrc")], "nomask.mrc"),
        ("sieve: frequency_end 0", drv + ["--frequency_end", "0"], "--frequency_end"),
        ("sieve: num_iters 0", drv + ["--num_iters", "0"], "--num_iters"),
    ]


def test_bad_inputs_exit_2_name_the_file_and_leave_nothing(blob, tmp_path, capsys):
    "Every bad input: exit 2, `cryonb VERB: error:` naming the file/flag, no traceback, no output left behind."
    for name, argv, must in _bad_inputs(blob, tmp_path):
        assert main(argv) == 2, name
        err = capsys.readouterr().err
        assert f"cryonb {argv[0]}: error:" in err and must in err and "Traceback" not in err, (name, err)
        out = tmp_path / "out"
        assert not out.exists() or not any(out.iterdir()), (name, list(out.iterdir()))
