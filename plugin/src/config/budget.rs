//! The options about the post budget: `plugin_opt_budget_reserve` (posts kept back for what must not
//! wait) and `plugin_opt_over_budget <filter> queue|conflate` (per forward rule, what happens while
//! posts are scarce).

use super::{invalid, ConfigError, PrivateRule};

/// Posts kept back by default: a few, for retained values and receipts.
pub const DEFAULT_RESERVE: i64 = 4;

/// What a forward rule does with its messages while posts are scarce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverBudget {
    /// Every message waits for a post (bounded by plugin_opt_max_queue and the spool).
    Queue,
    /// QoS 0: only the newest value of each topic waits; QoS 1/2 queued.
    Conflate,
}

pub fn reserve(v: Option<&str>) -> Result<i64, ConfigError> {
    match v {
        None => Ok(DEFAULT_RESERVE),
        Some(v) => v
            .parse()
            .ok()
            .filter(|n| (0..=1000).contains(n))
            .ok_or_else(|| {
                invalid(
                    "budget_reserve",
                    format!("'{v}' is not a number of posts from 0 to 1000"),
                )
            }),
    }
}

/// `<filter> queue|conflate`, where the filter is one of a `publish` or `private` rule.
pub fn over_budget<'a>(
    values: impl Iterator<Item = &'a str>,
    publish: &[String],
    private: &[PrivateRule],
) -> Result<Vec<(String, OverBudget)>, ConfigError> {
    let mut out: Vec<(String, OverBudget)> = Vec::new();
    for v in values {
        let Some((filter, policy)) = v.rsplit_once([' ', '\t']) else {
            return Err(invalid(
                "over_budget",
                format!(
                    "'{v}' must be '<topic filter of a publish or private rule> queue|conflate'"
                ),
            ));
        };
        let filter = filter.trim();
        let policy = match policy {
            "queue" => OverBudget::Queue,
            "conflate" => OverBudget::Conflate,
            other => {
                return Err(invalid(
                    "over_budget",
                    format!("'{other}' is not queue or conflate"),
                ))
            }
        };
        if !publish.iter().any(|f| f == filter) && !private.iter().any(|r| r.filter == filter) {
            return Err(invalid(
                "over_budget",
                format!("'{filter}' is not the filter of a plugin_opt_publish or plugin_opt_private rule"),
            ));
        }
        if out.iter().any(|(f, _)| f == filter) {
            return Err(invalid(
                "over_budget",
                format!("'{filter}' is given more than once"),
            ));
        }
        out.push((filter.to_string(), policy));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::super::{parse, Config};
    use super::*;

    fn with(extra: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let mut opts = vec![
            ("rpc_user", "u"),
            ("rpc_password", "p"),
            ("user", "alice"),
            ("publish", "sensors/#"),
            ("publish", "a b/#"),
            ("private", "doors/# bob"),
        ];
        opts.extend_from_slice(extra);
        parse(
            &opts
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<Vec<_>>(),
        )
    }

    #[test]
    fn rules_queue_unless_told_to_conflate() {
        let c = with(&[]).unwrap();
        assert!(c.over_budget.is_empty());
        assert_eq!(c.budget_reserve, DEFAULT_RESERVE);
        let c = with(&[
            ("over_budget", "sensors/# conflate"),
            ("over_budget", "doors/# queue"),
            ("over_budget", "a b/# conflate"),
            ("budget_reserve", "0"),
        ])
        .unwrap();
        assert_eq!(
            c.over_budget,
            [
                ("sensors/#".to_string(), OverBudget::Conflate),
                ("doors/#".to_string(), OverBudget::Queue),
                ("a b/#".to_string(), OverBudget::Conflate),
            ]
        );
        assert_eq!(c.budget_reserve, 0);
    }

    #[test]
    fn errors_name_the_key() {
        for (extra, key) in [
            (("over_budget", "sensors/#"), "plugin_opt_over_budget"),
            (("over_budget", "sensors/# drop"), "plugin_opt_over_budget"),
            (
                ("over_budget", "other/# conflate"),
                "plugin_opt_over_budget",
            ),
            (("budget_reserve", "-1"), "plugin_opt_budget_reserve"),
            (("budget_reserve", "many"), "plugin_opt_budget_reserve"),
        ] {
            let e = with(&[extra]).unwrap_err().to_string();
            assert!(e.contains(key), "{extra:?}: {e}");
        }
        let e = with(&[
            ("over_budget", "sensors/# conflate"),
            ("over_budget", "sensors/# queue"),
        ])
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("plugin_opt_over_budget") && e.contains("more than once"),
            "{e}"
        );
    }
}
