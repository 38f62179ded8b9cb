// XLA FFI handler: row-major C[m,n] (fp32) = op(A) @ op(B) through oneDNN's matmul primitive.
// Why: XLA:CPU's dot runtime is slower than oneDNN's JIT kernels on the train step's matmul
// chain (benchmarks/README.md), and it never reaches AMX / AVX512-BF16 for bf16 operands, which
// oneDNN does (fp32 accumulation). A and B are float32 or bfloat16 (both the same); transposed
// operands are passed as strides, so the backward's `g @ W^T` and `X^T @ g` need no copies.
// Built by umema_jax/kernels/cpu_gemm.py against jaxlib's FFI headers and the onednn wheel.
#include <cstdint>
#include <cstring>
#include <string>

#include "dnnl.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

dnnl_engine_t Engine() {
  static dnnl_engine_t engine = [] {
    dnnl_engine_t e = nullptr;
    if (dnnl_engine_create(&e, dnnl_cpu, 0) != dnnl_success) e = nullptr;
    return e;
  }();
  return engine;
}

dnnl_stream_t Stream() {  // streams are not shared between threads; XLA may call from several
  thread_local dnnl_stream_t stream = [] {
    dnnl_stream_t s = nullptr;
    if (Engine() == nullptr || dnnl_stream_create(&s, Engine(), dnnl_stream_default_flags) != dnnl_success)
      s = nullptr;
    return s;
  }();
  return stream;
}

// Frees oneDNN handles on every return path.
struct Handles {
  dnnl_memory_desc_t md[3] = {nullptr, nullptr, nullptr};
  dnnl_memory_t mem[3] = {nullptr, nullptr, nullptr};
  dnnl_primitive_desc_t pd = nullptr;
  dnnl_primitive_t prim = nullptr;
  ~Handles() {
    for (auto m : mem) if (m) dnnl_memory_destroy(m);
    for (auto d : md) if (d) dnnl_memory_desc_destroy(d);
    if (prim) dnnl_primitive_destroy(prim);
    if (pd) dnnl_primitive_desc_destroy(pd);
  }
};

// Creates the matmul primitive for op(A)[m,k] @ op(B)[k,n]; A is [m,k] or [k,m] (ta), B [k,n] or [n,k] (tb).
dnnl_status_t MakeMatmul(Handles& h, dnnl_data_type_t in, int64_t m, int64_t n, int64_t k, bool ta, bool tb) {
  dnnl_dims_t da = {m, k}, sa = {ta ? 1 : k, ta ? m : 1};
  dnnl_dims_t db = {k, n}, sb = {tb ? 1 : n, tb ? k : 1};
  dnnl_dims_t dc = {m, n}, sc = {n, 1};
  dnnl_status_t s;
  if ((s = dnnl_memory_desc_create_with_strides(&h.md[0], 2, da, in, sa)) != dnnl_success) return s;
  if ((s = dnnl_memory_desc_create_with_strides(&h.md[1], 2, db, in, sb)) != dnnl_success) return s;
  if ((s = dnnl_memory_desc_create_with_strides(&h.md[2], 2, dc, dnnl_f32, sc)) != dnnl_success) return s;
  if ((s = dnnl_matmul_primitive_desc_create(&h.pd, Engine(), h.md[0], h.md[1], nullptr, h.md[2], nullptr)) !=
      dnnl_success)
    return s;
  return dnnl_primitive_create(&h.prim, h.pd);
}

ffi::Error GemmImpl(ffi::AnyBuffer a, ffi::AnyBuffer b, ffi::Result<ffi::Buffer<ffi::F32>> c, bool ta, bool tb) {
  auto ad = a.dimensions(), bd = b.dimensions();
  if (ad.size() != 2 || bd.size() != 2) return ffi::Error::InvalidArgument("cpu_gemm: operands must be rank 2");
  if (a.element_type() != b.element_type() || (a.element_type() != ffi::F32 && a.element_type() != ffi::BF16))
    return ffi::Error::InvalidArgument("cpu_gemm: operands must both be float32 or both bfloat16");
  int64_t m = ta ? ad[1] : ad[0], k = ta ? ad[0] : ad[1], n = tb ? bd[0] : bd[1];
  if ((tb ? bd[1] : bd[0]) != k) return ffi::Error::InvalidArgument("cpu_gemm: contracting dimensions differ");
  float* out = c->typed_data();
  if (m == 0 || n == 0) return ffi::Error::Success();
  if (k == 0) {
    std::memset(out, 0, sizeof(float) * m * n);
    return ffi::Error::Success();
  }
  if (Stream() == nullptr) return ffi::Error::Internal("cpu_gemm: no oneDNN CPU engine/stream");
  Handles h;
  dnnl_data_type_t in = a.element_type() == ffi::F32 ? dnnl_f32 : dnnl_bf16;
  dnnl_status_t s = MakeMatmul(h, in, m, n, k, ta, tb);
  if (s != dnnl_success) return ffi::Error::Internal("cpu_gemm: oneDNN matmul creation failed, status " +
                                                    std::to_string(static_cast<int>(s)));
  void* ptr[3] = {a.untyped_data(), b.untyped_data(), out};
  for (int i = 0; i < 3; ++i)
    if ((s = dnnl_memory_create(&h.mem[i], h.md[i], Engine(), ptr[i])) != dnnl_success)
      return ffi::Error::Internal("cpu_gemm: oneDNN memory creation failed");
  dnnl_exec_arg_t args[3] = {{DNNL_ARG_SRC, h.mem[0]}, {DNNL_ARG_WEIGHTS, h.mem[1]}, {DNNL_ARG_DST, h.mem[2]}};
  if ((s = dnnl_primitive_execute(h.prim, Stream(), 3, args)) != dnnl_success || (s = dnnl_stream_wait(Stream())) !=
      dnnl_success)
    return ffi::Error::Internal("cpu_gemm: oneDNN matmul failed, status " + std::to_string(static_cast<int>(s)));
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(UmemaCpuGemm, GemmImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<bool>("transpose_a")
                                  .Attr<bool>("transpose_b"));

// Which oneDNN implementation a shape gets (e.g. "brg:avx512_core_amx", "gemm:jit", "ref:any"): for
// benchmarks and the test that bf16 does not land on the reference kernel. Returns 0 on success.
extern "C" int umema_cpu_gemm_impl(int bf16, int64_t m, int64_t n, int64_t k, char* buf, int len) {
  if (Engine() == nullptr || len <= 0) return 1;
  Handles h;
  if (MakeMatmul(h, bf16 ? dnnl_bf16 : dnnl_f32, m, n, k, false, false) != dnnl_success) return 2;
  const char* info = nullptr;
  if (dnnl_primitive_desc_query(h.pd, dnnl_query_impl_info_str, 0, &info) != dnnl_success || !info) return 3;
  std::strncpy(buf, info, len - 1);
  buf[len - 1] = '\0';
  return 0;
}
