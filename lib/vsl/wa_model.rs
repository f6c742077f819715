//! Analytic write amplification of greedy garbage collection under uniform
//! random writes, for comparing measured WA against theory.
//!
//! Desnoyers ("Analytic modeling of SSD write performance", SYSTOR 2012)
//! gives, for over-provisioning ratio `a = physical / logical = 1 + OP`,
//! `A = a / (a + W0(-a * e^(-a)))`, with `W0` the principal branch of the
//! Lambert W function.

/// Principal branch of the Lambert W function, `W0(x)` for `x >= -1/e`,
/// by Halley iteration. `None` below the branch point or for non-finite `x`.
pub fn lambert_w0(x: f64) -> Option<f64> {
    let branch = -1.0 / std::f64::consts::E;
    if !x.is_finite() || x < branch - 1e-15 {
        return None;
    }
    if x <= branch {
        return Some(-1.0);
    }
    // Starting point: the branch-point series near -1/e, log form for large x.
    let mut w = if x < -0.25 {
        let p = (2.0 * (std::f64::consts::E * x + 1.0)).sqrt();
        -1.0 + p - p * p / 3.0 + 11.0 / 72.0 * p * p * p
    } else if x < 3.0 {
        0.5 * (1.0 + x).ln().max(-0.9)
    } else {
        let l = x.ln();
        l - l.ln()
    };
    for _ in 0..64 {
        let ew = w.exp();
        let f = w * ew - x;
        let wp1 = w + 1.0;
        if wp1.abs() < 1e-300 {
            break;
        }
        let denom = ew * wp1 - (w + 2.0) * f / (2.0 * wp1);
        if denom == 0.0 || !denom.is_finite() {
            break;
        }
        let next = w - f / denom;
        if (next - w).abs() <= 1e-15 * (1.0 + next.abs()) {
            w = next;
            break;
        }
        w = next;
    }
    Some(w)
}

/// Write amplification of greedy GC under uniform random writes with
/// over-provisioning `op` (0.07 for 7%). `None` for `op <= 0`.
pub fn greedy_uniform_wa(op: f64) -> Option<f64> {
    if op.is_nan() || op <= 0.0 {
        return None;
    }
    let a = 1.0 + op;
    let w = lambert_w0(-a * (-a).exp())?;
    Some(a / (a + w))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn w0_satisfies_its_definition() {
        for x in [-0.3678, -0.367, -0.3, -0.1, 0.0, 0.5, 1.0, 2.0, 10.0, 1e6] {
            let w = lambert_w0(x).unwrap();
            assert!((w * w.exp() - x).abs() < 1e-9 * (1.0 + x.abs()), "x={x} w={w}");
            assert!(w >= -1.0);
        }
        assert_eq!(lambert_w0(0.0), Some(0.0));
        assert!((lambert_w0(1.0).unwrap() - 0.567_143_290_409_783_8).abs() < 1e-12);
        assert!(lambert_w0(-0.5).is_none());
        assert!(lambert_w0(f64::NAN).is_none());
    }

    #[test]
    fn greedy_wa_matches_published_values() {
        let wa7 = greedy_uniform_wa(0.07).unwrap();
        let wa28 = greedy_uniform_wa(0.28).unwrap();
        assert!((7.0..8.2).contains(&wa7), "7% OP gives {wa7}");
        assert!((2.40..2.52).contains(&wa28), "28% OP gives {wa28}");
        assert!(greedy_uniform_wa(1.0).unwrap() < wa28);
        assert!(greedy_uniform_wa(0.0).is_none());
    }
}
