//! What a client subscribes to for one type: a wildcard, names, or both.

use std::collections::BTreeSet;

/// The explicit wildcard name (`xds_protocol`, "How the client specifies what resources to return").
pub const WILDCARD: &str = "*";

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Subscription {
    pub wildcard: bool,
    pub names: BTreeSet<String>,
    /// The client has named resources at least once: from then on an empty SotW list
    /// means "nothing", not the legacy wildcard.
    named_before: bool,
}

/// How a subscription changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SubscriptionChange {
    pub added: BTreeSet<String>,
    pub wildcard_added: bool,
    pub changed: bool,
}

impl Subscription {
    pub fn contains(&self, name: &str) -> bool {
        self.wildcard || self.names.contains(name)
    }

    /// Applies a SotW request's full list of names. An empty list is the legacy wildcard
    /// as long as the client has never named a resource of this type.
    pub fn replace(&mut self, requested: &[String]) -> SubscriptionChange {
        let (wildcard, names) = if requested.is_empty() && !self.named_before {
            (true, BTreeSet::new())
        } else {
            self.named_before = true;
            let wildcard = requested.iter().any(|n| n == WILDCARD);
            let names = requested
                .iter()
                .filter(|n| *n != WILDCARD)
                .cloned()
                .collect::<BTreeSet<_>>();
            (wildcard, names)
        };
        let change = SubscriptionChange {
            added: names.difference(&self.names).cloned().collect(),
            wildcard_added: wildcard && !self.wildcard,
            changed: wildcard != self.wildcard || names != self.names,
        };
        self.wildcard = wildcard;
        self.names = names;
        change
    }

    /// Applies a Delta request. `first` is the stream's first request for the type, where
    /// an empty subscribe list is the legacy wildcard.
    pub fn apply_delta(
        &mut self,
        first: bool,
        subscribe: &[String],
        unsubscribe: &[String],
    ) -> SubscriptionChange {
        let mut change = SubscriptionChange::default();
        if first && subscribe.is_empty() {
            change.wildcard_added = !self.wildcard;
            self.wildcard = true;
        }
        for name in subscribe {
            if name == WILDCARD {
                change.wildcard_added |= !self.wildcard;
                self.wildcard = true;
            } else if self.names.insert(name.clone()) {
                change.added.insert(name.clone());
            }
        }
        for name in unsubscribe {
            if name == WILDCARD {
                self.wildcard = false;
                change.changed = true;
            } else if self.names.remove(name) {
                change.added.remove(name);
                change.changed = true;
            }
        }
        change.changed |= change.wildcard_added || !change.added.is_empty();
        change
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn sotw_empty_first_request_is_legacy_wildcard_until_names_are_given() {
        let mut s = Subscription::default();
        assert!(s.replace(&[]).wildcard_added);
        assert!(s.wildcard);
        // An ACK with the same empty list changes nothing.
        assert!(!s.replace(&[]).changed);
        let change = s.replace(&names(&["a"]));
        assert!(change.changed);
        assert!(!s.wildcard);
        assert!(s.contains("a") && !s.contains("b"));
        // Having named resources, an empty list now means "none".
        s.replace(&[]);
        assert!(!s.wildcard);
        assert!(s.names.is_empty());
    }

    #[test]
    fn sotw_explicit_wildcard_with_names() {
        let mut s = Subscription::default();
        let change = s.replace(&names(&["*", "a"]));
        assert!(s.wildcard && s.names.contains("a"));
        assert!(change.wildcard_added);
        assert_eq!(change.added, ["a".to_string()].into());
    }

    #[test]
    fn delta_subscribe_and_unsubscribe() {
        let mut s = Subscription::default();
        let change = s.apply_delta(true, &names(&["a", "b"]), &[]);
        assert!(!s.wildcard);
        assert_eq!(change.added.len(), 2);
        let change = s.apply_delta(false, &names(&["c"]), &names(&["a"]));
        assert_eq!(change.added, ["c".to_string()].into());
        assert!(s.contains("b") && s.contains("c") && !s.contains("a"));
    }

    #[test]
    fn delta_legacy_wildcard_and_explicit_star() {
        let mut s = Subscription::default();
        assert!(s.apply_delta(true, &[], &[]).wildcard_added);
        assert!(s.wildcard);
        // Naming a resource keeps the wildcard in Delta.
        s.apply_delta(false, &names(&["x"]), &[]);
        assert!(s.wildcard);
        s.apply_delta(false, &[], &names(&["*"]));
        assert!(!s.wildcard && s.contains("x") && !s.contains("y"));
        assert!(s.apply_delta(false, &names(&["*"]), &[]).wildcard_added);
    }
}
