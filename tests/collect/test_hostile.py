"""`kptrace collect` never writes through anything it did not create, and never replaces a path.

Collection takes seconds and runs as root, often in a directory others can write: whatever appears at
the output path meanwhile (a link to /etc/shadow, a directory of links) must stay as it is. These
tests plant such things during a collection (an extra step that plants, then returns nothing) and
check that the planted targets are untouched, the run ends with one line and exit 2, and no staging
directory is left behind.
"""

from __future__ import annotations

import os
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kptrace.cli.app import _register, app
from kptrace.collect import bundle, live
from kptrace.collect.capture import Capture
from kptrace.errors import KptraceError

from .conftest import HOSTNAME, FakeNode
from .test_read_only import violations

_register()
STARTED = 1700000000.0
DEFAULT = bundle.default_name(HOSTNAME, STARTED) + ".tar.gz"
SECRET = "root:$6$do-not-touch:19000:0:99999:7:::\n"


def run(*args: str) -> tuple[int, str, str]:
    res = CliRunner().invoke(app, list(args))
    if isinstance(res.exception, KptraceError):
        return int(res.exception.exit_code), res.stdout, res.stderr + f"error: {res.exception}\n"
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        raise res.exception
    return res.exit_code, res.stdout, res.stderr


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    """A file of the test's own that a planted link points at (standing in for /etc/shadow)."""
    p = tmp_path / "victim" / "shadow"
    p.parent.mkdir()
    p.write_text(SECRET)
    return p


@pytest.fixture
def planting(monkeypatch: pytest.MonkeyPatch) -> Callable[[Callable[[], None]], None]:
    """Run `plant()` as the last step of the collection: after the output path was checked, before
    the bundle is written. The clock is fixed so the default name is known."""
    monkeypatch.setattr(bundle, "now", lambda: STARTED)

    def install(plant: Callable[[], None]) -> None:
        def step(o: live.Options) -> list[Capture]:
            plant()
            return []

        monkeypatch.setattr(live, "STEPS", (*live.STEPS, live.Step("plant", step)))

    return install


def _leftovers(d: Path) -> list[str]:
    return [p.name for p in d.iterdir() if p.name.startswith(".kptrace-")]


def _refused(code: int, stderr: str, out: Path) -> None:
    assert code == 2
    lines = [ln for ln in stderr.splitlines() if ln.startswith("error: ")]
    assert lines == [f"error: {out} exists; kptrace collect does not overwrite files"], stderr


def test_a_directory_of_links_planted_at_the_output_is_not_written_through(
        fake_node: FakeNode, tmp_path: Path, victim: Path, planting: Callable[[Callable[[], None]], None]) -> None:
    out = tmp_path / "bundle"

    def plant() -> None:
        out.mkdir()
        (out / "manifest.json").symlink_to(victim)
        (out / "iptables-save.txt").symlink_to(victim)

    planting(plant)
    code, _, stderr = run("collect", "-o", str(out), "-q")
    _refused(code, stderr, out)
    assert victim.read_text() == SECRET
    assert sorted(p.name for p in out.iterdir()) == ["iptables-save.txt", "manifest.json"]
    assert all((out / n).is_symlink() for n in ("manifest.json", "iptables-save.txt"))
    assert _leftovers(tmp_path) == []


def test_a_link_to_a_directory_planted_at_the_output_is_not_followed(
        fake_node: FakeNode, tmp_path: Path, planting: Callable[[Callable[[], None]], None]) -> None:
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    out = tmp_path / "bundle"
    planting(lambda: out.symlink_to(theirs))
    code, _, stderr = run("collect", "-o", str(out), "-q")
    _refused(code, stderr, out)
    assert list(theirs.iterdir()) == [] and out.is_symlink()
    assert _leftovers(tmp_path) == []


def test_an_empty_directory_planted_at_the_output_is_not_replaced(
        fake_node: FakeNode, tmp_path: Path, planting: Callable[[Callable[[], None]], None]) -> None:
    out = tmp_path / "bundle"
    planting(lambda: out.mkdir())
    code, _, stderr = run("collect", "-o", str(out), "-q")
    _refused(code, stderr, out)
    assert out.is_dir() and list(out.iterdir()) == []


@pytest.mark.parametrize("default", [False, True], ids=["named", "default-name-in-a-directory"])
def test_a_link_planted_at_the_tarball_is_not_written_through(
        fake_node: FakeNode, tmp_path: Path, victim: Path, planting: Callable[[Callable[[], None]], None],
        default: bool) -> None:
    where = tmp_path / "out"
    where.mkdir()
    out = where / (DEFAULT if default else "node.tar.gz")
    planting(lambda: out.symlink_to(victim))
    code, _, stderr = run("collect", "-o", str(where if default else out), "-q")
    _refused(code, stderr, out)
    assert victim.read_text() == SECRET and out.is_symlink()
    assert _leftovers(where) == []


def test_an_existing_tarball_with_the_default_name_is_kept(fake_node: FakeNode, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bundle, "now", lambda: STARTED)
    monkeypatch.chdir(tmp_path)
    (tmp_path / DEFAULT).write_text("an earlier bundle")
    for args in ([], ["-o", str(tmp_path)], ["-o", "."]):
        code, _, stderr = run("collect", "-q", *args)
        assert code == 2 and "does not overwrite" in stderr, args
        assert (tmp_path / DEFAULT).read_text() == "an earlier bundle"


@pytest.mark.parametrize("kind", ["dangling link", "directory", "file"])
def test_anything_already_at_the_output_is_refused_before_collecting(
        fake_node: FakeNode, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str) -> None:
    out = tmp_path / "b.tar.gz"
    if kind == "dangling link":
        out.symlink_to(tmp_path / "nowhere")
    elif kind == "directory":
        out.mkdir()
    else:
        out.write_text("keep")
    ran: list[str] = []
    monkeypatch.setattr(live, "collect", lambda *a, **k: ran.append("collect") or [])
    code, _, stderr = run("collect", "-o", str(out), "-q")
    if kind == "directory":
        # An existing directory takes the default name inside it: that bundle is written there.
        assert code == 0 and len(list(out.iterdir())) == 1
        return
    _refused(code, stderr, out)
    assert ran == [] and out.is_symlink() == (kind == "dangling link")


def test_a_missing_parent_directory_is_one_line(fake_node: FakeNode, tmp_path: Path) -> None:
    out = tmp_path / "no" / "such" / "b.tar.gz"
    code, _, stderr = run("collect", "-o", str(out), "-q")
    assert code == 2 and f"error: {out.parent}: no such directory" in stderr
    assert not (tmp_path / "no").exists()


@pytest.mark.parametrize("tarball", [True, False])
def test_without_renameat2_nothing_is_replaced_either(fake_node: FakeNode, tmp_path: Path, victim: Path,
                                                       monkeypatch: pytest.MonkeyPatch, tarball: bool) -> None:
    """Where RENAME_NOREPLACE is missing: a tarball is linked into place (EEXIST, atomically), a
    directory renamed after a check (rename(2) never moves a directory onto a file or a link)."""
    out = tmp_path / ("b.tar.gz" if tarball else "b")
    caps = live.collect(fake_node.options())
    meta = bundle.Meta(HOSTNAME, HOSTNAME, STARTED, 0.1)
    monkeypatch.setattr(bundle, "_rename_noreplace", lambda src, dst: False)
    assert bundle.write_bundle(caps, out, meta) == out
    assert (tarfile.is_tarfile(out) if tarball else (out / "manifest.json").is_file())
    assert _leftovers(tmp_path) == []

    other = tmp_path / ("c.tar.gz" if tarball else "c")

    def plant_then_refuse(src: str, dst: str) -> bool:
        Path(dst).symlink_to(victim)
        return False

    monkeypatch.setattr(bundle, "_rename_noreplace", plant_then_refuse)
    with pytest.raises(FileExistsError):
        bundle.write_bundle(caps, other, meta)
    assert victim.read_text() == SECRET and other.is_symlink() and _leftovers(tmp_path) == []


def test_renameat2_refuses_an_existing_name(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.write_text("new")
    dst.write_text("old")
    try:
        moved = bundle._rename_noreplace(str(src), str(dst))
    except FileExistsError:
        moved = None
    if moved is False:
        pytest.skip("this kernel or file system has no RENAME_NOREPLACE (the fallback is tested above)")
    assert moved is None and dst.read_text() == "old" and src.read_text() == "new"
    assert bundle._rename_noreplace(str(src), str(tmp_path / "free")) is True
    assert (tmp_path / "free").read_text() == "new" and not src.exists()


def test_a_bundle_directory_gets_the_usual_permissions(fake_node: FakeNode, tmp_path: Path) -> None:
    # Built in a private (0700) staging directory, it is readable as a mkdir'ed directory would be.
    out = bundle.write_bundle(live.collect(fake_node.options()), tmp_path / "b", bundle.Meta(HOSTNAME, HOSTNAME, 0, 0))
    mask = os.umask(0)
    os.umask(mask)
    assert out.stat().st_mode & 0o777 == 0o777 & ~mask
    assert (out / "manifest.json").stat().st_mode & 0o777 == 0o666 & ~mask


@pytest.mark.parametrize("host", ["../../etc/cron.d/x", "a/b", "evil\x1b]52;c;SGk=\x07", "..", ""])
def test_a_hostile_host_name_never_shapes_the_path(host: str) -> None:
    name = bundle.default_name(host, STARTED)
    assert "/" not in name and name.startswith("kptrace-") and name.isprintable()


def test_the_read_only_checker_flags_a_replace_in_the_writer() -> None:
    assert violations("os.replace(tmp, out)\n", "kptrace/collect/bundle.py")
    assert violations("os.chmod(out, 0o600)\n", "kptrace/collect/bundle.py")
