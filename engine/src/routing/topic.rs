//! Topic matching with a trie over words, AMQP rules: `*` matches exactly one
//! word, `#` zero or more; `a.#` matches `a`. Keys and patterns are split on
//! `.`; the empty key (and the empty pattern) has zero words, as in RabbitMQ, so
//! `#` matches it and `*` does not.
//!
//! # Invariants
//! - A pattern in the trie was validated ([`validate_pattern`]) when it was
//!   bound; matching never fails and visits each trie node at most once per
//!   position of the key.

use std::collections::HashMap;

use crate::error::Error;

/// Checks a binding pattern: a word is either literal text without `*` and `#`,
/// or exactly `*`, or exactly `#`.
pub(crate) fn validate_pattern(pattern: &str) -> Result<(), Error> {
    for word in pattern.split('.') {
        if word.len() > 1 && (word.contains('*') || word.contains('#')) {
            return Err(Error::InvalidPattern {
                pattern: pattern.to_owned(),
                reason: format!(
                    "word {word:?} mixes a wildcard with other characters; \
                     `*` and `#` must stand alone between dots"
                ),
            });
        }
    }
    Ok(())
}

#[derive(Debug, Default, Clone)]
struct Node {
    words: HashMap<Box<str>, Node>,
    star: Option<Box<Node>>,
    hash: Option<Box<Node>>,
    targets: Vec<usize>,
}

/// Patterns → target indices.
#[derive(Debug, Default, Clone)]
pub(crate) struct TopicTrie {
    root: Node,
}

impl TopicTrie {
    /// Adds `pattern` (already validated) for `target`.
    pub(crate) fn insert(&mut self, pattern: &str, target: usize) {
        let mut node = &mut self.root;
        let mut prev_hash = false;
        for word in words(pattern) {
            // `#.#` matches what `#` matches.
            if word == "#" && prev_hash {
                continue;
            }
            prev_hash = word == "#";
            node = match word {
                "*" => node.star.get_or_insert_with(Default::default),
                "#" => node.hash.get_or_insert_with(Default::default),
                w => node.words.entry(w.into()).or_default(),
            };
        }
        if !node.targets.contains(&target) {
            node.targets.push(target);
        }
    }

    /// Appends the targets whose patterns match `key` (possibly with repeats).
    pub(crate) fn matches(&self, key: &str, out: &mut Vec<usize>) {
        let words: Vec<&str> = words(key).collect();
        walk(&self.root, &words, out);
    }
}

fn words(s: &str) -> impl Iterator<Item = &str> {
    s.split('.').filter(move |_| !s.is_empty())
}

fn walk(node: &Node, words: &[&str], out: &mut Vec<usize>) {
    if let Some(h) = &node.hash {
        // `#` eats 0..=len words.
        for skip in 0..=words.len() {
            walk(h, &words[skip..], out);
        }
    }
    match words.split_first() {
        None => out.extend_from_slice(&node.targets),
        Some((first, rest)) => {
            if let Some(n) = node.words.get(*first) {
                walk(n, rest, out);
            }
            if let Some(s) = &node.star {
                walk(s, rest, out);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(patterns: &[&str], key: &str) -> Vec<usize> {
        let mut t = TopicTrie::default();
        for (i, p) in patterns.iter().enumerate() {
            validate_pattern(p).unwrap();
            t.insert(p, i);
        }
        let mut out = Vec::new();
        t.matches(key, &mut out);
        out.sort();
        out.dedup();
        out
    }

    fn hit(p: &str, k: &str) -> bool {
        !m(&[p], k).is_empty()
    }

    #[test]
    fn amqp_rules() {
        assert!(hit("a.b", "a.b"));
        assert!(!hit("a.b", "a.b.c"));
        assert!(hit("a.*", "a.b"));
        assert!(!hit("a.*", "a"));
        assert!(!hit("a.*", "a.b.c"));
        assert!(hit("a.#", "a"));
        assert!(hit("a.#", "a.b.c"));
        assert!(hit("#", ""));
        assert!(hit("#", "x.y"));
        assert!(hit("#.z", "z"));
        assert!(hit("#.z", "x.y.z"));
        assert!(!hit("#.z", "x.y"));
        assert!(hit("a.#.z", "a.z"));
        assert!(hit("a.#.z", "a.b.c.z"));
        assert!(hit("*.#", "a"));
        assert!(!hit("*.#", ""));
        assert!(!hit("*", ""));
        assert!(hit("", ""));
        assert!(!hit("", "a"));
        assert!(!hit("a", ""));
        assert!(hit("a.#.#.b", "a.b"));
        assert!(hit("*.*.c", "a.b.c"));
        assert!(!hit("*.*.c", "a.c"));
        assert!(hit("a..b", "a..b"));
    }

    #[test]
    fn several_patterns_one_target_each() {
        assert_eq!(m(&["a.*", "a.#", "b.*", "#"], "a.x"), vec![0, 1, 3]);
    }

    #[test]
    fn invalid_patterns() {
        for bad in ["a*", "a.b#", "#a.b", "a.**", "x.#y"] {
            assert!(matches!(
                validate_pattern(bad),
                Err(Error::InvalidPattern { .. })
            ));
        }
        for good in ["", "a", "*", "#", "a.*.#", "a..b"] {
            validate_pattern(good).unwrap();
        }
    }
}
