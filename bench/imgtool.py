#!/usr/bin/env python3
"""Image helpers for bench/run.sh: build the synthetic images, change a
fraction of an image's data blocks (and undo it), report data ranges.

  imgtool.py frag IMG SIZE STRIDE SEED       fragmented image
  imgtool.py sparse IMG SIZE DATA CHUNK SEED  huge mostly-hole file
  imgtool.py change IMG JOURNAL PCT WRITE UNIT SEED
  imgtool.py restore IMG JOURNAL             undo `change`, remove JOURNAL
  imgtool.py qchange QCOW2 PCT WRITE UNIT SEED  the same as guest writes (qemu-io)
  imgtool.py datasize IMG                    allocated data bytes (SEEK_DATA)
  imgtool.py cmp A B                         like cmp(1): every byte, holes too

Everything is deterministic for a given SEED, so two runs build the same
bytes. Sizes accept K/M/G/T suffixes (binary).
"""
import json
import os
import random
import struct
import subprocess
import sys

KiB = 1024
MiB = 1024 * KiB


def size(s):
    s = s.strip().upper().rstrip("B").rstrip("I")
    mult = {"K": KiB, "M": MiB, "G": 1024 * MiB, "T": 1024 * 1024 * MiB}
    if s and s[-1] in mult:
        return int(float(s[:-1]) * mult[s[-1]])
    return int(s)


def data_ranges(fd):
    """(start, end) of every data run, by SEEK_DATA/SEEK_HOLE."""
    end = os.fstat(fd).st_size
    pos = 0
    out = []
    while pos < end:
        try:
            d = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError:  # ENXIO: no data after pos
            break
        h = os.lseek(fd, d, os.SEEK_HOLE)
        out.append((d, h))
        pos = h
    return out


def text_block(rnd, n):
    """n bytes of compressible, text-like data (words from a small vocabulary)."""
    words = [b"sparse", b"image", b"block", b"extent", b"cluster", b"qcow2",
             b"hole", b"data", b"the", b"of", b"and", b"to", b"sync", b"disk",
             b"0x%04x" % rnd.randrange(65536), b"\n", b"error", b"kernel"]
    out = bytearray()
    while len(out) < n:
        out += rnd.choice(words) + b" "
    return bytes(out[:n])


def cmd_frag(img, total, stride, seed):
    """4 KiB random blocks, one every STRIDE at a random 4 KiB-aligned spot,
    plus a 64 KiB allocated-but-zero block every 8th stride (holes for
    sparsync and cp --sparse=always, data for tools that copy allocation)."""
    total, stride, rnd = size(total), size(stride), random.Random(int(seed))
    n = total // stride
    zero64 = bytes(64 * KiB)
    with open(img, "wb") as f:
        f.truncate(total)
        for i in range(n):
            base = i * stride
            slots = max(1, stride // (4 * KiB))
            off = base + rnd.randrange(slots) * 4 * KiB
            f.seek(off)
            f.write(rnd.randbytes(4 * KiB) if i % 2 else text_block(rnd, 4 * KiB))
            if i % 8 == 0 and stride >= 256 * KiB:
                zoff = base + stride // 2 - (stride // 2) % (64 * KiB)
                if not (zoff <= off < zoff + 64 * KiB):
                    f.seek(zoff)
                    f.write(zero64)
        f.flush()
        os.fsync(f.fileno())
    print(n)


def cmd_sparse(img, total, data, chunk, seed):
    """DATA bytes in CHUNK-sized runs spread evenly over a TOTAL-sized file;
    half the chunks random, half text-like."""
    total, data, chunk = size(total), size(data), size(chunk)
    rnd = random.Random(int(seed))
    n = max(1, data // chunk)
    gap = total // n
    with open(img, "wb") as f:
        f.truncate(total)
        for i in range(n):
            off = i * gap + rnd.randrange(max(1, (gap - chunk) // MiB)) * MiB
            f.seek(off)
            f.write(rnd.randbytes(chunk) if i % 2 else text_block(rnd, chunk))
        f.flush()
        os.fsync(f.fileno())
    print(n)


def pick_units(ranges, unit, pct, rnd):
    """The UNIT-aligned blocks inside the (start, end) data ranges, and PCT %
    of them chosen by rnd, sorted."""
    units = []
    for s, e in ranges:
        u = (s + unit - 1) // unit * unit
        while u + unit <= e:
            units.append(u)
            u += unit
    k = max(1, int(len(units) * pct / 100))
    return units, sorted(rnd.sample(units, min(k, len(units))))


def cmd_change(img, journal, pct, write, unit, seed):
    """Overwrite WRITE random bytes in PCT % of the UNIT-sized blocks that
    hold data; save the old bytes in JOURNAL so `restore` can undo it."""
    pct, write, unit = float(pct), size(write), size(unit)
    rnd = random.Random(int(seed))
    fd = os.open(img, os.O_RDWR)
    try:
        units, chosen = pick_units(data_ranges(fd), unit, pct, rnd)
        with open(journal + ".tmp", "wb") as j:
            j.write(struct.pack("<QQ", len(chosen), write))
            for u in chosen:
                off = u + rnd.randrange(max(1, unit // write)) * write
                j.write(struct.pack("<Q", off) + os.pread(fd, write, off))
            j.flush()
            os.fsync(j.fileno())
        os.rename(journal + ".tmp", journal)
        with open(journal, "rb") as j:
            cnt, w = struct.unpack("<QQ", j.read(16))
            for _ in range(cnt):
                off = struct.unpack("<Q", j.read(8))[0]
                j.read(w)
                os.pwrite(fd, rnd.randbytes(w), off)
        os.fsync(fd)
    finally:
        os.close(fd)
    print(len(chosen), len(units))


def cmd_qchange(img, pct, write, unit, seed):
    """The guest's view: write WRITE bytes (a pattern) into PCT % of the
    UNIT-sized blocks of the qcow2 IMG that hold data, through qemu-io, so
    that QEMU records them in the image's persistent bitmaps."""
    pct, write, unit = float(pct), size(write), size(unit)
    rnd = random.Random(int(seed))
    out = subprocess.run(["qemu-img", "map", "--output=json", "-f", "qcow2", img],
                         check=True, capture_output=True, text=True).stdout
    ranges = [(e["start"], e["start"] + e["length"]) for e in json.loads(out) if e["data"]]
    units, chosen = pick_units(ranges, unit, pct, rnd)
    cmd = ["qemu-io", "-f", "qcow2"]
    for u in chosen:
        off = u + rnd.randrange(max(1, unit // write)) * write
        cmd += ["-c", "write -q -P %d %d %d" % (rnd.randrange(1, 256), off, write)]
    subprocess.run(cmd + [img], check=True, stdout=subprocess.DEVNULL)
    print(len(chosen), len(units))


def cmd_restore(img, journal):
    fd = os.open(img, os.O_RDWR)
    try:
        with open(journal, "rb") as j:
            cnt, w = struct.unpack("<QQ", j.read(16))
            for _ in range(cnt):
                off = struct.unpack("<Q", j.read(8))[0]
                os.pwrite(fd, j.read(w), off)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.unlink(journal)


def cmd_datasize(img):
    fd = os.open(img, os.O_RDONLY)
    try:
        print(sum(e - s for s, e in data_ranges(fd)))
    finally:
        os.close(fd)


def cmd_cmp(a, b):
    """cmp(1) with 16 MiB reads: reads every byte of both files, holes
    included, so it does not trust SEEK_DATA (which the tools under test
    use); GNU cmp's small reads make it several times slower on holes."""
    chunk = 16 * MiB
    with open(a, "rb", buffering=0) as fa, open(b, "rb", buffering=0) as fb:
        sa, sb = os.fstat(fa.fileno()).st_size, os.fstat(fb.fileno()).st_size
        pos = 0
        while True:
            x, y = fa.read(chunk), fb.read(chunk)
            if x != y:
                n = min(len(x), len(y))
                i = next((k for k in range(n) if x[k] != y[k]), n)
                if i == n:
                    print("cmp: EOF on %s after byte %d" % (a if len(x) < len(y) else b, pos + n))
                else:
                    print("%s %s differ: byte %d" % (a, b, pos + i + 1))
                return 1
            if not x:
                break
            pos += len(x)
        if sa != sb:
            print("cmp: sizes differ: %d and %d" % (sa, sb))
            return 1
    return 0


def main(argv):
    cmds = {"frag": (cmd_frag, 4), "sparse": (cmd_sparse, 5),
            "change": (cmd_change, 6), "restore": (cmd_restore, 2),
            "qchange": (cmd_qchange, 5),
            "datasize": (cmd_datasize, 1), "cmp": (cmd_cmp, 2)}
    if len(argv) < 2 or argv[1] not in cmds or len(argv) - 2 != cmds[argv[1]][1]:
        sys.stderr.write(__doc__)
        return 2
    return cmds[argv[1]][0](*argv[2:]) or 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
