//! Request quantities: integers in `1..=QTY_MAX`, checked once at the edge so
//! the state machine never sees a zero, a negative or an absurd value.

/// The largest quantity a single request may carry (SPEC §1).
pub const QTY_MAX: u64 = 1_000_000_000;

/// A validated quantity in `1..=QTY_MAX`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Qty(u64);

impl Qty {
    pub fn new(value: u64) -> Option<Qty> {
        (1..=QTY_MAX).contains(&value).then_some(Qty(value))
    }

    pub fn get(self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_are_inclusive() {
        assert_eq!(Qty::new(0), None);
        assert_eq!(Qty::new(1).map(Qty::get), Some(1));
        assert_eq!(Qty::new(QTY_MAX).map(Qty::get), Some(QTY_MAX));
        assert_eq!(Qty::new(QTY_MAX + 1), None);
    }
}
