"""deploy/ and `make dist` (docs/deploy.md): the wheel in a fresh venv without torch, the systemd unit, the Dockerfile.

One fresh venv serves the slow tests: `make dist` builds the wheel and the sdist into a temporary folder, a new
``python -m venv`` (no system site-packages) gets the Dockerfile's COPY and pip steps executed into it, which is
`pip install` of the wheel, and the device commands then run from that venv's ``edgeae`` on a tiny bundle built
here with onnx (by this interpreter: onnx is not, and must not be, in the fresh venv). The systemd unit is
checked by ``systemd-analyze verify`` and ``systemd-analyze security`` where they exist (by a parser of its keys
and values where not), and its ExecStart line is run as systemd would expand it: SIGTERM ends it with an exit
status the unit counts as success, and the exit codes that a restart cannot fix are the ones it lists.

The base dependencies come from the package index once and are kept in a wheelhouse (``~/.cache/edgeae/
test-wheelhouse``, or ``EDGEAE_WHEELHOUSE``): this machine's pip caches no downloads, so later runs install
from there with ``--no-index``, and fetch again only when the wheel asks for something the wheelhouse lacks.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import cv2
import numpy as np
import pytest
from deploy_files import (
    Unit,
    copies,
    env_of,
    exec_argv,
    exit_statuses,
    ignored,
    lint_unit,
    read_dockerfile,
    read_dockerignore,
    read_env_file,
    read_unit,
    timespan_s,
)

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
UNIT_FILE = DEPLOY / "edgeae@.service"
ENV_EXAMPLE = DEPLOY / "edgeae.env.example"
SYSUSERS = DEPLOY / "edgeae.sysusers"
DOCKERFILE = DEPLOY / "Dockerfile"
DOCKERIGNORE = DEPLOY / "Dockerfile.dockerignore"
BASE_DEPENDENCIES = {"numpy", "onnxruntime", "opencv-python-headless", "click"}
NOT_ON_THE_DEVICE = {"torch", "torchvision", "onnx", "onnxscript", "safetensors"}
PIP_RUN = {"pip", "python", "edgeae"}  # Dockerfile commands run in the fresh venv; the rest need the image's root


def wheelhouse() -> Path:
    if os.environ.get("EDGEAE_WHEELHOUSE"):
        return Path(os.environ["EDGEAE_WHEELHOUSE"])
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "edgeae" / "test-wheelhouse"


def run(cmd: list[str], *, timeout: float = 120, check: bool = True, **kw) -> subprocess.CompletedProcess:
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    if check and res.returncode != 0:
        raise AssertionError(f"{cmd} exited {res.returncode}\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
    return res


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def base_requirements(wheel: Path) -> list[str]:
    """The wheel's Requires-Dist without an extra marker: what a plain `pip install WHEEL` pulls."""
    with zipfile.ZipFile(wheel) as z:
        name = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        text = z.read(name).decode()
    fields = [line.partition(": ") for line in text.splitlines()]
    return [v for k, _, v in fields if k == "Requires-Dist" and ";" not in v]


def req_name(req: str) -> str:
    return re.split(r"[<>=!~ \[;]", req, maxsplit=1)[0].strip().lower().replace("_", "-")


# ------------------------------------------------------------------------------------------- the wheel


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> Path:
    """`make dist` into a temporary folder, with this interpreter; --no-isolation where its setuptools will do
    (pyproject's build-system asks for setuptools>=68), which saves a fresh build environment per run."""
    out = tmp_path_factory.mktemp("dist")
    flags = ""
    try:
        if int(metadata.version("setuptools").split(".")[0]) >= 68:
            flags = "--no-isolation"
    except metadata.PackageNotFoundError:
        pass
    run(["make", "-s", "dist", f"PY={sys.executable}", f"DIST={out}", f"BUILD_FLAGS={flags}"], cwd=REPO, timeout=300)
    return out


def only(folder: Path, pattern: str) -> Path:
    found = sorted(folder.glob(pattern))
    assert len(found) == 1, f"{pattern} in {folder}: {found}"
    return found[0]


@pytest.mark.slow
def test_make_dist_builds_a_wheel_with_the_packages_and_no_models(dist):
    wheel = only(dist, "edgeae-*-py3-none-any.whl")
    only(dist, "edgeae-*.tar.gz")
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        entry_points = z.read(next(n for n in names if n.endswith(".dist-info/entry_points.txt"))).decode()
    tops = {n.split("/")[0] for n in names}
    # pyproject's [tool.setuptools] packages, as they ship: the runtime, and the workstation side importable
    # where the train extra is installed.
    assert {"edge_runtime", "training", "export", "benchmarks"} <= tops, tops
    assert not any(n.startswith("models/") or n.endswith((".onnx", ".pt", ".safetensors")) for n in names)
    tracked = [f for f in run(["git", "ls-files", "edge_runtime/*.py"], cwd=REPO).stdout.split() if (REPO / f).exists()]
    assert tracked and set(tracked) <= set(names), set(tracked) - set(names)
    assert re.search(r"^edgeae\s*=\s*edge_runtime\.cli:main$", entry_points, re.M), entry_points
    assert {req_name(r) for r in base_requirements(wheel)} == BASE_DEPENDENCIES


@pytest.mark.slow
def test_the_sdist_has_the_sources_and_no_models(dist):
    import tarfile

    with tarfile.open(only(dist, "edgeae-*.tar.gz")) as t:
        names = [n.split("/", 1)[1] for n in t.getnames() if "/" in n]
    assert {"pyproject.toml", "README.md", "edge_runtime/cli.py", "edge_runtime/__init__.py"} <= set(names)
    assert not any(n.startswith("models/") or n.endswith(".onnx") for n in names)


# ------------------------------------------------------------------------------------------- the Dockerfile


@dataclass
class Image:
    """The Dockerfile executed into a fresh venv: its ``root`` holds what COPY put into the image."""

    venv: Path
    root: Path
    env: dict[str, str]
    instructions: list
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    @property
    def edgeae(self) -> Path:
        return self.venv / "bin" / "edgeae"

    def in_image(self, path: str) -> Path:
        return self.root / path.lstrip("/")

    def process_env(self, **extra: str) -> dict[str, str]:
        """A clean environment as a container or systemd gives: the image's ENV and PATH, nothing of pytest's."""
        env = {"PATH": f"{self.venv / 'bin'}:/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8",
               "HOME": os.environ.get("HOME", "/tmp"), **self.env}  # fmt: skip
        env.update(extra)
        return env


def install_wheelhouse_env(house: Path) -> dict[str, str]:
    return {"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(house)}


@pytest.fixture(scope="module")
def image(dist, tmp_path_factory) -> Image:
    """deploy/Dockerfile's steps without Docker: COPY into a folder standing for the image's root (the build
    context is the repository, with `make dist`'s output as dist/), and each RUN command that is pip, python or
    edgeae executed in a fresh venv, paths rewritten into that folder; the others (useradd, chmod, install -d)
    need the image's root and are listed as skipped. `pip` is this interpreter's pip aimed at the venv with
    --python: the image's own pip, without ensurepip's 15 s."""
    base = tmp_path_factory.mktemp("image")
    venv, root = base / "venv", base / "root"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    cfg = (venv / "pyvenv.cfg").read_text()
    assert "include-system-site-packages = false" in cfg, cfg
    shim = venv / "bin" / "pip"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m pip --python "{venv}/bin/python" "$@"\n')
    shim.chmod(0o755)

    instructions = read_dockerfile(DOCKERFILE.read_text())
    img = Image(venv, root, env_of(instructions), instructions)
    mapping: list[tuple[str, str]] = []
    context = {"dist": dist}  # everything else of the context is the repository itself
    for sources, dest in copies(instructions):
        target = img.in_image(dest)
        for src in sources:
            head, _, tail = src.partition("/")
            matches = sorted((context[head].glob(tail)) if head in context else REPO.glob(src))
            assert matches, f"COPY {src}: nothing in the build context"
            for m in matches:
                if dest.endswith("/"):
                    target.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(m, target / m.name)
                else:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(m, target)
        mapping.append((dest.rstrip("/"), str(target).rstrip("/")))
    mapping.sort(key=lambda kv: -len(kv[0]))

    house = wheelhouse()
    house.mkdir(parents=True, exist_ok=True)
    wheel = only(dist, "edgeae-*.whl")
    for ins in instructions:
        if ins.keyword != "RUN":
            continue
        assert ins.json_args() is None, "RUN in exec form: not expected in this Dockerfile"
        for cmd in (c.strip() for c in ins.rest.split("&&")):
            if cmd.split()[0] not in PIP_RUN:
                img.skipped.append(cmd)
                continue
            local = cmd
            for dest, target in mapping:
                local = local.replace(dest, target)
            env = img.process_env(**install_wheelhouse_env(house))
            res = run(["bash", "-c", local], env=env, cwd=base, check=False, timeout=300)
            if res.returncode != 0 and cmd.startswith("pip install"):
                # The wheelhouse lacks something the wheel asks for: fetch the base dependencies, then again.
                run([str(shim), "download", "--quiet", "--dest", str(house), *base_requirements(wheel)],
                    env={**os.environ}, cwd=base, timeout=600)  # fmt: skip
                res = run(["bash", "-c", local], env=env, cwd=base, check=False, timeout=300)
            assert res.returncode == 0, f"Dockerfile step failed: {cmd}\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}"
            img.ran.append(cmd)
    print(f"\nDockerfile steps run in {venv}: {img.ran}\nskipped (need the image's root): {img.skipped}")
    return img


def test_dockerfile_is_the_runtime_alone_unprivileged_with_edgeae_as_entrypoint():
    instructions = read_dockerfile(DOCKERFILE.read_text())
    keywords = [i.keyword for i in instructions]
    first = instructions[0]
    assert first.keyword == "FROM" and re.fullmatch(r"python:3\.11-slim(-\w+)?", first.rest), first.rest
    steps = [c.strip() for i in instructions if i.keyword == "RUN" for c in i.rest.split("&&")]
    installs = [c.split()[2:] for c in steps if c.startswith("pip install")]
    assert installs, steps
    for args in installs:  # the wheel alone, no extras; opencv-python-headless comes with its requirements
        packages = [a for a in args if not a.startswith("-")]
        assert packages and all(re.fullmatch(r"/\S+/edgeae-\S*\.whl", a) for a in packages), args
    users = [i for i in instructions if i.keyword == "USER"]
    assert users and users[-1].rest.split(":")[0] not in ("root", "0")
    assert keywords.index("USER") < keywords.index("ENTRYPOINT")
    entry = next(i for i in instructions if i.keyword == "ENTRYPOINT")
    assert entry.json_args() == ["edgeae"]  # exec form: edgeae is PID 1 and gets docker stop's signal itself
    assert next(i for i in instructions if i.keyword == "STOPSIGNAL").rest == "SIGTERM"
    health = next(i for i in instructions if i.keyword == "HEALTHCHECK")
    cmd = health.rest.split(" CMD ", 1)[1].strip()
    assert json.loads(cmd)[0] in {dest.rsplit("/", 1)[-1] for _, dest in copies(instructions)}


def test_dockerignore_sends_the_wheel_and_the_healthcheck_and_nothing_big():
    patterns = read_dockerignore(DOCKERIGNORE)
    for sources, _ in copies(read_dockerfile(DOCKERFILE.read_text())):
        for src in sources:
            example = src.replace("*", "edgeae-0.1.0-py3-none-any")
            assert not ignored(example, patterns), f"COPY {src} would find nothing: {example} is ignored"
    for big in [".venv/bin/python", "models/anomaly/anomaly.fp32.onnx", "runs/x/ckpt.pt", ".git/HEAD", "README.md"]:
        assert ignored(big, patterns), big


@pytest.mark.slow
def test_dockerfile_steps_install_the_wheel_into_a_fresh_venv_without_torch(image):
    """The Dockerfile's RUN steps ran (its own checks among them: no torch, `edgeae --version`); the venv holds
    the runtime and its four dependencies, from the wheel, and nothing of the workstation side."""
    assert any(c.startswith("pip install") for c in image.ran), image.ran
    assert any("torch" in c for c in image.ran) and any(c.startswith("edgeae") for c in image.ran), image.ran
    assert not any(c.split()[0] in PIP_RUN for c in image.skipped)
    listed = run([str(image.venv / "bin" / "pip"), "list", "--format=json"], cwd=image.root.parent).stdout
    names = {p["name"].lower().replace("_", "-") for p in json.loads(listed)}
    assert "edgeae" in names and BASE_DEPENDENCIES <= names, names
    assert not names & NOT_ON_THE_DEVICE, names & NOT_ON_THE_DEVICE
    probe = (
        "import importlib.util, json, edge_runtime\n"
        "print(json.dumps({'file': edge_runtime.__file__,"
        " 'missing': [m for m in ('torch', 'onnx') if importlib.util.find_spec(m) is None]}))"
    )
    res = json.loads(run([str(image.python), "-c", probe], cwd=image.root.parent, env=image.process_env()).stdout)
    assert res["file"].startswith(str(image.venv)), res  # the wheel's copy, not the checkout's
    assert res["missing"] == ["torch", "onnx"]


@pytest.mark.slow
def test_docker_builds_and_runs_the_image_where_an_engine_answers(dist, tmp_path):
    if shutil.which("docker") is None or run(["docker", "info"], check=False, timeout=30).returncode != 0:
        pytest.skip("no Docker engine answers here: the Dockerfile's steps ran in a fresh venv instead")
    ctx = tmp_path / "ctx"
    (ctx / "dist").mkdir(parents=True)
    shutil.copy2(only(dist, "edgeae-*.whl"), ctx / "dist")
    shutil.copytree(DEPLOY, ctx / "deploy")
    tag = "edgeae-runtime:test"
    run(["docker", "build", "-f", str(ctx / "deploy" / "Dockerfile"), "-t", tag, str(ctx)], timeout=900)
    assert "0.1" in run(["docker", "run", "--rm", tag, "--version"]).stdout
    assert run(["docker", "run", "--rm", "--entrypoint", "id", tag, "-u"]).stdout.strip() != "0"


# ------------------------------------------------------------------------------------------- tiny data


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    """Bundles (anomaly, denoise) built by this interpreter with onnx, an image, a 3-frame clip and a clip long
    enough to be stopped while it runs."""
    pytest.importorskip("onnx")
    import importlib.util

    spec = importlib.util.spec_from_file_location("_deploy_bundles", REPO / "tests" / "edge_runtime" / "conftest.py")
    builders = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(builders)
    d = tmp_path_factory.mktemp("tiny")
    out = {
        "anomaly": builders.write_bundle(d / "anomaly", ("anomaly",)),
        "denoise": builders.write_bundle(d / "denoise", ("denoise",)),
    }
    frame = np.full((48, 64, 3), 90, np.uint8)
    cv2.rectangle(frame, (10, 10), (30, 30), (200, 180, 40), -1)
    cv2.imwrite(str(d / "img.png"), frame)
    out["img"] = d / "img.png"
    for name, n in (("clip", 3), ("long", 6000)):
        writer = cv2.VideoWriter(str(d / f"{name}.mkv"), cv2.VideoWriter_fourcc(*"FFV1"), 25, (64, 48))
        for i in range(n):
            f = frame.copy()
            cv2.rectangle(f, (i % 56, 36), (i % 56 + 8, 44), (255, 255, 255), -1)
            writer.write(f)
        writer.release()
        out[name] = d / f"{name}.mkv"
    return out


def events_of(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


@pytest.mark.slow
def test_device_commands_run_from_the_fresh_venv(image, tiny, tmp_path):
    env = image.process_env()
    help_ = run([str(image.edgeae), "--help"], env=env, cwd=tmp_path).stdout
    for command in ("denoise", "score", "calibrate", "compress", "decompress", "run"):
        assert command in help_
    out = tmp_path / "out.png"
    run([str(image.edgeae), "denoise", str(tiny["denoise"]), str(tiny["img"]), "-o", str(out)], env=env, cwd=tmp_path)
    assert np.array_equal(cv2.imread(str(out)), cv2.imread(str(tiny["img"])))  # the tiny graph is the identity
    ev = tmp_path / "ev.jsonl"
    run([str(image.edgeae), "run", str(tiny["anomaly"]), "--source", str(tiny["clip"]), "--max-frames", "3",
         "--events", str(ev)], env=env, cwd=tmp_path)  # fmt: skip
    events = events_of(ev)
    assert events[0]["type"] == "start" and events[-1]["type"] == "end"
    assert [e["frame"] for e in events if e["type"] == "frame"] == [0, 1, 2]


# ------------------------------------------------------------------------------------------- the systemd unit


def unit() -> Unit:
    return read_unit(UNIT_FILE.read_text())


def test_unit_restarts_on_failure_and_counts_sigterm_as_success():
    u = unit()
    assert u.get("Service", "Restart") == "on-failure"
    assert timespan_s(u.get("Service", "RestartSec")) >= 1
    prevent = exit_statuses(u, "RestartPreventExitStatus")
    assert {2, 3, 4} <= prevent and 5 not in prevent  # configuration/data/model errors stay down; a lost source not
    assert 143 in exit_statuses(u, "SuccessExitStatus")
    assert u.get("Service", "KillSignal") in (None, "SIGTERM")
    assert timespan_s(u.get("Service", "TimeoutStopSec")) >= 60  # time to finalise a recording


def test_unit_runs_unprivileged_with_a_read_only_system_and_its_own_folders():
    u = unit()
    assert u.get("Service", "DynamicUser") == "yes" or u.get("Service", "User") not in (None, "root", "0")
    for key, value in [("NoNewPrivileges", "yes"), ("ProtectSystem", "strict"), ("PrivateTmp", "yes")]:
        assert u.get("Service", key) == value, key
    assert u.values("Service", "ReadWritePaths")
    assert u.get("Service", "StateDirectory") == "edgeae/%i" and u.get("Service", "LogsDirectory") == "edgeae/%i"
    assert u.get("Service", "CapabilityBoundingSet") == ""
    # Under ProtectSystem=strict only those folders are writable: every output path the command names is in one.
    argv = exec_argv(u.get("Service", "ExecStart"), {}, {"i": "cam", "S": "/var/lib", "L": "/var/log"})
    assert argv[1] == "run"
    for opt in ("--events", "--stats"):
        path = argv[argv.index(opt) + 1]
        assert path.startswith(("/var/lib/edgeae/cam/", "/var/log/edgeae/cam/")), path
    assert "--token" not in argv  # the token stays in the environment


def test_unit_keys_and_values_are_ones_systemd_knows():
    """Without systemd-analyze this is the check; with it, it runs too (and the verify test below as well)."""
    assert lint_unit(unit()) == []
    assert lint_unit(read_unit(UNIT_FILE.read_text().replace("KillMode=", "KilMode="))) != []  # it can fail


def instantiated_unit(folder: Path, name: str = "front") -> Path:
    """The template as instance ``name`` in ``folder``, ExecStart's program swapped for one that exists here
    (verify checks that it is executable)."""
    exe = Path(sys.executable).with_name("edgeae")
    exe = exe if exe.exists() else Path(shutil.which("true") or "/bin/true")
    text = UNIT_FILE.read_text().replace("/opt/edgeae/bin/edgeae", str(exe))
    assert text != UNIT_FILE.read_text()
    path = folder / f"edgeae@{name}.service"
    path.write_text(text)
    return path


def test_unit_passes_systemd_analyze_verify_and_security(tmp_path, record_property):
    tool = shutil.which("systemd-analyze")
    if tool is None:
        record_property("unit_check", "parser")  # test_unit_keys_and_values_are_ones_systemd_knows did it
        pytest.skip("systemd-analyze not found: the unit was checked by tests/deploy_files.py's parser only")
    record_property("unit_check", "systemd-analyze")
    path = instantiated_unit(tmp_path)
    res = run([tool, "verify", path.name], cwd=tmp_path, check=False)
    # verify exits 0 on unknown keys and bad values, only warning: any output at all is a failure here.
    assert res.returncode == 0 and not (res.stdout + res.stderr).strip(), res.stdout + res.stderr
    broken = tmp_path / "edgeae@broken.service"
    broken.write_text(path.read_text().replace("Restart=on-failure", "Restart=sometimes"))
    res = run([tool, "verify", broken.name], cwd=tmp_path, check=False)
    assert "sometimes" in res.stdout + res.stderr  # the same check notices a bad value
    # Exposure score from systemd's own list of sandboxing settings, in tenths (0 best, 100 worst): ≤ 3.0.
    res = run([tool, "security", "--offline=yes", "--threshold=30", "--no-pager", path.name], cwd=tmp_path,
              check=False)  # fmt: skip
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr


def test_sysusers_file_creates_the_user_in_group_video(tmp_path):
    tool = shutil.which("systemd-sysusers")
    if tool is None:
        lines = [x.split() for x in SYSUSERS.read_text().splitlines() if x.strip() and not x.startswith("#")]
        assert ["m", "edgeae", "video"] in lines and lines[0][:2] == ["u", "edgeae"]
        pytest.skip("systemd-sysusers not found: the sysusers file was only read")
    (tmp_path / "etc").mkdir()
    run([tool, f"--root={tmp_path}", "-"], input=SYSUSERS.read_text())
    passwd = {x.split(":")[0]: x.split(":") for x in (tmp_path / "etc" / "passwd").read_text().splitlines()}
    groups = {x.split(":")[0]: x.split(":") for x in (tmp_path / "etc" / "group").read_text().splitlines()}
    assert passwd["edgeae"][2] != "0" and passwd["edgeae"][6].endswith("nologin")
    assert "edgeae" in groups["video"][3].split(",")
    assert unit().get("Service", "User") == "edgeae"


def unit_process(image: Image, tmp: Path, env_file: dict[str, str], instance: str = "front"):
    """What systemd starts for ``edgeae@instance``: the unit's Environment= then its EnvironmentFile, the
    specifiers %i, %S, %L, %C under ``tmp``, the state, logs and cache folders made, the working directory set."""
    u = unit()
    spec = {"i": instance, "I": instance, "S": str(tmp / "state"), "L": str(tmp / "log"), "C": str(tmp / "cache")}
    env: dict[str, str] = {}
    for line in u.values("Service", "Environment"):
        key, _, value = line.partition("=")
        env[key] = re.sub(r"%([a-zA-Z])", lambda m: spec[m.group(1)], value)
    (tmp / "cache" / u.get("Service", "CacheDirectory").replace("%i", instance)).mkdir(parents=True, exist_ok=True)
    env.update(env_file)
    state = tmp / "state" / u.get("Service", "StateDirectory").replace("%i", instance)
    logs = tmp / "log" / u.get("Service", "LogsDirectory").replace("%i", instance)
    state.mkdir(parents=True, exist_ok=True)
    logs.mkdir(parents=True, exist_ok=True)
    argv = exec_argv(u.get("Service", "ExecStart"), env, spec)
    assert argv[0] == "/opt/edgeae/bin/edgeae"
    argv[0] = str(image.edgeae)
    cwd = Path(u.get("Service", "WorkingDirectory").replace("%S", spec["S"]).replace("%i", instance))
    proc_env = image.process_env(STATE_DIRECTORY=str(state), LOGS_DIRECTORY=str(logs), **env)
    return argv, proc_env, cwd, logs


def test_env_example_names_what_the_unit_reads_and_options_edgeae_has():
    example = read_env_file(ENV_EXAMPLE.read_text())
    assert {"EDGEAE_MODEL", "EDGEAE_SOURCE", "EDGEAE_TOKEN", "EDGEAE_ARGS"} <= set(example)
    exec_start = unit().get("Service", "ExecStart")
    for key in ("EDGEAE_MODEL", "EDGEAE_SOURCE", "EDGEAE_ARGS"):
        assert key in exec_start
    from click.testing import CliRunner

    from edge_runtime.cli import cli

    help_ = CliRunner().invoke(cli, ["run", "--help"]).output
    for opt in re.findall(r"--[a-z-]+", example["EDGEAE_ARGS"]):
        assert opt in help_, opt


@pytest.mark.slow
def test_sigterm_ends_the_units_run_cleanly_and_the_healthcheck_sees_it(image, tiny, tmp_path):
    """systemctl stop (KillSignal) and docker stop (STOPSIGNAL): SIGTERM while the unit's command runs; before
    that the Dockerfile's HEALTHCHECK asks the view server, with and without the token."""
    port = free_port()
    argv, env, cwd, logs = unit_process(image, tmp_path, {
        "EDGEAE_MODEL": str(tiny["anomaly"]), "EDGEAE_SOURCE": str(tiny["long"]), "EDGEAE_TOKEN": "s3cret",
        "EDGEAE_ARGS": f"--serve 127.0.0.1:{port} --record rec.mkv",
    })  # fmt: skip
    assert "s3cret" not in argv
    proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        ev = logs / "events.jsonl"
        deadline = time.monotonic() + 60
        while not (ev.exists() and ev.read_text().count('"type":"frame"') >= 5):
            assert proc.poll() is None, f"edgeae ended early: {proc.returncode} {proc.stderr.read()}"
            assert time.monotonic() < deadline, "no 5 frame events within 60 s"
            time.sleep(0.05)

        health = next(i for i in image.instructions if i.keyword == "HEALTHCHECK")
        cmd = json.loads(health.rest.split(" CMD ", 1)[1])
        script = next(image.in_image(dest) for _, dest in copies(image.instructions) if dest.endswith(cmd[0]))
        url = image.env["EDGEAE_HEALTH_URL"].replace(":8080/", f":{port}/")
        check = [str(image.python), str(script), *cmd[1:]]
        ok = run(check, check=False, env=image.process_env(EDGEAE_HEALTH_URL=url, EDGEAE_TOKEN="s3cret"))
        refused = run(check, check=False, env=image.process_env(EDGEAE_HEALTH_URL=url))
        assert proc.poll() is None, "the run ended before SIGTERM: make the clip longer"
        proc.send_signal(getattr(signal, unit().get("Service", "KillSignal") or "SIGTERM"))
        _, stderr = proc.communicate(timeout=timespan_s(unit().get("Service", "TimeoutStopSec")))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert (ok.returncode, refused.returncode) == (0, 1), (ok.stdout, refused.stdout)
    assert ok.stdout.startswith("ok") and "401" in refused.stdout
    assert proc.returncode == 143 and 143 in exit_statuses(unit(), "SuccessExitStatus"), stderr
    assert "Traceback" not in stderr
    events = events_of(logs / "events.jsonl")
    assert events[-1]["type"] == "end" and events[-1]["status"] == "interrupted"
    stats = json.loads((logs / "stats.json").read_text())
    assert stats["exit_code"] == 143
    cap = cv2.VideoCapture(str(cwd / "rec.mkv"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == stats["frames_processed"] > 0
    cap.release()
    # --device auto's choice was cached in the unit's CacheDirectory (ProtectHome hides ~/.cache)
    assert list((tmp_path / "cache" / "edgeae" / "front").glob("*.json")), "no device cache written"


@pytest.mark.slow
@pytest.mark.parametrize(
    "case, restart",
    [("missing model", False), ("missing video file", False), ("camera unreachable", True)],
)
def test_exit_codes_meet_the_units_restart_policy(image, tiny, tmp_path, case, restart):
    """Restart=on-failure restarts unless the code is in RestartPreventExitStatus (or a success): a model or a
    file that is not there stays down; a camera that does not answer (exit 5) is retried."""
    env_file = {"EDGEAE_MODEL": str(tiny["anomaly"]), "EDGEAE_SOURCE": str(tiny["clip"]), "EDGEAE_ARGS": ""}
    if case == "missing model":
        env_file["EDGEAE_MODEL"] = str(tmp_path / "no-such-bundle")
    elif case == "missing video file":
        env_file["EDGEAE_SOURCE"] = str(tmp_path / "no-such.mkv")
    else:
        env_file["EDGEAE_SOURCE"] = f"http://127.0.0.1:{free_port()}/stream.mjpg"
        env_file["EDGEAE_ARGS"] = "--reconnects 0 --open-timeout 1"
    argv, env, cwd, _ = unit_process(image, tmp_path, env_file)
    res = run(argv, env=env, cwd=cwd, check=False)
    u = unit()
    assert res.returncode not in exit_statuses(u, "SuccessExitStatus") | {0}, res.stderr
    assert (res.returncode not in exit_statuses(u, "RestartPreventExitStatus")) == restart, res.returncode
    assert len([x for x in res.stderr.splitlines() if x.startswith("edgeae: error")]) == 1, res.stderr
