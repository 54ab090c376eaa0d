"""Download the wheels a GPU machine without network needs to run this project (`make gpu-wheels`).

    .venv/bin/python launch/gpu_wheels.py                       # -> .gpu-wheels/ (Python 3.12)
    .venv/bin/python launch/gpu_wheels.py --python-version 3.11 --dest /tmp/w311   # simulation

The set is the project's dependency closure (pyproject.toml's `dependencies` plus `--extras`,
walked through the requirements of the packages installed in this environment, markers
evaluated for the target Python on Linux x86_64) minus what the GPU image already has
(launch/gpu_image_packages.txt) and minus torch, nvidia-* and triton, which are never carried.
Each package is pinned to the version installed here (the tested one); a package this
environment lacks (a marker true only on the target Python) gets the newest matching wheel.
A package of the image list whose recorded version fails a requirement is carried after all.

Downloads manylinux x86_64 binary wheels only (`pip download --only-binary=:all: --no-deps`),
removes wheels of other versions left in the folder from an earlier run, prints every file with
its size and the total, and exits 1 when the total exceeds --limit-mib (default 60).
[build-system] requires (setuptools) go to DEST/build/, so that launch/gpu_check.sh can build and
install the project itself from the working tree there, offline (`conf/` ships as the package
`pretrain_pipeline_conf`, so the tree alone on PYTHONPATH is not enough).
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

try:
    import tomllib
except ImportError:  # Python 3.10
    from pip._vendor import tomli as tomllib

try:
    from packaging.markers import Marker
    from packaging.requirements import Requirement
    from packaging.specifiers import SpecifierSet
    from packaging.utils import canonicalize_name, parse_wheel_filename
    from packaging.version import Version
except ImportError:  # pip always vendors it
    from pip._vendor.packaging.markers import Marker  # noqa: F401
    from pip._vendor.packaging.requirements import Requirement
    from pip._vendor.packaging.specifiers import SpecifierSet
    from pip._vendor.packaging.utils import canonicalize_name, parse_wheel_filename
    from pip._vendor.packaging.version import Version

REPO = Path(__file__).resolve().parents[1]
NEVER = re.compile(r"^(torch|triton|nvidia-.*)$")
"""Never carried: the image's CUDA torch stack (and far too large)."""
# pip matches manylinux_2_N exactly: list every glibc level up to the image's (Ubuntu 24.04: 2.39).
PLATFORMS = [f"manylinux_2_{n}_x86_64" for n in range(39, 16, -1)] + [
    "manylinux2014_x86_64",
    "manylinux2010_x86_64",
    "manylinux1_x86_64",
    "linux_x86_64",
]


def target_env(python_version: str) -> dict[str, str]:
    full = python_version if python_version.count(".") == 2 else python_version + ".0"
    return {
        "python_version": ".".join(python_version.split(".")[:2]),
        "python_full_version": full,
        "implementation_name": "cpython",
        "platform_python_implementation": "CPython",
        "sys_platform": "linux",
        "os_name": "posix",
        "platform_system": "Linux",
        "platform_machine": "x86_64",
        "platform_release": "",
        "platform_version": "",
        "implementation_version": full,
        "extra": "",
    }


def applies(req: Requirement, env: dict[str, str], extras: set[str]) -> bool:
    if req.marker is None:
        return True
    return any(req.marker.evaluate({**env, "extra": e}) for e in {""} | extras)


def read_image_list(path: Path) -> dict[str, str | None]:
    """{canonical name: version seen on the image or None}."""
    image: dict[str, str | None] = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, _, version = line.partition("==")
        image[canonicalize_name(name)] = version.strip() or None
    return image


def installed_version(name: str) -> str | None:
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None


def closure(extras: list[str], env: dict[str, str], image: dict[str, str | None]):
    """(wanted {name: (pin or spec, why)}, skipped {name: why}, notes)."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    roots = list(project["dependencies"])
    for extra in extras:
        roots += project.get("optional-dependencies", {})[extra]
    queue = [(Requirement(r), "pyproject.toml") for r in roots]
    wanted: dict[str, tuple[str, str]] = {}
    skipped: dict[str, str] = {}
    specs: dict[str, list[tuple[SpecifierSet, str]]] = {}
    seen: set[tuple[str, frozenset[str]]] = set()
    notes: list[str] = []
    while queue:
        req, parent = queue.pop(0)
        if not applies(req, env, set()):
            continue
        name = canonicalize_name(req.name)
        specs.setdefault(name, []).append((req.specifier, parent))
        key = (name, frozenset(req.extras))
        if key in seen:
            continue
        seen.add(key)
        version = installed_version(name)
        if NEVER.match(name):
            skipped[name] = "never carried (the image's CUDA stack)"
            continue
        if name in image and name not in wanted:
            skipped[name] = "in the GPU image" + (f" ({image[name]})" if image[name] else "")
            if not req.extras:
                continue  # the image has its needs too
        elif name not in wanted:
            if version is None:
                wanted[name] = (f"{req.name}{req.specifier}", f"{parent}; not installed here")
                newest = f"the newest {req.specifier or 'version'}"
                notes.append(f"{name}: not installed here, taking {newest}")
            else:
                wanted[name] = (f"{name}=={version}", parent)
        if version is None:
            continue
        for line in md.requires(name) or []:
            sub = Requirement(line)
            if name in skipped:  # an image package asked with extras: only what they add
                base = sub.marker is None or sub.marker.evaluate({**env, "extra": ""})
                if base or not applies(sub, env, set(req.extras)):
                    continue
            elif not applies(sub, env, set(req.extras)):
                continue
            queue.append((sub, name))
    # an image package whose recorded version some requirement rules out is carried after all
    for name, seen_version in image.items():
        if seen_version is None or name not in specs or NEVER.match(name):
            continue
        bad = [p for s, p in specs[name] if not s.contains(Version(seen_version), prereleases=True)]
        if bad:
            version = installed_version(name)
            spec = f"{name}=={version}" if version else f"{name}{specs[name][0][0]}"
            wanted[name] = (spec, f"image has {seen_version}, {', '.join(bad)} need(s) otherwise")
            skipped.pop(name, None)
            notes.append(f"{name}: the image's {seen_version} does not satisfy {', '.join(bad)}")
    return wanted, skipped, notes


def _pip(args: list[str]) -> bool:
    """Run pip quietly; echo its output less this machine's notes on absent local indexes."""
    cmd = [sys.executable, "-m", "pip", *args, "--quiet", "--disable-pip-version-check"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    for line in (proc.stdout + proc.stderr).splitlines():
        if not re.match(r"WARNING: Location 'file:.*' is ignored", line):
            print("    " + line)
    return proc.returncode == 0


def download(pins: list[str], dest: Path, python_version: str) -> list[str]:
    """Binary wheels for the target; a pin with none (sdist only) is built here if pure Python."""
    cmd = ["download", "--only-binary=:all:", "--no-deps", "--dest", str(dest)]
    cmd += ["--python-version", python_version, "--implementation", "cp"]
    for platform in PLATFORMS:
        cmd += ["--platform", platform]
    present = set()
    for path in dest.glob("*.whl"):
        name, version, _, _ = parse_wheel_filename(path.name)
        present.add(f"{name}=={version}")
    pins = [pin for pin in pins if pin not in present]  # from an earlier run
    if not pins:
        return []
    print(f"+ pip download --only-binary=:all: --no-deps --python-version {python_version} ...")
    if _pip(cmd + pins):
        return []
    failed = []
    for pin in pins:  # one at a time, to find which have no binary wheel
        if _pip(cmd + [pin]):
            continue
        print(f"  {pin}: no binary wheel; building it here (kept only if pure Python)")
        with tempfile.TemporaryDirectory() as tmp:
            name = Requirement(pin).name
            built = _pip(["wheel", "--no-deps", "--no-binary", name, "--wheel-dir", tmp, pin])
            wheels = list(Path(tmp).glob("*.whl"))
            if built and len(wheels) == 1 and wheels[0].name.endswith("-none-any.whl"):
                shutil.move(str(wheels[0]), dest / wheels[0].name)
            else:
                failed.append(pin)
    return failed


def check_closure(wheels: list[Path], env: dict[str, str], image: dict[str, str | None]):
    """Each wheel's own Requires-Dist (the target's metadata): met by the set or the image?"""
    have = {}
    for path in wheels:
        name, version, _, _ = parse_wheel_filename(path.name)
        have[name] = version
    problems = []
    for path in wheels:
        with zipfile.ZipFile(path) as zf:
            meta = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
            text = zf.read(meta).decode()
        for line in text.splitlines():
            if not line.startswith("Requires-Dist:"):
                continue
            req = Requirement(line.split(":", 1)[1].strip())
            if not applies(req, env, set()):
                continue
            name = canonicalize_name(req.name)
            if NEVER.match(name):
                continue
            if name in have:
                if not req.specifier.contains(have[name], prereleases=True):
                    problems.append(f"{path.name} needs {req}, the set has {name} {have[name]}")
            elif name in image:
                seen = image[name]
                if seen and not req.specifier.contains(Version(seen), prereleases=True):
                    problems.append(f"{path.name} needs {req}, the image has {name} {seen}")
            else:
                problems.append(f"{path.name} needs {req}: neither carried nor in the image")
    return problems


def build_requirements() -> dict[str, tuple[str, str]]:
    """[build-system] requires, pinned like the rest (to build the project on the GPU machine)."""
    pins = {}
    for line in tomllib.loads((REPO / "pyproject.toml").read_text())["build-system"]["requires"]:
        req = Requirement(line)
        name = canonicalize_name(req.name)
        version = installed_version(name)
        ok = version is not None and req.specifier.contains(version, prereleases=True)
        pins[name] = (f"{name}=={version}" if ok else str(req), "[build-system] requires")
    return pins


def prune(folder: Path, wanted: dict[str, tuple[str, str]]) -> list[Path] | None:
    """Remove wheels of other packages or versions (from an earlier run); None if one is missing."""
    keep = []
    for path in sorted(folder.glob("*.whl")):
        name, version, _, _ = parse_wheel_filename(path.name)
        exact = wanted.get(name, ("", ""))[0].partition("==")[2]
        if name not in wanted or (exact and Version(exact) != version):
            print(f"  remove {path.name} (not in this set)")
            path.unlink()
            continue
        keep.append(path)
    for path in folder.iterdir():
        if path.suffix != ".whl" and path.name != "build":
            print(f"  note: {path.name} in {folder} is no wheel")
    names = {parse_wheel_filename(p.name)[0] for p in keep}
    missing = sorted(set(wanted) - names)
    if missing or len(names) != len(keep):
        print(f"ERROR: wheels missing {missing} or duplicated in {folder}", file=sys.stderr)
        return None
    return keep


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dest", default=str(REPO / ".gpu-wheels"))
    parser.add_argument("--python-version", default="3.12")
    parser.add_argument("--extras", default="hf", help="comma list of pyproject extras ('' none)")
    parser.add_argument("--image-packages", default=str(REPO / "launch/gpu_image_packages.txt"))
    parser.add_argument("--limit-mib", type=float, default=60.0)
    parser.add_argument("--list", action="store_true", help="print the set, download nothing")
    args = parser.parse_args()

    extras = [e for e in args.extras.split(",") if e]
    image = read_image_list(Path(args.image_packages))
    wanted, skipped, notes = closure(extras, target_env(args.python_version), image)
    print(f"dependency closure for Python {args.python_version} (extras: {extras or 'none'}):")
    for name in sorted(skipped):
        print(f"  skip   {name:32s} {skipped[name]}")
    for name in sorted(wanted):
        print(f"  carry  {wanted[name][0]:32s} (needed by {wanted[name][1]})")
    for note in notes:
        print("  note:", note)
    if args.list:
        return 0

    dest = Path(args.dest)
    build = build_requirements()
    print("  build  " + ", ".join(f"{pin} ({why})" for pin, why in build.values()))
    keep: list[Path] = []
    for folder, want in ((dest, wanted), (dest / "build", build)):
        folder.mkdir(parents=True, exist_ok=True)
        failed = download([pin for pin, _ in want.values()], folder, args.python_version)
        if failed:
            print(f"ERROR: no Python {args.python_version} wheel for {failed}", file=sys.stderr)
            return 1
        here = prune(folder, want)
        if here is None:
            return 1
        keep += here
    problems = check_closure(
        [p for p in keep if p.parent == dest], target_env(args.python_version), image
    )
    for problem in problems:
        print("ERROR:", problem, file=sys.stderr)
    if problems:
        return 1
    total = sum(p.stat().st_size for p in keep)
    print(f"\nwheels in {dest} for cp{args.python_version.replace('.', '')} manylinux x86_64:")
    for path in keep:
        print(f"  {path.stat().st_size / 2**20:7.2f} MiB  {path.relative_to(dest)}")
    mib = total / 2**20
    print(f"  {mib:7.2f} MiB  total, {len(keep)} wheels (limit {args.limit_mib:g} MiB)")
    if mib > args.limit_mib:
        print(
            f"ERROR: {mib:.1f} MiB exceeds the {args.limit_mib:g} MiB limit (a device call carries"
            " at most 64 MiB, working tree included): drop an extra, or list packages the image"
            " already has in launch/gpu_image_packages.txt",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
