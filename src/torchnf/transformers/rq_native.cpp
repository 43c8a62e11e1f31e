// The rational-quadratic spline of torchnf.transformers.rq_fused as one pass over the inputs.
//
// The same map, knot arithmetic and gradients as the PyTorch version in rq_fused.py (see its module
// docstring), written for CPU throughput. A call runs over blocks of L inputs held in the lanes of
// GCC vector types (64 bytes: one AVX-512 register, two AVX2 registers), so every statement works
// on L inputs at once; exp and log are inline polynomials, so no lane work is a call. Nothing is
// kept between the forward and the backward: the backward recomputes the bin (a few passes over
// registers) rather than reading tensors of intermediates back from memory. Blocks are shared among
// the threads of the OpenMP runtime that PyTorch has loaded (the same soname), so the kernel runs on
// PyTorch's threads rather than on a pool of its own.
//
// Prefix sums run sequentially in the working precision, so knots never decrease; every knot is
// sum * scale + offset, computed in one place with contraction off, so the bin search, the bin's
// edges and rqs_knots agree bit for bit.
//
// Built by torchnf/transformers/rq_native.py with the system C++ compiler; where that fails, the
// PyTorch version serves.

#include <cstdint>
#include <cstring>
#include <limits>
#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

namespace {

constexpr int KMAX = 64;
constexpr double LOGIT_BOUND = 30.0;

template <class T> struct VT;
template <> struct VT<float> {
    typedef float V __attribute__((vector_size(64)));
    typedef int32_t I __attribute__((vector_size(64)));
    static constexpr int L = 16;
};
template <> struct VT<double> {
    typedef double V __attribute__((vector_size(64)));
    typedef int64_t I __attribute__((vector_size(64)));
    static constexpr int L = 8;
};

template <class T> using Vec = typename VT<T>::V;
template <class T> using Ivec = typename VT<T>::I;

template <class T> inline Vec<T> splat(T s) { return Vec<T>{} + s; }
template <class T> inline Vec<T> sel(Ivec<T> c, Vec<T> a, Vec<T> b) { return c ? a : b; }
template <class T> inline Vec<T> clampv(Vec<T> v, T lo, T hi) {
    return sel<T>(v < lo, splat(lo), sel<T>(v > hi, splat(hi), v));
}

template <class T> struct Fmt;
template <> struct Fmt<float> {
    static constexpr int mant = 23, exp_terms = 7, atanh_terms = 5;  // polynomial degrees
    static constexpr int32_t bias = 127, mant_mask = 0x007fffff, one_bits = 0x3f800000;
    static constexpr float tiny = 1.17549435e-38f, tiny_scale = 8388608.0f, exp_lo = -87.0f;
    static constexpr float ln2_hi = 0.693359375f, ln2_lo = -2.12194440e-4f;
};
template <> struct Fmt<double> {
    static constexpr int mant = 52, exp_terms = 13, atanh_terms = 11;
    static constexpr int64_t bias = 1023, mant_mask = 0x000fffffffffffffLL, one_bits = 0x3ff0000000000000LL;
    static constexpr double tiny = 2.2250738585072014e-308, tiny_scale = 4503599627370496.0, exp_lo = -708.0;
    static constexpr double ln2_hi = 6.93147180369123816490e-01, ln2_lo = 1.90821492927058770002e-10;
};

// exp(x) for x in [-87, 88] (float32) or [-708, 709] (float64): x = n ln2 + r with |r| <= ln2 / 2
// (Cody-Waite), e^r by its Taylor polynomial (degree 7 in float32, relative error < 6e-9; degree 13
// in float64, < 5e-18) and 2^n from the exponent bits; n is read off the bits of
// x log2(e) + 1.5 * 2^mantissa (round to nearest).
template <class T> inline Vec<T> exp_poly(Vec<T> x) {
    typedef Fmt<T> F;
    typedef Ivec<T> I;
    const T shifter = T(1.5) * T(int64_t(1) << F::mant);
    const Vec<T> t = x * T(1.4426950408889634074) + shifter;
    const Vec<T> n = t - shifter;
    const I k = (I)t - (I)splat(shifter);
    Vec<T> r = x - n * F::ln2_hi;
    r = r - n * F::ln2_lo;
    T c[F::exp_terms + 1];  // 1 / i!, the low-order ones exact
    c[0] = T(1);
    for (int i = 1; i <= F::exp_terms; ++i) c[i] = c[i - 1] / T(i);
    Vec<T> p = splat(c[F::exp_terms]);
    for (int i = F::exp_terms - 1; i >= 0; --i) p = p * r + c[i];
    return p * (Vec<T>)((k + F::bias) << F::mant);
}

// log(x) for x > 0: x = 2^e m with m in [sqrt(1/2), sqrt(2)), f = m - 1 (exact), s = f / (2 + f)
// and log(1 + f) = f - s (f - 2 T(s^2)) with T(z) = z/3 + z^2/5 + ... (the atanh series, |s| <
// 0.172; to z^5 in float32, z^11 in float64). Subnormal x is scaled up first; 0 gives -inf, +inf
// gives +inf, NaN and negatives NaN.
template <class T> inline Vec<T> atanh_tail(Vec<T> z) {
    Vec<T> q = splat(T(1) / T(2 * Fmt<T>::atanh_terms + 1));
    for (int i = Fmt<T>::atanh_terms - 1; i >= 1; --i) q = q * z + T(1) / T(2 * i + 1);
    return q * z;
}

template <class T> inline Vec<T> log_poly(Vec<T> x) {
    typedef Vec<T> V;
    typedef Ivec<T> I;
    typedef Fmt<T> F;
    const I sub = x < F::tiny;
    const V xs = sel<T>(sub, x * F::tiny_scale, x);
    const I i = (I)xs;
    I e = (i >> F::mant) - F::bias;
    V m = (V)((i & F::mant_mask) | F::one_bits);
    const I big = m > T(1.41421356237309504880);
    m = sel<T>(big, m * T(0.5), m);
    e = big ? e + 1 : e;
    e = sub ? e - F::mant : e;
    const V f = m - T(1);
    const V s = f / (T(2) + f);
    const V lm = f - s * (f - T(2) * atanh_tail<T>(s * s));
    const V fe = __builtin_convertvector(e, V);
    V r = fe * T(6.93147180369123816490e-01) + (lm + fe * T(1.90821492927058770002e-10));  // ln 2
    r = sel<T>(x == T(0), splat(-std::numeric_limits<T>::infinity()), r);
    r = sel<T>(x == std::numeric_limits<T>::infinity(), x, r);
    return sel<T>(x >= T(0), r, splat(std::numeric_limits<T>::quiet_NaN()));
}

// log(1 + t) for t in [0, 1]: log(u) t / (u - 1) with u = 1 + t rounded (a few roundings).
template <class T> inline Vec<T> log1p_small(Vec<T> t) {
    const Vec<T> u = T(1) + t;
    const Vec<T> d = u - T(1);
    const Vec<T> safe = sel<T>(d == T(0), splat(T(1)), d);
    return sel<T>(d == T(0), t, log_poly<T>(u) * (t / safe));
}

// softplus(z) and sigmoid(z), both from t = exp(-|z|).
template <class T> inline void softplus_sigmoid(Vec<T> z, Vec<T>& sp, Vec<T>& sg) {
    const Vec<T> az = sel<T>(z < T(0), -z, z);
    const Vec<T> t = exp_poly<T>(clampv<T>(-az, Fmt<T>::exp_lo, T(0)));
    sp = sel<T>(z > T(0), z, splat(T(0))) + log1p_small<T>(t);
    const Vec<T> inv = T(1) / (T(1) + t);
    sg = sel<T>(z < T(0), t * inv, inv);
}

template <class T> inline Vec<T> load(const T* p) {
    Vec<T> v;
    std::memcpy(&v, p, sizeof v);
    return v;
}
// Column j of a block's parameters (row stride P): one gather instruction where the ISA has it (a
// chain of scalar inserts otherwise costs more than the exponential that follows).
template <class T> inline Vec<T> load_col(const T* p, int64_t P, int64_t j) {
    constexpr int L = VT<T>::L;
    T a[L];
    for (int l = 0; l < L; ++l) a[l] = p[l * P + j];
    return load(a);
}
#if defined(__AVX512F__)
template <> inline Vec<float> load_col<float>(const float* p, int64_t P, int64_t j) {
    const __m512i idx = _mm512_mullo_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
                                           _mm512_set1_epi32(int(P)));
    return (Vec<float>)_mm512_i32gather_ps(idx, p + j, 4);
}
template <> inline Vec<double> load_col<double>(const double* p, int64_t P, int64_t j) {
    const __m256i idx = _mm256_mullo_epi32(_mm256_set_epi32(7, 6, 5, 4, 3, 2, 1, 0), _mm256_set1_epi32(int(P)));
    return (Vec<double>)_mm512_i32gather_pd(idx, p + j, 8);
}
#elif defined(__AVX2__)
template <> inline Vec<float> load_col<float>(const float* p, int64_t P, int64_t j) {
    const __m256i idx = _mm256_mullo_epi32(_mm256_set_epi32(7, 6, 5, 4, 3, 2, 1, 0), _mm256_set1_epi32(int(P)));
    const __m256 halves[2] = {_mm256_i32gather_ps(p + j, idx, 4), _mm256_i32gather_ps(p + 8 * P + j, idx, 4)};
    Vec<float> v;
    std::memcpy(&v, halves, sizeof v);
    return v;
}
template <> inline Vec<double> load_col<double>(const double* p, int64_t P, int64_t j) {
    const __m128i idx = _mm_mullo_epi32(_mm_set_epi32(3, 2, 1, 0), _mm_set1_epi32(int(P)));
    const __m256d halves[2] = {_mm256_i32gather_pd(p + j, idx, 8), _mm256_i32gather_pd(p + 4 * P + j, idx, 8)};
    Vec<double> v;
    std::memcpy(&v, halves, sizeof v);
    return v;
}
#endif
template <class T> inline void store(T* out, Vec<T> v, int nb) {
    constexpr int L = VT<T>::L;
    if (nb == L) {
        std::memcpy(out, &v, sizeof v);
    } else {
        T a[L];
        std::memcpy(a, &v, sizeof v);
        for (int l = 0; l < nb; ++l) out[l] = a[l];
    }
}
template <class T> inline void store_col(T* out, int64_t P, int64_t j, Vec<T> v, int nb) {
    constexpr int L = VT<T>::L;
    T a[L];
    std::memcpy(a, &v, sizeof v);
    for (int l = 0; l < nb; ++l) out[l * P + j] = a[l];
}

template <class T> struct Spec {
    int K;
    T B, md, shift;
    T num[2];        // (1 - K m) 2B per axis
    T off[2][KMAX];  // (j + 1) 2B m - B per axis
    Spec(int K_, double B_, double mw, double mh, double md_, double shift_)
        : K(K_), B(T(B_)), md(T(md_)), shift(T(shift_)) {
        const double R = 2.0 * B_;
        const double m[2] = {mw, mh};
        for (int a = 0; a < 2; ++a) {  // the roundings of rq_fused._constants
            num[a] = T((1.0 - K_ * m[a]) * R);
            const T Rm = T(R * m[a]);
            for (int j = 0; j < K_; ++j) off[a][j] = T(j + 1) * Rm - B;
        }
    }
};

// One block of L inputs: the bin of each (as a float: lanes of one width), its edges x_0, x_1, y_0,
// y_1 and the prefix sums behind them, the per-axis scales, the knot derivatives and their
// derivatives with respect to the raw parameters, and the exponentiated logits.
template <class T> struct Block {
    typedef Vec<T> V;
    V v, k, x0, x1, y0, y1, s0, s1, s2, s3, scw, sch, d0, d1, g0, g1;
    V e[2 * KMAX];
};

// Locate the lanes of b.v in their splines (parameters p, row stride P), searching the knots of
// axis `row` (0: positions, 1: values).
// The exponentiated clamped logits of a block and the per-axis scales numerator / total; the totals
// go to tw, th.
template <class T> inline void exponentiate(Block<T>& b, const T* p, int64_t P, const Spec<T>& sp,
                                            Vec<T>& tw, Vec<T>& th) {
    const int K = sp.K;
    for (int j = 0; j < 2 * K; ++j) b.e[j] = exp_poly<T>(clampv<T>(load_col(p, P, j), -LOGIT_BOUND, LOGIT_BOUND));
    tw = b.e[0];
    th = b.e[K];
    for (int j = 1; j < K; ++j) {
        tw = tw + b.e[j];
        th = th + b.e[K + j];
    }
    b.scw = sp.num[0] / tw;
    b.sch = sp.num[1] / th;
}

template <class T> inline void locate(Block<T>& b, const T* p, int64_t P, const Spec<T>& sp, int row) {
    typedef Vec<T> V;
    constexpr int L = VT<T>::L;
    const int K = sp.K;
    V tw, th;
    exponentiate(b, p, P, sp, tw, th);
    b.k = splat(T(0));
    b.x0 = b.y0 = splat(-sp.B);
    b.x1 = b.y1 = splat(sp.B);
    b.s0 = b.s2 = splat(T(0));
    b.s1 = tw;
    b.s3 = th;
    V Sw = splat(T(0)), Sh = splat(T(0));
    for (int j = 0; j < K - 1; ++j) {
        Sw = Sw + b.e[j];
        Sh = Sh + b.e[K + j];
        const V kx = Sw * b.scw + sp.off[0][j];
        const V ky = Sh * b.sch + sp.off[1][j];
        const Ivec<T> c = (row == 0 ? kx : ky) <= b.v;
        const Ivec<T> first = ~c & (b.k == T(j));  // the first knot past the input: the right edges
        b.x0 = sel<T>(c, kx, b.x0);
        b.y0 = sel<T>(c, ky, b.y0);
        b.s0 = sel<T>(c, Sw, b.s0);
        b.s2 = sel<T>(c, Sh, b.s2);
        b.x1 = sel<T>(first, kx, b.x1);
        b.y1 = sel<T>(first, ky, b.y1);
        b.s1 = sel<T>(first, Sw, b.s1);
        b.s3 = sel<T>(first, Sh, b.s3);
        b.k = sel<T>(c, b.k + T(1), b.k);
    }
    // knot derivatives: interior knot j (1 <= j <= K - 1) has parameter column 2K - 1 + j
    T z0[L], z1[L];
    for (int l = 0; l < L; ++l) {
        const int k = int(b.k[l]);
        z0[l] = p[l * P + (k >= 1 ? 2 * K - 1 + k : 0)];
        z1[l] = p[l * P + (k <= K - 2 ? 2 * K + k : 0)];
    }
    V sp0, sg0, sp1, sg1;
    softplus_sigmoid<T>(load(z0) + sp.shift, sp0, sg0);
    softplus_sigmoid<T>(load(z1) + sp.shift, sp1, sg1);
    const Ivec<T> has0 = b.k >= T(1), has1 = b.k <= T(K - 2);
    b.d0 = sel<T>(has0, sp0 + sp.md, splat(T(1)));
    b.d1 = sel<T>(has1, sp1 + sp.md, splat(T(1)));
    b.g0 = sel<T>(has0, sg0, splat(T(0)));  // d d / d z, zero at the end knots
    b.g1 = sel<T>(has1, sg1, splat(T(0)));
}

// The terms of the map at relative position xi (rq_fused._bin_terms and _slope_terms).
template <class T> struct Terms {
    typedef Vec<T> V;
    V w, h, s, dsum, xi, om, pp, den, n, q, a;
    Ivec<T> inside;
    Terms(const Block<T>& b, T B) {
        w = b.x1 - b.x0;
        h = b.y1 - b.y0;
        s = h / w;
        dsum = (b.d0 + b.d1) - T(2) * s;
        inside = sel<T>(b.v < T(0), -b.v, b.v) <= B;
    }
    void at(const Block<T>& b, V xi_) {
        xi = xi_;
        om = T(1) - xi;
        pp = xi * om;
        den = s + dsum * pp;
        a = s * xi + b.d0 * om;
        n = (b.d1 * xi + s * om) * xi + om * a;
        q = s / den;
    }
};

// A partial block is copied into padded buffers (its last lane repeated), so every block is full.
template <class T> struct Padded {
    T v[VT<T>::L];
    T p[VT<T>::L * (3 * KMAX)];
    const T* fill(const T* v_, const T* p_, int64_t P, int nb) {
        for (int l = 0; l < VT<T>::L; ++l) {
            const int src = l < nb ? l : nb - 1;
            v[l] = v_ ? v_[src] : T(0);
            for (int64_t j = 0; j < P; ++j) p[l * P + j] = p_[src * P + j];
        }
        return p;
    }
};

template <class T>
void forward_range(const T* v, const T* p, T* out, T* ladj, int64_t i0, int64_t i1, int64_t P,
                   const Spec<T>& sp, bool inverse) {
    typedef Vec<T> V;
    constexpr int L = VT<T>::L;
    Block<T> b;
    Padded<T> pad;
    for (int64_t i = i0; i < i1; i += L) {
        const int nb = int(i1 - i < L ? i1 - i : L);
        const T* pv = p + i * P;
        if (nb < L) {
            pv = pad.fill(v + i, pv, P, nb);
            b.v = load(pad.v);
        } else {
            b.v = load(v + i);
        }
        locate(b, pv, P, sp, inverse ? 1 : 0);
        Terms<T> t(b, sp.B);
        V res, lg;
        if (!inverse) {
            t.at(b, clampv<T>((b.v - b.x0) / t.w, T(0), T(1)));
            const V y = b.y0 + t.h * (t.a * t.xi / t.den);
            res = sel<T>(t.inside, y, b.v);
            lg = sel<T>(t.inside, log_poly<T>(t.q * t.q * t.n), splat(T(0)));
        } else {
            // the root of the quadratic in the stable form of rq_fused.spline_inverse
            const V tt = clampv<T>((b.v - b.y0) / t.h, T(0), T(1));
            const V omt = T(1) - tt;
            const V lin = b.d0 - tt * t.dsum;
            const V ee = b.d0 * omt - b.d1 * tt;
            const V disc = ee * ee + (T(4) * (t.s * t.s)) * (tt * omt);
            V sq = disc;  // every lane overwritten below
            for (int l = 0; l < L; ++l) sq[l] = __builtin_sqrt(disc[l]);
            const Ivec<T> pos = lin >= T(0);
            const V num = sel<T>(pos, T(2) * (t.s * tt), sq - lin);
            const V den = sel<T>(pos, lin + sq, T(2) * (t.s - lin));
            t.at(b, clampv<T>(num / den, T(0), T(1)));
            res = sel<T>(t.inside, b.x0 + t.xi * t.w, b.v);
            lg = sel<T>(t.inside, -log_poly<T>(t.q * t.q * t.n), splat(T(0)));
        }
        store(out + i, res, nb);
        store(ladj + i, lg, nb);
    }
}

// Gradients of <gy, y> + <gl, log dy/dx> with respect to x and the parameters (rq_fused._rq_backward
// and the knot chain of rq_fused._SplineForward.backward).
template <class T>
void backward_range(const T* x, const T* p, const T* gy, const T* gl, T* gx, T* gp, int64_t i0,
                    int64_t i1, int64_t P, const Spec<T>& sp) {
    typedef Vec<T> V;
    typedef Ivec<T> I;
    constexpr int L = VT<T>::L;
    const int K = sp.K;
    Block<T> b;
    Padded<T> pad;
    T buf[L];
    for (int64_t i = i0; i < i1; i += L) {
        const int nb = int(i1 - i < L ? i1 - i : L);
        const T* pv = p + i * P;
        V ggy = splat(T(0)), ggl = splat(T(0));
        if (nb < L) {
            pv = pad.fill(x + i, pv, P, nb);
            b.v = load(pad.v);
            for (int l = 0; l < L; ++l) buf[l] = gy ? gy[i + (l < nb ? l : nb - 1)] : T(0);
            ggy = load(buf);
            for (int l = 0; l < L; ++l) buf[l] = gl ? gl[i + (l < nb ? l : nb - 1)] : T(0);
            ggl = load(buf);
        } else {
            b.v = load(x + i);
            if (gy) ggy = load(gy + i);
            if (gl) ggl = load(gl + i);
        }
        locate(b, pv, P, sp, 0);
        Terms<T> t(b, sp.B);
        t.at(b, clampv<T>((b.v - b.x0) / t.w, T(0), T(1)));
        const V xi = t.xi, om = t.om, pp = t.pp, s = t.s;
        const V frac = t.a * xi / t.den;
        const V a = sel<T>(t.inside, ggy, splat(T(0)));
        const V bb = sel<T>(t.inside, ggl, splat(T(0)));
        const V A = a * t.h / t.den;
        const V Bn = bb / t.n;
        const V Bd = (bb / t.den) * T(2);
        const V U = Bd + A * frac;
        const V xi2 = xi * xi, om2 = om * om;
        const V gd0 = (Bn * om2 + pp * (A - U)) * b.g0;
        const V gd1 = (Bn * xi2 - pp * U) * b.g1;
        const V g_s = ((A * xi2 - U * (xi2 + om2)) + T(2) * (Bn * pp)) + T(2) * (bb / s);
        const V slope = om - xi;
        const V half_dn = (b.d1 * xi + s * slope) - b.d0 * om;
        const V g_xi = ((A * t.q) * t.n + T(2) * (Bn * half_dn)) - (Bd * t.dsum) * slope;
        const V rw = T(1) / t.w;
        const V g_x = g_xi * rw;
        const V g_w = -((g_s * s + g_xi * xi) * rw);
        const V g_h = a * frac + g_s * rw;
        store(gx + i, sel<T>(t.inside, g_x, ggy), nb);
        // the end knots are the bounds: nothing reaches the logits through them
        const I m0 = b.k > T(0), m1 = b.k < T(K - 1);
        const V zero = splat(T(0));
        const V gx0 = sel<T>(m0, -(g_w + g_x), zero), gx1 = sel<T>(m1, g_w, zero);
        const V gy0 = sel<T>(m0, a - g_h, zero), gy1 = sel<T>(m1, g_h, zero);
        // knot = sum * scale + offset with scale = numerator / total
        const V gtw = (gx0 * b.s0 + gx1 * b.s1) * b.scw * b.scw * (T(-1) / sp.num[0]);
        const V gth = (gy0 * b.s2 + gy1 * b.s3) * b.sch * b.sch * (T(-1) / sp.num[1]);
        const V gw0 = gx0 * b.scw, gw1 = gx1 * b.scw, gh0 = gy0 * b.sch, gh1 = gy1 * b.sch;
        // sums_j = e_0 + ... + e_j: d L / d e_i = d L / d total + the edge terms of knots j >= i
        T* gpv = gp + i * P;
        for (int j = 0; j < K; ++j) {
            const V uw = load_col(pv, P, j), uh = load_col(pv, P, K + j);
            const V fj = splat(T(j));
            const V cw = (gtw + sel<T>(fj < b.k, gw0, zero)) + sel<T>(fj <= b.k, gw1, zero);
            const V ch = (gth + sel<T>(fj < b.k, gh0, zero)) + sel<T>(fj <= b.k, gh1, zero);
            const I aw = (uw > T(-LOGIT_BOUND)) & (uw < T(LOGIT_BOUND));
            const I ah = (uh > T(-LOGIT_BOUND)) & (uh < T(LOGIT_BOUND));
            store_col(gpv, P, j, sel<T>(aw, cw * b.e[j], zero), nb);
            store_col(gpv, P, K + j, sel<T>(ah, ch * b.e[K + j], zero), nb);
        }
        for (int j = 1; j < K; ++j) {
            const V fj = splat(T(j));
            const V g = sel<T>(fj == b.k, gd0, zero) + sel<T>(fj == b.k + T(1), gd1, zero);
            store_col(gpv, P, 2 * K - 1 + j, g, nb);
        }
    }
}

template <class T>
void knots_range(const T* p, T* out, int64_t n, int64_t i0, int64_t i1, int64_t P, const Spec<T>& sp) {
    typedef Vec<T> V;
    constexpr int L = VT<T>::L;
    const int K = sp.K;
    const int64_t R = K + 1;
    Block<T> b;
    Padded<T> pad;
    for (int64_t i = i0; i < i1; i += L) {
        const int nb = int(i1 - i < L ? i1 - i : L);
        const T* pv = p + i * P;
        if (nb < L) pv = pad.fill(nullptr, pv, P, nb);
        V tw, th;
        exponentiate(b, pv, P, sp, tw, th);
        T* ox = out + i * R;
        T* oy = out + (n + i) * R;
        T* od = out + (2 * n + i) * R;
        store_col(ox, R, 0, splat(-sp.B), nb);
        store_col(oy, R, 0, splat(-sp.B), nb);
        store_col(od, R, 0, splat(T(1)), nb);
        store_col(ox, R, K, splat(sp.B), nb);
        store_col(oy, R, K, splat(sp.B), nb);
        store_col(od, R, K, splat(T(1)), nb);
        V Sw = splat(T(0)), Sh = splat(T(0));
        for (int j = 0; j < K - 1; ++j) {
            Sw = Sw + b.e[j];
            Sh = Sh + b.e[K + j];
            store_col(ox, R, j + 1, Sw * b.scw + sp.off[0][j], nb);
            store_col(oy, R, j + 1, Sh * b.sch + sp.off[1][j], nb);
            V d, unused;
            softplus_sigmoid<T>(load_col(pv, P, 2 * K + j) + sp.shift, d, unused);
            store_col(od, R, j + 1, d + sp.md, nb);
        }
    }
}

// Split [0, n) into per-thread ranges of whole blocks.
template <class F> void parallel_blocks(int64_t n, int L, int threads, F&& body) {
    const int64_t blocks = (n + L - 1) / L;
    if (threads <= 1 || blocks < 2) {
        body(int64_t(0), n);
        return;
    }
    const int nt = int(blocks < threads ? blocks : threads);
#pragma omp parallel num_threads(nt)
    {
#ifdef _OPENMP
        const int tid = omp_get_thread_num(), got = omp_get_num_threads();
#else
        const int tid = 0, got = 1;
#endif
        const int64_t per = (blocks + got - 1) / got;
        const int64_t b0 = tid * per, b1 = (tid + 1) * per < blocks ? (tid + 1) * per : blocks;
        if (b0 < b1) body(b0 * L, b1 * L < n ? b1 * L : n);
    }
}

}  // namespace

#define TORCHNF_RQS_API(T, SUFFIX)                                                                     \
    extern "C" void rqs_forward_##SUFFIX(const T* v, const T* p, T* out, T* ladj, int64_t n, int K,    \
                                         double B, double mw, double mh, double md, double shift,      \
                                         int inverse, int threads) {                                   \
        const Spec<T> sp(K, B, mw, mh, md, shift);                                                     \
        const int64_t P = 3 * K - 1;                                                                   \
        parallel_blocks(n, VT<T>::L, threads, [&](int64_t i0, int64_t i1) {                           \
            forward_range<T>(v, p, out, ladj, i0, i1, P, sp, inverse != 0);                            \
        });                                                                                            \
    }                                                                                                  \
    extern "C" void rqs_backward_##SUFFIX(const T* x, const T* p, const T* gy, const T* gl, T* gx,     \
                                          T* gp, int64_t n, int K, double B, double mw, double mh,     \
                                          double md, double shift, int threads) {                      \
        const Spec<T> sp(K, B, mw, mh, md, shift);                                                     \
        const int64_t P = 3 * K - 1;                                                                   \
        parallel_blocks(n, VT<T>::L, threads, [&](int64_t i0, int64_t i1) {                           \
            backward_range<T>(x, p, gy, gl, gx, gp, i0, i1, P, sp);                                    \
        });                                                                                            \
    }                                                                                                  \
    extern "C" void rqs_knots_##SUFFIX(const T* p, T* out, int64_t n, int K, double B, double mw,      \
                                       double mh, double md, double shift, int threads) {              \
        const Spec<T> sp(K, B, mw, mh, md, shift);                                                     \
        const int64_t P = 3 * K - 1;                                                                   \
        parallel_blocks(n, VT<T>::L, threads, [&](int64_t i0, int64_t i1) {                           \
            knots_range<T>(p, out, n, i0, i1, P, sp);                                                  \
        });                                                                                            \
    }

TORCHNF_RQS_API(float, f32)
TORCHNF_RQS_API(double, f64)

extern "C" int rqs_max_bins() { return KMAX; }
