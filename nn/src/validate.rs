//! Range checks for configuration values, each error naming the field's path in the file.
//!
//! A [`Field`] is a path such as `model.moe.routing.top_k`; its checks return
//! `Err("model.moe.routing.top_k: expected 1 <= top_k <= 4 …, found 5")`. nn's `DitConfig`
//! and the experiments crate's configs use the same checks, so every message reads alike:
//! `PATH: expected CONDITION, found VALUE`.

use std::fmt::Display;

/// The path of a configuration field, e.g. `train.adamw.betas[0]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field(String);

impl Field {
    /// The root of a configuration (`""` for the top level of a file).
    pub fn root(path: impl Into<String>) -> Field {
        Field(path.into())
    }

    /// The field `key` inside this one.
    pub fn at(&self, key: &str) -> Field {
        if self.0.is_empty() {
            Field(key.to_string())
        } else {
            Field(format!("{}.{key}", self.0))
        }
    }

    /// Element `index` of this array field.
    pub fn index(&self, index: usize) -> Field {
        Field(format!("{}[{index}]", self.0))
    }

    /// The whole path.
    pub fn path(&self) -> &str {
        &self.0
    }

    /// The last key of the path (what the condition of a message names).
    pub fn name(&self) -> &str {
        self.0.rsplit('.').next().unwrap_or(&self.0)
    }

    /// `PATH: expected EXPECTED, found FOUND`.
    pub fn error(&self, expected: impl Display, found: impl Display) -> String {
        format!("{}: expected {expected}, found {found}", self.0)
    }

    /// `PATH: REASON`, for a condition that does not read as "expected … found …".
    pub fn invalid(&self, reason: impl Display) -> String {
        format!("{}: {reason}", self.0)
    }

    /// Fails with [`Field::error`] unless `ok`.
    pub fn require(
        &self,
        ok: bool,
        expected: impl Display,
        found: impl Display,
    ) -> Result<(), String> {
        if ok {
            Ok(())
        } else {
            Err(self.error(expected, found))
        }
    }

    /// A count in `1..=max`.
    pub fn positive_count<T: Copy + PartialOrd + Display + From<u8>>(
        &self,
        value: T,
        max: T,
    ) -> Result<(), String> {
        self.require(value > T::from(0), format!("{} > 0", self.name()), value)?;
        self.at_most(value, max)
    }

    /// An integer in `min..=max`.
    pub fn count_in<T: Copy + PartialOrd + Display>(
        &self,
        value: T,
        min: T,
        max: T,
    ) -> Result<(), String> {
        self.require(
            min <= value && value <= max,
            format!("{min} <= {} <= {max}", self.name()),
            value,
        )
    }

    /// `value <= max` (false for NaN).
    pub fn at_most<T: PartialOrd + Display>(&self, value: T, max: T) -> Result<(), String> {
        self.require(value <= max, format!("{} <= {max}", self.name()), value)
    }

    /// A finite number > 0.
    pub fn positive(&self, value: f64) -> Result<(), String> {
        self.require(
            value > 0.0 && value.is_finite(),
            format!("{} > 0 and finite", self.name()),
            value,
        )
    }

    /// A finite number >= 0.
    pub fn non_negative(&self, value: f64) -> Result<(), String> {
        self.require(
            value >= 0.0 && value.is_finite(),
            format!("{} >= 0 and finite", self.name()),
            value,
        )
    }

    /// A finite number in `[min, max]`.
    pub fn in_range(&self, value: f64, min: f64, max: f64) -> Result<(), String> {
        self.require(
            (min..=max).contains(&value),
            format!("{min} <= {} <= {max}", self.name()),
            value,
        )
    }

    /// A number in `[0, 1)`: a probability that is not certainty, a decay, an Adam β.
    pub fn fraction(&self, value: f64) -> Result<(), String> {
        self.require(
            (0.0..1.0).contains(&value),
            format!("0 <= {} < 1", self.name()),
            value,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_join_and_messages_name_them() {
        let moe = Field::root("model").at("moe");
        assert_eq!(moe.at("top_k").path(), "model.moe.top_k");
        assert_eq!(Field::root("").at("lr").path(), "lr");
        let beta = Field::root("train").at("adamw").at("betas").index(1);
        assert_eq!(beta.path(), "train.adamw.betas[1]");
        assert_eq!(beta.name(), "betas[1]");
        assert_eq!(
            beta.fraction(1.0).unwrap_err(),
            "train.adamw.betas[1]: expected 0 <= betas[1] < 1, found 1"
        );
        let ratio = Field::root("model").at("mlp_ratio");
        assert_eq!(
            ratio.positive(f64::INFINITY).unwrap_err(),
            "model.mlp_ratio: expected mlp_ratio > 0 and finite, found inf"
        );
    }

    #[test]
    fn every_check_refuses_nan_and_takes_its_bounds() {
        let f = Field::root("x");
        for check in [
            f.positive(f64::NAN),
            f.non_negative(f64::NAN),
            f.in_range(f64::NAN, 0.0, 1.0),
            f.fraction(f64::NAN),
            f.at_most(f64::NAN, 1.0),
            f.in_range(f64::INFINITY, 0.0, f64::MAX),
        ] {
            assert!(check.is_err());
        }
        assert!(f.positive(1e-30).is_ok() && f.positive(0.0).is_err());
        assert!(f.non_negative(0.0).is_ok() && f.non_negative(-0.1).is_err());
        assert!(f.in_range(0.0, 0.0, 1.0).is_ok() && f.in_range(1.0, 0.0, 1.0).is_ok());
        assert!(f.fraction(0.0).is_ok() && f.fraction(0.999).is_ok());
        assert_eq!(
            f.positive_count(0usize, 4).unwrap_err(),
            "x: expected x > 0, found 0"
        );
        assert_eq!(
            f.positive_count(5u64, 4).unwrap_err(),
            "x: expected x <= 4, found 5"
        );
        assert!(f.positive_count(4usize, 4).is_ok());
        assert_eq!(
            f.count_in(1usize, 2, 3).unwrap_err(),
            "x: expected 2 <= x <= 3, found 1"
        );
    }
}
