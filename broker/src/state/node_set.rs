//! The nodes with local subscribers on one route's filter: most routes
//! have one or two, held inline (a `BTreeSet` allocated a ~100-byte node
//! for each route, and every persistent session's own topic is a route).

use smallvec::SmallVec;

/// A set of node ids, sorted.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NodeSet(SmallVec<[u64; 2]>);

impl NodeSet {
    /// Adds `node`; false if it was there.
    pub fn insert(&mut self, node: u64) -> bool {
        match self.0.binary_search(&node) {
            Ok(_) => false,
            Err(i) => {
                self.0.insert(i, node);
                true
            }
        }
    }

    /// Removes `node`; false if it was not there.
    pub fn remove(&mut self, node: &u64) -> bool {
        match self.0.binary_search(node) {
            Ok(i) => {
                self.0.remove(i);
                true
            }
            Err(_) => false,
        }
    }

    pub fn contains(&self, node: &u64) -> bool {
        self.0.binary_search(node).is_ok()
    }

    pub fn iter(&self) -> std::slice::Iter<'_, u64> {
        self.0.iter()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<'a> IntoIterator for &'a NodeSet {
    type Item = &'a u64;
    type IntoIter = std::slice::Iter<'a, u64>;
    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

impl FromIterator<u64> for NodeSet {
    fn from_iter<I: IntoIterator<Item = u64>>(nodes: I) -> Self {
        let mut set = NodeSet::default();
        for n in nodes {
            set.insert(n);
        }
        set
    }
}

impl<const N: usize> From<[u64; N]> for NodeSet {
    fn from(nodes: [u64; N]) -> Self {
        nodes.into_iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorted_without_repeats() {
        let mut s = NodeSet::from([3, 1]);
        assert!(s.insert(2));
        assert!(!s.insert(3));
        assert_eq!(s.iter().copied().collect::<Vec<_>>(), [1, 2, 3]);
        assert!(s.remove(&1));
        assert!(!s.remove(&1));
        assert!(s.contains(&2) && !s.contains(&1));
        assert_eq!(s.len(), 2);
    }
}
