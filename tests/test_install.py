"""scripts/venv_install.sh and scripts/pip_to_uv.py: uv gets pip's settings, and pip takes over when uv fails.

The real installs (uv, in a new venv with an empty HOME) run in tests/test_demo.py's fresh-machine test and in
scripts/test_latest.sh; here fake `uv` / `pip` executables record what they were asked to do.
"""
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts"


def _pip_env(tmp: pathlib.Path, conf: str) -> dict[str, str]:
    (tmp / "pip.conf").write_text(conf)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env.update(PIP_CONFIG_FILE=str(tmp / "pip.conf"), PIP_FIND_LINKS="/env/wheels")
    return env


def test_pip_to_uv_passes_find_links_indexes_and_constraints(tmp_path):
    conf = ("[global]\nfind-links = /opt/wheels\nextra-index-url = file:///a/simple file:///b/simple\n"
            "constraint = /etc/c.txt\nindex-url = https://mirror.example/simple\ntimeout = 60\n")
    out = subprocess.run([sys.executable, str(SCRIPTS / "pip_to_uv.py")], env=_pip_env(tmp_path, conf),
                         capture_output=True, text=True, check=True).stdout.split()
    assert sorted(out) == sorted(["--find-links=/opt/wheels", "--find-links=/env/wheels",
                                  "--extra-index-url=file:///a/simple", "--extra-index-url=file:///b/simple",
                                  "--constraint=/etc/c.txt", "--index-url=https://mirror.example/simple"])


def _fake_venv(tmp: pathlib.Path, uv_rc: int) -> pathlib.Path:
    """bin/python (the real one), bin/uv (reports 0.13.8, exits uv_rc) and bin/pip, both logging their arguments."""
    venv = tmp / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to(sys.executable)
    for name, rc in (("uv", uv_rc), ("pip", 0)):
        exe = venv / "bin" / name
        exe.write_text(f'#!/usr/bin/env bash\n[ "$1" = --version ] && {{ echo "uv 0.13.8"; exit 0; }}\n'
                       f'echo "{name} $*" >> "{tmp}/calls.log"\nexit {rc}\n')
        exe.chmod(0o755)
    return venv


def _venv_install(tmp, venv, *args, installer="uv"):
    cmd = f'source "{SCRIPTS}/venv_install.sh" && venv_install "{venv}" {" ".join(args)}'
    env = {**_pip_env(tmp, "[global]\nfind-links = /opt/wheels\n"), "DUALFASHION_INSTALLER": installer}
    proc = subprocess.run(["bash", "-c", cmd], env=env, capture_output=True, text=True)
    calls = (tmp / "calls.log").read_text().splitlines() if (tmp / "calls.log").exists() else []
    return proc, calls


def test_uv_gets_the_arguments_and_pip_settings(tmp_path):
    proc, calls = _venv_install(tmp_path, _fake_venv(tmp_path, uv_rc=0), "--upgrade", "-c", "pins.txt", "-e", ".")
    assert proc.returncode == 0, proc.stderr
    assert len(calls) == 1 and calls[0].startswith("uv pip install -q --python ")
    assert "--index-strategy unsafe-best-match" in calls[0] and "--find-links=/opt/wheels" in calls[0]
    assert calls[0].endswith("--upgrade -c pins.txt -e .")


def test_pip_takes_over_when_uv_fails(tmp_path):
    proc, calls = _venv_install(tmp_path, _fake_venv(tmp_path, uv_rc=1), "--upgrade", "-c", "pins.txt", "torch==2.13.0")
    assert proc.returncode == 0, proc.stderr
    assert "uv could not install" in proc.stderr and "installing with pip instead" in proc.stderr
    assert calls[-1] == ("pip install -q --disable-pip-version-check --no-compile --upgrade --upgrade-strategy eager "
                         "-c pins.txt torch==2.13.0")


def test_installer_choice_pip_and_a_bad_value(tmp_path):
    venv = _fake_venv(tmp_path, uv_rc=0)
    proc, calls = _venv_install(tmp_path, venv, "-e", ".", installer="pip")
    assert proc.returncode == 0 and calls == ["pip install -q --disable-pip-version-check --no-compile -e ."]
    proc, _ = _venv_install(tmp_path, venv, "-e", ".", installer="conda")
    assert proc.returncode == 2 and "DUALFASHION_INSTALLER must be uv or pip, got 'conda'" in proc.stderr


def test_compile_writes_bytecode_with_either_installer(tmp_path):
    venv = _fake_venv(tmp_path, uv_rc=1)  # uv fails: both commands are logged
    proc, calls = _venv_install(tmp_path, venv, "--upgrade", "--compile", "-e", ".")
    assert proc.returncode == 0, proc.stderr
    assert calls[0].endswith("--upgrade --compile-bytecode -e .")
    assert calls[1] == "pip install -q --disable-pip-version-check --upgrade --upgrade-strategy eager -e ."
