//! Routing, decided once: the `Router` compiled from the configuration tells the MESSAGE callback
//! where a local message goes (the public timeline? which `plugin_opt_private` rules?), and that
//! `Route` travels with the message to the worker, which never matches the topic against the
//! configuration again.

use crate::topic;

/// Which `plugin_opt_private` rules (by their index in `Config::private`) a topic matches. The first
/// 64 rules fit in one word, so a route costs no allocation in any configuration of 64 rules or fewer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuleSet {
    first: u64,
    /// Rules 64 and up; None in the usual configuration, so a route is two words and drops for free.
    rest: Option<Box<[u64]>>,
}

impl RuleSet {
    pub fn insert(&mut self, rule: usize) {
        let bit = 1u64 << (rule % 64);
        match rule / 64 {
            0 => self.first |= bit,
            word => {
                let mut rest = self.rest.take().map(Vec::from).unwrap_or_default();
                if rest.len() < word {
                    rest.resize(word, 0);
                }
                rest[word - 1] |= bit;
                self.rest = Some(rest.into_boxed_slice());
            }
        }
    }

    pub fn contains(&self, rule: usize) -> bool {
        let word = match rule / 64 {
            0 => self.first,
            w => self
                .rest
                .as_deref()
                .and_then(|r| r.get(w - 1))
                .copied()
                .unwrap_or(0),
        };
        word & (1u64 << (rule % 64)) != 0
    }

    pub fn is_empty(&self) -> bool {
        self.first == 0
            && self
                .rest
                .as_deref()
                .is_none_or(|r| r.iter().all(|w| *w == 0))
    }

    /// The rules in the set, in increasing order.
    pub fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        std::iter::once(self.first)
            .chain(self.rest.iter().flat_map(|r| r.iter().copied()))
            .enumerate()
            .flat_map(|(w, word)| {
                (0..64)
                    .filter(move |b| word & (1u64 << b) != 0)
                    .map(move |b| w * 64 + b)
            })
    }
}

/// Where a local message goes: to the public timeline, and to the recipients of these private rules.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Route {
    pub public: bool,
    pub private_rules: RuleSet,
}

impl Route {
    /// The message leaves this broker neither publicly nor privately.
    pub fn is_empty(&self) -> bool {
        !self.public && self.private_rules.is_empty()
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Target {
    Public,
    Private(usize),
}

/// How a topic that starts with a filter's literal prefix is matched.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Shape {
    /// No wildcard: the topic is the filter.
    Exact,
    /// `<literal>/#`, no other wildcard: the topic is the literal or continues it with `/`.
    Subtree,
    /// Anything else: `topic::matches`.
    Wildcards,
}

#[derive(Debug, Clone, PartialEq)]
struct CompiledFilter {
    filter: String,
    /// Length of the literal text before the first wildcard, which a matching topic starts with: most
    /// topics are rejected by this one comparison.
    literal: usize,
    shape: Shape,
    target: Target,
}

impl CompiledFilter {
    /// Whether `t`, which starts with the literal prefix, matches.
    #[inline(always)]
    fn matches_after_prefix(&self, t: &[u8]) -> bool {
        match self.shape {
            Shape::Exact => t.len() == self.literal,
            Shape::Subtree => t.get(self.literal).is_none_or(|&b| b == b'/'),
            Shape::Wildcards => topic::matches_bytes(self.filter.as_bytes(), t),
        }
    }
}

/// Every `plugin_opt_publish` and `plugin_opt_private` filter, compiled.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Router {
    filters: Vec<CompiledFilter>,
    /// The first bytes a routed topic may start with (a 256-bit set): the first byte of each filter's
    /// literal prefix, or every byte when a filter starts with a wildcard. Most local topics are
    /// turned away by this one test, whatever the number of filters.
    first_bytes: [u64; 4],
}

impl Router {
    /// `private`: the filter of each `plugin_opt_private` rule, in the configuration's order.
    pub fn new<'a>(
        publish: impl IntoIterator<Item = &'a String>,
        private: impl IntoIterator<Item = &'a String>,
    ) -> Self {
        let compile = |filter: &String, target| {
            let literal = match filter.find(['+', '#']) {
                // `a/#` also matches `a`: the slash before a final `#` is not required.
                Some(at) if filter[at..].starts_with('#') => at.saturating_sub(1),
                Some(at) => at,
                None => filter.len(),
            };
            let shape = if literal == filter.len() {
                Shape::Exact
            } else if literal + 2 == filter.len() && filter.ends_with("/#") {
                Shape::Subtree
            } else {
                Shape::Wildcards
            };
            CompiledFilter {
                filter: filter.clone(),
                literal,
                shape,
                target,
            }
        };
        let filters = publish
            .into_iter()
            .map(|f| compile(f, Target::Public))
            .chain(
                private
                    .into_iter()
                    .enumerate()
                    .map(|(i, f)| compile(f, Target::Private(i))),
            )
            .collect::<Vec<_>>();
        let mut first_bytes = [0u64; 4];
        for f in &filters {
            match f.filter.as_bytes()[..f.literal].first() {
                Some(&b) => first_bytes[usize::from(b / 64)] |= 1 << (b % 64),
                None => first_bytes = [u64::MAX; 4],
            }
        }
        Router {
            filters,
            first_bytes,
        }
    }

    /// False when no filter can match `topic`, by its first byte alone (one test): most local topics.
    #[inline(always)]
    pub fn may_route(&self, topic: &[u8]) -> bool {
        topic
            .first()
            .is_none_or(|&b| self.first_bytes[usize::from(b / 64)] & (1 << (b % 64)) != 0)
    }

    /// Where a local message on `topic` goes (empty: it stays on this broker). Runs in the MESSAGE
    /// callback on the topic's bytes, before they are known to be UTF-8: no allocation with up to 64
    /// private rules, and a topic no filter's literal prefix can start is turned away first.
    #[inline(always)]
    pub fn route<T: AsRef<[u8]> + ?Sized>(&self, topic: &T) -> Route {
        let t = topic.as_ref();
        if !self.may_route(t) {
            return Route::default();
        }
        let (mut public, mut private_rules) = (false, RuleSet::default());
        for f in &self.filters {
            if t.starts_with(&f.filter.as_bytes()[..f.literal]) && f.matches_after_prefix(t) {
                match f.target {
                    Target::Public => public = true,
                    Target::Private(i) => private_rules.insert(i),
                }
            }
        }
        Route {
            public,
            private_rules,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The route computed the slow, obvious way with `topic::matches`.
    fn reference(publish: &[String], private: &[String], topic: &str) -> Route {
        let mut r = Route {
            public: publish.iter().any(|f| topic::matches(f, topic)),
            private_rules: RuleSet::default(),
        };
        for (i, p) in private.iter().enumerate() {
            if topic::matches(p, topic) {
                r.private_rules.insert(i);
            }
        }
        r
    }

    /// A small deterministic generator (xorshift64*), so a failure is reproducible from its seed.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    const LEVELS: &[&str] = &["a", "b", "ab", "", "$SYS", "sensors", "x y", "ü"];

    fn random_topic(rng: &mut Rng) -> String {
        let n = 1 + rng.below(4);
        (0..n)
            .map(|_| LEVELS[rng.below(LEVELS.len())])
            .collect::<Vec<_>>()
            .join("/")
    }

    /// A valid filter (the configuration accepts no other).
    fn random_filter(rng: &mut Rng) -> String {
        loop {
            let f = random_filter_text(rng);
            if topic::is_valid_filter(&f) {
                return f;
            }
        }
    }

    fn random_filter_text(rng: &mut Rng) -> String {
        let n = 1 + rng.below(4);
        let mut levels: Vec<&str> = (0..n)
            .map(|_| match rng.below(4) {
                0 => "+",
                _ => LEVELS[rng.below(LEVELS.len())],
            })
            .collect();
        if rng.below(3) == 0 {
            levels.push("#");
        }
        levels.join("/")
    }

    #[test]
    fn routes_agree_with_matches_on_random_configurations_and_topics() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut routed = [0usize; 2];
        for _ in 0..2_000 {
            let publish: Vec<String> = (0..rng.below(4)).map(|_| random_filter(&mut rng)).collect();
            // Up to 70 rules: some configurations go past the first word of the rule set.
            let rules = if rng.below(10) == 0 { 70 } else { rng.below(5) };
            let private: Vec<String> = (0..rules).map(|_| random_filter(&mut rng)).collect();
            let router = Router::new(&publish, &private);
            for _ in 0..50 {
                let t = random_topic(&mut rng);
                let got = router.route(&t);
                assert_eq!(
                    got,
                    reference(&publish, &private, &t),
                    "topic {t:?} publish {publish:?} private {private:?}"
                );
                routed[usize::from(got.is_empty())] += 1;
            }
        }
        // Both outcomes were exercised many times, so the agreement above means something.
        assert!(routed[0] > 5_000 && routed[1] > 5_000, "{routed:?}");
    }

    #[test]
    fn a_topic_can_go_public_and_to_several_rules() {
        let publish = vec!["doors/#".to_string()];
        let private = vec!["doors/+".to_string(), "windows/#".into(), "#".into()];
        let router = Router::new(&publish, &private);
        let r = router.route("doors/1");
        assert!(r.public);
        assert_eq!(r.private_rules.iter().collect::<Vec<_>>(), vec![0, 2]);
        let r = router.route("windows");
        assert!(!r.public);
        assert_eq!(r.private_rules.iter().collect::<Vec<_>>(), vec![1, 2]);
        assert!(router.route("$SYS/uptime").is_empty());
        let none: Vec<String> = Vec::new();
        assert!(Router::new(&none, &none).route("doors/1").is_empty());
    }

    #[test]
    fn each_filter_shape_matches_as_the_specification_says() {
        let filters = ["a/b", "a/#", "/#", "$SYS/#", "a/+", "#", "+/b"];
        let shapes: Vec<Shape> = filters
            .iter()
            .map(|f| Router::new([&f.to_string()], []).filters[0].shape)
            .collect();
        use Shape::*;
        assert_eq!(
            shapes,
            [Exact, Subtree, Subtree, Subtree, Wildcards, Wildcards, Wildcards]
        );
        let topics = [
            "a", "a/", "a/b", "a/bc", "a/b/", "ab", "ab/c", "/", "/a", "", "$SYS", "$SYS/x", "b",
            "x/b",
        ];
        for f in filters {
            let router = Router::new([&f.to_string()], []);
            for t in topics {
                assert_eq!(
                    router.route(t).public,
                    topic::matches(f, t),
                    "filter {f:?} topic {t:?}"
                );
            }
        }
    }

    #[test]
    fn rule_sets_hold_any_index() {
        let mut s = RuleSet::default();
        assert!(s.is_empty());
        for i in [0, 5, 63, 64, 130] {
            s.insert(i);
        }
        assert!(!s.is_empty());
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![0, 5, 63, 64, 130]);
        assert!(s.contains(130) && s.contains(63) && !s.contains(1) && !s.contains(1000));
    }
}
