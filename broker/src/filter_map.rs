//! Subscriptions by filter, as a session and the replicated state keep
//! them: a list sorted by filter, not a map. Most sessions have one
//! subscription; a `BTreeMap`'s first node (room for eleven) took ~500
//! bytes for it and a `HashMap`'s ~200. Iterated in filter order, as the
//! `BTreeMap` was (digests and snapshots depend on the order).

use crate::codec::ByteStr;

/// Filter as written (with `$share/`) to `V`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterMap<V>(Vec<(ByteStr, V)>);

impl<V> Default for FilterMap<V> {
    fn default() -> Self {
        FilterMap(Vec::new())
    }
}

impl<V> FilterMap<V> {
    fn find(&self, filter: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|(f, _)| f.as_str().cmp(filter))
    }

    /// Adds or replaces; the value it replaced.
    pub fn insert(&mut self, filter: ByteStr, value: V) -> Option<V> {
        match self.find(&filter) {
            Ok(i) => Some(std::mem::replace(&mut self.0[i].1, value)),
            Err(i) => {
                // Room for one at first, not the four a first push makes.
                if self.0.capacity() == 0 {
                    self.0.reserve_exact(1);
                }
                self.0.insert(i, (filter, value));
                None
            }
        }
    }

    pub fn remove(&mut self, filter: &str) -> Option<V> {
        let i = self.find(filter).ok()?;
        Some(self.0.remove(i).1)
    }

    pub fn get(&self, filter: &str) -> Option<&V> {
        self.find(filter).ok().map(|i| &self.0[i].1)
    }

    pub fn contains_key(&self, filter: &str) -> bool {
        self.find(filter).is_ok()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> Iter<'_, V> {
        self.0.iter().map(|(f, v)| (f, v))
    }

    pub fn keys(&self) -> impl Iterator<Item = &ByteStr> {
        self.0.iter().map(|(f, _)| f)
    }
}

pub type Iter<'a, V> = std::iter::Map<
    std::slice::Iter<'a, (ByteStr, V)>,
    fn(&'a (ByteStr, V)) -> (&'a ByteStr, &'a V),
>;

impl<'a, V> IntoIterator for &'a FilterMap<V> {
    type Item = (&'a ByteStr, &'a V);
    type IntoIter = Iter<'a, V>;
    fn into_iter(self) -> Iter<'a, V> {
        self.iter()
    }
}

impl<V> IntoIterator for FilterMap<V> {
    type Item = (ByteStr, V);
    type IntoIter = std::vec::IntoIter<(ByteStr, V)>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl<V> FromIterator<(ByteStr, V)> for FilterMap<V> {
    /// As a map would: a filter given twice keeps its last value.
    fn from_iter<I: IntoIterator<Item = (ByteStr, V)>>(items: I) -> Self {
        let mut map = FilterMap::default();
        for (filter, value) in items {
            map.insert(filter, value);
        }
        map
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::SubOptions;

    #[test]
    fn sorted_by_filter_and_replaced_in_place() {
        let o = SubOptions::default();
        let mut m = FilterMap::default();
        assert_eq!(m.insert("b".into(), (o, None)), None);
        assert_eq!(m.insert("a".into(), (o, Some(1))), None);
        assert_eq!(m.insert("c".into(), (o, None)), None);
        assert_eq!(m.insert("a".into(), (o, Some(2))), Some((o, Some(1))));
        let keys: Vec<&str> = m.keys().map(|k| k.as_str()).collect();
        assert_eq!(keys, ["a", "b", "c"]);
        assert_eq!(m.get("a"), Some(&(o, Some(2))));
        assert_eq!(m.remove("b"), Some((o, None)));
        assert!(!m.contains_key("b"));
        assert_eq!(m.len(), 2);
        let again: FilterMap<_> = m.clone().into_iter().collect();
        assert_eq!(again, m);
    }
}
