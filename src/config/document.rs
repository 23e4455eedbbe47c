//! Reading the TOML document into the raw structs with every key-level mistake
//! reported, not only the first: an unknown key or a value of the wrong type is noted
//! with its line, taken out, and the rest read again, so one run of `check` lists them
//! all (and the semantic checks after them). A file that is not TOML at all stops at
//! its syntax error: nothing after it can be read.

use super::raw::RawConfig;
use serde::Deserialize;
use toml::de::{DeTable, DeValue, Deserializer};

/// Mistakes reported at most; each costs one more pass over the document.
const MAX_MISTAKES: usize = 50;

/// The raw config and the mistakes taken out of it (in the file's order), or only
/// mistakes when the rest could not be read.
pub(crate) fn read(text: &str) -> (Option<RawConfig>, Vec<String>) {
    let mut root = match DeTable::parse(text) {
        Ok(root) => root,
        Err(e) => return (None, vec![render(e, text)]),
    };
    let mut mistakes = Vec::new();
    let raw = loop {
        match RawConfig::deserialize(Deserializer::from(root.clone())) {
            Ok(raw) => break Some(raw),
            Err(e) => {
                let at = e.span().map(|s| s.start);
                mistakes.push((at.unwrap_or(usize::MAX), render(e, text)));
                let removed = at.is_some_and(|at| remove_at(root.get_mut(), at));
                if !removed || mistakes.len() >= MAX_MISTAKES {
                    break None;
                }
            }
        }
    };
    mistakes.sort_by_key(|(at, _)| *at);
    (raw, mistakes.into_iter().map(|(_, text)| text).collect())
}

/// The error as toml renders it with the input: line, column and the line itself.
fn render(mut e: toml::de::Error, text: &str) -> String {
    e.set_input(Some(text));
    e.to_string().trim_end().to_string()
}

/// Removes the innermost key whose name or value holds byte `at`; false when no key
/// does (a mistake about a whole table, such as a missing key, cannot be taken out).
/// Every table is searched: a `[table]`'s own span need not cover its keys.
fn remove_at(table: &mut DeTable<'_>, at: usize) -> bool {
    let mut hit = None;
    for (key, value) in table.iter_mut() {
        let inner = match value.get_mut() {
            DeValue::Table(t) => remove_at(t, at),
            DeValue::Array(items) => items.iter_mut().any(|item| match item.get_mut() {
                DeValue::Table(t) => remove_at(t, at),
                _ => false,
            }),
            _ => false,
        };
        if inner {
            return true;
        }
        if key.span().contains(&at) || value.span().contains(&at) {
            hit = Some(key.clone());
        }
    }
    hit.is_some_and(|key| table.remove(&key).is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_level_mistake_is_reported_with_its_line() {
        let text = "[server]\nhostname = \"mx.test\"\nbogus = 1\n[[listener]]\nname = \"mx\"\n\
                    bind = \"127.0.0.1:25\"\nrules = [{ name = \"a\", action = \"accept\", from = [\"10.0.0.0/8\"], x = 2 }]\n\
                    [limits]\nmax_recipients = \"many\"\n";
        let (raw, mistakes) = read(text);
        assert_eq!(mistakes.len(), 3, "{mistakes:#?}");
        assert!(mistakes[0].contains("line 3") && mistakes[0].contains("unknown field `bogus`"), "{mistakes:#?}");
        assert!(mistakes[1].contains("line 7") && mistakes[1].contains("unknown field `x`"), "{mistakes:#?}");
        assert!(mistakes[2].contains("line 9") && mistakes[2].contains("invalid type"), "{mistakes:#?}");
        let raw = raw.expect("the rest read");
        assert_eq!(raw.listener.len(), 1);
    }

    #[test]
    fn a_syntax_error_stops_at_once() {
        let (raw, mistakes) = read("[server\nhostname = 1\n");
        assert!(raw.is_none());
        assert_eq!(mistakes.len(), 1, "{mistakes:#?}");
    }
}
