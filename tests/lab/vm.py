"""A second kernel for the lab: Debian's kernel booted in qemu, for what this machine's kernel lacks.

The host kernel has no IPVS and no dummy, ipip, vlan or vxlan links, so kube-proxy's IPVS mode and
those links cannot be judged by the netns lab. This module boots Debian's own kernel
(`linux-image-amd64`'s image package) under qemu's TCG (KVM is not usable on these machines) with
a tiny busybox initramfs holding the kernel's networking modules. The guest mounts this machine's
root read-only over 9p, adds tmpfs for /tmp and /run, and chroots into it: the VM runs this
machine's own python, iptables, ipvsadm and ipset, and this checkout, on the Debian kernel.

    build_image(cache)  kernel + initramfs, built once per kernel package version under `cache`
    Vm(image, out).run(argv, timeout)  boot, run one command in the chroot, power off

What the command writes under /tmp/kpt-vm-out (a writable 9p export of `out`) is on the host
when `run` returns; its exit code and the console's tail come back in a `VmRun`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
META_PACKAGE = "linux-image-amd64"
QEMU = "qemu-system-x86_64"
BUSYBOX = Path("/bin/busybox")  # busybox-static: no libraries needed in the initramfs
GUEST_OUT = "/tmp/kpt-vm-out"  # where the writable export appears inside the chroot
GUEST_MODULES = "/run/kpt-modules"  # `modprobe -d` root of the guest kernel's modules inside the chroot
BOOT_TIMEOUT_S = 120.0
# Module trees packed into the initramfs, relative to lib/modules/<version>/kernel/; everything they
# depend on comes along (modules.dep). drivers/net/ is mostly hardware: only the virtual links.
MODULE_DIRS = ("net/netfilter", "net/ipv4", "net/ipv6", "net/bridge", "net/8021q", "net/9p", "net/core",
               "net/sched", "net/llc", "net/802", "net/unix", "net/packet", "fs/9p", "drivers/virtio",
               "crypto", "lib")
NET_DRIVERS = ("dummy", "veth", "vxlan", "ipvlan", "macvlan", "geneve", "udp_tunnel", "ip6_udp_tunnel",
               "wireguard", "tun")
# Loaded at boot before the chroot; everything else loads on demand (request_module runs the
# initramfs's /sbin/modprobe, which knows this module tree).
BOOT_MODULES = ("virtio_pci", "9pnet_virtio", "9p", "crc32c_generic", "libcrc32c", "br_netfilter", "bridge",
                "veth", "dummy", "ip_vs", "ip_vs_rr", "ip_vs_wrr", "ip_vs_sh", "vxlan", "ipip", "8021q",
                "xt_set", "ip_set_hash_ip", "ip_set_hash_ipport", "ip_set_hash_ipportip",
                "ip_set_hash_ipportnet", "ip_set_hash_net", "ip_set_bitmap_port", "nf_conntrack_netlink",
                "xt_ipvs")

INIT = r"""#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin:/sbin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
echo /sbin/modprobe > /proc/sys/kernel/modprobe
for m in $(cat /etc/kpt-modules); do modprobe $m || echo "kpt-vm: modprobe $m failed"; done
mkdir -p /host
mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose,msize=262144 host /host || echo "kpt-vm: no host root"
mount -t tmpfs tmp /host/tmp
mount -t tmpfs run /host/run
mkdir -p /host/tmp/kpt-vm-out
mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 out /host/tmp/kpt-vm-out || echo "kpt-vm: no out"
# The project itself, at its own path: a clone under /tmp (CI's, say) is hidden by the tmpfs above.
if [ -s /host/tmp/kpt-vm-out/repo ]; then
  repo=$(cat /host/tmp/kpt-vm-out/repo)
  mkdir -p "/host$repo" 2>/dev/null
  mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose,msize=262144 repo "/host$repo" || echo "kpt-vm: no repo"
fi
mount --move /proc /host/proc
mount --move /sys /host/sys
mount --move /dev /host/dev
mount -t devpts devpts /host/dev/pts 2>/dev/null
# This kernel's modules for the chroot's own modprobe: `modprobe -d /run/kpt-modules NAME` (the
# host may have no /lib/modules to mount over). The kernel's own requests (request_module) run the
# initramfs's /sbin/modprobe, outside the chroot.
mkdir -p /host/run/kpt-modules/lib/modules/$(uname -r)
mount --bind /lib/modules/$(uname -r) /host/run/kpt-modules/lib/modules/$(uname -r)
echo "kpt-vm: ready $(cat /host/proc/uptime)"
chroot /host /bin/sh -c '. /tmp/kpt-vm-out/env.sh; cd "$KPT_VM_CWD"; /bin/sh /tmp/kpt-vm-out/run.sh > /tmp/kpt-vm-out/stdout 2> /tmp/kpt-vm-out/stderr; echo $? > /tmp/kpt-vm-out/rc'
sync
echo "kpt-vm: done"
poweroff -f
"""


class VmError(RuntimeError):
    """The VM could not be built or booted (not a kptrace disagreement)."""


def _run(args: list[str], *, cwd: Path | None = None, timeout: float = 300.0) -> str:
    try:
        proc = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise VmError(f"{' '.join(args)}: {exc}") from exc
    if proc.returncode != 0:
        raise VmError(f"{' '.join(args)} -> rc={proc.returncode}: {proc.stderr.strip()[-1000:]}")
    return proc.stdout


def unavailable_reason() -> str | None:
    """Why the VM lab cannot run here, or None when it can."""
    if os.geteuid() != 0:
        return "the VM lab needs root (the guest runs the netns lab as root over this machine's root)"
    if shutil.which(QEMU) is None:
        return f"{QEMU} is not installed (apt-get install qemu-system-x86)"
    if not BUSYBOX.is_file():
        return "busybox-static is not installed (/bin/busybox)"
    for tool, pkg in (("cpio", "cpio"), ("depmod", "kmod"), ("apt-get", "apt"), ("dpkg-deb", "dpkg"),
                      ("ipvsadm", "ipvsadm"), ("ipset", "ipset")):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (apt-get install {pkg})"
    try:
        kernel_package()
    except VmError as exc:
        return f"no Debian kernel package to boot: {exc}"
    return None


@dataclass(frozen=True)
class KernelPackage:
    name: str  # linux-image-6.1.0-57-amd64
    version: str  # 6.1.192-3

    @property
    def key(self) -> str:
        """The cache entry: the package version, and the recipe (init script, module lists) built from it."""
        recipe = hashlib.sha256(repr((INIT, MODULE_DIRS, NET_DRIVERS, BOOT_MODULES)).encode()).hexdigest()[:12]
        return f"{self.name}_{self.version}_{recipe}".replace("/", "_").replace(":", "_")


def kernel_package() -> KernelPackage:
    """The image package `linux-image-amd64` depends on, and its version, from apt's lists."""
    deps = _run(["apt-cache", "depends", META_PACKAGE], timeout=60)
    names = [line.split(":", 1)[1].strip() for line in deps.splitlines() if line.strip().startswith("Depends:")]
    images = [n for n in names if n.startswith("linux-image-")]
    if not images:
        raise VmError(f"apt-cache depends {META_PACKAGE} names no linux-image package (apt-get update?)")
    show = _run(["apt-cache", "show", "--no-all-versions", images[0]], timeout=60)
    version = next((line.split(":", 1)[1].strip() for line in show.splitlines() if line.startswith("Version:")), "")
    if not version:
        raise VmError(f"apt-cache show {images[0]} gives no version")
    return KernelPackage(images[0], version)


@dataclass(frozen=True)
class Image:
    kernel: Path
    initrd: Path
    release: str  # uname -r inside the VM
    package: KernelPackage


def build_image(cache: Path) -> Image:
    """Kernel and initramfs for the current kernel package, built into `cache` unless already there."""
    pkg = kernel_package()
    where = cache / pkg.key
    meta = where / "image.json"
    if meta.is_file():
        doc = json.loads(meta.read_text())
        img = Image(where / "vmlinuz", where / "initrd.gz", str(doc["release"]), pkg)
        if img.kernel.is_file() and img.initrd.is_file():
            return img
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="kpt-vm-build-", dir=cache) as tmp:
        work = Path(tmp)
        debs_dir = cache / "debs"  # the package itself, kept: a new recipe need not download it again
        debs_dir.mkdir(exist_ok=True)
        debs = sorted(debs_dir.glob(f"{pkg.name}_*.deb"))
        if not debs or pkg.version.split(":")[-1] not in debs[-1].name:
            for old in debs:
                old.unlink()
            _run(["apt-get", "download", pkg.name], cwd=debs_dir, timeout=600)
            debs = sorted(debs_dir.glob(f"{pkg.name}_*.deb"))
        if not debs:
            raise VmError(f"apt-get download {pkg.name} wrote no .deb")
        tree = work / "pkg"
        _run(["dpkg-deb", "-x", str(debs[0]), str(tree)], timeout=300)
        releases = sorted(p.name for p in (tree / "lib/modules").iterdir())
        if len(releases) != 1:
            raise VmError(f"{debs[0].name}: expected one module tree, found {releases}")
        release = releases[0]
        vmlinuz = tree / "boot" / f"vmlinuz-{release}"
        root = work / "initramfs"
        _initramfs_tree(tree / "lib/modules" / release, root, release)
        staging = work / "out"
        staging.mkdir()
        shutil.copyfile(vmlinuz, staging / "vmlinuz")
        cpio = subprocess.run(f"find . -print0 | cpio --null -o -H newc --quiet | gzip -1 > {shlex.quote(str(staging / 'initrd.gz'))}",
                              shell=True, cwd=root, capture_output=True, text=True, timeout=300, check=False)
        if cpio.returncode != 0:
            raise VmError(f"packing the initramfs failed: {cpio.stderr.strip()}")
        (staging / "image.json").write_text(json.dumps({"release": release, "package": pkg.name,
                                                        "version": pkg.version}) + "\n")
        if where.exists():
            shutil.rmtree(where)
        staging.rename(where)
    return Image(where / "vmlinuz", where / "initrd.gz", release, pkg)


def _initramfs_tree(modules: Path, root: Path, release: str) -> None:
    """busybox, an init script and the networking part of the package's module tree, with depmod run on it."""
    for d in ("bin", "sbin", "etc", "proc", "sys", "dev", "tmp", "host"):
        (root / d).mkdir(parents=True)
    shutil.copyfile(BUSYBOX, root / "bin/busybox")
    (root / "bin/busybox").chmod(0o755)
    for tool in ("modprobe", "insmod"):
        (root / "sbin" / tool).symlink_to("/bin/busybox")
    (root / "bin/sh").symlink_to("busybox")
    (root / "init").write_text(INIT)
    (root / "init").chmod(0o755)
    (root / "etc/kpt-modules").write_text("\n".join(BOOT_MODULES) + "\n")
    dest = root / "lib/modules" / release
    wanted: set[Path] = set()
    kernel = modules / "kernel"
    for sub in MODULE_DIRS:
        wanted |= {p.relative_to(modules) for p in (kernel / sub).rglob("*.ko*")}
    for name in NET_DRIVERS:
        wanted |= {p.relative_to(modules) for p in (kernel / "drivers/net").rglob(f"{name}.ko*")}
    if not (modules / "modules.dep").is_file():  # the package leaves it to its postinst
        _run(["depmod", "-b", str(modules.parents[2]), release], timeout=300)
    deps = _module_deps(modules / "modules.dep")
    todo = list(wanted)
    while todo:
        for dep in deps.get(todo.pop(), ()):
            if dep not in wanted:
                wanted.add(dep)
                todo.append(dep)
    for rel in sorted(wanted):
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(modules / rel, dest / rel)
    for extra in ("modules.order", "modules.builtin", "modules.builtin.modinfo"):
        if (modules / extra).is_file():
            shutil.copyfile(modules / extra, dest / extra)
    _run(["depmod", "-b", str(root), release], timeout=300)


def _module_deps(dep_file: Path) -> dict[Path, list[Path]]:
    deps: dict[Path, list[Path]] = {}
    for line in dep_file.read_text().splitlines():
        head, _, rest = line.partition(":")
        deps[Path(head)] = [Path(d) for d in rest.split()]
    return deps


@dataclass
class VmRun:
    rc: int | None  # the command's exit code; None if it never finished
    stdout: str
    stderr: str
    console: str
    seconds: float

    def failure(self) -> str | None:
        if self.rc == 0:
            return None
        return (f"VM command rc={self.rc} after {self.seconds:.0f}s\n--- stderr (tail)\n{self.stderr[-4000:]}\n"
                f"--- console (tail)\n{self.console[-3000:]}")


class Vm:
    """One boot of the image, running one command inside the chroot."""

    def __init__(self, image: Image, out: Path, *, memory_mb: int = 1536, cpus: int = 2):
        self.image = image
        self.out = out
        self.memory_mb = memory_mb
        self.cpus = cpus

    def run(self, argv: list[str], *, timeout: float, env: dict[str, str] | None = None,
            cwd: Path = REPO_ROOT) -> VmRun:
        self.out.mkdir(parents=True, exist_ok=True)
        for name in ("rc", "stdout", "stderr"):
            (self.out / name).unlink(missing_ok=True)
        variables = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "HOME": "/tmp",
                     "XDG_CACHE_HOME": "/tmp/.cache", "PYTHONDONTWRITEBYTECODE": "1", "KPT_VM_CWD": str(cwd),
                     "KPT_VM_OUT": GUEST_OUT, "KPT_VM_MODULES": GUEST_MODULES, "LANG": "C.UTF-8", **(env or {})}
        (self.out / "env.sh").write_text("".join(f"export {k}={shlex.quote(v)}\n" for k, v in variables.items()))
        (self.out / "run.sh").write_text(f"exec {shlex.join(argv)}\n")
        (self.out / "repo").write_text(str(REPO_ROOT))
        cmd = [QEMU, "-accel", "tcg", "-smp", str(self.cpus), "-m", str(self.memory_mb), "-nographic",
               "-no-reboot", "-nodefaults", "-serial", "stdio", "-kernel", str(self.image.kernel),
               "-initrd", str(self.image.initrd),
               "-append", "console=ttyS0 quiet panic=-1 loglevel=4",
               "-virtfs", "local,path=/,mount_tag=host,security_model=none,readonly=on,multidevs=remap",
               "-virtfs", f"local,path={self.out},mount_tag=out,security_model=none,multidevs=remap",
               # qemu's option syntax doubles a comma inside a value
               "-virtfs", (f"local,path={str(REPO_ROOT).replace(',', ',,')},mount_tag=repo,security_model=none,"
                           "readonly=on,multidevs=remap")]
        start = time.monotonic()
        with tempfile.TemporaryFile() as console:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=console, stderr=subprocess.STDOUT)
            try:
                proc.wait(timeout=timeout + BOOT_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
            console.seek(0)
            text = console.read().decode(errors="replace")
        rc_file = self.out / "rc"
        rc = int(rc_file.read_text().strip()) if rc_file.is_file() and rc_file.read_text().strip() else None
        read = (lambda name: (self.out / name).read_text(errors="replace") if (self.out / name).is_file() else "")
        return VmRun(rc, read("stdout"), read("stderr"), text, time.monotonic() - start)
