//! Mode weights `[dense, sparse, colbert]` for the hybrid scores: validated on
//! construction, parsed from `"0.4,0.2,0.4"`.

use std::fmt;
use std::str::FromStr;

use super::ScoreError;

/// Mode weights ordered as the reference orders them: `[dense, sparse, colbert]`.
/// Validated on construction: both hybrid divisors are non-zero.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Weights([f32; 3]);

impl Weights {
    /// The reference's default when the caller passes none.
    pub const REFERENCE_DEFAULT: Weights = Weights([1.0, 1.0, 1.0]);

    pub fn new(w: [f32; 3]) -> Result<Weights, ScoreError> {
        if w.iter().any(|x| !x.is_finite()) {
            return Err(ScoreError::WeightNotFinite(w));
        }
        if w[0] + w[1] == 0.0 {
            return Err(ScoreError::DenseSparseSumZero(w));
        }
        if w[0] + w[1] + w[2] == 0.0 {
            return Err(ScoreError::SumZero(w));
        }
        Ok(Weights(w))
    }

    /// Builds weights from a list that must hold exactly three values.
    pub fn from_slice(w: &[f32]) -> Result<Weights, ScoreError> {
        let arr: [f32; 3] = w.try_into().map_err(|_| ScoreError::WeightCount(format!("{w:?}")))?;
        Weights::new(arr)
    }

    pub fn get(&self) -> [f32; 3] {
        self.0
    }
}

impl Default for Weights {
    /// trident's CLI default, the weights BGE-M3's model card recommends: [0.4, 0.2, 0.4].
    fn default() -> Self {
        Weights([0.4, 0.2, 0.4])
    }
}

impl FromStr for Weights {
    type Err = ScoreError;

    /// Parses `"0.4,0.2,0.4"` (spaces around values allowed).
    fn from_str(s: &str) -> Result<Weights, ScoreError> {
        let parts: Vec<&str> = s.split(',').map(str::trim).collect();
        if parts.len() != 3 {
            return Err(ScoreError::WeightCount(s.to_string()));
        }
        let mut w = [0f32; 3];
        for (slot, p) in w.iter_mut().zip(&parts) {
            *slot = p.parse().map_err(|_| ScoreError::WeightNotNumber(p.to_string()))?;
        }
        Weights::new(w)
    }
}

impl fmt::Display for Weights {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{},{},{}", self.0[0], self.0[1], self.0[2])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_parse_and_reject() {
        assert_eq!("0.4, 0.2,0.4".parse::<Weights>().unwrap().get(), [0.4, 0.2, 0.4]);
        assert!(matches!("1,2".parse::<Weights>(), Err(ScoreError::WeightCount(_))));
        assert!(matches!("1,2,3,4".parse::<Weights>(), Err(ScoreError::WeightCount(_))));
        assert!(matches!("1,x,3".parse::<Weights>(), Err(ScoreError::WeightNotNumber(_))));
        assert!(matches!("0,0,0".parse::<Weights>(), Err(ScoreError::DenseSparseSumZero(_))));
        assert!(matches!("0,0,1".parse::<Weights>(), Err(ScoreError::DenseSparseSumZero(_))));
        assert!(matches!("1,-1,0".parse::<Weights>(), Err(ScoreError::DenseSparseSumZero(_))));
        assert!(matches!("1,1,-2".parse::<Weights>(), Err(ScoreError::SumZero(_))));
        assert!(matches!("nan,1,1".parse::<Weights>(), Err(ScoreError::WeightNotFinite(_))));
        assert!(matches!(Weights::from_slice(&[1.0]), Err(ScoreError::WeightCount(_))));
    }
}
