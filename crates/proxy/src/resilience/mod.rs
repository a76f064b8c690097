//! What keeps one failing endpoint from costing user requests: ejecting endpoints that keep
//! failing ([`Outliers`]) and retries bounded by a budget ([`RetryBudget`]).

mod budget;
mod outlier;

pub use budget::RetryBudget;
pub use outlier::{Outcome, OutlierState, Outliers};
