//! Recovering a thin SVD U·Σ·Vᵀ from learned factors Û·V̂ᵀ (QR of each side, then a
//! one-sided Jacobi SVD of the small k×k core), all in f64.

use ndarray::{Array1, Array2, Axis};

/// A thin SVD: U (m×k) and V (n×k) with orthonormal columns, Σ descending.
#[derive(Debug, Clone)]
pub struct Svd {
    pub u: Array2<f64>,
    pub sigma: Array1<f64>,
    pub v: Array2<f64>,
}

impl Svd {
    /// U·diag(Σ)·Vᵀ
    pub fn reconstruct(&self) -> Array2<f64> {
        let us = &self.u * &self.sigma.view().insert_axis(Axis(0));
        us.dot(&self.v.t())
    }
}

/// Thin QR by modified Gram–Schmidt with one re-orthogonalisation pass.
/// Returns Q (m×k, orthonormal columns; a zero column stays zero) and R (k×k).
pub fn qr(a: &Array2<f64>) -> (Array2<f64>, Array2<f64>) {
    let k = a.ncols();
    let mut q = a.clone();
    let mut r = Array2::<f64>::zeros((k, k));
    for j in 0..k {
        for _pass in 0..2 {
            for i in 0..j {
                let c = q.column(i).dot(&q.column(j));
                r[[i, j]] += c;
                let qi = q.column(i).to_owned();
                q.column_mut(j).scaled_add(-c, &qi);
            }
        }
        let norm = q.column(j).dot(&q.column(j)).sqrt();
        r[[j, j]] = norm;
        if norm > 0.0 {
            q.column_mut(j).mapv_inplace(|x| x / norm);
        }
    }
    (q, r)
}

/// One-sided Jacobi SVD of a square matrix: A = X·diag(σ)·Yᵀ, σ descending.
pub fn jacobi_svd(a: &Array2<f64>) -> Svd {
    let n = a.ncols();
    let mut w = a.clone();
    let mut y = Array2::<f64>::eye(n);
    for _sweep in 0..100 {
        let mut off = 0.0f64;
        for p in 0..n {
            for q in p + 1..n {
                let alpha = w.column(p).dot(&w.column(p));
                let beta = w.column(q).dot(&w.column(q));
                let gamma = w.column(p).dot(&w.column(q));
                if gamma == 0.0 {
                    continue;
                }
                off = off.max(gamma.abs() / (alpha * beta).sqrt().max(f64::MIN_POSITIVE));
                let zeta = (beta - alpha) / (2.0 * gamma);
                let sign = if zeta >= 0.0 { 1.0 } else { -1.0 };
                let t = sign / (zeta.abs() + (1.0 + zeta * zeta).sqrt());
                let c = 1.0 / (1.0 + t * t).sqrt();
                let s = c * t;
                for mat in [&mut w, &mut y] {
                    for row in 0..mat.nrows() {
                        let (wp, wq) = (mat[[row, p]], mat[[row, q]]);
                        mat[[row, p]] = c * wp - s * wq;
                        mat[[row, q]] = s * wp + c * wq;
                    }
                }
            }
        }
        if off < 1e-15 {
            break;
        }
    }
    let mut sigma: Vec<(f64, usize)> = (0..n)
        .map(|j| (w.column(j).dot(&w.column(j)).sqrt(), j))
        .collect();
    sigma.sort_by(|a, b| b.0.total_cmp(&a.0));
    let mut x = Array2::<f64>::zeros((a.nrows(), n));
    let mut yy = Array2::<f64>::zeros((n, n));
    for (dst, &(s, src)) in sigma.iter().enumerate() {
        if s > 0.0 {
            x.column_mut(dst).assign(&w.column(src).mapv(|v| v / s));
        }
        yy.column_mut(dst).assign(&y.column(src));
    }
    Svd {
        u: x,
        sigma: sigma.iter().map(|s| s.0).collect(),
        v: yy,
    }
}

/// Turns learned factors Û (m×k) and V̂ (n×k) into U, Σ, V with Û·V̂ᵀ = U·Σ·Vᵀ.
pub fn from_factors(p: &Array2<f32>, q: &Array2<f32>) -> Svd {
    let (qu, ru) = qr(&p.mapv(f64::from));
    let (qv, rv) = qr(&q.mapv(f64::from));
    let core = jacobi_svd(&ru.dot(&rv.t()));
    Svd {
        u: qu.dot(&core.u),
        sigma: core.sigma,
        v: qv.dot(&core.v),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qr_reconstructs_and_is_orthonormal() {
        let a = Array2::from_shape_fn((7, 3), |(i, j)| ((i * 3 + j) as f64).sin() + 0.1 * j as f64);
        let (q, r) = qr(&a);
        let err = (&q.dot(&r) - &a).mapv(f64::abs).sum();
        assert!(err < 1e-10, "{err}");
        let qtq = q.t().dot(&q);
        assert!((&qtq - &Array2::<f64>::eye(3)).mapv(f64::abs).sum() < 1e-10);
    }

    #[test]
    fn jacobi_reconstructs_with_descending_sigma() {
        let a = Array2::from_shape_fn((4, 4), |(i, j)| ((i + 2 * j) as f64).cos() * (1 + i) as f64);
        let s = jacobi_svd(&a);
        assert!((&s.reconstruct() - &a).mapv(f64::abs).sum() < 1e-9);
        assert!(s.sigma.windows(2).into_iter().all(|w| w[0] >= w[1]));
    }
}
