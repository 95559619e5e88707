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
/// below, and each post it stores bounds it from above (a post signed at height `s` was made at chain
/// height `s + 1`, and twisterd signs with the key valid at `s`, so `registration <= s`).
///
/// The posts left are counted from the upper bound: proven allowed, never an over-estimate. Until
/// twisterd has refused once (`learnt`), posting beyond what is proven stays allowed (a user
/// registered long ago has far more than stored posts prove); the one refusal then pins the
/// registration down, and from then on only proven posts are sent.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Budget {
    /// Lowest registration height consistent with what twisterd refused so far.
    registered_at_least: Option<i64>,
    /// Highest registration height consistent with what twisterd stored so far.
    registered_at_most: Option<i64>,
    /// twisterd refused a post for budget: only proven posts from then on.
    learnt: bool,
    /// The highest chain height seen (getinfo, or a stored post's height + 1).
    height: Option<i64>,
    /// Out of budget: no post before the chain reaches this height.
    pub wait_for_height: Option<i64>,
}

/// What the budget allows now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allowance {
    /// Not known (no stored post or height seen yet, or, before the learning refusal, nothing
    /// proven left): presumed ample.
    Unknown,
    /// Posts proven allowed at the current height (0 or less: none).
    Left(i64),
}

/// Registration bounds as the state file keeps them.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Learnt {
    pub registered_at_least: Option<i64>,
    pub registered_at_most: Option<i64>,
    pub refused_once: bool,
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
    /// Starts from what an earlier run learnt.
    pub fn from_learnt(l: Learnt) -> Self {
        Budget {
            registered_at_least: l.registered_at_least,
            registered_at_most: l.registered_at_most,
            learnt: l.refused_once,
            ..Budget::default()
        }
    }

    pub fn learnt(&self) -> Learnt {
        Learnt {
            registered_at_least: self.registered_at_least,
            registered_at_most: self.registered_at_most,
            refused_once: self.learnt,
        }
    }

    /// The chain height, when seen.
    pub fn height(&self) -> Option<i64> {
        self.height
    }

    /// The registration height, when the bounds meet.
    pub fn registration(&self) -> Option<i64> {
        match (self.registered_at_least, self.registered_at_most) {
            (Some(lo), Some(hi)) if lo >= hi => Some(hi),
            _ => None,
        }
    }

    /// The chain is at `height` (or higher: heights never go back here). True when it grew.
    pub fn height_seen(&mut self, height: i64) -> bool {
        let grew = self.height.is_none_or(|h| height > h);
        if grew {
            self.height = Some(height);
        }
        grew
    }

    /// twisterd stored post `k`, signed at `signed_height`: the chain was at `signed_height + 1`.
    pub fn stored(&mut self, k: i64, signed_height: i64) {
        self.height_seen(signed_height + 1);
        let most = signed_height.min(signed_height + 1 - first_height_allowing(k, 0));
        self.registered_at_most = Some(self.registered_at_most.map_or(most, |r| r.min(most)));
    }

    /// The registration height the posts left are counted from: proven (the upper bound), or after
    /// the learning refusal without a stored post, the lower bound (at most one refusal per block).
    fn registration_counted(&self) -> Option<i64> {
        match (self.registered_at_most, self.registered_at_least) {
            // A refusal is the harder evidence when the two disagree.
            (Some(hi), lo) => Some(lo.map_or(hi, |lo| hi.max(lo))),
            (None, lo) if self.learnt => lo,
            (None, _) => None,
        }
    }

    /// Posts proven allowed at the current height, with `next_k` the next number.
    pub fn posts_left(&self, next_k: i64) -> Option<i64> {
        let reg = self.registration_counted()?;
        Some(max_post_number(self.height?, reg) - next_k + 1)
    }

    /// What pacing may count on, keeping `reserve` posts back.
    ///
    /// Before the learning refusal, what stored posts prove is a floor: a user registered long ago
    /// sees it hover around one post once its first 20 or so are used, while it may have hundreds.
    /// So with no more than the reserve and one post proven, the budget counts as unknown.
    pub fn allowance(&self, next_k: i64, reserve: i64) -> Allowance {
        match self.posts_left(next_k) {
            Some(left) if self.learnt || left > reserve + 1 => Allowance::Left(left),
            _ => Allowance::Unknown,
        }
    }

    /// May post `next_k` be sent now: proven allowed, or (before the learning refusal) not proven
    /// refused.
    pub fn may_post(&self, next_k: i64) -> bool {
        if self.waiting() {
            return false;
        }
        !self.learnt || self.posts_left(next_k).is_none_or(|left| left >= 1)
    }

    /// For posts that may use the reserve (retained values, receipts): true when one is proven
    /// allowed now (or nothing says otherwise before the learning refusal). The post itself then
    /// spends it when twisterd stores it.
    pub fn spend_reserve(&self, next_k: i64) -> bool {
        self.may_post(next_k)
    }

    /// The height at which `posts` posts from `next_k` on are allowed, as counted.
    pub fn height_allowing(&self, next_k: i64, posts: i64) -> Option<i64> {
        let reg = self.registration_counted()?;
        Some(first_height_allowing(next_k + posts.max(1) - 1, reg))
    }

    /// Post `k` was refused as over budget ("too much posts") at chain height `height`. Returns the
    /// height to wait for.
    pub fn refused(&mut self, k: i64, height: i64) -> i64 {
        self.height_seen(height);
        self.learnt = true;
        // Refused at `height` means registration + first_height_allowing(k, 0) > height.
        let lower = height - first_height_allowing(k, 0) + 1;
        let reg = self.registered_at_least.map_or(lower, |r| r.max(lower));
        self.registered_at_least = Some(reg);
        // Registered at least at `reg`; counted from the proven upper bound when there is one.
        let counted = self.registered_at_most.map_or(reg, |hi| hi.max(reg));
        let wait = first_height_allowing(k, counted).max(height + 1);
        self.wait_for_height = Some(wait);
        wait
    }

    /// The post was refused because our registration is too recent to sign with ("bad post
    /// signature"): the next block may allow it.
    pub fn too_recent(&mut self, height: i64) -> i64 {
        self.height_seen(height);
        self.wait_for_height = Some(height + 1);
        height + 1
    }

    /// The chain is at `height`: true when posting may be tried again (and the wait is over).
    pub fn height_reached(&mut self, height: i64) -> bool {
        self.height_seen(height);
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
