#!/usr/bin/env python3
"""Interop peer for Switchyard's codec: pyiso8583 on the other side of the wire.

  gen   SPEC.toml PYSPEC COUNT SEED OUT.jsonl
        Generate COUNT random messages that satisfy our spec file (classes, lengths),
        encode them with pyiso8583's spec PYSPEC and write one JSON line per message:
        {"mti": ..., "fields": {"2": ...}, "hex": ...}.
  check PYSPEC IN.jsonl SPEC.toml
        Decode every message Switchyard wrote with pyiso8583, compare every field value,
        re-encode with pyiso8583 and compare the bytes. Prints "N passed, M failed".

PYSPEC is `default_ascii`, `default` (pyiso8583's built-in specs) or `bcd`: a pyiso8583
spec derived here from our `iso8583-1987-bcd.toml` (BCD data with nibble counts and pad
characters, BCD length prefixes), so the BCD dialect is checked against an independent
encoder too.
"""

import copy
import json
import random
import sys
import tomllib

import iso8583
from iso8583.specs import default, default_ascii

# Field 65 is left out: pyiso8583 treats it as a bitmap indicator and does not carry it.
SKIP = {1, 65}

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz "
DIGITS = "0123456789"
SPECIAL = " !\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"
CLASSES = {
    "n": DIGITS,
    "a": LETTERS,
    "s": SPECIAL,
    "an": LETTERS + DIGITS,
    "as": LETTERS + SPECIAL,
    "ns": DIGITS + SPECIAL,
    "ans": LETTERS + DIGITS + SPECIAL,
}


def load_spec(path):
    with open(path, "rb") as f:
        return tomllib.load(f)


def bcd_pyspec(ours):
    """A pyiso8583 spec equivalent to our BCD dialect."""
    spec = copy.deepcopy(default)
    spec["t"] = {"data_enc": "b", "len_enc": "ascii", "len_type": 0, "max_len": 2, "desc": "MTI"}
    for key, f in ours["fields"].items():
        n = int(key)
        if n in SKIP:
            continue
        enc = f.get("encoding", "binary" if f["class"] == "b" else ours.get("encoding", "ascii"))
        prefix_len = {"fixed": 0, "llvar": 1, "lllvar": 2, "llllvar": 2}[f["len"]]
        entry = {"len_enc": "bcd", "len_type": prefix_len, "max_len": f["max"], "desc": f["name"]}
        if enc in ("bcd", "bcd-left"):
            entry.update({"data_enc": "b", "len_count": "nibbles"})
            if enc == "bcd":
                entry["left_pad"] = "0"
            else:
                entry["right_pad"] = "F"
        elif enc == "binary":
            entry.update({"data_enc": "b", "len_count": "bytes"})
        else:
            entry.update({"data_enc": "ascii", "len_count": "bytes"})
        spec[str(n)] = entry
    return spec


def pyspec(name, ours):
    if name == "default_ascii":
        return default_ascii
    if name == "default":
        return default
    if name == "bcd":
        return bcd_pyspec(ours)
    raise SystemExit(f"unknown pyiso8583 spec {name}")


def random_value(rng, f, bcd):
    cls, kind, mx = f["class"], f["len"], f["max"]
    n = mx if kind == "fixed" else rng.randint(f.get("min", 0) or 1, min(mx, 40 if mx > 99 else mx))
    if cls == "b":
        return "".join(rng.choice("0123456789ABCDEF") for _ in range(2 * n))
    if cls == "z":
        sep = "D" if bcd else "="
        digits = [rng.choice(DIGITS) for _ in range(n)]
        if n > 2:
            digits[rng.randrange(1, n - 1)] = sep
        return "".join(digits)
    if cls == "xn":
        return rng.choice("CD") + "".join(rng.choice(DIGITS) for _ in range(n - 1))
    return "".join(rng.choice(CLASSES[cls]) for _ in range(n))


def gen(spec_path, pyspec_name, count, seed, out_path):
    ours = load_spec(spec_path)
    spec = pyspec(pyspec_name, ours)
    bcd = pyspec_name == "bcd"
    rng = random.Random(seed)
    numbers = [int(k) for k in ours["fields"] if int(k) not in SKIP]
    with open(out_path, "w") as out:
        for i in range(count):
            mti = rng.choice(["0100", "0110", "0200", "0210", "0400", "0410", "0420", "0800", "0810"])
            chosen = rng.sample(numbers, rng.randint(1, min(len(numbers), 30)))
            fields = {str(n): random_value(rng, ours["fields"][str(n)], bcd) for n in sorted(chosen)}
            doc = {"t": mti, **fields}
            raw, _ = iso8583.encode(doc, spec)
            out.write(json.dumps({"mti": mti, "fields": fields, "hex": bytes(raw).hex().upper()}) + "\n")


def check(pyspec_name, in_path, spec_path):
    ours = load_spec(spec_path)
    spec = pyspec(pyspec_name, ours)
    passed = failed = 0
    with open(in_path) as f:
        for line_no, line in enumerate(f, 1):
            msg = json.loads(line)
            raw = bytes.fromhex(msg["hex"])
            problems = []
            try:
                decoded, _ = iso8583.decode(raw, spec)
            except Exception as e:  # noqa: BLE001 - any failure is a mismatch to report
                problems.append(f"pyiso8583 cannot decode: {e}")
                decoded = None
            if decoded is not None:
                if decoded["t"] != msg["mti"]:
                    problems.append(f"MTI {decoded['t']} != {msg['mti']}")
                got = {k: v for k, v in decoded.items() if k.isdigit() and int(k) not in SKIP}
                if set(got) != set(msg["fields"]):
                    problems.append(f"field sets differ: {sorted(got)} vs {sorted(msg['fields'])}")
                for k, v in msg["fields"].items():
                    if got.get(k) != v:
                        problems.append(f"field {k} differs")
                doc = {"t": msg["mti"], **msg["fields"]}
                reencoded, _ = iso8583.encode(doc, spec)
                if bytes(reencoded) != raw:
                    problems.append("pyiso8583 encodes the same values to other bytes")
            if problems:
                failed += 1
                print(f"line {line_no}: " + "; ".join(problems))
            else:
                passed += 1
    print(f"{passed} passed, {failed} failed")
    return 1 if failed or passed == 0 else 0


def main(argv):
    if len(argv) == 6 and argv[0] == "gen":
        gen(argv[1], argv[2], int(argv[3]), int(argv[4]), argv[5])
        return 0
    if len(argv) == 4 and argv[0] == "check":
        return check(argv[1], argv[2], argv[3])
    print(__doc__, file=sys.stderr)
    return 64


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
