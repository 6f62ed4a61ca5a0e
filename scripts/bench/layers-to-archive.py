#!/usr/bin/env python3
"""Turn overlayfs-format layer directories into a docker-archive tarball that `strata load` reads.

    layers-to-archive.py OUT.tar NAME:TAG LAYERDIR...   (layer dirs bottom first)

Whiteouts on disk (char 0/0 devices) become `.wh.NAME` entries and opaque directories
(trusted.overlay.opaque=y or user.overlay.opaque=y) get a `.wh..wh..opq` entry, as the OCI layer
spec writes them; overlayfs's own trusted.overlay.* xattrs are dropped. Used by
scripts/bench/union.sh to put the benchmark image into a strata store.
"""
import hashlib
import json
import os
import stat
import sys
import tarfile
import tempfile

OPAQUE_XATTRS = (b"trusted.overlay.opaque", b"user.overlay.opaque")


def is_opaque(path):
    for name in OPAQUE_XATTRS:
        try:
            if os.getxattr(path, name, follow_symlinks=False) == b"y":
                return True
        except OSError:
            pass
    return False


def layer_tar(src, out):
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as t:
        for dirpath, dirnames, filenames in os.walk(src):
            dirnames.sort()
            rel_dir = os.path.relpath(dirpath, src)
            if rel_dir != ".":
                info = t.gettarinfo(dirpath, arcname=rel_dir)
                t.addfile(info)
            if is_opaque(dirpath):
                wh = tarfile.TarInfo(os.path.normpath(os.path.join(rel_dir, ".wh..wh..opq")))
                wh.mode = 0o644
                t.addfile(wh)
            for name in sorted(filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]):
                full = os.path.join(dirpath, name)
                rel = os.path.normpath(os.path.join(rel_dir, name))
                st = os.lstat(full)
                if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
                    wh = tarfile.TarInfo(os.path.join(os.path.dirname(rel), ".wh." + name))
                    wh.mode = 0o644
                    t.addfile(wh)
                    continue
                info = t.gettarinfo(full, arcname=rel)
                if info.isreg():
                    with open(full, "rb") as f:
                        t.addfile(info, f)
                else:
                    t.addfile(info)


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def main():
    out, ref, layers = sys.argv[1], sys.argv[2], sys.argv[3:]
    work = tempfile.mkdtemp(dir=os.path.dirname(os.path.abspath(out)))
    names, diff_ids = [], []
    for i, d in enumerate(layers):
        p = os.path.join(work, f"layer{i}.tar")
        layer_tar(d, p)
        names.append(p)
        diff_ids.append(sha256_file(p))
    config = {
        "architecture": "amd64",
        "os": "linux",
        "created": "2026-01-01T00:00:00Z",
        "config": {"Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created_by": f"layer {os.path.basename(d)}"} for d in layers],
    }
    cfg = json.dumps(config, separators=(",", ":")).encode()
    cfg_name = hashlib.sha256(cfg).hexdigest() + ".json"
    manifest = [{"Config": cfg_name, "RepoTags": [ref], "Layers": [f"layer{i}/layer.tar" for i in range(len(names))]}]
    with tarfile.open(out, "w") as t:
        def add_bytes(name, data):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, __import__("io").BytesIO(data))
        add_bytes(cfg_name, cfg)
        for i, p in enumerate(names):
            t.add(p, arcname=f"layer{i}/layer.tar")
            os.unlink(p)
        add_bytes("manifest.json", json.dumps(manifest).encode())
    os.rmdir(work)


if __name__ == "__main__":
    main()
