//! A bounded set of `u64`s kept as sorted, disjoint, non-adjacent inclusive ranges: which message
//! seqs a receiver has seen of one sender's epoch (`crate::dedup`), which it acknowledged (receipts).
//!
//! Bounded: at most `max_ranges` ranges. One more joins the two lowest ranges, so the gap between
//! them counts as seen from then on: the oldest gap is the least likely still to be filled (a
//! retransmission comes soon or not at all). What a bound makes the set forget (`absorbed`: seqs of
//! joined gaps) is counted.
//!
//! Text encoding (compact, only `0-9 a-z + ,`, so it fits any JSON string, a DHT value included):
//! each range as `gap` or `gap+extra` in base 36, joined by `,`, where `gap` is its start minus
//! the end of the range before plus one (the first: its start) and `extra` its length minus one.
//! `1..=100, 103, 105..=106` is `1+2r,2,1+1`. The empty set is the empty text.

use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeSet {
    /// start -> end (inclusive); disjoint and never adjacent (`end + 1 < next start`).
    ranges: BTreeMap<u64, u64>,
    max_ranges: usize,
    /// Seqs never inserted that count as present because their gap was joined (the bound).
    absorbed: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RangeTextError {
    #[error("not a range list: {0}")]
    Syntax(&'static str),
    #[error("a range beyond 2^64")]
    Overflow,
    #[error("more than {0} ranges")]
    TooMany(usize),
}

impl RangeSet {
    /// An empty set of at most `max_ranges` ranges (at least 1).
    pub fn new(max_ranges: usize) -> Self {
        RangeSet {
            ranges: BTreeMap::new(),
            max_ranges: max_ranges.max(1),
            absorbed: 0,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// How many ranges it holds.
    pub fn len(&self) -> usize {
        self.ranges.len()
    }

    pub fn max_ranges(&self) -> usize {
        self.max_ranges
    }

    /// Seqs counted as present because the bound joined the gap they were in.
    pub fn absorbed(&self) -> u64 {
        self.absorbed
    }

    pub fn contains(&self, v: u64) -> bool {
        self.ranges
            .range(..=v)
            .next_back()
            .is_some_and(|(_, end)| *end >= v)
    }

    /// Adds `v`; false when it was present already.
    pub fn insert(&mut self, v: u64) -> bool {
        if self.contains(v) {
            return false;
        }
        self.insert_range(v, v);
        true
    }

    /// Adds every value of `start..=end` (nothing when `end < start`).
    pub fn insert_range(&mut self, start: u64, end: u64) {
        if end < start {
            return;
        }
        let (mut start, mut end) = (start, end);
        // A range that overlaps or touches the new one on the left.
        if let Some((&s, &e)) = self.ranges.range(..=start).next_back() {
            if e.saturating_add(1) >= start {
                start = s;
                end = end.max(e);
                self.ranges.remove(&s);
            }
        }
        // Ranges starting inside or right after the new one.
        while let Some((&s, &e)) = self.ranges.range(start..).next() {
            if s > end.saturating_add(1) {
                break;
            }
            end = end.max(e);
            self.ranges.remove(&s);
        }
        self.ranges.insert(start, end);
        self.enforce_bound();
    }

    /// Adds every value of `other` (its absorbed count too).
    pub fn merge(&mut self, other: &RangeSet) {
        for (s, e) in other.iter() {
            self.insert_range(s, e);
        }
        self.absorbed = self.absorbed.saturating_add(other.absorbed);
    }

    /// The ranges, lowest first, as `(start, end)` inclusive.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = (u64, u64)> + '_ {
        self.ranges.iter().map(|(s, e)| (*s, *e))
    }

    /// The highest value, if any.
    pub fn max(&self) -> Option<u64> {
        self.ranges.values().next_back().copied()
    }

    /// The end of the range that starts at the lowest value `from` (inclusive) reaches without a gap:
    /// `from - 1` when `from` is absent. With `from = 1`, how far a set of seqs counting from 1 is
    /// complete.
    pub fn contiguous_from(&self, from: u64) -> u64 {
        match self.ranges.range(..=from).next_back() {
            Some((_, &end)) if end >= from => end,
            _ => from.saturating_sub(1),
        }
    }

    fn enforce_bound(&mut self) {
        while self.ranges.len() > self.max_ranges {
            let mut lowest = self.ranges.iter();
            let (Some((&s1, &e1)), Some((&s2, &e2))) = (lowest.next(), lowest.next()) else {
                return;
            };
            self.absorbed = self.absorbed.saturating_add(s2 - e1 - 1);
            self.ranges.remove(&s2);
            self.ranges.insert(s1, e2);
        }
    }

    /// The compact text (see the module's documentation).
    pub fn to_text(&self) -> String {
        let mut out = String::with_capacity(self.ranges.len() * 6);
        let mut next = 0u64;
        for (i, (s, e)) in self.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            push_base36(&mut out, s - next);
            if e > s {
                out.push('+');
                push_base36(&mut out, e - s);
            }
            next = e.saturating_add(1);
        }
        out
    }

    /// Reads a text of `to_text` into a set bounded by `max_ranges`; a text of more ranges is an
    /// error (untrusted input: nothing is allocated beyond the bound).
    pub fn from_text(text: &str, max_ranges: usize) -> Result<RangeSet, RangeTextError> {
        let mut set = RangeSet::new(max_ranges);
        if text.is_empty() {
            return Ok(set);
        }
        // The first range may start at 0; every later one at least one past the end before plus
        // one (never adjacent), so `next` is where a gap of 0 would put the next range.
        let mut next = 0u64;
        let mut last_end: Option<u64> = None;
        for (i, part) in text.split(',').enumerate() {
            if i >= set.max_ranges {
                return Err(RangeTextError::TooMany(set.max_ranges));
            }
            let (gap, extra) = match part.split_once('+') {
                Some((_, "0")) => return Err(RangeTextError::Syntax("a range of +0")),
                Some((g, x)) => (parse_base36(g)?, parse_base36(x)?),
                None => (parse_base36(part)?, 0),
            };
            if last_end.is_some() && gap == 0 {
                return Err(RangeTextError::Syntax("adjacent ranges"));
            }
            if last_end == Some(u64::MAX) {
                return Err(RangeTextError::Overflow);
            }
            let start = next.checked_add(gap).ok_or(RangeTextError::Overflow)?;
            let end = start.checked_add(extra).ok_or(RangeTextError::Overflow)?;
            set.ranges.insert(start, end);
            last_end = Some(end);
            next = end.saturating_add(1);
        }
        Ok(set)
    }
}

fn push_base36(out: &mut String, mut v: u64) {
    let mut digits = [0u8; 13];
    let mut n = 0;
    loop {
        let d = (v % 36) as u8;
        digits[n] = if d < 10 { b'0' + d } else { b'a' + d - 10 };
        n += 1;
        v /= 36;
        if v == 0 {
            break;
        }
    }
    out.extend(digits[..n].iter().rev().map(|d| char::from(*d)));
}

fn parse_base36(s: &str) -> Result<u64, RangeTextError> {
    if s.is_empty() || s.len() > 13 || (s.len() > 1 && s.starts_with('0')) {
        return Err(RangeTextError::Syntax("bad number"));
    }
    let mut v = 0u64;
    for b in s.bytes() {
        let d = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'z' => b - b'a' + 10,
            _ => return Err(RangeTextError::Syntax("bad digit")),
        };
        v = v
            .checked_mul(36)
            .and_then(|v| v.checked_add(u64::from(d)))
            .ok_or(RangeTextError::Overflow)?;
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    /// xorshift: seeded, so every run checks the same cases.
    struct Rng(u64);
    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % n
        }
    }

    fn check_invariants(set: &RangeSet) {
        let mut prev: Option<u64> = None;
        for (s, e) in set.iter() {
            assert!(s <= e);
            if let Some(p) = prev {
                assert!(p.saturating_add(1) < s, "disjoint and not adjacent");
            }
            prev = Some(e);
        }
        assert!(set.len() <= set.max_ranges());
    }

    #[test]
    fn unbounded_enough_it_is_exactly_a_set() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for round in 0..300 {
            let mut set = RangeSet::new(10_000);
            let mut model = BTreeSet::new();
            let span = [10, 100, 5000][round % 3];
            for _ in 0..rng.below(400) {
                if rng.below(4) == 0 {
                    let s = rng.below(span);
                    let e = s + rng.below(20);
                    set.insert_range(s, e);
                    model.extend(s..=e);
                } else {
                    let v = rng.below(span);
                    assert_eq!(set.insert(v), model.insert(v));
                }
                check_invariants(&set);
            }
            for v in 0..span + 25 {
                assert_eq!(set.contains(v), model.contains(&v), "{v}");
            }
            assert_eq!(set.absorbed(), 0);
            let back = RangeSet::from_text(&set.to_text(), 10_000).unwrap();
            assert_eq!(back, set, "{}", set.to_text());
            let expected = (1..).take_while(|v| model.contains(v)).last().unwrap_or(0);
            assert_eq!(set.contiguous_from(1), expected);
        }
    }

    #[test]
    fn the_bound_joins_the_lowest_gaps_and_counts_them() {
        let mut rng = Rng(77);
        for _ in 0..100 {
            let max = 1 + rng.below(8) as usize;
            let mut set = RangeSet::new(max);
            let mut model = BTreeSet::new();
            for _ in 0..200 {
                let v = rng.below(1000);
                // A value in a joined gap is present already: not inserted again.
                if set.insert(v) {
                    model.insert(v);
                }
                check_invariants(&set);
            }
            // Never forgets a value; what it adds is the joined gaps, counted.
            assert!(model.iter().all(|v| set.contains(*v)));
            let count: u64 = set.iter().map(|(s, e)| e - s + 1).sum();
            assert_eq!(count, model.len() as u64 + set.absorbed());
        }
        // Every other value: the lowest gaps are the ones joined.
        let mut set = RangeSet::new(3);
        for v in [2, 4, 6, 8, 10] {
            set.insert(v);
        }
        assert_eq!(set.iter().collect::<Vec<_>>(), [(2, 6), (8, 8), (10, 10)]);
        assert_eq!(set.absorbed(), 2);
    }

    #[test]
    fn merge_is_the_union() {
        let mut rng = Rng(5);
        for _ in 0..200 {
            let (mut a, mut b) = (RangeSet::new(1000), RangeSet::new(1000));
            let mut model = BTreeSet::new();
            for _ in 0..rng.below(100) {
                let v = rng.below(300);
                a.insert(v);
                model.insert(v);
            }
            for _ in 0..rng.below(100) {
                let v = rng.below(300);
                b.insert(v);
                model.insert(v);
            }
            a.merge(&b);
            check_invariants(&a);
            assert!((0..300).all(|v| a.contains(v) == model.contains(&v)));
        }
    }

    #[test]
    fn text_is_compact_and_exact_at_the_edges() {
        let mut set = RangeSet::new(10);
        set.insert_range(1, 100);
        set.insert(103);
        set.insert_range(105, 106);
        assert_eq!(set.to_text(), "1+2r,2,1+1");
        let mut edges = RangeSet::new(10);
        edges.insert(0);
        edges.insert_range(u64::MAX - 1, u64::MAX);
        let text = edges.to_text();
        assert_eq!(RangeSet::from_text(&text, 10).unwrap(), edges);
        assert_eq!(RangeSet::from_text("", 10).unwrap(), RangeSet::new(10));
        // 10,000 consecutive seqs: a few bytes.
        let mut long = RangeSet::new(10);
        long.insert_range(1, 10_000);
        assert_eq!(long.to_text(), "1+7pr");
    }

    #[test]
    fn bad_texts_are_errors_never_panics_nor_large() {
        for bad in [
            ",",
            "1,",
            ",1",
            "1+",
            "+1",
            "A",
            "1 ",
            "01",
            "1,0",
            "1+1,0",
            "-1",
            "1++2",
            "3w5e11264sgsg",
            "3w5e11264sgsf,1",
            "1+3w5e11264sgsf",
        ] {
            assert!(RangeSet::from_text(bad, 10).is_err(), "{bad:?}");
        }
        assert_eq!(
            RangeSet::from_text("1,1,1", 2),
            Err(RangeTextError::TooMany(2))
        );
        let mut rng = Rng(99);
        let alphabet = b"0123456789az+,";
        for _ in 0..20_000 {
            let text: String = (0..rng.below(30))
                .map(|_| char::from(alphabet[rng.below(alphabet.len() as u64) as usize]))
                .collect();
            if let Ok(set) = RangeSet::from_text(&text, 16) {
                check_invariants(&set);
                assert_eq!(set.to_text(), text, "one text per set");
            }
        }
    }
}
