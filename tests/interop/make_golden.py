#!/usr/bin/env python3
"""Regenerate the golden messages in crates/iso8583/testdata/ with pyiso8583.

The bytes come from pyiso8583, an independent implementation, so the golden files check our
codec against another encoder rather than against itself. Usage (from the repo root, with
pyiso8583 installed):

    python3 tests/interop/make_golden.py

For each dialect directory it writes MTI.hex (the message as hex) and MTI.json (the field
values as `switchyard decode --reveal` prints them). The 1993 dialect's variable-length binary
fields count bytes while their data is hex, which pyiso8583 cannot express, so its golden
messages leave field 55 out.
"""

import copy
import json
import os
import sys

import iso8583
from iso8583.specs import default, default_ascii

sys.path.insert(0, os.path.dirname(__file__))
from pyiso_interop import bcd_pyspec, load_spec  # noqa: E402

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
OUT = os.path.join(ROOT, "crates", "iso8583", "testdata")

# Visa test card; the EMV data is a typical contact purchase (16 objects, 106 bytes).
PAN = "4761739001010119"
TRACK2 = "4761739001010119=25122011758928889"
EMV_REQUEST = (
    "9F2608C2C12B098F3DA6E3" "9F270180" "9F100706010A03A0B800"
    "9F3704F1A23C99" "9F36020012" "950500000080009A03251123" "9C0100"
    "9F02060000000125005F2A0208268202390000" "9F1A020826" "9F0306000000000000"
    "9F3303E0F8C8" "9F34031E0300" "8407A0000000031010"
)
EMV_RESPONSE = "910A8C2D33A1FF7E4D5C00128A023030"
NAME_LOCATION = "SWITCHYARD DEMO STORE   LONDON       GB"[:40].ljust(40)

BASE = {
    "2": PAN, "3": "000000", "4": "000000012500", "7": "1123093015", "11": "000451",
    "12": "093015", "13": "1123", "14": "2512", "18": "5411", "22": "051", "25": "00",
    "35": TRACK2, "37": "532709000451", "41": "TERM0001", "42": "MERCHANT0000001",
    "43": NAME_LOCATION, "49": "826", "52": "3A5F0C1D2E4B6978", "55": EMV_REQUEST,
}
RESPONSE = {
    k: BASE[k] for k in ["2", "3", "4", "7", "11", "12", "13", "37", "41", "42", "49"]
} | {"38": "A1B2C3", "39": "00", "55": EMV_RESPONSE}
REVERSAL = {
    k: BASE[k] for k in ["2", "3", "4", "7", "11", "12", "13", "22", "25", "37", "41", "42", "49"]
} | {"7": "1123093115", "11": "000452", "32": "412345",
     "90": "0200" + "000451" + "1123093015" + "00000412345" + "00000000000"}

MESSAGES_1987 = {
    "0100": dict(BASE, **{"3": "300000"}),
    "0110": dict(RESPONSE, **{"3": "300000"}),
    "0200": BASE,
    "0210": RESPONSE,
    "0400": REVERSAL,
    "0410": {k: REVERSAL[k] for k in ["2", "3", "4", "7", "11", "37", "41", "42", "49"]} | {"39": "00"},
    "0420": REVERSAL | {"39": "68"},
    "0800": {"7": "1123093000", "11": "000450", "70": "301"},
    "0810": {"7": "1123093000", "11": "000450", "39": "00", "70": "301"},
}

BASE_1993 = {
    "2": PAN, "3": "000000", "4": "000000012500", "7": "1123093015", "11": "000451",
    "12": "251123093015", "14": "2512", "22": "A10101B1C144", "24": "200", "26": "5411",
    "35": TRACK2, "37": "532709000451", "41": "TERM0001", "42": "MERCHANT0000001",
    "43": "SWITCHYARD DEMO STORE>LONDON GB", "49": "826", "52": "3A5F0C1D2E4B6978",
}
RESPONSE_1993 = {
    k: BASE_1993[k] for k in ["2", "3", "4", "7", "11", "12", "37", "41", "42", "49"]
} | {"38": "A1B2C3", "39": "000"}
REVERSAL_1993 = {
    k: BASE_1993[k] for k in ["2", "3", "4", "7", "12", "22", "24", "37", "41", "42", "49"]
} | {"11": "000452", "24": "400", "25": "4000", "32": "412345",
     "56": "1200" + "000451" + "251123093015" + "06412345"}

MESSAGES_1993 = {
    "1100": dict(BASE_1993, **{"3": "300000", "24": "100"}),
    "1110": dict(RESPONSE_1993, **{"3": "300000"}),
    "1200": BASE_1993,
    "1210": RESPONSE_1993,
    "1400": REVERSAL_1993,
    "1420": REVERSAL_1993 | {"24": "401"},
    "1804": {"7": "1123093000", "11": "000450", "24": "831"},
    "1814": {"7": "1123093000", "11": "000450", "24": "831", "39": "800"},
}


def ascii_pyspec_1993():
    """pyiso8583 spec for our iso8583-1993-ascii (fixed binary fields as 2n hex characters)."""
    ours = load_spec(os.path.join(ROOT, "specs", "iso8583-1993-ascii.toml"))
    spec = copy.deepcopy(default_ascii)
    for key, f in ours["fields"].items():
        prefix_len = {"fixed": 0, "llvar": 2, "lllvar": 3, "llllvar": 4}[f["len"]]
        max_len = f["max"] * 2 if f["class"] == "b" and f["len"] == "fixed" else f["max"]
        spec[key] = {"data_enc": "ascii", "len_enc": "ascii", "len_type": prefix_len,
                     "max_len": max_len, "desc": f["name"]}
    return spec


def bcd(fields):
    """Our BCD dialect shows track 2's separator nibble as D."""
    return {k: (v.replace("=", "D") if k == "35" else v) for k, v in fields.items()}


def write(dialect, spec, messages, transform=lambda f: f):
    directory = os.path.join(OUT, dialect)
    os.makedirs(directory, exist_ok=True)
    for mti, fields in messages.items():
        fields = transform(fields)
        raw, _ = iso8583.encode({"t": mti, **fields}, spec)
        ordered = {k: fields[k] for k in sorted(fields, key=int)}
        with open(os.path.join(directory, f"{mti}.hex"), "w") as f:
            f.write(bytes(raw).hex().upper() + "\n")
        with open(os.path.join(directory, f"{mti}.json"), "w") as f:
            f.write(json.dumps({"mti": mti, "fields": ordered}, indent=1) + "\n")


def main():
    bcd_spec = bcd_pyspec(load_spec(os.path.join(ROOT, "specs", "iso8583-1987-bcd.toml")))
    write("iso8583-1987-ascii", default_ascii, MESSAGES_1987)
    write("iso8583-1987-binary-bitmap", default, MESSAGES_1987)
    write("iso8583-1987-bcd", bcd_spec, MESSAGES_1987, bcd)
    write("iso8583-1993-ascii", ascii_pyspec_1993(), MESSAGES_1993)


if __name__ == "__main__":
    main()
