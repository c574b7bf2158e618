//! What a channel is told it may sell of one SKU (SPEC §4, §7 "Publication policy").
//!
//! The channel's view of a SKU is summed over the channel's locations. A location whose
//! own view is negative (an oversold position, or commitments of other channels beyond
//! its stock) contributes 0: it cannot sell, but it does not take away what the other
//! locations can. Then `v = min(view - buffer, floor(view * max_share_pct / 100), cap)`,
//! and `v < min_publish` or `view <= 0` publishes 0.

use crate::config::ChannelConfig;
use crate::domain::channel_view;

/// One position's state as publication needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PositionView {
    pub version: u64,
    pub available: i64,
    /// `(channel, remaining commitment)`, zeros omitted.
    pub commitments: Vec<(std::sync::Arc<str>, u64)>,
}

impl PositionView {
    /// What `channel` may sell here, at least 0.
    pub fn sellable_by(&self, channel: &str) -> u64 {
        let all = self
            .commitments
            .iter()
            .fold(0u64, |sum, (_, remaining)| sum.saturating_add(*remaining));
        let own = self
            .commitments
            .iter()
            .find(|(c, _)| &**c == channel)
            .map_or(0, |(_, remaining)| *remaining);
        let view = channel_view(self.available, own, i64::try_from(all).unwrap_or(i64::MAX));
        u64::try_from(view).unwrap_or(0)
    }
}

/// The publication policy of one channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub buffer: u64,
    pub max_share_pct: u8,
    pub cap: Option<u64>,
    pub min_publish: u64,
}

impl Policy {
    pub fn of(channel: &ChannelConfig) -> Policy {
        Policy {
            buffer: channel.buffer,
            max_share_pct: channel.max_share_pct,
            cap: channel.cap,
            min_publish: channel.min_publish,
        }
    }

    /// The value to publish for a summed view (never negative, never above `cap`).
    pub fn apply(&self, view: u64) -> u64 {
        if view == 0 {
            return 0;
        }
        let share = u128::from(view) * u128::from(self.max_share_pct) / 100;
        let share = u64::try_from(share).unwrap_or(u64::MAX);
        let value = view
            .saturating_sub(self.buffer)
            .min(share)
            .min(self.cap.unwrap_or(u64::MAX));
        if value < self.min_publish {
            0
        } else {
            value
        }
    }
}

/// Sum of what `channel` may sell at each of `positions` (negatives count as 0).
pub fn summed_view<'a>(
    channel: &str,
    positions: impl IntoIterator<Item = &'a PositionView>,
) -> u64 {
    positions
        .into_iter()
        .fold(0u64, |sum, p| sum.saturating_add(p.sellable_by(channel)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn marketplace() -> Policy {
        // SPEC §4's example channel.
        Policy {
            buffer: 5,
            max_share_pct: 40,
            cap: Some(500),
            min_publish: 2,
        }
    }

    fn at(available: i64, commitments: &[(&str, u64)]) -> PositionView {
        PositionView {
            version: 1,
            available,
            commitments: commitments
                .iter()
                .map(|(c, r)| (Arc::from(*c), *r))
                .collect(),
        }
    }

    #[test]
    fn spec_example_policy_on_known_numbers() {
        let p = marketplace();
        // 100: min(95, 40, 500) = 40.
        assert_eq!(p.apply(100), 40);
        // 10: min(5, 4, 500) = 4.
        assert_eq!(p.apply(10), 4);
        // 6: min(1, 2, 500) = 1 < min_publish 2 -> 0.
        assert_eq!(p.apply(6), 0);
        // 5: min(0, 2) = 0.
        assert_eq!(p.apply(5), 0);
        // 10,000: min(9995, 4000, 500) = 500 (cap).
        assert_eq!(p.apply(10_000), 500);
        assert_eq!(p.apply(0), 0);
        // floor, not round: 7 * 40% = 2.8 -> 2.
        assert_eq!(p.apply(7), 2);
    }

    #[test]
    fn default_policy_publishes_the_view_and_never_overflows() {
        let p = Policy {
            buffer: 0,
            max_share_pct: 100,
            cap: None,
            min_publish: 0,
        };
        assert_eq!(p.apply(17), 17);
        assert_eq!(p.apply(u64::MAX), u64::MAX);
        let zero_share = Policy {
            max_share_pct: 0,
            ..p
        };
        assert_eq!(zero_share.apply(1000), 0);
    }

    #[test]
    fn commitments_ring_fence_units_per_channel() {
        // available 100, web has 30 ring-fenced and 10 of them left, b2b 20 left.
        let position = at(100, &[("web", 10), ("b2b", 20)]);
        // web: own 10 + uncommitted (100 - 30) = 80.
        assert_eq!(position.sellable_by("web"), 80);
        // b2b: 20 + 70 = 90.
        assert_eq!(position.sellable_by("b2b"), 90);
        // marketplace has no commitment: 70 uncommitted.
        assert_eq!(position.sellable_by("marketplace"), 70);
        assert_eq!(
            marketplace().apply(summed_view("marketplace", [&position])),
            28
        );
    }

    #[test]
    fn oversold_and_negative_positions_contribute_zero() {
        let oversold = at(-3, &[]);
        let fine = at(10, &[]);
        assert_eq!(oversold.sellable_by("web"), 0);
        assert_eq!(summed_view("web", [&oversold, &fine]), 10);
        // Commitments of other channels beyond the stock leave nothing for this one.
        let fenced = at(5, &[("b2b", 8)]);
        assert_eq!(fenced.sellable_by("web"), 0);
        assert_eq!(fenced.sellable_by("b2b"), 5);
        assert_eq!(summed_view("web", [&oversold]), 0);
    }
}
