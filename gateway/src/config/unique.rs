//! Duplicate keys are errors, at the line of the second one.
//!
//! YAML forbids a key twice in one mapping, but a map deserialized by serde keeps the last value
//! silently (a second `web:` service replaced the first), and a struct's "duplicate field" error
//! points at the start of the mapping, not at the repeat. [`unique_map`] refuses repeats in our
//! maps, and [`locate_duplicate`] moves either error to the line where the key comes again.

use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;

use serde::de::{Deserialize, Deserializer, Error as _, MapAccess, Visitor};

/// Deserialize a map, refusing a key that comes twice (`deserialize_with`).
pub(super) fn unique_map<'de, D, K, V>(deserializer: D) -> Result<BTreeMap<K, V>, D::Error>
where
    D: Deserializer<'de>,
    K: Deserialize<'de> + Ord + fmt::Display,
    V: Deserialize<'de>,
{
    struct Unique<K, V>(PhantomData<(K, V)>);

    impl<'de, K, V> Visitor<'de> for Unique<K, V>
    where
        K: Deserialize<'de> + Ord + fmt::Display,
        V: Deserialize<'de>,
    {
        type Value = BTreeMap<K, V>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a mapping")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut out = BTreeMap::new();
            while let Some(key) = map.next_key::<K>()? {
                if out.contains_key(&key) {
                    return Err(A::Error::custom(format_args!("duplicate key `{key}`")));
                }
                let value = map.next_value()?;
                out.insert(key, value);
            }
            Ok(out)
        }

        fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(BTreeMap::new())
        }
    }

    deserializer.deserialize_map(Unique(PhantomData))
}

/// For a "duplicate field `k`" or "duplicate key `k`" error reported at (`line`, `column`), the
/// line and column of the key's second appearance in the block mapping whose first key is there
/// (keys at the same indentation); `None` if it is not found that way (a flow mapping, say).
pub(super) fn locate_duplicate(
    text: &str,
    message: &str,
    line: usize,
    column: usize,
) -> Option<(usize, usize)> {
    // serde_yaml_ng may put the path first: "services: duplicate key `web`".
    let after = ["duplicate field `", "duplicate key `"]
        .iter()
        .find_map(|marker| message.find(marker).map(|at| &message[at + marker.len()..]))?;
    let key = &after[..after.find('`')?];
    let indent = column.checked_sub(1)?;
    let mut seen = 0;
    for (index, text_line) in text.lines().enumerate().skip(line.checked_sub(1)?) {
        let here = index + 1;
        let body = text_line.trim_start_matches(' ');
        let depth = text_line.len() - body.len();
        if here > line && depth < indent && !body.is_empty() && !body.starts_with('#') {
            break; // past the end of the mapping
        }
        if depth == indent && key_of(body).is_some_and(|k| k.eq_ignore_ascii_case(key)) {
            seen += 1;
            if seen == 2 {
                return Some((here, column));
            }
        }
    }
    None
}

/// The key of a block mapping line (`key:`, `"key" :`, `'key':`), if it is one.
fn key_of(body: &str) -> Option<&str> {
    let (key, _) = body.split_once(':')?;
    let key = key.trim_end();
    let key = key.strip_prefix('"').and_then(|k| k.strip_suffix('"')).unwrap_or(key);
    Some(key.strip_prefix('\'').and_then(|k| k.strip_suffix('\'')).unwrap_or(key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_second_appearance_is_found_in_its_own_mapping() {
        let text = "listen: []\nservices:\n  web: {}\n\nsocks: {}\nservices:\n  ssh: {}\n";
        assert_eq!(locate_duplicate(text, "duplicate field `services`", 1, 1), Some((6, 1)));
        let text = "services:\n  web: {}\n  # web: {}\n  \"web\": {}\nnames: {}\n";
        assert_eq!(locate_duplicate(text, "services: duplicate key `web`", 2, 3), Some((4, 3)));
        let cased = "names:\n  Box.lab: x\n  other.lab : y\n  box.lab : z\n";
        assert_eq!(locate_duplicate(cased, "names: duplicate key `box.lab`", 2, 3), Some((4, 3)));
        let nested = "a:\n  web: 1\nb:\n  web: 2\n";
        assert_eq!(locate_duplicate(nested, "duplicate key `web`", 2, 3), None, "another mapping");
        assert_eq!(locate_duplicate(text, "unknown field `x`", 1, 1), None);
    }
}
