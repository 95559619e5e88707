//! Decisions about posting that must never lose a message silently: what an RPC answer says about
//! whether a post was stored, what to do with a post whose outcome is unknown, and when the post budget
//! allows the next post.
//!
//! twisterd ignores a post whose number `k` is already used while answering success, and a call that
//! timed out may still have stored its post. So a post whose outcome is unknown keeps its number and its
//! exact text until it is known to be stored (twisterd's last post number of ours reached `k`) or is
//! sent again, identical, under the same `k`: if the first copy lands late, the second is ignored, and
//! either way the same messages are stored. Its number is never used for other text.

use std::collections::BTreeMap;
use twister_rules::max_post_number;

/// A post or DM sent without a known outcome: its number, destination and exact text, and how many
/// queued items it carries (still at the head of their queue).
#[derive(Debug, Clone, PartialEq)]
pub struct InFlight {
    pub k: i64,
    /// `None`: the public timeline; `Some(user)`: a DM to that user.
    pub to: Option<String>,
    pub text: String,
    pub items: usize,
}

/// What twisterd's `getlasthave` (our own user followed) tells about post `k`.
#[derive(Debug, PartialEq)]
pub enum Verified {
    Stored,
    /// Not stored yet: it may still land (a late copy), so only the same text may go under `k`.
    NotYet,
    /// The answer does not say.
    Unknown,
}

pub fn verify(lasthave: &BTreeMap<String, i64>, user: &str, k: i64) -> Verified {
    match lasthave.get(user).copied() {
        Some(last) if last >= k => Verified::Stored,
        Some(_) => Verified::NotYet,
        None => Verified::Unknown,
    }
}

/// The post budget `k <= 2 * (height - registration) + 20`, as far as it can be known from outside:
/// twisterd does not tell a user's registration height, but each refusal at a height bounds it from
/// below, and so gives the first height at which the refused number can be allowed.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Budget {
    /// Lowest registration height consistent with what twisterd refused so far.
    registered_at_least: Option<i64>,
    /// Out of budget: no post before the chain reaches this height.
    pub wait_for_height: Option<i64>,
}

/// Smallest `h` with `k <= max_post_number(h, registration)`.
fn first_height_allowing(k: i64, registration: i64) -> i64 {
    let mut h = registration + (k - 20).max(0) / 2;
    while k > max_post_number(h, registration) {
        h += 1;
    }
    h
}

impl Budget {
    /// Post `k` was refused as over budget ("too much posts") at chain height `height`. Returns the
    /// height to wait for.
    pub fn refused(&mut self, k: i64, height: i64) -> i64 {
        // Refused at `height` means registration + first_height_allowing(k, 0) > height.
        let lower = height - first_height_allowing(k, 0) + 1;
        let reg = self.registered_at_least.map_or(lower, |r| r.max(lower));
        self.registered_at_least = Some(reg);
        let wait = first_height_allowing(k, reg).max(height + 1);
        self.wait_for_height = Some(wait);
        wait
    }

    /// The post was refused because our registration is too recent to sign with ("bad post
    /// signature"): the next block may allow it.
    pub fn too_recent(&mut self, height: i64) -> i64 {
        self.wait_for_height = Some(height + 1);
        height + 1
    }

    /// The chain is at `height`: true when posting may be tried again (and the wait is over).
    pub fn height_reached(&mut self, height: i64) -> bool {
        match self.wait_for_height {
            Some(h) if height >= h => {
                self.wait_for_height = None;
                true
            }
            Some(_) => false,
            None => true,
        }
    }

    pub fn waiting(&self) -> bool {
        self.wait_for_height.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_post_of_unknown_outcome_is_stored_once_our_last_number_reaches_it() {
        let last = |u: &str, k: i64| BTreeMap::from([(u.to_string(), k)]);
        assert_eq!(verify(&last("alice", 7), "alice", 7), Verified::Stored);
        assert_eq!(verify(&last("alice", 9), "alice", 7), Verified::Stored);
        assert_eq!(verify(&last("alice", 6), "alice", 7), Verified::NotYet);
        assert_eq!(verify(&last("alice", -1), "alice", 0), Verified::NotYet);
        assert_eq!(verify(&last("bob", 9), "alice", 7), Verified::Unknown);
        assert_eq!(verify(&BTreeMap::new(), "alice", 7), Verified::Unknown);
    }

    #[test]
    fn budget_arithmetic_matches_twisterds_rule() {
        for reg in [0, 5, 1000] {
            for k in [0, 19, 20, 21, 22, 23, 100, 101] {
                let h = first_height_allowing(k, reg);
                assert!(k <= max_post_number(h, reg), "k {k} reg {reg} h {h}");
                assert!(
                    h == reg || k > max_post_number(h - 1, reg),
                    "{h} is the first: k {k} reg {reg}"
                );
            }
        }
    }

    #[test]
    fn a_refusal_gives_the_first_height_that_can_allow_the_post() {
        // Registered at 100: k 23 needs 2 * (h - 100) + 20 >= 23, h >= 102.
        let reg = 100;
        let mut b = Budget::default();
        // Refused at 101 (budget 22).
        assert!(k_refused(23, 101, reg));
        assert_eq!(b.refused(23, 101), 102);
        assert!(b.waiting());
        assert!(!b.height_reached(101));
        assert!(b.height_reached(102));
        assert!(!b.waiting());
        assert!(!k_refused(23, 102, reg), "allowed at the height waited for");
    }

    #[test]
    fn the_refusal_that_ends_the_budget_tells_the_registration_exactly() {
        let reg = 500;
        let mut b = Budget::default();
        // At 505 the budget is 30: post 31 is the first refused.
        assert!(k_refused(31, 505, reg) && !k_refused(30, 505, reg));
        assert_eq!(b.refused(31, 505), 506);
        assert_eq!(b.registered_at_least, Some(reg));
        assert!(!k_refused(31, 506, reg));
        // A later refusal uses what was learnt: 45 needs 2 * (h - 500) + 20 >= 45.
        assert_eq!(b.refused(45, 506), 513);
        assert!(!k_refused(45, 513, reg) && k_refused(45, 512, reg));
    }

    #[test]
    fn refusals_far_beyond_the_budget_cost_at_most_one_post_per_block() {
        let reg = 500;
        let mut b = Budget::default();
        let k = 45; // first allowed at 513
        let mut height = 505;
        let mut refusals = 0;
        while k_refused(k, height, reg) {
            refusals += 1;
            let wait = b.refused(k, height);
            assert!(wait > height, "never before the next block");
            assert!(wait <= 513, "never past the first allowed height");
            height = wait;
        }
        assert_eq!(height, 513);
        assert!(refusals <= 513 - 505, "{refusals}");
    }

    #[test]
    fn a_too_recent_registration_waits_for_the_next_block() {
        let mut b = Budget::default();
        assert_eq!(b.too_recent(7), 8);
        assert!(!b.height_reached(7));
        assert!(b.height_reached(8));
    }

    fn k_refused(k: i64, height: i64, reg: i64) -> bool {
        k > max_post_number(height, reg)
    }
}
