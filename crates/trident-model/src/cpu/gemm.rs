//! `y = x·Wᵀ` on the `gemm` crate, with PyTorch's `[out × in]` weights read in place as a
//! transposed right-hand side (strides only, no copy).

use gemm::Parallelism;

/// A row-major matrix view: `rows × cols` with `ld` elements between rows.
#[derive(Clone, Copy)]
pub struct View {
    pub ptr: *const f32,
    pub ld: usize,
}

/// `dst[m×n] = beta · a[m×k] · bᵀ` where `b` is `[n×k]` with row stride `b.ld`; with
/// `accumulate` the product is added to `dst` instead.
///
/// # Safety
/// All views must be valid for the given sizes and `dst` must not alias `a` or `b`.
#[allow(clippy::too_many_arguments)]
pub unsafe fn matmul_bt(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    ldd: usize,
    a: View,
    b: View,
    beta: f32,
    accumulate: bool,
    par: Parallelism,
) {
    if m == 0 || n == 0 {
        return;
    }
    gemm::gemm(
        m,
        n,
        k,
        dst,
        1,
        ldd as isize,
        accumulate,
        a.ptr,
        1,
        a.ld as isize,
        b.ptr,
        b.ld as isize,
        1,
        1.0,
        beta,
        false,
        false,
        false,
        par,
    );
}

/// `dst[m×n] = a[m×k] · b[k×n]` with `b` row-major (row stride `b.ld`).
///
/// # Safety
/// As for `matmul_bt`.
#[allow(clippy::too_many_arguments)]
pub unsafe fn matmul(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    ldd: usize,
    a: View,
    b: View,
    par: Parallelism,
) {
    if m == 0 || n == 0 {
        return;
    }
    gemm::gemm(
        m,
        n,
        k,
        dst,
        1,
        ldd as isize,
        false,
        a.ptr,
        1,
        a.ld as isize,
        b.ptr,
        1,
        b.ld as isize,
        1.0,
        1.0,
        false,
        false,
        false,
        par,
    );
}
