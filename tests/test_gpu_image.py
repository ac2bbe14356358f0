"""benchmarks/gpu_image.py: the GPU image's one package list and the checks gpu_wheels.sh and
device_replica.sh rest on (wheel tags for CPython 3.12, nothing the image has, every requirement met)."""
from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import gpu_image  # noqa: E402
from gpu_image import Image, Need, check_env, check_wheels, wheel_problem  # noqa: E402


def _wheel(folder: Path, filename: str, requires: list[str]) -> Path:
    name, version = filename.split("-")[:2]
    path = folder / filename
    meta = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n" + "".join(
        f"Requires-Dist: {r}\n" for r in requires) + "\nlong description\nRequires-Dist: not-a-header\n"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{name}-{version}.dist-info/METADATA", meta)
    return path


def _image(**need) -> Image:
    return Image(python="3.12.3", glibc=(2, 28), have={"torch": "2.11.0", "numpy": None, "typer": "<0.29"},
                 use=["torch"], need=need)


def test_the_committed_list_reads_and_keeps_have_and_need_apart():
    image = gpu_image.load()
    assert image.major_minor == "3.12" and image.cp == "cp312"
    assert image.have["torch"] == "2.11.0" and "torch" in image.use
    assert "deepspeed" in image.need and image.need["deepspeed"].sdist
    assert not set(image.have) & set(image.need)
    # what the project imports and the image lacks (ISSUE 17's list) is carried
    for name in ("pydantic", "pydantic-core", "annotated-types", "typing-inspection", "hjson", "webdataset",
                 "braceexpand", "omegaconf", "antlr4-python3-runtime", "jsonargparse", "docstring-parser",
                 "typeshed-client", "torchdata", "zstandard"):
        assert name in image.need, name
    for name in ("msgpack", "ninja", "py-cpuinfo", "psutil", "einops", "numpy", "lightning", "transformers"):
        assert name in image.have and name not in image.need, name


@pytest.mark.parametrize("filename", [
    "hjson-3.1.0-py3-none-any.whl", "braceexpand-0.1.7-py2.py3-none-any.whl",
    "pydantic_core-2.46.4-cp312-cp312-manylinux_2_17_x86_64.manylinux2014_x86_64.whl",
    "zstandard-0.25.0-cp312-cp312-manylinux_2_28_x86_64.whl", "x-1.0-cp312-abi3-manylinux2014_x86_64.whl"])
def test_wheels_the_image_can_install(filename):
    assert wheel_problem(filename, _image()) is None


@pytest.mark.parametrize("filename, says", [
    ("msgpack-1.2.4-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl", "cp311"),  # built on a 3.11 host
    ("zstandard-0.25.0-cp312-cp312-manylinux_2_34_x86_64.whl", "glibc >= 2.28"),              # newer glibc
    ("zstandard-0.25.0-cp312-cp312-manylinux_2_17_aarch64.whl", "x86_64"),
    ("zstandard-0.25.0-cp312-cp312-win_amd64.whl", "win_amd64"),
    ("deepspeed-0.3.1.dev5-py2-none-any.whl", "py2-none-any"),
])
def test_wheels_the_image_refuses_say_why(filename, says):
    why = wheel_problem(filename, _image())
    assert why is not None and says in why and "3.12" in why


def test_check_wheels_accepts_a_complete_set(tmp_path):
    image = _image(foo=Need("foo", "1.0"), bar=Need("bar", "2.0", extras=("x",)))
    _wheel(tmp_path, "foo-1.0-py3-none-any.whl", ["bar>=2", "torch>=2.0", "numpy", "typer", "zzz; extra == 'docs'"])
    _wheel(tmp_path, "bar-2.0-cp312-cp312-manylinux_2_17_x86_64.whl", ["numpy; extra == 'x'"])
    assert check_wheels(tmp_path, image) == []


def test_check_wheels_names_every_problem(tmp_path):
    image = _image(foo=Need("foo", "1.0"), bar=Need("bar", "2.0", extras=("x",)), gone=Need("gone", "3.0"))
    _wheel(tmp_path, "foo-1.0-py3-none-any.whl", ["torch>=2.12", "missing-dep"])
    _wheel(tmp_path, "bar-2.0-py3-none-any.whl", ["baz; extra == 'x'"])  # an extra we carry: its needs count
    _wheel(tmp_path, "bar-2.1-py3-none-any.whl", [])
    _wheel(tmp_path, "numpy-2.5.2-cp312-cp312-manylinux_2_17_x86_64.whl", [])  # the image has it
    _wheel(tmp_path, "msgpack-1.2.4-cp311-cp311-manylinux_2_17_x86_64.whl", [])
    (tmp_path / "notes.txt").write_text("x")
    text = "\n".join(check_wheels(tmp_path, image))
    assert "refusing msgpack-1.2.4-cp311" in text and "cp311" in text
    assert "already has numpy" in text
    assert "two versions of bar" in text
    assert "missing from" in text and "gone==3.0" in text
    assert "needs missing-dep" in text and "needs baz" in text
    assert "needs torch>=2.12, the GPU image" in text and "2.11.0" in text
    assert "not wheels: notes.txt" in text


def test_check_env_flags_a_package_the_image_lacks():
    import pytest as _pytest  # installed here, and not in this made-up image

    rows, problems = check_env(_image())
    assert any(r["name"].lower() == "pytest" and not r["in_image"] for r in rows)
    assert any(p.startswith(f"pytest {_pytest.__version__} is installed but the GPU image lacks it") for p in problems)


def test_cli_lists_the_replica_specs_with_bounds():
    r = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_image.py"), "use"], capture_output=True,
                       text=True, check=True)
    specs = r.stdout.split()
    assert "torch==2.11.0" in specs and "typer<0.29" in specs and "pytest" in specs
