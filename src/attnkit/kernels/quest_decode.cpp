// Quest's decode step on the CPU, one pass per query head (Tang et al., "Quest: Query-Aware Sparsity for
// Efficient Long-Context LLM Inference", ICML 2024).
//
// For the one query of each (batch row, query head) at the end of a cache of n tokens:
//   1. U_p = [relu(q), min(q, 0)] . [M_p, m_p] for each complete past page p (its kv head's bounds);
//   2. the `picks` pages of highest U (ties toward the earlier page, NaN counted highest as torch.topk does);
//   3. exact softmax attention over those pages' keys and the written keys of the current page,
//      read where they lie in the cache, the next two pages' rows prefetched while one is read.
// Built and loaded by attnkit/kernels/compiled.py. The torch form in attnkit/families/quest.py computes the
// same numbers; tests compare the two with each other and with the float64 reference.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <numeric>
#include <vector>

namespace {

constexpr int64_t kCacheLine = 64;

inline void prefetch(const void* first, int64_t bytes) {
  const char* p = static_cast<const char*>(first);
  for (int64_t offset = 0; offset < bytes; offset += kCacheLine) __builtin_prefetch(p + offset);
}

// exp(x) for x <= 0 (a score minus the running maximum), NaN for NaN. float: x = n ln 2 + r with |r| <= ln 2 / 2,
// exp(r) by its Taylor series to r^7 (truncation error below 1e-8, under float rounding), times 2^n built in the
// exponent bits; written so the compiler vectorises it. Arguments below -87 (weights below 2^-125, nothing next
// to the maximum's weight 1) give exp(-87).
inline float exp_nonpositive(float x) {
  x = x < -87.0f ? -87.0f : x;
  const float n = std::floor(x * 1.44269504088896341f + 0.5f);
  const float r = (x - n * 0.693145751953125f) - n * 1.42860682030941723212e-6f;
  float p = 1.0f / 5040.0f;
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

inline double exp_nonpositive(double x) { return std::exp(x); }

template <typename T>
inline T dot(const T* a, const T* b, int64_t d) {
  T sum = 0;
#pragma omp simd reduction(+ : sum)
  for (int64_t i = 0; i < d; ++i) sum += a[i] * b[i];
  return sum;
}

// The scratch space of one thread, reused by the heads it runs.
template <typename T>
struct Scratch {
  std::vector<T> bound, score, acc;
  std::vector<int64_t> order;
};

// The chosen past pages of one query head, in ascending order (the order the cache lies in memory). The bounds
// lie as rows over the pages (M's D rows, then m's), so U reads only the rows its signs need: M_d where q_d > 0,
// m_d where q_d < 0 (a zero q_d adds nothing), half of the bounds.
template <typename T>
void choose_pages(const T* q, const T* digest, int64_t row_stride, int64_t past, int64_t picks, int64_t D,
                  Scratch<T>& s) {
  s.bound.assign(past, T(0));
  T* u = s.bound.data();
  for (int64_t d = 0; d < D; ++d) {
    if (!(q[d] > 0 || q[d] < 0)) continue;
    const T* row = digest + (q[d] > 0 ? d : D + d) * row_stride;
    const T weight = q[d];
#pragma omp simd
    for (int64_t p = 0; p < past; ++p) u[p] += weight * row[p];
  }
  for (int64_t p = 0; p < past; ++p) u[p] = std::isnan(u[p]) ? std::numeric_limits<T>::infinity() : u[p];
  s.order.resize(past);
  std::iota(s.order.begin(), s.order.end(), int64_t(0));
  auto higher = [u](int64_t a, int64_t b) { return u[a] > u[b] || (u[a] == u[b] && a < b); };
  if (picks < past) std::nth_element(s.order.begin(), s.order.begin() + picks, s.order.end(), higher);
  std::sort(s.order.begin(), s.order.begin() + picks);
}

// softmax(q . k * scale) v over the chosen pages and the keys current .. n-1, written to out (Dv numbers): one
// pass, each page's keys scored and its values summed with a running maximum (online softmax), the pages
// `ahead` runs later prefetched.
template <typename T, int64_t kWidth>
void attend(const T* q, const T* keys, const T* values, int64_t n, int64_t page, int64_t picks, int64_t key_width,
            int64_t value_width, T scale, T* out, Scratch<T>& s) {
  constexpr int64_t ahead = 2;
  const int64_t D = kWidth ? kWidth : key_width, Dv = kWidth ? kWidth : value_width;
  const int64_t current = (n - 1) / page * page;
  // the runs of rows read: the chosen pages, then the current page's written keys
  auto run_start = [&](int64_t i) { return i < picks ? s.order[i] * page : current; };
  auto run_length = [&](int64_t i) { return i < picks ? page : n - current; };
  for (int64_t i = 0; i < std::min(ahead, picks + 1); ++i) {
    prefetch(keys + run_start(i) * D, run_length(i) * D * int64_t(sizeof(T)));
    prefetch(values + run_start(i) * Dv, run_length(i) * Dv * int64_t(sizeof(T)));
  }
  s.score.resize(page);
  alignas(64) T fixed_acc[kWidth ? kWidth : 1];
  s.acc.resize(kWidth ? 0 : Dv);
  T* acc = kWidth ? fixed_acc : s.acc.data();
  for (int64_t e = 0; e < Dv; ++e) acc[e] = 0;
  T top = -std::numeric_limits<T>::infinity(), total = 0;
  for (int64_t i = 0; i <= picks; ++i) {
    if (i + ahead <= picks) {
      prefetch(keys + run_start(i + ahead) * D, run_length(i + ahead) * D * int64_t(sizeof(T)));
      prefetch(values + run_start(i + ahead) * Dv, run_length(i + ahead) * Dv * int64_t(sizeof(T)));
    }
    const int64_t length = run_length(i);
    const T* key = keys + run_start(i) * D;
    T page_top = top;
    for (int64_t t = 0; t < length; ++t) {
      s.score[t] = dot(q, key + t * D, D) * scale;
      page_top = std::max(page_top, s.score[t]);
    }
    if (page_top > top) {  // rescale what was summed to the new maximum
      const T shrink = std::exp(top - page_top);
      total *= shrink;
#pragma omp simd
      for (int64_t e = 0; e < Dv; ++e) acc[e] *= shrink;
      top = page_top;
    }
    T* weight = s.score.data();
#pragma omp simd
    for (int64_t t = 0; t < length; ++t) weight[t] = exp_nonpositive(weight[t] - top);
    const T* value = values + run_start(i) * Dv;
    for (int64_t t = 0; t < length; ++t) {
      total += weight[t];
      const T* v = value + t * Dv;
#pragma omp simd
      for (int64_t e = 0; e < Dv; ++e) acc[e] += weight[t] * v[e];
    }
  }
  for (int64_t e = 0; e < Dv; ++e) out[e] = acc[e] / total;
}

}  // namespace

// q (R, D) with R = B * heads; digest (B, Hkv, 2 D, pages): [M; m] of each page as rows over the pages, each row
// contiguous; k_rows (rows, D) and
// v_rows (rows, Dv) hold the cache; k_first, v_first (R,) int64: the row of token 0 of each query head's kv head.
// Returns (R, Dv).
torch::Tensor quest_decode(torch::Tensor q, torch::Tensor digest, torch::Tensor k_rows, torch::Tensor v_rows,
                           torch::Tensor k_first, torch::Tensor v_first, int64_t heads, int64_t n, int64_t page,
                           int64_t picks, double scale) {
  TORCH_CHECK(q.dim() == 2 && q.is_contiguous(), "q must be (R, D), contiguous");
  const int64_t R = q.size(0), D = q.size(1), Dv = v_rows.size(1);
  TORCH_CHECK(digest.dim() == 4 && digest.size(2) == 2 * D && digest.stride(3) == 1,
              "digest must be (B, Hkv, 2 D, pages) with contiguous rows");
  const int64_t B = digest.size(0), Hkv = digest.size(1), past = (n - 1) / page;
  TORCH_CHECK(R == B * heads && heads % Hkv == 0, "q must hold B * heads rows, heads a multiple of Hkv");
  TORCH_CHECK(page >= 1 && picks >= 0 && picks <= past && digest.size(3) >= past,
              "need 0 <= picks <= complete past pages, each with its bounds in digest");
  TORCH_CHECK(k_rows.is_contiguous() && v_rows.is_contiguous() && k_rows.size(1) == D, "rows must be contiguous");
  TORCH_CHECK(q.scalar_type() == digest.scalar_type() && q.scalar_type() == k_rows.scalar_type() &&
                  q.scalar_type() == v_rows.scalar_type(), "q, digest and the rows must share their dtype");
  TORCH_CHECK(k_first.scalar_type() == at::kLong && v_first.scalar_type() == at::kLong &&
                  k_first.numel() == R && v_first.numel() == R, "first rows must be R int64 numbers");
  auto out = torch::empty({R, Dv}, q.options());
  const int64_t group = heads / Hkv;
  const int64_t* kf = k_first.data_ptr<int64_t>();
  const int64_t* vf = v_first.data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "quest_decode", [&] {
    const scalar_t* qp = q.data_ptr<scalar_t>();
    const scalar_t* dp = digest.data_ptr<scalar_t>();
    const scalar_t* kp = k_rows.data_ptr<scalar_t>();
    const scalar_t* vp = v_rows.data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    const int64_t db = digest.stride(0), dh = digest.stride(1), dr = digest.stride(2);
    at::parallel_for(0, R, 1, [&](int64_t begin, int64_t end) {
      Scratch<scalar_t> s;
      for (int64_t r = begin; r < end; ++r) {
        const int64_t b = r / heads, h = r % heads;
        const scalar_t* qr = qp + r * D;
        choose_pages(qr, dp + b * db + (h / group) * dh, dr, past, picks, D, s);
        const scalar_t* keys = kp + kf[r] * D;
        const scalar_t* values = vp + vf[r] * Dv;
        if (D == 64 && Dv == 64)
          attend<scalar_t, 64>(qr, keys, values, n, page, picks, D, Dv, scalar_t(scale), op + r * Dv, s);
        else if (D == 128 && Dv == 128)
          attend<scalar_t, 128>(qr, keys, values, n, page, picks, D, Dv, scalar_t(scale), op + r * Dv, s);
        else
          attend<scalar_t, 0>(qr, keys, values, n, page, picks, D, Dv, scalar_t(scale), op + r * Dv, s);
      }
    });
  });
  return out;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("quest_decode", &quest_decode, "Quest's decode step: page choice and attention in one pass per head");
}
