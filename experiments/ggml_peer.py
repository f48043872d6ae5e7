"""ggml's ternary matrix product as a timing peer, through ctypes: `ggml_mul_mat` of a TQ2_0
weight (N, K) against float32 activations (M, K) on ggml's CPU backend.

TQ2_0 is ggml's 2-bit ternary format (llama.cpp's for BitNet b1.58 and TriLMs): blocks of
QK_K = 256 weights, each a code in {-1, 0, +1} (2 bits) and one float16 scale d per block, so
2.06 bits per weight; the product quantizes the activations to Q8_K (int8, one float scale per
256) inside the call and sums code x int8 per block (ggml's vec_dot of TQ2_0 and Q8_K). The
output Y (M, N) = X (M, K) W^T (N, K) in float32: the layer a ternary net runs, the same as
bayesq's ternary x 8-bit activation GEMM. The weight of row n is codes[n] * row_scale[n]
(exact in TQ2_0: every block of the row takes d = row_scale[n] as float16).

Nothing here builds ggml: the user builds the shared library and names it in the environment
variable BAYESQ_GGML_LIB (no file is fetched at run time). One way, from the ggml that the
llama-cpp-python source distribution vendors (cmake >= 3.18, a C/C++ compiler, OpenMP):

    pip download --no-binary :all: --no-deps llama-cpp-python    # llama_cpp_python-X.tar.gz
    tar xzf llama_cpp_python-*.tar.gz
    cmake -S llama_cpp_python-*/vendor/llama.cpp -B ggml-build -DCMAKE_BUILD_TYPE=Release \\
        -DGGML_NATIVE=ON -DBUILD_SHARED_LIBS=ON -DLLAMA_BUILD_TESTS=OFF \\
        -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF \\
        -DLLAMA_BUILD_COMMON=OFF -DLLAMA_CURL=OFF
    cmake --build ggml-build -j2 --target ggml                   # about 1.5 minutes on 2 cores
    export BAYESQ_GGML_LIB=$PWD/ggml-build/bin/libggml.so

(the sdist's ggml folder alone does not configure: it lacks ggml.pc.in, so the build goes
through llama.cpp's top level and builds only the `ggml` target: libggml.so, which loads
libggml-base.so and libggml-cpu.so beside it). Then, in Python:

    from experiments.ggml_peer import seconds_per_matmul
    seconds = seconds_per_matmul(n=4096, k=4096, m=64, threads=2)   # seconds per call
    gops = 2 * 4096 * 4096 * 64 / seconds / 1e9

or `python -m experiments.ggml_peer --n 4096 --k 4096 --m 1 64 1024 --threads 2`.

ggml's CPU backend runs its threads under OpenMP, whose threads spin at barriers: on a machine
whose cores other processes share, a 2-thread call at M = 1 then takes a scheduler time slice
(15 ms against 0.3 ms measured here); OMP_WAIT_POLICY=passive avoids that (as it would for torch).
"""

from __future__ import annotations

import argparse
import ctypes
import os
from pathlib import Path

import numpy as np

from experiments.timing import seconds_per_call

ENV = "BAYESQ_GGML_LIB"
QK_K = 256  # weights per TQ2_0 block
GGML_TYPE_F32, GGML_TYPE_TQ2_0 = 0, 35  # ggml.h's enum ggml_type
_GGML_STATUS_SUCCESS = 0


class _InitParams(ctypes.Structure):
    """ggml.h's struct ggml_init_params (passed by value to ggml_init)."""

    _fields_ = [("mem_size", ctypes.c_size_t), ("mem_buffer", ctypes.c_void_p),
                ("no_alloc", ctypes.c_bool)]  # fmt: skip


_P, _SIZE, _I64 = ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int64
_SIGNATURES = {  # name: (result type, argument types), as declared in ggml.h and its neighbours
    "ggml_init": (_P, [_InitParams]),
    "ggml_free": (None, [_P]),
    "ggml_tensor_overhead": (_SIZE, []),
    "ggml_graph_overhead": (_SIZE, []),
    "ggml_row_size": (_SIZE, [ctypes.c_int, _I64]),
    "ggml_new_tensor_2d": (_P, [_P, ctypes.c_int, _I64, _I64]),
    "ggml_mul_mat": (_P, [_P, _P, _P]),
    "ggml_new_graph": (_P, [_P]),
    "ggml_build_forward_expand": (None, [_P, _P]),
    "ggml_quantize_chunk": (_SIZE, [ctypes.c_int, _P, _P, _I64, _I64, _I64, _P]),
    "ggml_backend_cpu_init": (_P, []),
    "ggml_backend_cpu_set_n_threads": (None, [_P, ctypes.c_int]),
    "ggml_backend_free": (None, [_P]),
    "ggml_backend_alloc_ctx_tensors": (_P, [_P, _P]),
    "ggml_backend_buffer_free": (None, [_P]),
    "ggml_backend_tensor_set": (None, [_P, _P, _SIZE, _SIZE]),
    "ggml_backend_tensor_get": (None, [_P, _P, _SIZE, _SIZE]),
    "ggml_backend_graph_compute": (ctypes.c_int, [_P, _P]),
}
_LOADED: dict[str, ctypes.CDLL] = {}


def load_ggml(path: str | os.PathLike | None = None) -> ctypes.CDLL:
    """The ggml library at `path` (default: $BAYESQ_GGML_LIB), its functions typed; loaded once.

    Raises ValueError when no path is given and the variable is unset, or the file is missing
    or lacks a function this module calls (a ggml too old for TQ2_0 or the backend API).
    """
    path = path if path is not None else os.environ.get(ENV)
    if not path:
        raise ValueError(f"no ggml library: set {ENV} to libggml.so (see experiments.ggml_peer)")
    path = Path(path).resolve()
    if str(path) in _LOADED:
        return _LOADED[str(path)]
    if not path.is_file():
        raise ValueError(f"{ENV}={path}: no such file")
    # libggml.so finds its backends through its own run path; load the ones beside it first so
    # an installed copy without one works too
    for sibling in ("libggml-base.so", "libggml-cpu.so"):
        if (path.parent / sibling).is_file() and path.name != sibling:
            ctypes.CDLL(str(path.parent / sibling), mode=ctypes.RTLD_GLOBAL)
    lib = ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)
    for name, (restype, argtypes) in _SIGNATURES.items():
        try:
            function = getattr(lib, name)
        except AttributeError as err:
            raise ValueError(f"{path}: no function {name} (a ggml with TQ2_0 and the CPU "
                             "backend API is needed)") from err  # fmt: skip
        function.restype, function.argtypes = restype, argtypes
    _LOADED[str(path)] = lib
    return lib


class TernaryMatmul:
    """One ggml graph Y (M, N) = X (M, K) @ W^T, W (N, K) = codes * row_scale[:, None] in TQ2_0.

    codes: (N, K) integers in {-1, 0, +1}, K a multiple of 256; row_scale: (N,) positive floats
    (default 1); m: the batch M the graph is built for; threads: ggml's n_threads. Call it on X
    (M, K) float32 for Y, or `compute()` to run the graph on the activations set last (what
    `seconds_per_matmul` times). Close it (or use `with`) to free ggml's memory.
    """

    def __init__(self, codes, m: int, row_scale=None, threads: int = 2, lib=None):
        codes = np.asarray(codes)
        if codes.ndim != 2 or not np.isin(codes, (-1, 0, 1)).all():
            raise ValueError(f"codes must be a 2-D array of -1, 0, +1, got shape {codes.shape}")
        n, k = codes.shape
        if k == 0 or k % QK_K or n == 0:
            raise ValueError(f"codes (N, K) = {codes.shape}: TQ2_0 needs K a multiple of {QK_K}")
        scale = np.ones(n) if row_scale is None else np.asarray(row_scale, dtype=np.float64)
        if scale.shape != (n,) or not (scale > 0).all():
            raise ValueError(f"row_scale must hold {n} positive values, got shape {scale.shape}")
        if m < 1 or threads < 1:
            raise ValueError(f"m and threads must be >= 1, got m={m}, threads={threads}")
        self.lib, self.shape = load_ggml(lib), (m, n, k)
        lib, self._ctx, self._backend, self._buffer = self.lib, None, None, None
        # the context holds tensor and graph headers only; the backend buffer holds the data
        size = 8 * lib.ggml_tensor_overhead() + lib.ggml_graph_overhead()
        self._ctx = lib.ggml_init(_InitParams(size, None, True))
        self._backend = lib.ggml_backend_cpu_init()
        if not self._ctx or not self._backend:
            self.close()
            raise RuntimeError("ggml_init or ggml_backend_cpu_init failed")
        lib.ggml_backend_cpu_set_n_threads(self._backend, threads)
        self._w = lib.ggml_new_tensor_2d(self._ctx, GGML_TYPE_TQ2_0, k, n)  # ggml: ne0 innermost
        self._x = lib.ggml_new_tensor_2d(self._ctx, GGML_TYPE_F32, k, m)
        self._y = lib.ggml_mul_mat(self._ctx, self._w, self._x)  # (ne0, ne1) = (N, M)
        self._graph = lib.ggml_new_graph(self._ctx)
        lib.ggml_build_forward_expand(self._graph, self._y)
        self._buffer = lib.ggml_backend_alloc_ctx_tensors(self._ctx, self._backend)
        # quantize_row_tq2_0 takes d = max |w| of a block, so ternary rows stay exact
        weight = np.ascontiguousarray(codes * scale[:, None], dtype=np.float32)
        packed = np.empty(n * lib.ggml_row_size(GGML_TYPE_TQ2_0, k), dtype=np.uint8)
        written = lib.ggml_quantize_chunk(GGML_TYPE_TQ2_0, weight.ctypes.data, packed.ctypes.data,
                                          0, n, k, None)  # fmt: skip
        if written != packed.nbytes:
            self.close()
            raise RuntimeError(f"ggml_quantize_chunk wrote {written} bytes, not {packed.nbytes}")
        lib.ggml_backend_tensor_set(self._w, packed.ctypes.data, 0, packed.nbytes)
        self.weight_bytes = packed.nbytes

    def __call__(self, x) -> np.ndarray:
        """Y (M, N) float32 of X (M, K)."""
        m, n, k = self.shape
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.shape != (m, k):
            raise ValueError(f"x must have shape {(m, k)}, got {x.shape}")
        self.lib.ggml_backend_tensor_set(self._x, x.ctypes.data, 0, x.nbytes)
        self.compute()
        y = np.empty((m, n), dtype=np.float32)
        self.lib.ggml_backend_tensor_get(self._y, y.ctypes.data, 0, y.nbytes)
        return y

    def compute(self) -> None:
        status = self.lib.ggml_backend_graph_compute(self._backend, self._graph)
        if status != _GGML_STATUS_SUCCESS:
            raise RuntimeError(f"ggml_backend_graph_compute returned status {status}")

    def close(self) -> None:
        for attr, free in (("_buffer", "ggml_backend_buffer_free"),
                           ("_backend", "ggml_backend_free"), ("_ctx", "ggml_free")):  # fmt: skip
            if getattr(self, attr, None):
                getattr(self.lib, free)(getattr(self, attr))
                setattr(self, attr, None)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        if hasattr(self, "lib"):
            self.close()


def random_ternary(n: int, k: int, sparsity: float = 0.0, seed: int = 0) -> np.ndarray:
    """(N, K) int8 codes: a `sparsity` share 0, the rest -1 or +1 with equal odds."""
    rng = np.random.default_rng(seed)
    codes = rng.choice(np.array([-1, 1], dtype=np.int8), size=(n, k))
    return np.where(rng.random((n, k)) < sparsity, 0, codes).astype(np.int8)


def seconds_per_matmul(n: int, k: int, m: int, threads: int = 2, min_seconds: float = 0.2,
                       sparsity: float = 0.0, seed: int = 0, lib=None) -> float:  # fmt: skip
    """Seconds per ggml_mul_mat of a random ternary TQ2_0 weight (N, K) and float32 X (M, K) at
    `threads` threads (ggml's work is the same for any sparsity: TQ2_0 is dense)."""
    codes = random_ternary(n, k, sparsity, seed)
    with TernaryMatmul(codes, m, threads=threads, lib=lib) as matmul:
        x = np.random.default_rng(seed + 1).standard_normal((m, k), dtype=np.float32)
        matmul(x)  # sets the activations; the timed calls run the graph on them
        return seconds_per_call(matmul.compute, min_seconds)


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description="Time ggml's TQ2_0 x float32 mul_mat (GOP/s).")
    p.add_argument("--n", type=int, default=4096)
    p.add_argument("--k", type=int, default=4096)
    p.add_argument("--m", type=int, nargs="+", default=[1, 64, 1024])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--min-seconds", type=float, default=0.5)
    p.add_argument("--lib", default=None, help=f"libggml.so (default: ${ENV})")
    args = p.parse_args(argv)
    rows = []
    for m in args.m:
        seconds = seconds_per_matmul(args.n, args.k, m, args.threads, args.min_seconds,
                                     lib=args.lib)  # fmt: skip
        rows.append({"n": args.n, "k": args.k, "m": m, "threads": args.threads,
                     "ms": 1e3 * seconds, "gops": 2 * args.n * args.k * m / seconds / 1e9})  # fmt: skip
        print(f"N={args.n} K={args.k} M={m:5d} threads={args.threads}: "
              f"{rows[-1]['ms']:.3f} ms, {rows[-1]['gops']:.1f} GOP/s", flush=True)  # fmt: skip
    return rows


if __name__ == "__main__":
    main()
