"""Readers for deploy/: a systemd unit, an environment file, a Dockerfile and its .dockerignore.

Only what tests/test_deploy.py needs to check these files and to execute them without systemd or Docker: the
unit's ExecStart expanded as systemd would (specifiers, ``${VAR}`` and ``$VAR``), the Dockerfile's instructions
with their JSON or shell forms, and BuildKit's ignore rules for a build context. Standard library only.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

# systemd.unit(5), systemd.service(5), systemd.exec(5), systemd.kill(5), systemd.resource-control(5): the keys a
# unit of this project may use. The fallback check (no systemd-analyze) flags anything else as a typo.
UNIT_KEYS = {
    "Unit": set(
        "Description Documentation After Before Wants Requires BindsTo PartOf Conflicts StartLimitIntervalSec "
        "StartLimitBurst ConditionPathExists AssertPathExists".split()
    ),
    "Service": set(
        "Type User Group DynamicUser SupplementaryGroups Environment EnvironmentFile StateDirectory LogsDirectory "
        "CacheDirectory RuntimeDirectory ConfigurationDirectory WorkingDirectory ExecStart ExecStartPre ExecStop "
        "ExecReload Restart RestartSec RestartPreventExitStatus SuccessExitStatus KillMode KillSignal "
        "TimeoutStopSec TimeoutStartSec NoNewPrivileges ProtectSystem ProtectHome PrivateTmp PrivateMounts "
        "PrivateDevices RemoveIPC ReadWritePaths ReadOnlyPaths UMask CapabilityBoundingSet AmbientCapabilities "
        "DevicePolicy DeviceAllow ProtectKernelTunables ProtectKernelModules ProtectKernelLogs "
        "ProtectControlGroups ProtectClock ProtectHostname ProtectProc ProcSubset RestrictAddressFamilies "
        "RestrictNamespaces RestrictRealtime RestrictSUIDSGID LockPersonality MemoryDenyWriteExecute "
        "SystemCallArchitectures SystemCallFilter MemoryMax CPUQuota Nice LimitNOFILE".split()
    ),
    "Install": {"WantedBy", "RequiredBy", "Alias", "DefaultInstance"},
}
BOOLEAN_KEYS = set(
    "DynamicUser NoNewPrivileges PrivateTmp PrivateMounts PrivateDevices RemoveIPC ProtectKernelTunables "
    "ProtectKernelModules ProtectKernelLogs ProtectControlGroups ProtectClock ProtectHostname RestrictRealtime "
    "RestrictSUIDSGID LockPersonality MemoryDenyWriteExecute".split()
)
CHOICES = {
    "Type": {"simple", "exec", "forking", "oneshot", "dbus", "notify", "idle"},
    "Restart": {"no", "on-success", "on-failure", "on-abnormal", "on-watchdog", "on-abort", "always"},
    "KillMode": {"control-group", "mixed", "process", "none"},
    "ProtectSystem": {"yes", "no", "full", "strict"},
    "ProtectHome": {"yes", "no", "read-only", "tmpfs"},
    "DevicePolicy": {"auto", "closed", "strict"},
    "ProtectProc": {"noaccess", "invisible", "ptraceable", "default"},
}
TRUE, FALSE = {"1", "yes", "true", "on"}, {"0", "no", "false", "off"}
SPECIFIERS = set("iInNpPSLCtTEhHugUGmbBvwWaAj%")  # the letters systemd knows (a subset is expanded below)


@dataclass
class Unit:
    """A unit file as (section, key, value) entries in file order; keys may repeat (Environment=, ...)."""

    entries: list[tuple[str, str, str]]

    def values(self, section: str, key: str) -> list[str]:
        return [v for s, k, v in self.entries if s == section and k == key]

    def get(self, section: str, key: str) -> str | None:
        found = self.values(section, key)
        return found[-1] if found else None


def read_unit(text: str) -> Unit:
    """systemd's INI dialect: ``[Section]``, ``Key=value``, comments ``#``/``;``, a trailing ``\\`` continues a
    line. Raises ValueError on a line it cannot read."""
    entries: list[tuple[str, str, str]] = []
    section = None
    lines = iter(enumerate(text.splitlines(), 1))
    for number, raw in lines:
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        while line.endswith("\\"):
            _, more = next(lines, (number, ""))
            line = line[:-1] + " " + more.strip()
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, eq, value = line.partition("=")
        if not eq or section is None or not key.strip():
            raise ValueError(f"line {number}: not Key=value inside a [Section]: {raw!r}")
        entries.append((section, key.strip(), value.strip()))
    return Unit(entries)


def timespan_s(value: str) -> float:
    """A systemd time span (``90``, ``2min``, ``1min 30s``, ``500ms``) in seconds."""
    units = {"us": 1e-6, "ms": 1e-3, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hr": 3600, "": 1}
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", value)
    if not parts or "".join(n + u for n, u in parts) != value.replace(" ", ""):
        raise ValueError(f"not a time span: {value!r}")
    return sum(float(n) * units[u] for n, u in parts)


def lint_unit(unit: Unit) -> list[str]:
    """What ``systemd-analyze verify`` would warn about in keys and values, for machines without it."""
    problems = []
    for section, key, value in unit.entries:
        if section not in UNIT_KEYS:
            problems.append(f"unknown section [{section}]")
        elif key not in UNIT_KEYS[section]:
            problems.append(f"unknown key {key}= in [{section}]")
        elif key in BOOLEAN_KEYS and value.lower() not in TRUE | FALSE:
            problems.append(f"{key}={value}: not a boolean")
        elif key in CHOICES and value not in CHOICES[key]:
            problems.append(f"{key}={value}: not one of {sorted(CHOICES[key])}")
        elif key in ("RestartSec", "TimeoutStopSec", "TimeoutStartSec", "StartLimitIntervalSec"):
            try:
                timespan_s(value)
            except ValueError as e:
                problems.append(f"{key}: {e}")
        elif key in ("RestartPreventExitStatus", "SuccessExitStatus"):
            bad = [w for w in value.split() if not (w.isdigit() and int(w) < 256) and not w.startswith("SIG")]
            if bad:
                problems.append(f"{key}={value}: {bad} are neither exit codes nor signals")
        bad_spec = [s for s in re.findall(r"%(.)", value) if s not in SPECIFIERS]
        if bad_spec:
            problems.append(f"{key}={value}: unknown specifiers {bad_spec}")
    if not unit.values("Service", "ExecStart"):
        problems.append("no ExecStart=")
    return problems


def exit_statuses(unit: Unit, key: str) -> set[int]:
    """The numeric exit codes listed by every ``key`` line (signal names left out)."""
    return {int(w) for v in unit.values("Service", key) for w in v.split() if w.isdigit()}


def read_env_file(text: str) -> dict[str, str]:
    """An ``EnvironmentFile=``: ``KEY=VALUE`` lines, ``#`` comments, optional quotes around the value."""
    env = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        key, eq, value = line.partition("=")
        if not eq:
            raise ValueError(f"not KEY=VALUE: {line!r}")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        env[key.strip()] = value
    return env


def expand_specifiers(value: str, specifiers: dict[str, str]) -> str:
    """``%i`` and friends from ``specifiers`` (letter -> text); ``%%`` is a percent sign; others raise."""

    def one(m: re.Match) -> str:
        letter = m.group(1)
        if letter == "%":
            return "%"
        if letter not in specifiers:
            raise KeyError(f"specifier %{letter} not expanded by this test")
        return specifiers[letter]

    return re.sub(r"%(.)", one, value)


def exec_argv(line: str, env: dict[str, str], specifiers: dict[str, str]) -> list[str]:
    """An ``ExecStart=`` line as the argv systemd runs (systemd.service(5), "Command lines"): specifiers first;
    a word that is exactly ``$VAR`` becomes the value split at whitespace (none when empty); ``${VAR}`` is
    substituted inside its word. Prefixes (``-``, ``@``, ``+``, ``!``, ``:``) are not supported here."""
    words = shlex.split(expand_specifiers(line, specifiers))
    if words and words[0][:1] in "-@+!:":
        raise ValueError(f"ExecStart prefix {words[0][:1]!r} not supported by this test")
    argv: list[str] = []
    for word in words:
        whole = re.fullmatch(r"\$([A-Za-z_][A-Za-z0-9_]*)", word)
        if whole:
            argv += env.get(whole.group(1), "").split()
        else:
            argv.append(re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", lambda m: env.get(m.group(1), ""), word))
    return argv


@dataclass
class Instruction:
    """One Dockerfile instruction: its keyword (upper case) and the rest of the line, continuations joined."""

    keyword: str
    rest: str

    def json_args(self) -> list[str] | None:
        """The exec (JSON array) form's list, or None for the shell form."""
        text = self.rest.strip()
        if not text.startswith("["):
            return None
        args = json.loads(text)
        if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
            raise ValueError(f"{self.keyword}: not a JSON array of strings: {text}")
        return args


def read_dockerfile(text: str) -> list[Instruction]:
    """Instructions of a Dockerfile: comment lines dropped (also inside a continued instruction), a trailing
    ``\\`` joins the next line."""
    out: list[Instruction] = []
    buf = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not buf):
            continue
        if stripped.endswith("\\"):
            buf += stripped[:-1] + " "
            continue
        line = (buf + stripped).strip()
        buf = ""
        if not line:
            continue
        keyword, _, rest = line.partition(" ")
        out.append(Instruction(keyword.upper(), rest.strip()))
    if buf.strip():
        raise ValueError("the Dockerfile ends inside a continued line")
    return out


def env_of(instructions: list[Instruction]) -> dict[str, str]:
    """Every ``ENV`` of the Dockerfile, in order (``ENV K=V K2=V2``; the legacy ``ENV K V`` too)."""
    env: dict[str, str] = {}
    for ins in instructions:
        if ins.keyword != "ENV":
            continue
        words = shlex.split(ins.rest)
        if words and "=" not in words[0]:
            env[words[0]] = " ".join(words[1:])
            continue
        for word in words:
            key, _, value = word.partition("=")
            env[key] = value
    return env


def copies(instructions: list[Instruction]) -> list[tuple[list[str], str]]:
    """``COPY`` instructions as (sources, destination); flags such as ``--chown=`` are dropped."""
    out = []
    for ins in instructions:
        if ins.keyword != "COPY":
            continue
        words = ins.json_args() or shlex.split(ins.rest)
        words = [w for w in words if not w.startswith("--")]
        out.append((words[:-1], words[-1]))
    return out


def ignored(path: str, patterns: list[str]) -> bool:
    """Whether BuildKit's .dockerignore ``patterns`` leave ``path`` (relative, ``/``-separated) out of the build
    context: the last pattern that matches the path or one of its parent folders decides; ``!`` re-includes."""
    result = False
    parts = path.split("/")
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern[1:] if negate else pattern
        pat = pat.strip("/")
        if any(fnmatch.fnmatchcase("/".join(parts[:n]), pat) for n in range(1, len(parts) + 1)):
            result = not negate
    return result


def read_dockerignore(path: Path) -> list[str]:
    return [x.strip() for x in path.read_text().splitlines() if x.strip() and not x.strip().startswith("#")]
