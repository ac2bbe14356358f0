"""The GPU image's package list (``benchmarks/gpu_image.txt``) and the checks built on it.

Used by ``benchmarks/gpu_wheels.sh`` (what to put in ``.whl/``, and that every wheel there fits the
image) and ``benchmarks/device_replica.sh`` (what the CPU replica installs, and that it holds nothing
the image lacks). Standard library plus ``packaging`` (pip's vendored copy when it is not installed).

    python3 benchmarks/gpu_image.py python             # the image's python major.minor (3.12)
    python3 benchmarks/gpu_image.py find-python        # a local interpreter of that version, or exit 1
    python3 benchmarks/gpu_image.py need               # NAME==VERSION of every `need` line (one a line)
    python3 benchmarks/gpu_image.py need --sdist       # only those built from source here
    python3 benchmarks/gpu_image.py use                # the replica's install specs (NAME[==VERSION])
    python3 benchmarks/gpu_image.py check-wheels DIR   # .whl/ fits the image (exit 1 with the reasons)
    python benchmarks/gpu_image.py check-env           # this interpreter's packages are all the image's
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import re
import shutil
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

try:
    from packaging.markers import Marker
    from packaging.requirements import Requirement
    from packaging.specifiers import SpecifierSet
    from packaging.utils import canonicalize_name, parse_wheel_filename
    from packaging.version import Version
except ImportError:  # a bare interpreter: pip carries its own copy
    from pip._vendor.packaging.markers import Marker  # type: ignore[no-redef]
    from pip._vendor.packaging.requirements import Requirement  # type: ignore[no-redef]
    from pip._vendor.packaging.specifiers import SpecifierSet  # type: ignore[no-redef]
    from pip._vendor.packaging.utils import canonicalize_name, parse_wheel_filename  # type: ignore[no-redef]
    from pip._vendor.packaging.version import Version  # type: ignore[no-redef]

IMAGE_FILE = Path(__file__).resolve().with_name("gpu_image.txt")


@dataclass
class Need:
    name: str
    version: str
    sdist: bool = False
    extras: tuple[str, ...] = ()


@dataclass
class Image:
    python: str                                            # "3.12.3"
    glibc: tuple[int, int]                                 # the least glibc the image has
    have: dict[str, str | None] = field(default_factory=dict)   # canonical name -> version or None
    use: list[str] = field(default_factory=list)           # canonical names the replica installs
    need: dict[str, Need] = field(default_factory=dict)    # canonical name -> Need

    @property
    def cp(self) -> str:
        major, minor = self.python.split(".")[:2]
        return f"cp{major}{minor}"

    @property
    def major_minor(self) -> str:
        return ".".join(self.python.split(".")[:2])


def exact(version: str | None) -> str | None:
    """A `have` line's version when it is one (not `-`, not a specifier such as <0.29)."""
    return version if version and version[0].isdigit() else None


def load(path: Path = IMAGE_FILE) -> Image:
    python = glibc = None
    have: dict[str, str | None] = {}
    use: list[str] = []
    need: dict[str, Need] = {}
    for n, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.split("#", 1)[0].split()
        if not line:
            continue
        where = f"{path.name}:{n}"
        kind, args = line[0], line[1:]
        if kind == "python" and len(args) == 1:
            python = args[0]
        elif kind == "glibc" and len(args) == 1:
            glibc = tuple(int(x) for x in args[0].split("."))
        elif kind == "have" and len(args) in (2, 3) and (len(args) == 2 or args[2] == "use"):
            name = canonicalize_name(args[0])
            if name in have:
                raise SystemExit(f"{where}: {args[0]} listed twice")
            have[name] = None if args[1] == "-" else args[1]
            if have[name] and not have[name][0].isdigit():
                try:
                    SpecifierSet(have[name])
                except Exception:  # noqa: BLE001
                    raise SystemExit(f"{where}: {args[1]!r} is neither a version, `-` nor a specifier like <0.29")
            if len(args) == 3:
                use.append(name)
        elif kind == "need" and len(args) >= 2:
            name = canonicalize_name(args[0])
            sdist, extras = False, ()
            for flag in args[2:]:
                if flag == "sdist":
                    sdist = True
                elif flag.startswith("extras="):
                    extras = tuple(x for x in flag[len("extras="):].split(",") if x)
                else:
                    raise SystemExit(f"{where}: unknown flag {flag!r} (sdist, extras=A,B)")
            need[name] = Need(args[0], args[1], sdist, extras)
        else:
            raise SystemExit(f"{where}: cannot read {raw.strip()!r} (python V | glibc V | have NAME VERSION|- [use] | "
                             "need NAME VERSION [sdist] [extras=A,B])")
    if python is None or glibc is None:
        raise SystemExit(f"{path}: needs a `python VERSION` and a `glibc VERSION` line")
    both = sorted(set(have) & set(need))
    if both:
        raise SystemExit(f"{path}: {', '.join(both)} is both `have` and `need`")
    return Image(python, glibc, have, use, need)


# ----------------------------------------------------------------------------------------- interpreters
def find_python(image: Image) -> str | None:
    """A working ``pythonX.Y`` (the image's major.minor): on PATH, else the newest pyenv ``X.Y.*``
    (a pyenv shim on PATH that has no such version selected does not count)."""
    import subprocess

    candidates = [shutil.which(f"python{image.major_minor}")]
    found = []
    for root in filter(None, [os.environ.get("PYENV_ROOT", ""), os.path.expanduser("~/.pyenv")]):
        for p in glob.glob(os.path.join(root, "versions", f"{image.major_minor}.*", "bin", "python")):
            m = re.search(rf"versions/{re.escape(image.major_minor)}\.(\d+)/", p)
            if m:
                found.append((int(m.group(1)), p))
    candidates += [p for _, p in sorted(found, reverse=True)]
    for exe in filter(None, candidates):
        try:
            r = subprocess.run([exe, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"], capture_output=True,
                               text=True, timeout=60)
        except OSError:
            continue
        if r.returncode == 0 and r.stdout.strip() == image.major_minor:
            return exe
    return None


# ----------------------------------------------------------------------------------------- wheels
def _marker_env(image: Image, extra: str = "") -> dict[str, str]:
    return {"python_version": image.major_minor, "python_full_version": image.python, "sys_platform": "linux",
            "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
            "implementation_name": "cpython", "platform_python_implementation": "CPython", "extra": extra}


def wheel_problem(filename: str, image: Image) -> str | None:
    """Why this wheel cannot be installed on the image (None: it can)."""
    try:
        _, _, _, tags = parse_wheel_filename(filename)
    except Exception as err:  # noqa: BLE001
        return f"not a wheel file name ({err})"
    ok = []
    for t in tags:
        if t.interpreter in ("py3", f"py{image.cp[2:]}") and t.abi == "none" and t.platform == "any":
            ok.append(t)
        elif t.interpreter == image.cp and t.abi in (image.cp, "abi3", "none"):
            m = re.fullmatch(r"manylinux_(\d+)_(\d+)_x86_64", t.platform)
            legacy = {"manylinux1_x86_64": (2, 5), "manylinux2010_x86_64": (2, 12), "manylinux2014_x86_64": (2, 17)}
            glibc = (int(m.group(1)), int(m.group(2))) if m else legacy.get(t.platform)
            if glibc and glibc <= image.glibc:
                ok.append(t)
    if ok:
        return None
    seen = ", ".join(sorted({f"{t.interpreter}-{t.abi}-{t.platform}" for t in tags}))
    return (f"built for {seen}; the GPU image runs CPython {image.major_minor} on x86_64 with glibc >= "
            f"{image.glibc[0]}.{image.glibc[1]}: only py3-none-any or {image.cp} manylinux x86_64 wheels install there")


def _metadata(path: Path) -> tuple[str, str, list[str]]:
    with zipfile.ZipFile(path) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA") and n.count("/") == 1)
        text = z.read(meta).decode("utf-8", "replace")
    head = text.split("\n\n", 1)[0]
    get = lambda key: [line.split(":", 1)[1].strip() for line in head.splitlines() if line.startswith(key + ":")]
    return get("Name")[0], get("Version")[0], get("Requires-Dist")


def check_wheels(folder: Path, image: Image) -> list[str]:
    """Every reason the wheels in ``folder`` do not fit the image; empty when they do."""
    problems: list[str] = []
    wheels = sorted(folder.glob("*.whl"))
    others = sorted(p.name for p in folder.iterdir() if p.suffix != ".whl")
    if others:
        problems.append(f"{folder}: not wheels: {', '.join(others)}")
    found: dict[str, tuple[str, Path]] = {}
    for w in wheels:
        why = wheel_problem(w.name, image)
        if why:
            problems.append(f"refusing {w.name}: {why}")
            continue
        name, version, requires = _metadata(w)
        key = canonicalize_name(name)
        if key in found:
            problems.append(f"two versions of {name}: {found[key][1].name} and {w.name} (keep one)")
            continue
        found[key] = (version, w)
        if key in image.have:
            problems.append(f"refusing {w.name}: the GPU image already has {name} (it would shadow the image's copy)")
        elif key not in image.need:
            problems.append(f"refusing {w.name}: {name} is not a `need` line of {IMAGE_FILE.name}")
        elif Version(version) != Version(image.need[key].version):
            problems.append(f"{w.name}: version {version}, {IMAGE_FILE.name} pins {image.need[key].version}")
    missing = sorted(set(image.need) - set(found))
    if missing:
        problems.append(f"missing from {folder}: {', '.join(image.need[k].name + '==' + image.need[k].version for k in missing)}")
    # every requirement of a carried wheel (its listed extras included) is in the image or carried
    for key, (version, w) in sorted(found.items()):
        extras = image.need[key].extras if key in image.need else ()
        for spec in _metadata(w)[2]:
            req = Requirement(spec)
            if req.marker is not None and not any(req.marker.evaluate(_marker_env(image, e)) for e in ("",) + extras):
                continue
            dep = canonicalize_name(req.name)
            if dep in found:
                have_version = found[dep][0]
            elif dep in image.have:
                have_version = exact(image.have[dep])
            else:
                problems.append(f"{w.name} needs {spec.split(';')[0].strip()}: neither in the GPU image nor in {folder}")
                continue
            if have_version is not None and req.specifier and not req.specifier.contains(have_version, prereleases=True):
                problems.append(f"{w.name} needs {req.name}{req.specifier}, the GPU image/{folder.name} has {have_version}")
    return problems


# ----------------------------------------------------------------------------------------- installed env
def check_env(image: Image, extra_ok: tuple[str, ...] = ()) -> tuple[list[dict], list[str]]:
    """This interpreter's installed distributions against the image: rows and problems."""
    from importlib.metadata import distributions

    rows, problems = [], []
    seen = set()
    for d in distributions():
        name = d.metadata["Name"]
        key = canonicalize_name(name)
        if key in seen:
            continue
        seen.add(key)
        pinned = image.have.get(key)
        row = {"name": name, "version": d.version, "image_version": pinned, "in_image": key in image.have}
        spec = pinned if pinned and exact(pinned) is None else None
        rows.append(row)
        if key in extra_ok:
            continue
        if key not in image.have:
            problems.append(f"{name} {d.version} is installed but the GPU image lacks it ({IMAGE_FILE.name})")
        elif spec is not None and not SpecifierSet(spec).contains(d.version, prereleases=True):
            problems.append(f"{name} {d.version} is installed, the GPU image's is {spec}")
        elif spec is None and pinned is not None and Version(d.version.split("+")[0]) != Version(pinned.split("+")[0]):
            problems.append(f"{name} {d.version} is installed, the GPU image has {pinned}")
    for key in image.use:
        if key not in seen:
            problems.append(f"{key} (a `use` package of {IMAGE_FILE.name}) is not installed")
    return sorted(rows, key=lambda r: r["name"].lower()), problems


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("python")
    sub.add_parser("find-python")
    n = sub.add_parser("need")
    n.add_argument("--sdist", action="store_true", help="only the packages built from source")
    n.add_argument("--binary", action="store_true", help="only the packages fetched as wheels")
    sub.add_parser("use")
    c = sub.add_parser("check-wheels")
    c.add_argument("folder", type=Path)
    e = sub.add_parser("check-env")
    e.add_argument("--json", type=Path, default=None, help="also write the rows and problems here")
    e.add_argument("--allow", default="", help="comma-separated names allowed beyond the image")
    a = ap.parse_args()
    image = load()
    if a.cmd == "python":
        print(image.major_minor)
    elif a.cmd == "find-python":
        exe = find_python(image)
        if not exe:
            print(f"no Python {image.major_minor} here (the GPU image's): put python{image.major_minor} on PATH or "
                  f"`pyenv install {image.major_minor}`", file=sys.stderr)
            return 1
        print(exe)
    elif a.cmd == "need":
        for nd in image.need.values():
            if (a.sdist and not nd.sdist) or (a.binary and nd.sdist):
                continue
            print(f"{nd.name}=={nd.version}")
    elif a.cmd == "use":
        for key in image.use:
            v = image.have[key]
            print(key if v is None else f"{key}=={v}" if exact(v) else f"{key}{v}")
    elif a.cmd == "check-wheels":
        problems = check_wheels(a.folder, image)
        for p in problems:
            print(f"gpu_wheels: {p}", file=sys.stderr)
        if problems:
            return 1
        for w in sorted(a.folder.glob("*.whl")):
            print(f"  {w.name}  ({w.stat().st_size / 2 ** 20:.1f} MiB)")
    elif a.cmd == "check-env":
        allow = tuple(canonicalize_name(x) for x in a.allow.split(",") if x)
        rows, problems = check_env(image, allow)
        if a.json:
            a.json.write_text(json.dumps({"python": sys.version.split()[0], "image_python": image.python,
                                          "packages": rows, "problems": problems}, indent=1))
        for p in problems:
            print(f"replica: {p}", file=sys.stderr)
        return 1 if problems else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
